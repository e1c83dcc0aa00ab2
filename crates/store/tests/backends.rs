//! Scenarios that run against both store backends: SQLite in a temporary folder, and
//! PostgreSQL in a freshly created schema that is dropped afterwards.
//!
//! The PostgreSQL tests connect to `postgres://postgres@127.0.0.1:5432/test` unless
//! `PORTCULLIS_TEST_POSTGRES_URL` names another database. They fail, naming the URL, when the
//! connection fails.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use portcullis_config::{
    BackendErrorAction, ConsumerSpec, CounterBackend, DeclaredKey, DelaySpec, Entities,
    KeyAuthSpec, LimitAlgorithm, LimitKey, PathMatch, PolicySpec, PriceSpec, RateLimitSpec,
    RouteSpec, ServiceSpec, UpstreamTimeouts,
};
use portcullis_store::ai_usage::{AiUsageDimension, AiUsageGroup, group_ai_usage};
use portcullis_store::credentials::{CredentialCipher, CredentialError};
use portcullis_store::{
    AiUsageFilter, AiUsageKey, AiUsageRow, AiUsageTotals, ApiKeyRecord, KeyRotation, PostgresStore,
    SqliteStore, Store, StoreError, StoreState,
};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use time::macros::datetime;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const POSTGRES_URL_VARIABLE: &str = "PORTCULLIS_TEST_POSTGRES_URL";

/// Time allowed for connecting to the test PostgreSQL server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VARIABLE).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// Returns `url` with any password replaced by `***`, for messages.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn postgres_unavailable(url: &str, error: &dyn std::fmt::Display) -> ! {
    let url = redact_password(url);
    panic!(
        "failed to connect to PostgreSQL at {url}: {error}. Start PostgreSQL there, or set \
         {POSTGRES_URL_VARIABLE} to a reachable database."
    )
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

enum Target {
    Sqlite {
        // Kept so that the folder lives as long as the database.
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

/// One test database, shared by the store handles that a scenario opens.
#[derive(Clone)]
struct TestDb {
    target: Arc<Target>,
}

impl TestDb {
    fn create(kind: Kind) -> Self {
        let target = match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("failed to create a temporary folder");
                let path = dir.path().join("store.db");
                Target::Sqlite { _dir: dir, path }
            }
            Kind::Postgres => {
                let suffix = RandomState::new().hash_one(std::process::id());
                Target::Postgres {
                    url: postgres_url(),
                    schema: format!("portcullis_test_{suffix:016x}"),
                }
            }
        };
        TestDb {
            target: Arc::new(target),
        }
    }

    /// Opens a new store handle without applying migrations.
    async fn open(&self) -> Arc<dyn Store> {
        match &*self.target {
            Target::Sqlite { path, .. } => {
                let store = SqliteStore::open(path)
                    .await
                    .expect("failed to open the SQLite store");
                Arc::new(store)
            }
            Target::Postgres { url, schema } => {
                let connect = PostgresStore::connect_with_schema(url, schema);
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(store)) => Arc::new(store),
                    Ok(Err(error)) => postgres_unavailable(url, &error),
                    Err(_) => {
                        postgres_unavailable(url, &format!("timed out after {CONNECT_TIMEOUT:?}"))
                    }
                }
            }
        }
    }

    /// Opens a new store handle and applies migrations.
    async fn open_migrated(&self) -> Arc<dyn Store> {
        let store = self.open().await;
        store.migrate().await.expect("migrations failed");
        store
    }

    /// Runs a statement on a separate connection, bypassing the store.
    async fn execute(&self, sql: &str) {
        match &*self.target {
            Target::Sqlite { path, .. } => {
                let mut connection = sqlite_connection(path).await;
                sqlx::query(sql)
                    .execute(&mut connection)
                    .await
                    .expect("raw SQLite statement failed");
                connection
                    .close()
                    .await
                    .expect("failed to close the SQLite connection");
            }
            Target::Postgres { url, schema } => {
                let mut connection = postgres_connection(url, schema).await;
                sqlx::query(sql)
                    .execute(&mut connection)
                    .await
                    .expect("raw PostgreSQL statement failed");
                connection
                    .close()
                    .await
                    .expect("failed to close the PostgreSQL connection");
            }
        }
    }

    /// Runs a query whose one column is text on a separate connection, bypassing the store.
    async fn query_text(&self, sql: &str) -> Vec<String> {
        self.query_column(sql).await
    }

    /// Runs a query with one column of type `T` on a separate connection, bypassing the store.
    async fn query_column<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        T: Send + Unpin,
    {
        match &*self.target {
            Target::Sqlite { path, .. } => {
                let mut connection = sqlite_connection(path).await;
                sqlx::query_scalar(sql)
                    .fetch_all(&mut connection)
                    .await
                    .expect("raw SQLite query failed")
            }
            Target::Postgres { url, schema } => {
                let mut connection = postgres_connection(url, schema).await;
                sqlx::query_scalar(sql)
                    .fetch_all(&mut connection)
                    .await
                    .expect("raw PostgreSQL query failed")
            }
        }
    }

    /// Drops the PostgreSQL schema. A failure is printed, not raised, so that it does not
    /// hide the scenario's own panic.
    async fn clean_up(&self) {
        let Target::Postgres { url, schema } = &*self.target else {
            return;
        };
        let options = PgConnectOptions::from_str(url).expect("invalid PostgreSQL URL");
        let drop_schema = async {
            let mut connection = PgConnection::connect_with(&options).await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut connection)
                .await?;
            connection.close().await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, drop_schema).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("failed to drop test schema {schema}: {error}"),
            Err(_) => eprintln!("timed out dropping test schema {schema}"),
        }
    }
}

async fn sqlite_connection(path: &std::path::Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .expect("failed to open a raw SQLite connection")
}

async fn postgres_connection(url: &str, schema: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url)
        .expect("invalid PostgreSQL URL")
        .options([("search_path", schema)]);
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => postgres_unavailable(url, &error),
        Err(_) => postgres_unavailable(url, &format!("timed out after {CONNECT_TIMEOUT:?}")),
    }
}

