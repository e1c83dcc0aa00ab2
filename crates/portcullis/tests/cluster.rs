//! Three gateway nodes sharing one PostgreSQL database: changes, revocations and restarts.
//!
//! Each test creates its own database on the server at `PORTCULLIS_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`) and drops it at the end. The test that
//! restarts PostgreSQL itself holds a write lock that keeps the other tests of this file from
//! running meanwhile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::postgres::{self, Database};
use common::{ADMIN_TOKEN, Gateway, admin, client, upstream};
use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

static POSTGRES_RESTART: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The config of node A, which declares the entities; B and C declare none.
fn node_config(database: &Database, upstream: Option<std::net::SocketAddr>) -> String {
    let mut config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ postgres: "{url}" }}
access_log: off
key_hash_secret: cluster-test-key-hash-secret-000000000001
"#,
        url = database.url
    );
    if let Some(upstream) = upstream {
        config.push_str(&format!(
            r#"services:
  - name: echo
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
routes:
  - {{ name: echo, service: echo, paths: [/echo], strip_prefix: true }}
consumers:
  - {{ name: alice, api_keys: [{key}] }}
"#,
            key = common::ALICE_KEY
        ));
    }
    config
}

async fn start_cluster(database: &Database) -> (Gateway, Gateway, Gateway) {
    let upstream = upstream().await;
    let a = Gateway::start(&node_config(database, Some(upstream)));
    let b = Gateway::start(&node_config(database, None));
    let c = Gateway::start(&node_config(database, None));
    (a, b, c)
}

