//! The PostgreSQL store, for several nodes that share one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, Postgres, Transaction};

use crate::backend::{Backend, CredentialRow, EntityRow, KeyRow, Table, Tx};
use crate::codec::{self, VERSION_KEY};
use crate::{Store, StoreError, StoreFuture};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections in the pool of one node.
const MAX_CONNECTIONS: u32 = 5;

/// Time to wait for a pooled connection, which includes opening a new one. sqlx retries a
/// refused connection until this runs out, so it bounds how long the version check and an
/// admin write take to fail while PostgreSQL is down, and so how soon a node reports itself
/// degraded.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Maximum length of a PostgreSQL identifier, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Selects the columns of [`KeyRow`] from `api_keys`, with timestamps in the text form of
/// [`codec::format_timestamp`].
const KEY_SELECT: &str = r#"SELECT id, consumer, hash, prefix,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
    to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS expires_at,
    to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS revoked_at,
    rotated_from, scopes::text AS scopes, source,
    to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS last_used_at,
    rotated_to
    FROM api_keys"#;

/// A store in a PostgreSQL database.
///
/// Every committed write sends a notification on [`PostgresStore::NOTIFY_CHANNEL`] whose
/// payload is the new config version in decimal.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// The channel that writes notify, for other nodes to `LISTEN` on.
    pub const NOTIFY_CHANNEL: &'static str = "portcullis_config";

    /// Connects to the database at `url`, such as `postgres://user@127.0.0.1:5432/portcullis`.
    /// Tables live in the first schema of the connection's `search_path`. Migrations are
    /// applied by [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = parse_url(url)?;
        Self::connect_with_options(options).await
    }

    /// Connects like [`PostgresStore::connect`] but keeps the tables in `schema`, which is
    /// created when missing. The name must be a lowercase identifier: ASCII letters, digits
    /// and underscores, starting with a letter or underscore, at most 63 bytes.
    pub async fn connect_with_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        check_schema_name(schema)?;
        let options = parse_url(url)?;

        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(|source| StoreError::Connect {
                target: describe(&options),
                source,
            })?;
        // The name was checked to be a plain identifier, so it needs no escaping here.
        connection
            .execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
            .await?;
        connection.close().await?;

        Self::connect_with_options(options.options([("search_path", schema)])).await
    }

    async fn connect_with_options(options: PgConnectOptions) -> Result<Self, StoreError> {
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                target: target.clone(),
                source,
            })?;
        tracing::info!(database = %target, "connected to PostgreSQL store");
        Ok(PostgresStore { pool })
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    // The URL may contain a password, so the message leaves it out.
    PgConnectOptions::from_str(url)
        .map_err(|error| StoreError::Invalid(format!("invalid PostgreSQL URL: {error}")))
}

/// Describes the database of `options` for messages, without the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let starts_well = chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_');
    let rest_valid = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if starts_well && rest_valid && schema.len() <= MAX_IDENTIFIER_BYTES {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "schema name `{schema}` is invalid: use lowercase ASCII letters, digits and underscores, \
         starting with a letter or underscore, at most {MAX_IDENTIFIER_BYTES} bytes"
    )))
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // sqlx holds an advisory lock while it migrates, so nodes that start together
            // apply each migration once.
            MIGRATOR.run(&self.pool).await?;
            Ok(())
        })
    }

    crate::ops::forward_store_methods!();

    crate::ai_usage::ai_usage_store_methods!();
}

impl Backend for PostgresStore {
    type Tx = PgTx;

    async fn begin_write(&self) -> Result<(PgTx, u64), StoreError> {
        let mut tx = PgTx(self.pool.begin().await?);
        // The row lock on the version makes concurrent writers, on this node or others, wait
        // for each other, so each one reads the data the previous one committed.
        let text: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = $1 FOR UPDATE")
                .bind(VERSION_KEY)
                .fetch_optional(&mut *tx.0)
                .await?;
        let version = match text {
            Some(text) => codec::parse_version(&text)?,
            None => return Err(missing_version()),
        };
        Ok((tx, version))
    }