/// Runs a scenario on a fresh database of `kind` and removes the database afterwards, also
/// when the scenario panics.
async fn run<F, Fut>(kind: Kind, scenario: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::create(kind);
    let outcome = AssertUnwindSafe(scenario(db.clone())).catch_unwind().await;
    db.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! backend_tests {
    (
        both: [$($both:ident),* $(,)?],
        sqlite_only: [$($sqlite:ident),* $(,)?],
        postgres_only: [$($postgres:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $both() {
                    super::run(super::Kind::Sqlite, super::$both).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sqlite() {
                    super::run(super::Kind::Sqlite, super::$sqlite).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $both() {
                    super::run(super::Kind::Postgres, super::$both).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $postgres() {
                    super::run(super::Kind::Postgres, super::$postgres).await;
                }
            )*
        }
    };
}

backend_tests! {
    both: [
        migrations_are_idempotent,
        crud_round_trip,
        version_increments_by_one_per_write,
        dangling_route_rejected,
        service_in_use_not_deletable,
        duplicate_key_rejected,
        revoke_hides_key_from_load,
        delete_consumer_revokes_keys,
        sync_declared_is_idempotent,
        sync_declared_is_atomic,
        replace_all_matches_declared_exactly,
        replace_all_is_atomic,
        replace_all_keeps_revoked_keys_revoked,
        secret_stable_across_handles,
        concurrent_writers_get_distinct_versions,
        load_orders_by_name_and_creation,
        load_keeps_expired_and_scheduled_keys,
        corrupt_row_names_table_and_row,
        rotation_replaces_key,
        concurrent_rotations_commit_once,
        find_keys_matches_prefix_literally,
        ai_prices_round_trip,
        ai_price_writes_bump_version,
        corrupt_ai_price_names_row,
        credentials_stored_encrypted,
        ai_usage_grouping_matches_in_memory,
        ai_usage_grouping_respects_max_groups,
    ],
    sqlite_only: [open_creates_file_in_wal_mode],
    postgres_only: [writes_notify_new_version],
}

fn service(name: &str, target: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        targets: vec![target.into()],
        load_balancing: Default::default(),
        timeouts: UpstreamTimeouts::default(),
        preserve_host: false,
        health_checks: None,
        retries: Default::default(),
        circuit_breaker: None,
        policies: vec![PolicySpec::RateLimit(RateLimitSpec {
            name: Some("per-consumer".to_owned()),
            algorithm: LimitAlgorithm::Gcra,
            limit: 10,
            window: Some(Duration::from_secs(1)),
            period: None,
            burst: Some(20),
            by: LimitKey::Consumer,
            header: None,
            claim: None,
            roles: vec!["gold".to_owned()],
            delay: Some(DelaySpec {
                max: Duration::from_millis(500),
            }),
            backend: CounterBackend::Redis,
            batch: Some(10),
            on_backend_error: BackendErrorAction::Deny,
            lease_ttl: None,
            legacy_headers: true,
        })],
    }
}

fn route(name: &str, service: Option<&str>) -> RouteSpec {
    RouteSpec {
        name: name.to_owned(),
        service: service.map(str::to_owned),
        ai: None,
        paths: vec![
            PathMatch::Prefix(format!("/{name}")),
            PathMatch::Exact {
                exact: format!("/{name}-exact"),
            },
        ],
        methods: vec!["GET".to_owned()],
        hosts: vec!["*.example.com".to_owned()],
        strip_prefix: true,
        policies: vec![PolicySpec::KeyAuth(KeyAuthSpec::default())],
    }
}

fn consumer(name: &str) -> ConsumerSpec {
    ConsumerSpec {
        name: name.to_owned(),
        roles: vec!["reader".to_owned()],
        api_keys: Vec::new(),
        policies: Vec::new(),
        key_rotation: None,
        certificates: Vec::new(),
    }
}

fn key(id: &str, consumer: &str, hash: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        consumer: consumer.to_owned(),
        hash: hash.to_owned(),
        prefix: format!("pk_{id}"),
        created_at: datetime!(2024-05-01 12:00:00.000001 UTC),
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
        rotated_to: None,
        scopes: vec!["read".to_owned()],
        source: "admin".to_owned(),
        last_used_at: None,
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) -> String {
    match result {
        Err(StoreError::Conflict(message)) => message,
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

async fn migrations_are_idempotent(db: TestDb) {
    let store = db.open().await;
    store.migrate().await.expect("first migration run failed");
    store.migrate().await.expect("second migration run failed");
    let other = db.open().await;
    other
        .migrate()
        .await
        .expect("migration run from a second handle failed");

    assert_eq!(store.version().await.unwrap(), 0);
    assert_eq!(store.load().await.unwrap(), StoreState::default());
}

async fn crud_round_trip(db: TestDb) {
    let store = db.open_migrated().await;
    let web = service("web", "http://127.0.0.1:9000");
    let api = route("api", Some("web"));
    let mut alice = consumer("alice");
    alice.api_keys = vec![DeclaredKey::Plain("plaintext-secret-key".to_owned())];

    store.put_service(&web).await.unwrap();
    store.put_route(&api).await.unwrap();
    store.put_consumer(&alice).await.unwrap();

    let state = store.load().await.unwrap();
    assert_eq!(state.entities.services, vec![web.clone()]);
    assert_eq!(state.entities.routes, vec![api.clone()]);
    let stored_alice = ConsumerSpec {
        api_keys: Vec::new(),
        ..alice.clone()
    };
    assert_eq!(state.entities.consumers, vec![stored_alice]);
    let stored_json = db
        .query_text("SELECT CAST(spec AS TEXT) FROM consumers")
        .await;
    assert_eq!(stored_json.len(), 1);
    assert!(
        !stored_json[0].contains("plaintext-secret-key"),
        "stored consumer JSON contains a plaintext key: {}",
        stored_json[0]
    );

    let replaced = service("web", "http://127.0.0.1:9001");
    store.put_service(&replaced).await.unwrap();
    assert_eq!(
        store.load().await.unwrap().entities.services,
        vec![replaced]
    );

    let mut record = key("k1", "alice", "hash-1");
    record.expires_at = Some(datetime!(2099-01-01 00:00:00 UTC));
    record.rotated_from = Some("k0".to_owned());
    record.scopes = vec!["read".to_owned(), "write".to_owned()];
    store.insert_key(&record).await.unwrap();
    assert_eq!(
        store.list_keys("alice").await.unwrap(),
        vec![record.clone()]
    );
    assert_eq!(store.load().await.unwrap().keys, vec![record]);

    store.delete_route("api").await.unwrap();
    store.delete_service("web").await.unwrap();
    store.delete_consumer("alice").await.unwrap();
    let state = store.load().await.unwrap();
    assert_eq!(state.entities, Entities::default());
    assert!(
        state.keys.is_empty(),
        "keys of a deleted consumer are loaded: {:?}",
        state.keys
    );

    assert_not_found(store.delete_route("api").await, "deleting a missing route");
    assert_not_found(
        store.delete_service("web").await,
        "deleting a missing service",
    );
    assert_not_found(
        store.delete_consumer("alice").await,
        "deleting a missing consumer",
    );
}

async fn version_increments_by_one_per_write(db: TestDb) {
    let store = db.open_migrated().await;
    let mut versions = Vec::new();
    versions.push(
        store
            .put_service(&service("web", "http://127.0.0.1:9000"))
            .await
            .unwrap(),
    );
    versions.push(store.put_route(&route("api", Some("web"))).await.unwrap());
    versions.push(store.put_consumer(&consumer("alice")).await.unwrap());
    versions.push(
        store
            .insert_key(&key("k1", "alice", "hash-1"))
            .await
            .unwrap(),
    );
    versions.push(store.revoke_key("alice", "k1").await.unwrap());
    versions.push(store.delete_route("api").await.unwrap());
    versions.push(store.delete_service("web").await.unwrap());
    versions.push(store.delete_consumer("alice").await.unwrap());

    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
    assert_eq!(store.version().await.unwrap(), 8);
    assert_eq!(store.load().await.unwrap().version, 8);
}

async fn dangling_route_rejected(db: TestDb) {
    let store = db.open_migrated().await;
    let message = assert_conflict(
        store.put_route(&route("api", Some("missing"))).await,
        "a route naming a missing service",
    );
    assert!(
        message.contains("missing"),
        "message does not name the service: {message}"
    );
    assert_eq!(store.version().await.unwrap(), 0);
    assert!(store.load().await.unwrap().entities.routes.is_empty());

    let version = store.put_route(&route("static", None)).await.unwrap();
    assert_eq!(version, 1, "a route without a service should be accepted");
}

async fn service_in_use_not_deletable(db: TestDb) {
    let store = db.open_migrated().await;
    store
        .put_service(&service("web", "http://127.0.0.1:9000"))
        .await
        .unwrap();
    store.put_route(&route("api", Some("web"))).await.unwrap();

    let message = assert_conflict(
        store.delete_service("web").await,
        "deleting a service in use",
    );
    assert!(
        message.contains("`api`"),
        "message does not name the route: {message}"
    );
    assert_eq!(store.version().await.unwrap(), 2);
    assert_eq!(store.load().await.unwrap().entities.services.len(), 1);

    store.delete_route("api").await.unwrap();
    assert_eq!(store.delete_service("web").await.unwrap(), 4);
}

async fn duplicate_key_rejected(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    let original = key("k1", "alice", "hash-1");
    store.insert_key(&original).await.unwrap();

    assert_conflict(
        store.insert_key(&key("k2", "alice", "hash-1")).await,
        "a key with a duplicate hash",
    );
    assert_conflict(
        store.insert_key(&key("k1", "alice", "hash-2")).await,
        "a key with a duplicate id",
    );
    let message = assert_conflict(
        store.insert_key(&key("k3", "nobody", "hash-3")).await,
        "a key for a missing consumer",
    );
    assert!(
        message.contains("nobody"),
        "message does not name the consumer: {message}"
    );

    assert_eq!(store.version().await.unwrap(), 2);
    assert_eq!(store.list_keys("alice").await.unwrap(), vec![original]);
}

async fn revoke_hides_key_from_load(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    store.put_consumer(&consumer("bob")).await.unwrap();
    let first = key("k1", "alice", "hash-1");
    let second = key("k2", "alice", "hash-2");
    store.insert_key(&first).await.unwrap();
    store.insert_key(&second).await.unwrap();

    let revoked_version = store.revoke_key("alice", "k1").await.unwrap();
    assert_eq!(revoked_version, 5);
    let listed = store.list_keys("alice").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, "k1");
    let revoked_at = listed[0].revoked_at.expect("revoked key has no revoked_at");
    assert_eq!(listed[1], second);
    assert_eq!(store.load().await.unwrap().keys, vec![second]);

    assert_eq!(
        store.revoke_key("alice", "k1").await.unwrap(),
        revoked_version,
        "revoking a revoked key should not write"
    );
    assert_eq!(
        store.list_keys("alice").await.unwrap()[0].revoked_at,
        Some(revoked_at)
    );

    assert_not_found(
        store.revoke_key("alice", "k9").await,
        "revoking an unknown key",
    );
    assert_not_found(
        store.revoke_key("bob", "k2").await,
        "revoking another consumer's key",
    );
    assert_not_found(
        store.list_keys("nobody").await,
        "listing keys of a missing consumer",
    );
}

async fn delete_consumer_revokes_keys(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    store.put_consumer(&consumer("bob")).await.unwrap();
    store
        .insert_key(&key("k1", "alice", "hash-1"))
        .await
        .unwrap();
    store
        .insert_key(&key("k2", "alice", "hash-2"))
        .await
        .unwrap();
    let bobs_key = key("k3", "bob", "hash-3");
    store.insert_key(&bobs_key).await.unwrap();

    assert_eq!(store.delete_consumer("alice").await.unwrap(), 6);
    assert_eq!(store.load().await.unwrap().keys, vec![bobs_key]);
    assert_not_found(
        store.list_keys("alice").await,
        "listing keys of a deleted consumer",
    );

    // The key rows stay as revoked records, and a new consumer of the same name does not
    // get them back.
    store.put_consumer(&consumer("alice")).await.unwrap();
    let listed = store.list_keys("alice").await.unwrap();
    assert_eq!(listed.len(), 2);
    for record in &listed {
        assert!(
            record.revoked_at.is_some(),
            "key {} is not revoked",
            record.id
        );
    }
    assert_eq!(store.load().await.unwrap().keys.len(), 1);
}

async fn sync_declared_is_idempotent(db: TestDb) {
    let store = db.open_migrated().await;
    let mut alice = consumer("alice");
    alice.api_keys = vec![DeclaredKey::Plain("declared-plaintext".to_owned())];
    let declared = Entities {
        services: vec![service("web", "http://127.0.0.1:9000")],
        routes: vec![route("api", Some("web"))],
        consumers: vec![alice.clone()],
    };
    let mut declared_key = key("config-1", "alice", "hash-1");
    declared_key.source = "config".to_owned();
    let keys = vec![declared_key.clone()];

    assert_eq!(store.sync_declared(&declared, &keys).await.unwrap(), 1);
    assert_eq!(store.sync_declared(&declared, &keys).await.unwrap(), 1);
    assert_eq!(store.version().await.unwrap(), 1);

    let state = store.load().await.unwrap();
    assert_eq!(state.entities.services, declared.services);
    assert_eq!(state.entities.routes, declared.routes);
    let stored_alice = ConsumerSpec {
        api_keys: Vec::new(),
        ..alice
    };
    assert_eq!(state.entities.consumers, vec![stored_alice]);
    assert_eq!(state.keys, vec![declared_key]);

    // Entities created through the admin API survive a sync that does not name them.
    store
        .put_service(&service("admin-made", "http://127.0.0.1:9100"))
        .await
        .unwrap();
    let mut changed = declared.clone();
    changed.services[0] = service("web", "http://127.0.0.1:9001");
    assert_eq!(store.sync_declared(&changed, &keys).await.unwrap(), 3);
    let names: Vec<String> = store
        .load()
        .await
        .unwrap()
        .entities
        .services
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert_eq!(names, ["admin-made", "web"]);

    // A key whose id is stored already is left alone, even when its hash differs.
    let same_id = vec![key("config-1", "alice", "hash-other")];
    assert_eq!(store.sync_declared(&changed, &same_id).await.unwrap(), 3);
    assert_eq!(store.list_keys("alice").await.unwrap()[0].hash, "hash-1");
}

async fn sync_declared_is_atomic(db: TestDb) {
    let store = db.open_migrated().await;
    let declared = Entities {
        services: vec![service("web", "http://127.0.0.1:9000")],
        routes: vec![route("api", Some("missing"))],
        consumers: vec![consumer("alice")],
    };
    assert_conflict(
        store.sync_declared(&declared, &[]).await,
        "syncing a dangling route",
    );
    assert_eq!(store.version().await.unwrap(), 0);
    assert_eq!(store.load().await.unwrap(), StoreState::default());

    let declared = Entities {
        consumers: vec![consumer("alice")],
        ..Entities::default()
    };
    let keys = [key("config-1", "nobody", "hash-1")];
    assert_conflict(
        store.sync_declared(&declared, &keys).await,
        "syncing a key of a missing consumer",
    );
    assert_eq!(store.version().await.unwrap(), 0);
    assert!(store.load().await.unwrap().entities.consumers.is_empty());
}

/// Fills a store with two services, two routes, two consumers and three keys, and returns
/// the keys.
async fn fill_for_replace(store: &dyn Store) -> Vec<ApiKeyRecord> {
    store
        .put_service(&service("web", "http://127.0.0.1:9000"))
        .await
        .unwrap();
    store
        .put_service(&service("legacy", "http://127.0.0.1:9001"))
        .await
        .unwrap();
    store.put_route(&route("api", Some("web"))).await.unwrap();
    store
        .put_route(&route("old", Some("legacy")))
        .await
        .unwrap();
    store.put_consumer(&consumer("alice")).await.unwrap();
    store.put_consumer(&consumer("bob")).await.unwrap();
    let mut config_key = key("k2", "alice", "hash-2");
    config_key.source = "config".to_owned();
    let keys = vec![
        key("k1", "alice", "hash-1"),
        config_key,
        key("k3", "bob", "hash-3"),
    ];
    for record in &keys {
        store.insert_key(record).await.unwrap();
    }
    keys
}

async fn replace_all_matches_declared_exactly(db: TestDb) {
    let store = db.open_migrated().await;
    let stored_keys = fill_for_replace(store.as_ref()).await;
    let before = store.version().await.unwrap();

    let declared = Entities {
        services: vec![
            service("web", "http://127.0.0.1:9100"),
            service("new", "http://127.0.0.1:9002"),
        ],
        routes: vec![route("api", Some("new"))],
        consumers: vec![consumer("alice")],
    };
    let mut new_key = key("k4", "alice", "hash-4");
    new_key.source = "config".to_owned();
    let keys = vec![stored_keys[0].clone(), new_key.clone()];
    let state = store.load().await.unwrap();
    let changes = portcullis_store::diff(&state, &declared, &keys).unwrap();
    let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "- service legacy",
            "+ service new",
            "~ service web (targets)",
            "~ route api (service)",
            "- route old",
            "- consumer bob",
            "+ key k4 (alice)",
            "- key k2 (alice)",
            "- key k3 (bob)",
        ]
    );

    let version = store.replace_all(&declared, &keys).await.unwrap();
    assert_eq!(
        version,
        before + 1,
        "a replace should bump the version once"
    );
    let state = store.load().await.unwrap();
    let mut expected_services = declared.services.clone();
    expected_services.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(state.entities.services, expected_services);
    assert_eq!(state.entities.routes, declared.routes);
    assert_eq!(state.entities.consumers, declared.consumers);
    assert_eq!(state.keys, keys);
    let alice_keys = store.list_keys("alice").await.unwrap();
    let k2 = alice_keys.iter().find(|record| record.id == "k2").unwrap();
    assert!(k2.revoked_at.is_some(), "undeclared key k2 is not revoked");
    assert_not_found(store.list_keys("bob").await, "keys of the deleted consumer");

    assert_eq!(
        portcullis_store::diff(&state, &declared, &keys).unwrap(),
        []
    );
    assert_eq!(
        store.replace_all(&declared, &keys).await.unwrap(),
        before + 1,
        "a second replace should change nothing"
    );

    assert_eq!(
        store.replace_all(&Entities::default(), &[]).await.unwrap(),
        before + 2
    );
    let state = store.load().await.unwrap();
    assert_eq!(state.entities, Entities::default());
    assert!(state.keys.is_empty(), "keys left: {:?}", state.keys);
}

async fn replace_all_is_atomic(db: TestDb) {
    let store = db.open_migrated().await;
    let stored_keys = fill_for_replace(store.as_ref()).await;
    let before = store.load().await.unwrap();

    // The route names a service that is stored but not declared, so it would dangle.
    let dangling = Entities {
        services: vec![service("web", "http://127.0.0.1:9000")],
        routes: vec![route("old", Some("legacy"))],
        consumers: Vec::new(),
    };
    let message = assert_conflict(
        store.replace_all(&dangling, &[]).await,
        "replacing with a dangling route",
    );
    assert!(message.contains("`legacy`"), "{message}");

    let declared = Entities {
        services: Vec::new(),
        routes: Vec::new(),
        consumers: vec![consumer("alice")],
    };
    let mut changed = stored_keys[0].clone();
    changed.scopes = vec!["admin".to_owned()];
    let message = assert_conflict(
        store.replace_all(&declared, &[changed]).await,
        "replacing with a changed key record",
    );
    assert!(message.contains("scopes"), "{message}");

    assert_eq!(store.load().await.unwrap(), before);
}

async fn replace_all_keeps_revoked_keys_revoked(db: TestDb) {
    let store = db.open_migrated().await;
    let stored_keys = fill_for_replace(store.as_ref()).await;
    let declared = Entities {
        consumers: vec![consumer("alice"), consumer("bob")],
        ..Entities::default()
    };
    let version = store
        .replace_all(&declared, &stored_keys[1..])
        .await
        .unwrap();

    let message = assert_conflict(
        store.replace_all(&declared, &stored_keys).await,
        "declaring a revoked key again",
    );
    assert!(message.contains("`k1`"), "{message}");
    assert!(message.contains("revoked"), "{message}");

    let mut same_hash = key("k9", "alice", "hash-1");
    same_hash.source = "config".to_owned();
    let mut keys = stored_keys[1..].to_vec();
    keys.push(same_hash);
    let message = assert_conflict(
        store.replace_all(&declared, &keys).await,
        "declaring the hash of a revoked key under a new id",
    );
    assert!(message.contains("`k1`"), "{message}");
    assert_eq!(store.version().await.unwrap(), version);
}

async fn secret_stable_across_handles(db: TestDb) {
    let first = db.open_migrated().await;
    let second = db.open_migrated().await;

    let created = first
        .secret("key_hash", &|| "from-first".to_owned())
        .await
        .unwrap();
    assert_eq!(created, "from-first");
    let read = second
        .secret("key_hash", &|| "from-second".to_owned())
        .await
        .unwrap();
    assert_eq!(read, "from-first");

    let other = second
        .secret("other", &|| "other-value".to_owned())
        .await
        .unwrap();
    assert_eq!(other, "other-value");

    let (left, right) = tokio::join!(
        first.secret("raced", &|| "left".to_owned()),
        second.secret("raced", &|| "right".to_owned()),
    );
    assert_eq!(left.unwrap(), right.unwrap());

    assert_eq!(
        first.version().await.unwrap(),
        0,
        "secrets should not change the config version"
    );
}

async fn concurrent_writers_get_distinct_versions(db: TestDb) {
    const WRITES_PER_HANDLE: usize = 10;
    const TIME_LIMIT: Duration = Duration::from_secs(60);

    let handles = [db.open_migrated().await, db.open_migrated().await];
    let mut tasks = Vec::new();
    for (writer, store) in handles.iter().enumerate() {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for write in 0..WRITES_PER_HANDLE {
                let spec = service(&format!("writer{writer}-{write}"), "http://127.0.0.1:9000");
                versions.push(
                    store
                        .put_service(&spec)
                        .await
                        .expect("concurrent write failed"),
                );
            }
            versions
        }));
    }

    let mut versions = Vec::new();
    for task in tasks {
        let written = tokio::time::timeout(TIME_LIMIT, task)
            .await
            .expect("concurrent writers did not finish in time")
            .expect("writer task panicked");
        versions.extend(written);
    }
    versions.sort_unstable();
    let total = (2 * WRITES_PER_HANDLE) as u64;
    assert_eq!(versions, (1..=total).collect::<Vec<u64>>());
    assert_eq!(handles[0].version().await.unwrap(), total);
    assert_eq!(
        handles[1].load().await.unwrap().entities.services.len(),
        2 * WRITES_PER_HANDLE
    );
}