/// Polls `path` with `key` on `node` until it returns `status`; returns how long that took.
async fn wait_for_status(
    node: &Gateway,
    path: &str,
    key: &str,
    status: u16,
    limit: Duration,
) -> Duration {
    let client = client();
    let started = Instant::now();
    loop {
        let response = client
            .get(node.url(path))
            .header("apikey", key)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} on {} did not return {status} within {limit:?}",
            node.proxy[0]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn change_through_one_node_reaches_all() {
    let _shared = POSTGRES_RESTART.read().await;
    let database = Database::create("portcullis_cluster").await;
    let (a, b, c) = start_cluster(&database).await;
    let client = client();
    for node in [&a, &b, &c] {
        wait_for_status(
            node,
            "/echo/x",
            common::ALICE_KEY,
            200,
            Duration::from_secs(5),
        )
        .await;
    }

    let response = admin(&client, Method::POST, &a, "/routes")
        .json(&json!({ "name": "added", "service": "echo", "paths": ["/added"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for node in [&b, &c] {
        let took = wait_for_status(
            node,
            "/added/x",
            common::ALICE_KEY,
            200,
            Duration::from_secs(1),
        )
        .await;
        assert!(
            took < Duration::from_secs(1),
            "the route reached {} after {took:?}",
            node.proxy[0]
        );
    }

    let ready: serde_json::Value = client
        .get(c.admin_url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version_a: serde_json::Value = client
        .get(a.admin_url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["config_version"], version_a["config_version"],
        "all nodes serve the same version"
    );
    assert_eq!(ready["store"], "postgres");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_key_fails_on_every_node() {
    let _shared = POSTGRES_RESTART.read().await;
    let database = Database::create("portcullis_cluster").await;
    let (a, b, c) = start_cluster(&database).await;
    let client = client();

    let issued: serde_json::Value = admin(&client, Method::POST, &b, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    for node in [&a, &b, &c] {
        wait_for_status(node, "/echo/x", &key, 200, Duration::from_secs(1)).await;
    }

    let response = admin(
        &client,
        Method::DELETE,
        &c,
        &format!("/consumers/alice/keys/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    for node in [&a, &b, &c] {
        let took = wait_for_status(node, "/echo/x", &key, 401, Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_node_catches_up_and_others_lose_nothing() {
    let _shared = POSTGRES_RESTART.read().await;
    let database = Database::create("portcullis_cluster").await;
    let (a, b, c) = start_cluster(&database).await;
    for node in [&a, &b, &c] {
        wait_for_status(
            node,
            "/echo/x",
            common::ALICE_KEY,
            200,
            Duration::from_secs(5),
        )
        .await;
    }
    let nodes = Arc::new([a, b]);
    let traffic = spawn_traffic(nodes.clone(), Duration::from_secs(15));

    c.signal("KILL");
    let dir = {
        let mut c = c;
        c.wait_exit(Duration::from_secs(5));
        std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap())
    };
    let client = client();
    let response = admin(&client, Method::POST, &nodes[0], "/routes")
        .json(&json!({ "name": "while-down", "service": "echo", "paths": ["/while-down"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let restarted = Gateway::start_in(dir, &node_config(&database, None));
    wait_for_status(
        &restarted,
        "/while-down/x",
        common::ALICE_KEY,
        200,
        Duration::from_secs(2),
    )
    .await;
    traffic.stop().await;
}

/// Starts the local PostgreSQL cluster again when dropped, so that a failing assertion during
/// an outage leaves the server running for the tests after it.
struct StoppedPostgres {
    cluster: String,
}

impl StoppedPostgres {
    fn stop(cluster: &str) -> StoppedPostgres {
        pg_ctlcluster(cluster, "stop");
        StoppedPostgres {
            cluster: cluster.to_string(),
        }
    }

    async fn start(self) {
        pg_ctlcluster(&self.cluster, "start");
        std::mem::forget(self);
        wait_for_postgres(Duration::from_secs(30)).await;
    }
}

impl Drop for StoppedPostgres {
    fn drop(&mut self) {
        pg_ctlcluster(&self.cluster, "start");
    }
}

fn pg_ctlcluster(cluster: &str, action: &str) {
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", cluster, "main", action])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Polls `/health/ready` on `node` until its `status` field is `expected`, and returns the body.
async fn wait_for_readiness(node: &Gateway, expected: &str, limit: Duration) -> serde_json::Value {
    let client = client();
    let deadline = Instant::now() + limit;
    loop {
        let response = client
            .get(node.admin_url("/health/ready"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        if body["status"] == expected {
            assert_eq!(status, 200, "readiness answers 200 unless strict: {body}");
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not report {expected} within {limit:?}: {body}",
            node.admin
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_fails_no_request() {
    let _exclusive = POSTGRES_RESTART.write().await;
    let Some(cluster) = local_cluster() else {
        eprintln!(
            "skipped: no local PostgreSQL cluster to stop and start (needs pg_ctlcluster and /etc/postgresql)"
        );
        return;
    };
    let database = Database::create("portcullis_cluster").await;
    let (a, b, c) = start_cluster(&database).await;
    for node in [&a, &b, &c] {
        wait_for_status(
            node,
            "/echo/x",
            common::ALICE_KEY,
            200,
            Duration::from_secs(5),
        )
        .await;
    }
    let nodes = Arc::new([a, b, c]);
    let traffic = spawn_traffic(nodes.clone(), Duration::from_secs(60));
    let client = client();

    // While PostgreSQL is down, every node reports itself degraded with the reason, keeps
    // serving its snapshot, and rejects admin writes whole.
    let outage = StoppedPostgres::stop(&cluster);
    for node in nodes.iter() {
        let ready = wait_for_readiness(node, "degraded", Duration::from_secs(10)).await;
        assert!(
            ready["reason"]
                .as_str()
                .is_some_and(|reason| !reason.is_empty()),
            "degraded readiness names no reason: {ready}"
        );
        let strict = client
            .get(node.admin_url("/health/ready?strict=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(strict.status(), 503, "strict readiness while degraded");
    }
    let rejected = admin(&client, Method::POST, &nodes[1], "/routes")
        .json(&json!({ "name": "during-outage", "service": "echo", "paths": ["/during-outage"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rejected.status(),
        503,
        "admin write while the store is down"
    );
    let body: serde_json::Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    for node in nodes.iter() {
        wait_for_status(
            node,
            "/echo/during-outage",
            common::ALICE_KEY,
            200,
            Duration::from_secs(2),
        )
        .await;
    }

    outage.start().await;

    // The nodes reconnect on their own: readiness recovers, the write made during the outage
    // did not land, and a new write through one node reaches the others.
    for node in nodes.iter() {
        wait_for_readiness(node, "ready", Duration::from_secs(15)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = admin(&client, Method::POST, &nodes[0], "/routes")
            .json(
                &json!({ "name": "after-restart", "service": "echo", "paths": ["/after-restart"] }),
            )
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin writes never recovered: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in nodes.iter() {
        wait_for_status(
            node,
            "/after-restart/x",
            common::ALICE_KEY,
            200,
            Duration::from_secs(2),
        )
        .await;
        let missing = admin(&client, Method::GET, node, "/routes/during-outage")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "the rejected write must not land");
    }
    traffic.stop().await;
}

fn local_cluster() -> Option<String> {
    if std::env::var("PORTCULLIS_TEST_POSTGRES_URL").is_ok() {
        return None;
    }
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    let version = versions
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()?;
    let found = std::process::Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_ok();
    found.then_some(version)
}

async fn wait_for_postgres(limit: Duration) {
    let deadline = Instant::now() + limit;
    while sqlx::PgConnection::connect(&postgres::server_url())
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not come back within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Steady requests against some nodes; every one must succeed.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

fn spawn_traffic<const N: usize>(nodes: Arc<[Gateway; N]>, limit: Duration) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let workers = (0..N)
        .map(|index| {
            let (nodes, stop, sent) = (nodes.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let client = client();
                let deadline = Instant::now() + limit;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let url = nodes[index].url("/echo/steady");
                    match client
                        .get(url)
                        .header("apikey", common::ALICE_KEY)
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.bytes().await;
                        }
                        Ok(response) => {
                            failures.push(format!("node {index}: status {}", response.status()))
                        }
                        Err(error) => failures.push(format!("node {index}: {error}")),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failures
            })
        })
        .collect();
    Traffic {
        stop,
        sent,
        workers,
    }
}

impl Traffic {
    /// Stops the traffic once it has sent at least 100 requests, and checks that none failed.
    async fn stop(self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sent.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for worker in self.workers {
            failures.extend(worker.await.unwrap());
        }
        let sent = self.sent.load(Ordering::Relaxed);
        assert!(sent >= 100, "too little traffic to mean anything: {sent}");
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
}

/// The Redis server at `PORTCULLIS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_travels_through_redis() {
    let redis = redis_url();
    let address = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    assert!(
        std::net::TcpStream::connect(&address).is_ok(),
        "Redis at {redis} does not answer; start it or set PORTCULLIS_TEST_REDIS_URL"
    );
    // Two nodes share one SQLite file and check its version only once an hour, so a change
    // can reach the second node in time only as a Redis message.
    let shared = tempfile::tempdir().unwrap();
    let database = shared.path().join("shared.db");
    let channel = format!("portcullis:test:{:016x}", rand::random::<u64>());
    let upstream = upstream().await;
    let config = |entities: bool| {
        let mut config = format!(
            r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ sqlite: "{database}" }}
access_log: off
version_check_interval: 1h
redis: {{ url: "{redis}", channel: "{channel}" }}
"#,
            database = database.display()
        );
        if entities {
            config.push_str(&format!(
                "services:\n  - {{ name: echo, targets: [\"http://{upstream}\"], policies: [{{ key-auth: {{}} }}] }}\nroutes:\n  - {{ name: echo, service: echo, paths: [/echo] }}\nconsumers:\n  - {{ name: alice }}\n"
            ));
        }
        config
    };
    let a = Gateway::start(&config(true));
    let b = Gateway::start(&config(false));
    let client = client();

    let issued: serde_json::Value = admin(&client, Method::POST, &a, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    wait_for_status(&b, "/echo/x", &key, 200, Duration::from_secs(1)).await;

    let response = admin(
        &client,
        Method::DELETE,
        &a,
        &format!("/consumers/alice/keys/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let took = wait_for_status(&b, "/echo/x", &key, 401, Duration::from_secs(1)).await;
    assert!(
        took < Duration::from_secs(1),
        "the revocation reached node B after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_key_reaches_every_node() {
    let _shared = POSTGRES_RESTART.read().await;
    let database = Database::create("portcullis_cluster").await;
    let (a, b, c) = start_cluster(&database).await;
    let client = client();

    let issued: serde_json::Value = admin(&client, Method::POST, &b, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    for node in [&a, &b, &c] {
        wait_for_status(node, "/echo/x", &old_key, 200, Duration::from_secs(1)).await;
    }

    let response = admin(
        &client,
        Method::POST,
        &a,
        &format!("/consumers/alice/keys/{id}/rotate"),
    )
    .json(&json!({ "overlap": "3s" }))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let rotated: serde_json::Value = response.json().await.unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_string();
    for node in [&b, &c] {
        let took = wait_for_status(node, "/echo/x", &new_key, 200, Duration::from_secs(1)).await;
        assert!(
            took < Duration::from_secs(1),
            "the new key reached {} after {took:?}",
            node.proxy[0]
        );
    }
    // Expiry times are whole seconds, so a 3s overlap lasts at least 2s.
    for node in [&a, &b, &c] {
        let status = client
            .get(node.url("/echo/x"))
            .header("apikey", &old_key)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "the old key works during the overlap");
    }
    for node in [&a, &b, &c] {
        wait_for_status(node, "/echo/x", &old_key, 401, Duration::from_secs(5)).await;
        wait_for_status(node, "/echo/x", &new_key, 200, Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_sharing_postgres_rotate_once() {
    let _shared = POSTGRES_RESTART.read().await;
    let database = Database::create("portcullis_cluster").await;
    let receiver = common::webhook::Receiver::start(&[]).await;
    // Both nodes check every 100ms for keys older than 1s, so they race for every rotation,
    // including the rotations of the keys that earlier rotations issued.
    let schedule = format!(
        "key_rotation:\n  every: 1s\n  overlap: 1h\n  webhook: \"{url}\"\n  \
         webhook_secret: cluster-webhook-secret-0000000000000001\n  check_interval: 100ms\n",
        url = receiver.url()
    );
    let upstream = upstream().await;
    let a = Gateway::start(&format!(
        "{}{schedule}",
        node_config(&database, Some(upstream))
    ));
    let b = Gateway::start(&format!("{}{schedule}", node_config(&database, None)));
    let client = client();

    let issued: serde_json::Value = admin(&client, Method::POST, &a, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_id = issued["id"].as_str().unwrap().to_string();

    // Follow the chain of rotations from the issued key for three generations.
    let mut current = first_id.clone();
    for _ in 0..3 {
        let expected = current.clone();
        let delivery = receiver
            .wait_for(Duration::from_secs(15), |event| {
                event["old_key_id"] == expected
            })
            .await;
        current = delivery.json()["key_id"].as_str().unwrap().to_string();
    }

    let events: Vec<serde_json::Value> = receiver
        .deliveries()
        .iter()
        .map(|delivery| delivery.json())
        .collect();
    let mut old_ids: Vec<&str> = events
        .iter()
        .map(|event| event["old_key_id"].as_str().unwrap())
        .collect();
    let delivered = old_ids.len();
    old_ids.sort();
    old_ids.dedup();
    assert_eq!(
        old_ids.len(),
        delivered,
        "a key was rotated twice: {events:?}"
    );
    assert!(
        events.iter().all(|event| event["consumer"] == "alice"),
        "{events:?}"
    );

    let keys: serde_json::Value = admin(&client, Method::GET, &b, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = keys["data"].as_array().unwrap();
    for key in keys {
        let successors = keys
            .iter()
            .filter(|other| other["rotated_from"] == key["id"])
            .count();
        assert!(
            successors <= 1,
            "key {} has {successors} successors",
            key["id"]
        );
    }
    let declared = keys
        .iter()
        .find(|key| key["source"] == "config")
        .expect("the declared key");
    assert!(
        declared["rotated_to"].is_null(),
        "declared keys are not rotated"
    );
    let rotations_logged = [&a, &b]
        .iter()
        .map(|node| {
            node.stderr()
                .matches("rotated an API key on schedule")
                .count()
        })
        .sum::<usize>();
    assert!(
        rotations_logged >= 3,
        "the nodes logged {rotations_logged} rotations"
    );
}
