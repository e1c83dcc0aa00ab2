//! The SQLite store, for a single node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};

use crate::backend::{Backend, CredentialRow, EntityRow, KeyRow, Table, Tx};
use crate::codec::{self, VERSION_KEY};
use crate::{Store, StoreError, StoreFuture};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Time a statement waits for another connection's lock before it fails with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. SQLite runs one writer at a time, and in WAL mode readers do not
/// wait for it, so a few connections serve the control plane and the admin API.
const MAX_CONNECTIONS: u32 = 4;

/// Columns of [`KeyRow`] in `api_keys`.
const KEY_COLUMNS: &str = "id, consumer, hash, prefix, created_at, expires_at, revoked_at, rotated_from, scopes, source, \
     last_used_at, rotated_to";

/// A store in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file when missing, in WAL journal mode with
    /// foreign keys enforced. Migrations are applied by [`Store::migrate`].
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // SQLite reports a missing folder only as "unable to open database file".
        if let Some(folder) = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
            && !folder.is_dir()
        {
            return Err(StoreError::Invalid(format!(
                "cannot open the SQLite database {}: the folder {} does not exist; create it or change `store.sqlite`",
                path.display(),
                folder.display()
            )));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                target: format!("SQLite database {}", path.display()),
                source,
            })?;
        tracing::info!(path = %path.display(), "opened SQLite store");
        Ok(SqliteStore {
            pool,
            path: path.to_owned(),
        })
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            MIGRATOR.run(&self.pool).await?;
            Ok(())
        })
    }

    crate::ops::forward_store_methods!();

    crate::ai_usage::ai_usage_store_methods!();
}

impl Backend for SqliteStore {
    type Tx = SqliteTx;

    async fn begin_write(&self) -> Result<(SqliteTx, u64), StoreError> {
        // BEGIN IMMEDIATE takes the write lock at once and waits for it up to the busy
        // timeout. A deferred transaction that reads first would fail with SQLITE_BUSY on its
        // first write if another connection wrote since its read.
        let mut tx = SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?);
        let version = tx.version().await?;
        Ok((tx, version))
    }

    async fn begin_read(&self) -> Result<SqliteTx, StoreError> {
        // In WAL mode a deferred transaction reads one snapshot from its first SELECT on.
        Ok(SqliteTx(self.pool.begin().await?))
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

/// An open SQLite transaction.
pub(crate) struct SqliteTx(Transaction<'static, Sqlite>);

impl Tx for SqliteTx {
    async fn version(&mut self) -> Result<u64, StoreError> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(VERSION_KEY)
            .fetch_optional(&mut *self.0)
            .await?;
        match text {
            Some(text) => codec::parse_version(&text),
            None => Err(StoreError::corrupt(
                format!("meta row `{VERSION_KEY}`"),
                "the row is missing",
            )),
        }
    }

    async fn bump_version(&mut self) -> Result<u64, StoreError> {
        let text: String = sqlx::query_scalar(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = $1 RETURNING value",
        )
        .bind(VERSION_KEY)
        .fetch_one(&mut *self.0)
        .await?;
        codec::parse_version(&text)
    }

    async fn spec(&mut self, table: Table, name: &str) -> Result<Option<String>, StoreError> {
        let sql = format!("SELECT spec FROM {} WHERE name = $1", table.name());
        let spec = sqlx::query_scalar(&sql)
            .bind(name)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(spec)
    }

    async fn specs(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        // The default BINARY collation orders names by their bytes.
        let sql = format!("SELECT name, spec FROM {} ORDER BY name", table.name());
        let rows = sqlx::query_as(&sql).fetch_all(&mut *self.0).await?;
        Ok(rows)
    }

    async fn upsert(&mut self, table: Table, row: &EntityRow<'_>) -> Result<(), StoreError> {
        let sql = match table {
            Table::Routes => {
                "INSERT INTO routes (name, service_name, spec, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET service_name = excluded.service_name, \
                 spec = excluded.spec, updated_at = excluded.updated_at"
                    .to_owned()
            }
            Table::Services | Table::Consumers => format!(
                "INSERT INTO {} (name, spec, updated_at) VALUES ($1, $2, $3) \
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
        let rows = sqlx::query_as("SELECT model, spec FROM ai_prices ORDER BY model")
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
            "INSERT INTO ai_prices (model, spec, updated_at) VALUES ($1, $2, $3) \
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
        let names =
            sqlx::query_scalar("SELECT name FROM routes WHERE service_name = $1 ORDER BY name")
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
        let sql = format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        sqlx::query(&sql)
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
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE consumer = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query_as(&sql)
            .bind(consumer)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows)
    }

    async fn unrevoked_keys(&mut self, now: &str) -> Result<Vec<KeyRow>, StoreError> {
        // Timestamps are fixed-width UTC text, so text comparison is time comparison.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL OR revoked_at > $1 \
             ORDER BY created_at, id"
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
        let mut sql = "UPDATE api_keys SET revoked_at = $1 WHERE consumer = $2 \
             AND (revoked_at IS NULL OR revoked_at > $1)"
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
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE consumer = $1 AND id = $2");
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
        // substr instead of LIKE, because `_` in `pcs_` is a LIKE wildcard.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE substr(prefix, 1, length($1)) = $1 \
             AND ($2 IS NULL OR consumer = $2) ORDER BY created_at, id"
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
            "UPDATE api_keys SET rotated_to = $2, expires_at = $3 WHERE id = $1 \
             AND rotated_to IS NULL AND (revoked_at IS NULL OR revoked_at > $4) \
             AND (expires_at IS NULL OR expires_at > $4)",
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
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn credentials(&mut self, name: Option<&str>) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT name, ciphertext, nonce, key_id, created_at, updated_at FROM ai_credentials \
             WHERE $1 IS NULL OR name = $1 ORDER BY name",
        )
        .bind(name)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(rows)
    }

    async fn upsert_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ai_credentials (name, ciphertext, nonce, key_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
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