async fn load_orders_by_name_and_creation(db: TestDb) {
    let store = db.open_migrated().await;
    for name in ["b", "a", "B", "_x"] {
        store
            .put_service(&service(name, "http://127.0.0.1:9000"))
            .await
            .unwrap();
    }
    store.put_consumer(&consumer("alice")).await.unwrap();
    let mut early = key("k-c", "alice", "hash-c");
    early.created_at = datetime!(2024-01-01 00:00:00 UTC);
    let mut late_b = key("k-b", "alice", "hash-b");
    late_b.created_at = datetime!(2024-06-01 00:00:00.5 UTC);
    let mut late_a = key("k-a", "alice", "hash-a");
    late_a.created_at = late_b.created_at;
    for record in [&late_b, &late_a, &early] {
        store.insert_key(record).await.unwrap();
    }

    let state = store.load().await.unwrap();
    let names: Vec<&str> = state
        .entities
        .services
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["B", "_x", "a", "b"],
        "services should be in byte order of their names"
    );
    let ids: Vec<&str> = state.keys.iter().map(|record| record.id.as_str()).collect();
    assert_eq!(
        ids,
        ["k-c", "k-a", "k-b"],
        "keys should be ordered by created_at, then id"
    );
    let listed: Vec<String> = store
        .list_keys("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(listed, ["k-c", "k-a", "k-b"]);
}