    async fn begin_read(&self) -> Result<PgTx, StoreError> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(PgTx(tx))
    }

    async fn meta_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        let value = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(value)
    }

    async fn insert_meta_if_absent(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn missing_version() -> StoreError {
    StoreError::corrupt(format!("meta row `{VERSION_KEY}`"), "the row is missing")
}

/// An open PostgreSQL transaction.
pub(crate) struct PgTx(Transaction<'static, Postgres>);

impl Tx for PgTx {
    async fn version(&mut self) -> Result<u64, StoreError> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(VERSION_KEY)
            .fetch_optional(&mut *self.0)
            .await?;
        match text {
            Some(text) => codec::parse_version(&text),
            None => Err(missing_version()),
        }
    }

    async fn bump_version(&mut self) -> Result<u64, StoreError> {
        let text: String = sqlx::query_scalar(
            "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = $1 RETURNING value",
        )
        .bind(VERSION_KEY)
        .fetch_one(&mut *self.0)
        .await?;
        let version = codec::parse_version(&text)?;
        // PostgreSQL delivers the notification when the transaction commits, and drops it on
        // rollback.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PostgresStore::NOTIFY_CHANNEL)
            .bind(&text)
            .execute(&mut *self.0)
            .await?;
        Ok(version)
    }

    async fn spec(&mut self, table: Table, name: &str) -> Result<Option<String>, StoreError> {
        let sql = format!("SELECT spec::text FROM {} WHERE name = $1", table.name());
        let spec = sqlx::query_scalar(&sql)
            .bind(name)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(spec)
    }

    async fn specs(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        // The "C" collation orders by bytes, as SQLite does, whatever the database default.
        let sql = format!(
            "SELECT name, spec::text FROM {} ORDER BY name COLLATE \"C\"",
            table.name()
        );
        let rows = sqlx::query_as(&sql).fetch_all(&mut *self.0).await?;
        Ok(rows)
    }

    async fn upsert(&mut self, table: Table, row: &EntityRow<'_>) -> Result<(), StoreError> {
        let sql = match table {
            Table::Routes => "INSERT INTO routes (name, service_name, spec, updated_at) \
                 VALUES ($1, $2, $3::jsonb, $4::timestamptz) \
                 ON CONFLICT (name) DO UPDATE SET service_name = excluded.service_name, \
                 spec = excluded.spec, updated_at = excluded.updated_at"
                .to_owned(),
            Table::Services | Table::Consumers => format!(
                "INSERT INTO {} (name, spec, updated_at) VALUES ($1, $2::jsonb, $3::timestamptz) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                table.name()
            ),
        };
        let mut query = sqlx::query(&sql).bind(row.name);
        if table == Table::Routes {
            query = query.bind(row.service_name);
        }
        query
            .bind(&row.spec)
            .bind(&row.updated_at)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn delete(&mut self, table: Table, name: &str) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM {} WHERE name = $1", table.name());
        let result = sqlx::query(&sql).bind(name).execute(&mut *self.0).await?;
        Ok(result.rows_affected() > 0)
    }

    async fn prices(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query_as("SELECT model, spec::text FROM ai_prices ORDER BY model COLLATE \"C\"")
                .fetch_all(&mut *self.0)
                .await?;
        Ok(rows)
    }

    async fn upsert_price(
        &mut self,
        model: &str,
        spec: &str,
        updated_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ai_prices (model, spec, updated_at) VALUES ($1, $2::jsonb, $3::timestamptz) \
             ON CONFLICT (model) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(spec)
        .bind(updated_at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn delete_price(&mut self, model: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM ai_prices WHERE model = $1")
            .bind(model)
            .execute(&mut *self.0)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn routes_using(&mut self, service: &str) -> Result<Vec<String>, StoreError> {
        let names = sqlx::query_scalar(
            "SELECT name FROM routes WHERE service_name = $1 ORDER BY name COLLATE \"C\"",
        )
        .bind(service)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(names)
    }

    async fn key_exists(&mut self, id: &str) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(found.is_some())
    }

    async fn consumer_has_key(&mut self, consumer: &str, id: &str) -> Result<bool, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_keys WHERE consumer = $1 AND id = $2")
                .bind(consumer)
                .bind(id)
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(found.is_some())
    }

    async fn key_id_by_hash(&mut self, hash: &str) -> Result<Option<String>, StoreError> {
        let id = sqlx::query_scalar("SELECT id FROM api_keys WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(id)
    }

    async fn insert_key(&mut self, key: &KeyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys \
             (id, consumer, hash, prefix, created_at, expires_at, revoked_at, rotated_from, scopes, source, \
             last_used_at, rotated_to) \
             VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7::timestamptz, $8, $9::jsonb, $10, \
             $11::timestamptz, $12)",
        )
        .bind(&key.id)
        .bind(&key.consumer)
        .bind(&key.hash)
        .bind(&key.prefix)
        .bind(&key.created_at)
        .bind(&key.expires_at)
        .bind(&key.revoked_at)
        .bind(&key.rotated_from)
        .bind(&key.scopes)
        .bind(&key.source)
        .bind(&key.last_used_at)
        .bind(&key.rotated_to)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn consumer_keys(&mut self, consumer: &str) -> Result<Vec<KeyRow>, StoreError> {
        let sql = format!("{KEY_SELECT} WHERE consumer = $1 ORDER BY created_at, id COLLATE \"C\"");
        let rows = sqlx::query_as(&sql)
            .bind(consumer)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows)
    }

    async fn unrevoked_keys(&mut self, now: &str) -> Result<Vec<KeyRow>, StoreError> {
        let sql = format!(
            "{KEY_SELECT} WHERE revoked_at IS NULL OR revoked_at > $1::timestamptz \
             ORDER BY created_at, id COLLATE \"C\""
        );
        let rows = sqlx::query_as(&sql)
            .bind(now)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows)
    }

    async fn revoke_keys(
        &mut self,
        consumer: &str,
        id: Option<&str>,
        at: &str,
    ) -> Result<u64, StoreError> {
        let mut sql = "UPDATE api_keys SET revoked_at = $1::timestamptz WHERE consumer = $2 \
             AND (revoked_at IS NULL OR revoked_at > $1::timestamptz)"
            .to_owned();
        if id.is_some() {
            sql.push_str(" AND id = $3");
        }
        let mut query = sqlx::query(&sql).bind(at).bind(consumer);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let result = query.execute(&mut *self.0).await?;
        Ok(result.rows_affected())
    }

    async fn consumer_key(
        &mut self,
        consumer: &str,
        id: &str,
    ) -> Result<Option<KeyRow>, StoreError> {
        let sql = format!("{KEY_SELECT} WHERE consumer = $1 AND id = $2");
        let row = sqlx::query_as(&sql)
            .bind(consumer)
            .bind(id)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(row)
    }

    async fn find_keys(
        &mut self,
        prefix: &str,
        consumer: Option<&str>,
    ) -> Result<Vec<KeyRow>, StoreError> {
        // starts_with (PostgreSQL 11 and later) instead of LIKE, because `_` in `pcs_` is a LIKE
        // wildcard.
        let sql = format!(
            "{KEY_SELECT} WHERE starts_with(prefix, $1) \
             AND ($2::text IS NULL OR consumer = $2) ORDER BY created_at, id COLLATE \"C\""
        );
        let rows = sqlx::query_as(&sql)
            .bind(prefix)
            .bind(consumer)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows)
    }

    async fn mark_rotated(
        &mut self,
        id: &str,
        rotated_to: &str,
        expires_at: &str,
        now: &str,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE api_keys SET rotated_to = $2, expires_at = $3::timestamptz WHERE id = $1 \
             AND rotated_to IS NULL \
             AND (revoked_at IS NULL OR revoked_at > $4::timestamptz) \
             AND (expires_at IS NULL OR expires_at > $4::timestamptz)",
        )
        .bind(id)
        .bind(rotated_to)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *self.0)
        .await?;
        Ok(result.rows_affected())
    }

    async fn touch_key(&mut self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2::timestamptz WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $2::timestamptz)",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn credentials(&mut self, name: Option<&str>) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = sqlx::query_as(
            r#"SELECT name, ciphertext, nonce, key_id,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
            to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at
            FROM ai_credentials WHERE $1::text IS NULL OR name = $1
            ORDER BY name COLLATE "C""#,
        )
        .bind(name)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(rows)
    }

    async fn upsert_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ai_credentials (name, ciphertext, nonce, key_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz) \
             ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, \
             nonce = excluded.nonce, key_id = excluded.key_id, updated_at = excluded.updated_at",
        )
        .bind(&row.name)
        .bind(&row.ciphertext)
        .bind(&row.nonce)
        .bind(&row.key_id)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn delete_credential(&mut self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM ai_credentials WHERE name = $1")
            .bind(name)
            .execute(&mut *self.0)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.0.commit().await?;
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        self.0.rollback().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for valid in ["portcullis", "_test", "t_0123456789abcdef"] {
            assert!(
                check_schema_name(valid).is_ok(),
                "{valid} should be accepted"
            );
        }
        let too_long = "a".repeat(MAX_IDENTIFIER_BYTES + 1);
        for invalid in [
            "",
            "0test",
            "Test",
            "a-b",
            "a b",
            "a;drop",
            too_long.as_str(),
        ] {
            assert!(
                check_schema_name(invalid).is_err(),
                "{invalid:?} should be rejected"
            );
        }
    }

    #[test]
    fn description_leaves_out_the_password() {
        let options = parse_url("postgres://admin:hunter2@127.0.0.1:5433/config").unwrap();
        assert_eq!(describe(&options), "postgres://admin@127.0.0.1:5433/config");
    }
}