async fn load_keeps_expired_and_scheduled_keys(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    let mut expired = key("expired", "alice", "hash-1");
    expired.expires_at = Some(datetime!(2000-01-01 00:00:00 UTC));
    let mut scheduled = key("scheduled", "alice", "hash-2");
    scheduled.revoked_at = Some(datetime!(2100-01-01 00:00:00 UTC));
    let mut revoked = key("revoked", "alice", "hash-3");
    revoked.revoked_at = Some(datetime!(2000-01-01 00:00:00 UTC));
    for record in [&expired, &scheduled, &revoked] {
        store.insert_key(record).await.unwrap();
    }

    assert_eq!(store.load().await.unwrap().keys, vec![expired, scheduled]);

    // Revoking a key with a later revocation time moves the time to now.
    store.revoke_key("alice", "scheduled").await.unwrap();
    let keys = store.load().await.unwrap().keys;
    let ids: Vec<&str> = keys.iter().map(|record| record.id.as_str()).collect();
    assert_eq!(ids, ["expired"]);
}

async fn corrupt_row_names_table_and_row(db: TestDb) {
    let store = db.open_migrated().await;
    store
        .put_service(&service("web", "http://127.0.0.1:9000"))
        .await
        .unwrap();
    db.execute(r#"UPDATE services SET spec = '{"name": "web", "targets": 5}' WHERE name = 'web'"#)
        .await;

    let error = store
        .load()
        .await
        .expect_err("a corrupt row should fail the load");
    assert!(
        matches!(error, StoreError::Corrupt { .. }),
        "expected Corrupt, got {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("services row `web`"),
        "message does not name the row: {message}"
    );
}

async fn open_creates_file_in_wal_mode(db: TestDb) {
    let Target::Sqlite { path, .. } = &*db.target else {
        unreachable!("this scenario runs on SQLite only");
    };
    assert!(!path.exists(), "the database file exists before open");
    let store = db.open_migrated().await;
    assert!(path.exists(), "open did not create the database file");
    assert_eq!(store.backend(), "sqlite");
    assert_eq!(db.query_text("PRAGMA journal_mode").await, ["wal"]);
}

async fn writes_notify_new_version(db: TestDb) {
    const NOTIFICATION_LIMIT: usize = 1000;
    const TIME_LIMIT: Duration = Duration::from_secs(20);

    let Target::Postgres { url, .. } = &*db.target else {
        unreachable!("this scenario runs on PostgreSQL only");
    };
    let store = db.open_migrated().await;
    assert_eq!(store.backend(), "postgres");

    // The channel is shared by every schema in the database, so the test starts from a
    // version that no other test reaches and looks for its own payloads.
    let base = 1_000_000_000 + RandomState::new().hash_one("notify") % 1_000_000_000;
    db.execute(&format!(
        "UPDATE meta SET value = '{base}' WHERE key = 'config_version'"
    ))
    .await;

    let mut listener = match tokio::time::timeout(CONNECT_TIMEOUT, PgListener::connect(url)).await {
        Ok(Ok(listener)) => listener,
        Ok(Err(error)) => postgres_unavailable(url, &error),
        Err(_) => postgres_unavailable(url, &format!("timed out after {CONNECT_TIMEOUT:?}")),
    };
    listener
        .listen(PostgresStore::NOTIFY_CHANNEL)
        .await
        .unwrap();

    assert_eq!(
        store
            .put_service(&service("web", "http://127.0.0.1:9000"))
            .await
            .unwrap(),
        base + 1
    );
    assert_conflict(
        store.put_route(&route("api", Some("missing"))).await,
        "a dangling route",
    );
    let unchanged = Entities {
        services: vec![service("web", "http://127.0.0.1:9000")],
        ..Entities::default()
    };
    assert_eq!(
        store.sync_declared(&unchanged, &[]).await.unwrap(),
        base + 1
    );
    assert_eq!(
        store.put_consumer(&consumer("alice")).await.unwrap(),
        base + 2
    );

    let ours = [(base + 1).to_string(), (base + 2).to_string()];
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + TIME_LIMIT;
    for _ in 0..NOTIFICATION_LIMIT {
        let notification = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .expect("timed out waiting for the notification of the last write")
            .expect("the listener failed");
        if ours.contains(&notification.payload().to_owned()) {
            received.push(notification.payload().to_owned());
        }
        if notification.payload() == ours[1] {
            break;
        }
    }
    assert_eq!(
        received, ours,
        "expected one notification per committed write"
    );
}

fn rotation_of(id: &str, successor: &str, overlap: time::Duration) -> KeyRotation {
    KeyRotation {
        consumer: "alice".to_owned(),
        id: id.to_owned(),
        successor_id: successor.to_owned(),
        successor_hash: format!("hash-of-{successor}"),
        successor_prefix: format!("pk_{successor}"),
        overlap,
        at: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap(),
    }
}

async fn rotation_replaces_key(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    let mut old = key("k1", "alice", "h1");
    old.created_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    old.expires_at = Some(old.created_at + time::Duration::days(30));
    store.insert_key(&old).await.unwrap();

    let request = rotation_of("k1", "k2", time::Duration::hours(1));
    let rotated = store.rotate_key(&request).await.unwrap();
    assert_eq!(rotated.version, store.version().await.unwrap());
    assert_eq!(rotated.previous.rotated_to.as_deref(), Some("k2"));
    assert_eq!(
        rotated.previous.expires_at,
        Some(request.at + time::Duration::hours(1))
    );
    assert_eq!(rotated.successor.rotated_from.as_deref(), Some("k1"));
    assert_eq!(rotated.successor.scopes, old.scopes);
    assert_eq!(rotated.successor.created_at, request.at);
    assert_eq!(
        rotated.successor.expires_at,
        Some(request.at + time::Duration::days(30)),
        "the successor keeps the lifetime"
    );
    let stored = store.list_keys("alice").await.unwrap();
    assert_eq!(
        stored,
        vec![rotated.previous.clone(), rotated.successor.clone()]
    );

    // A longer overlap never extends an earlier expiry.
    let request = rotation_of("k2", "k3", time::Duration::days(365));
    let rotated = store.rotate_key(&request).await.unwrap();
    assert_eq!(
        rotated.previous.expires_at,
        Some(request.at + time::Duration::days(30))
    );

    let message = assert_conflict(
        store
            .rotate_key(&rotation_of("k1", "k9", time::Duration::hours(1)))
            .await,
        "rotating a rotated key",
    );
    assert!(message.contains("rotated already"), "{message}");
    store.revoke_key("alice", "k3").await.unwrap();
    let message = assert_conflict(
        store
            .rotate_key(&rotation_of("k3", "k9", time::Duration::hours(1)))
            .await,
        "rotating a revoked key",
    );
    assert!(message.contains("revoked"), "{message}");
    assert_not_found(
        store
            .rotate_key(&rotation_of("missing", "k9", time::Duration::hours(1)))
            .await,
        "key `missing` of consumer `alice`",
    );
    let ids: Vec<String> = store
        .list_keys("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|key| key.id)
        .collect();
    assert!(
        !ids.contains(&"k9".to_owned()),
        "failed rotations insert nothing"
    );
}

async fn concurrent_rotations_commit_once(db: TestDb) {
    const ROUNDS: usize = 5;
    let handles = [db.open_migrated().await, db.open_migrated().await];
    handles[0].put_consumer(&consumer("alice")).await.unwrap();
    for round in 0..ROUNDS {
        let id = format!("r{round}");
        handles[0]
            .insert_key(&key(&id, "alice", &format!("hash-{id}")))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (writer, store) in handles.iter().enumerate() {
            let store = Arc::clone(store);
            let request = rotation_of(&id, &format!("{id}-by-{writer}"), time::Duration::hours(1));
            tasks.push(tokio::spawn(
                async move { store.rotate_key(&request).await },
            ));
        }
        let mut committed = 0;
        for task in tasks {
            match task.await.expect("rotation task panicked") {
                Ok(_) => committed += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(error) => panic!("unexpected rotation error: {error}"),
            }
        }
        assert_eq!(committed, 1, "round {round}: exactly one rotation commits");
        let successors = handles[1]
            .list_keys("alice")
            .await
            .unwrap()
            .into_iter()
            .filter(|key| key.rotated_from.as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(successors, 1, "round {round}");
    }
}

async fn find_keys_matches_prefix_literally(db: TestDb) {
    let store = db.open_migrated().await;
    store.put_consumer(&consumer("alice")).await.unwrap();
    store.put_consumer(&consumer("bob")).await.unwrap();
    let mut first = key("a1", "alice", "h1");
    first.prefix = "pcs_4vQe1kZ8".to_owned();
    let mut second = key("b1", "bob", "h2");
    second.prefix = "pcs_4vQeXXXX".to_owned();
    let mut third = key("b2", "bob", "h3");
    third.prefix = "pcsX4vQe1kZ8".to_owned();
    for record in [&first, &second, &third] {
        store.insert_key(record).await.unwrap();
    }
    store.revoke_key("bob", "b1").await.unwrap();

    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|key| key.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.find_keys("pcs_4vQe1kZ8", None).await.unwrap()),
        ["a1"]
    );
    assert_eq!(
        ids(store.find_keys("pcs_4vQe", None).await.unwrap()),
        ["a1", "b1"],
        "revoked keys are found too"
    );
    assert_eq!(
        ids(store.find_keys("pcs_", Some("bob")).await.unwrap()),
        ["b1"]
    );
    assert_eq!(
        ids(store.find_keys("", Some("bob")).await.unwrap()),
        ["b1", "b2"]
    );
    assert_eq!(
        ids(store.find_keys("pcs%", None).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(ids(store.find_keys("pcsX", None).await.unwrap()), ["b2"]);
}

fn price(model: &str, input: f64, output: f64) -> PriceSpec {
    PriceSpec {
        model: model.into(),
        input_per_million: input,
        output_per_million: output,
        cache_read_per_million: None,
        cache_write_per_million: None,
        reasoning_per_million: None,
    }
}

async fn ai_prices_round_trip(db: TestDb) {
    let store = db.open_migrated().await;
    assert!(store.load().await.unwrap().ai_prices.is_empty());

    let mut sonnet = price("claude-main/claude-sonnet-4-5", 3.0, 15.0);
    sonnet.cache_read_per_million = Some(0.3);
    sonnet.cache_write_per_million = Some(3.75);
    sonnet.reasoning_per_million = Some(15.5);
    // 0.1 has no exact binary form, so it checks that the number survives the JSON column.
    let mini = price("openai-main/gpt-4.1-mini", 0.1, 1.6);
    store.put_ai_price(&mini).await.unwrap();
    store.put_ai_price(&sonnet).await.unwrap();
    // Ordered by model bytes: uppercase sorts before lowercase.
    let upper = price("Z-provider/model", 1.0, 1.0);
    store.put_ai_price(&upper).await.unwrap();

    let loaded = store.load().await.unwrap().ai_prices;
    assert_eq!(loaded, vec![upper.clone(), sonnet.clone(), mini.clone()]);

    let cheaper = price("claude-main/claude-sonnet-4-5", 1.0, 5.0);
    store.put_ai_price(&cheaper).await.unwrap();
    let loaded = store.load().await.unwrap().ai_prices;
    assert_eq!(loaded, vec![upper.clone(), cheaper, mini.clone()]);

    store
        .delete_ai_price("claude-main/claude-sonnet-4-5")
        .await
        .unwrap();
    let loaded = store.load().await.unwrap().ai_prices;
    assert_eq!(loaded, vec![upper, mini]);

    assert_not_found(
        store.delete_ai_price("claude-main/claude-sonnet-4-5").await,
        "deleting a price that is not stored",
    );
}

async fn ai_price_writes_bump_version(db: TestDb) {
    let store = db.open_migrated().await;
    let before = store.version().await.unwrap();
    let put = store
        .put_ai_price(&price("openai-main/gpt-4.1", 2.0, 8.0))
        .await
        .unwrap();
    assert_eq!(put, before + 1);
    let deleted = store.delete_ai_price("openai-main/gpt-4.1").await.unwrap();
    assert_eq!(deleted, before + 2);
    let missing = store.delete_ai_price("openai-main/gpt-4.1").await;
    assert_not_found(missing, "a second delete");
    assert_eq!(
        store.version().await.unwrap(),
        before + 2,
        "a failed delete must not bump the version"
    );

    // replace_all manages entities only and leaves stored prices alone.
    store
        .put_ai_price(&price("openai-main/gpt-4.1", 2.0, 8.0))
        .await
        .unwrap();
    store.replace_all(&Entities::default(), &[]).await.unwrap();
    assert_eq!(store.load().await.unwrap().ai_prices.len(), 1);
}

async fn corrupt_ai_price_names_row(db: TestDb) {
    let store = db.open_migrated().await;
    store
        .put_ai_price(&price("openai-main/gpt-4.1", 2.0, 8.0))
        .await
        .unwrap();
    db.execute(
        r#"UPDATE ai_prices SET spec = '{"model": "other/model", "input_per_million": 1, "output_per_million": 1}'"#,
    )
    .await;
    let error = store
        .load()
        .await
        .expect_err("a price whose spec names another model should fail the load");
    assert!(
        matches!(error, StoreError::Corrupt { .. }),
        "expected Corrupt, got {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("ai_prices row `openai-main/gpt-4.1`"),
        "message does not name the row: {message}"
    );
}

async fn credentials_stored_encrypted(db: TestDb) {
    const PLAINTEXT: &str = "sk-test-plaintext-credential-0001";
    const ROTATED: &str = "sk-test-plaintext-credential-0002";
    let store = db.open_migrated().await;
    let cipher = CredentialCipher::new(&[5; 32]);

    let sealed = cipher.seal("openai-prod", PLAINTEXT).unwrap();
    let (version, created) = store.put_credential(&sealed).await.unwrap();
    assert_eq!(version, 1, "a credential write bumps the config version");
    assert_eq!(created.name, "openai-prod");
    assert_eq!(created.key_id, cipher.key_id());
    assert_eq!(created.created_at, created.updated_at);

    let state = store.load().await.unwrap();
    assert_eq!(state.credentials.len(), 1);
    assert_eq!(cipher.open(&state.credentials[0]).unwrap(), PLAINTEXT);

    for column in ["ciphertext", "nonce"] {
        let stored: Vec<Vec<u8>> = db
            .query_column(&format!("SELECT {column} FROM ai_credentials"))
            .await;
        assert_eq!(stored.len(), 1);
        assert!(
            !stored[0]
                .windows(PLAINTEXT.len())
                .any(|window| window == PLAINTEXT.as_bytes()),
            "{column} holds the plaintext"
        );
    }
    let ciphertext: Vec<Vec<u8>> = db
        .query_column("SELECT ciphertext FROM ai_credentials")
        .await;
    assert_eq!(
        ciphertext[0].len(),
        PLAINTEXT.len() + 16,
        "ciphertext and tag"
    );
    let key_ids = db.query_text("SELECT key_id FROM ai_credentials").await;
    assert_eq!(key_ids, [cipher.key_id()]);

    let other = CredentialCipher::new(&[6; 32]);
    assert!(matches!(
        other.open(&state.credentials[0]),
        Err(CredentialError::WrongMasterKey { ref name, .. }) if name == "openai-prod"
    ));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let (version, replaced) = store
        .put_credential(&cipher.seal("openai-prod", ROTATED).unwrap())
        .await
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(replaced.created_at, created.created_at);
    assert!(replaced.updated_at > created.updated_at);
    let listed = store.credentials().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(cipher.open(&listed[0]).unwrap(), ROTATED);
    assert_ne!(listed[0].nonce, state.credentials[0].nonce);

    assert_eq!(store.delete_credential("openai-prod").await.unwrap(), 3);
    assert!(store.load().await.unwrap().credentials.is_empty());
    assert_not_found(store.delete_credential("openai-prod").await, "credential");
    assert_eq!(store.version().await.unwrap(), 3);
}

/// Midnight UTC of 2026-12-01, in seconds since the Unix epoch.
const USAGE_DAY: i64 = 1_796_083_200;

/// Returns 240 `ai_usage` rows spread over 4 consumers (one of them empty, as on a route
/// without authentication), 2 routes, 3 models, 2 targets and 60 hours from [`USAGE_DAY`].
fn usage_rows() -> Vec<AiUsageRow> {
    let consumers = ["alice", "bob", "carol", ""];
    let models = ["gpt", "claude", "gemini"];
    (0..240u64)
        .map(|i| {
            let consumer = consumers[(i % 4) as usize];
            let index = i as i64;
            AiUsageRow {
                key: AiUsageKey {
                    bucket_start: USAGE_DAY + (index * 7 % 60) * 3600,
                    consumer: consumer.to_owned(),
                    credential_id: if consumer.is_empty() {
                        String::new()
                    } else {
                        format!("key-{consumer}-{}", i % 2)
                    },
                    route: ["llm", "chat"][(i % 2) as usize].to_owned(),
                    model: models[(i % 3) as usize].to_owned(),
                    target: format!("provider-{}/{}", i % 2, models[(i % 3) as usize]),
                },
                totals: AiUsageTotals {
                    calls: 1 + i % 5,
                    input_tokens: 100 * i,
                    cache_read_tokens: 7 * i,
                    cache_write_tokens: i % 3,
                    output_tokens: 13 * i,
                    reasoning_tokens: 5 * i,
                    cost: i as f64 * 0.000_731,
                    estimated_calls: i % 2,
                },
            }
        })
        .collect()
}

/// Asserts that two sets of groups have the same values and counts, and costs equal up to the
/// rounding of summing floats in another order.
fn assert_same_groups(sql: &[AiUsageGroup], memory: &[AiUsageGroup], case: &str) {
    let values = |groups: &[AiUsageGroup]| {
        groups
            .iter()
            .map(|group| group.values.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(sql), values(memory), "{case}: group values");
    for (from_sql, in_memory) in sql.iter().zip(memory) {
        let case = format!("{case}, group {:?}", in_memory.values);
        let counts = |totals: &AiUsageTotals| {
            [
                totals.calls,
                totals.input_tokens,
                totals.cache_read_tokens,
                totals.cache_write_tokens,
                totals.output_tokens,
                totals.reasoning_tokens,
                totals.estimated_calls,
            ]
        };
        assert_eq!(
            counts(&from_sql.totals),
            counts(&in_memory.totals),
            "{case}: counts"
        );
        let difference = (from_sql.totals.cost - in_memory.totals.cost).abs();
        assert!(
            difference <= 1e-9 * in_memory.totals.cost.abs().max(1.0),
            "{case}: cost {} from SQL, {} in memory",
            from_sql.totals.cost,
            in_memory.totals.cost
        );
    }
}

async fn ai_usage_grouping_matches_in_memory(db: TestDb) {
    let store = db.open_migrated().await;
    let rows = usage_rows();
    store.add_ai_usage(&rows).await.unwrap();
    // A second write of a few rows adds to them.
    store.add_ai_usage(&rows[..10]).await.unwrap();

    let whole_range = AiUsageFilter {
        from: USAGE_DAY,
        to: USAGE_DAY + 3 * 24 * 3600,
        ..AiUsageFilter::default()
    };
    let filters = [
        ("whole range", whole_range.clone()),
        (
            "second day",
            AiUsageFilter {
                from: USAGE_DAY + 24 * 3600,
                to: USAGE_DAY + 48 * 3600,
                ..AiUsageFilter::default()
            },
        ),
        (
            "alice on llm",
            AiUsageFilter {
                consumer: Some("alice".to_owned()),
                route: Some("llm".to_owned()),
                ..whole_range.clone()
            },
        ),
        (
            "one key and model",
            AiUsageFilter {
                credential_id: Some("key-bob-1".to_owned()),
                model: Some("claude".to_owned()),
                ..whole_range.clone()
            },
        ),
        (
            "no match",
            AiUsageFilter {
                consumer: Some("mallory".to_owned()),
                ..whole_range.clone()
            },
        ),
    ];
    let groupings: [&[AiUsageDimension]; 8] = [
        &[],
        &[AiUsageDimension::Consumer],
        &[AiUsageDimension::Model, AiUsageDimension::Consumer],
        &[AiUsageDimension::CredentialId, AiUsageDimension::Target],
        &[AiUsageDimension::Route, AiUsageDimension::Hour],
        &[AiUsageDimension::Day],
        &[AiUsageDimension::Day, AiUsageDimension::Model],
        &[
            AiUsageDimension::Hour,
            AiUsageDimension::Consumer,
            AiUsageDimension::CredentialId,
            AiUsageDimension::Route,
            AiUsageDimension::Model,
            AiUsageDimension::Target,
        ],
    ];

    for (name, filter) in &filters {
        let stored = store.ai_usage(filter).await.unwrap();
        for dimensions in groupings {
            let case = format!("{name}, group by {dimensions:?}");
            let from_sql = store
                .group_ai_usage(filter, dimensions, 10_000)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{case}: more than 10000 groups"));
            let in_memory = group_ai_usage(&stored, dimensions);
            assert_same_groups(&from_sql, &in_memory, &case);
        }
    }

    let total = store
        .group_ai_usage(&whole_range, &[], 10_000)
        .await
        .unwrap()
        .unwrap();
    let expected_calls: u64 = rows.iter().map(|row| row.totals.calls).sum::<u64>()
        + rows[..10].iter().map(|row| row.totals.calls).sum::<u64>();
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].totals.calls, expected_calls);

    let days = store
        .group_ai_usage(&whole_range, &[AiUsageDimension::Day], 10_000)
        .await
        .unwrap()
        .unwrap();
    let day_starts: Vec<String> = days
        .into_iter()
        .map(|group| group.values[0].clone())
        .collect();
    assert_eq!(
        day_starts,
        [0, 1, 2].map(|day| (USAGE_DAY + day * 24 * 3600).to_string())
    );
}

async fn ai_usage_grouping_respects_max_groups(db: TestDb) {
    let store = db.open_migrated().await;
    store.add_ai_usage(&usage_rows()).await.unwrap();
    let filter = AiUsageFilter {
        from: USAGE_DAY,
        to: USAGE_DAY + 3 * 24 * 3600,
        ..AiUsageFilter::default()
    };

    let consumers = [AiUsageDimension::Consumer];
    let exact = store.group_ai_usage(&filter, &consumers, 4).await.unwrap();
    assert_eq!(exact.map(|groups| groups.len()), Some(4));
    let over = store.group_ai_usage(&filter, &consumers, 3).await.unwrap();
    assert_eq!(over, None, "4 consumers with at most 3 groups");

    let hours = store
        .group_ai_usage(&filter, &[AiUsageDimension::Hour], 59)
        .await
        .unwrap();
    assert_eq!(hours, None, "60 hours with at most 59 groups");
    let days = store
        .group_ai_usage(&filter, &[AiUsageDimension::Day], 59)
        .await
        .unwrap();
    assert_eq!(days.map(|groups| groups.len()), Some(3));
}
