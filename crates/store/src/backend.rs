//! The statements that each database backend runs, behind one interface, so that the store
//! logic in [`crate::ops`] is written once for SQLite and PostgreSQL.
//!
//! Rows cross this interface as text: entity specs and key scopes as JSON, timestamps in the
//! fixed UTC form of [`crate::codec::format_timestamp`]. Each backend converts them to its
//! column types in SQL.

use crate::StoreError;

/// A table of entities keyed by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Services,
    Routes,
    Consumers,
}

impl Table {
    /// Returns the SQL table name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Services => "services",
            Table::Routes => "routes",
            Table::Consumers => "consumers",
        }
    }

    /// Returns the singular noun used in error messages.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Table::Services => "service",
            Table::Routes => "route",
            Table::Consumers => "consumer",
        }
    }
}

/// An entity row to write.
#[derive(Debug)]
pub(crate) struct EntityRow<'a> {
    pub name: &'a str,
    /// The referenced service; only `routes` has this column.
    pub service_name: Option<&'a str>,
    /// The spec as JSON text.
    pub spec: String,
    pub updated_at: String,
}

/// An `api_keys` row in text form.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct KeyRow {
    pub id: String,
    pub consumer: String,
    pub hash: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// The scopes as a JSON array of strings.
    pub scopes: String,
    pub source: String,
    pub last_used_at: Option<String>,
}

/// An `ai_credentials` row in text form. The ciphertext is not secret, so `Debug` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct CredentialRow {
    pub name: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A database that can open store transactions.
pub(crate) trait Backend: Sync {
    type Tx: Tx;

    /// Begins a transaction that holds the write lock of the config version until it ends, so
    /// that writers run one after another, and returns it with the locked version.
    async fn begin_write(&self) -> Result<(Self::Tx, u64), StoreError>;

    /// Begins a read-only transaction in which every statement sees the same snapshot.
    async fn begin_read(&self) -> Result<Self::Tx, StoreError>;

    /// Reads a `meta` value outside any transaction.
    async fn meta_value(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Inserts a `meta` value unless the key exists, outside any transaction.
    async fn insert_meta_if_absent(&self, key: &str, value: &str) -> Result<(), StoreError>;
}

/// The statements of one open transaction.
pub(crate) trait Tx: Send {
    /// Reads the config version.
    async fn version(&mut self) -> Result<u64, StoreError>;

    /// Increments the config version by one and returns the new value. The PostgreSQL backend
    /// also queues a notification of the new version, which is sent on commit.
    async fn bump_version(&mut self) -> Result<u64, StoreError>;

    /// Reads the JSON spec of one entity.
    async fn spec(&mut self, table: Table, name: &str) -> Result<Option<String>, StoreError>;

    /// Reads the names and JSON specs of all entities in a table, ordered by the bytes of the
    /// name.
    async fn specs(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError>;

    /// Inserts an entity or replaces the one with the same name.
    async fn upsert(&mut self, table: Table, row: &EntityRow<'_>) -> Result<(), StoreError>;

    /// Deletes an entity and returns whether it existed.
    async fn delete(&mut self, table: Table, name: &str) -> Result<bool, StoreError>;

    /// Reads the models and JSON specs of all stored AI prices, ordered by the bytes of the
    /// model.
    async fn prices(&mut self) -> Result<Vec<(String, String)>, StoreError>;

    /// Inserts the price of `model` or replaces the stored one.
    async fn upsert_price(
        &mut self,
        model: &str,
        spec: &str,
        updated_at: &str,
    ) -> Result<(), StoreError>;

    /// Deletes the stored price of `model` and returns whether it existed.
    async fn delete_price(&mut self, model: &str) -> Result<bool, StoreError>;

    /// Returns the names of the routes that reference a service, in name order.
    async fn routes_using(&mut self, service: &str) -> Result<Vec<String>, StoreError>;

    /// Returns whether a key with this id exists, revoked or not.
    async fn key_exists(&mut self, id: &str) -> Result<bool, StoreError>;

    /// Returns whether the consumer has a key with this id, revoked or not.
    async fn consumer_has_key(&mut self, consumer: &str, id: &str) -> Result<bool, StoreError>;

    /// Returns the id of the key with this hash, if any.
    async fn key_id_by_hash(&mut self, hash: &str) -> Result<Option<String>, StoreError>;

    async fn insert_key(&mut self, key: &KeyRow) -> Result<(), StoreError>;

    /// Reads all keys of a consumer, revoked ones included, ordered by creation time, then id.
    async fn consumer_keys(&mut self, consumer: &str) -> Result<Vec<KeyRow>, StoreError>;

    /// Reads all keys that are not revoked at `now`, ordered by creation time, then id. A key
    /// whose revocation time lies after `now` is included.
    async fn unrevoked_keys(&mut self, now: &str) -> Result<Vec<KeyRow>, StoreError>;

    /// Sets `revoked_at` to `at` on the consumer's keys, or only on key `id` when given, and
    /// skips keys revoked at or before `at`. Returns the number of keys changed.
    async fn revoke_keys(
        &mut self,
        consumer: &str,
        id: Option<&str>,
        at: &str,
    ) -> Result<u64, StoreError>;

    /// Reads key `id` of a consumer, revoked or not.
    async fn consumer_key(
        &mut self,
        consumer: &str,
        id: &str,
    ) -> Result<Option<KeyRow>, StoreError>;

    /// Reads the keys whose stored prefix starts with `prefix`, of `consumer` only when given,
    /// revoked ones included, ordered by creation time, then id.
    async fn find_keys(
        &mut self,
        prefix: &str,
        consumer: Option<&str>,
    ) -> Result<Vec<KeyRow>, StoreError>;

    /// Sets `rotated_to` and `expires_at` of key `id`, but only while the key has no successor
    /// and is neither revoked nor expired at `now`. Returns the number of keys changed, 0 or 1.
    async fn mark_rotated(
        &mut self,
        id: &str,
        rotated_to: &str,
        expires_at: &str,
        now: &str,
    ) -> Result<u64, StoreError>;

    /// Sets `last_used_at` of key `id` to `at` unless it is later already.
    async fn touch_key(&mut self, id: &str, at: &str) -> Result<(), StoreError>;

    /// Reads the stored credentials, or only the one called `name`, ordered by the bytes of the
    /// name.
    async fn credentials(&mut self, name: Option<&str>) -> Result<Vec<CredentialRow>, StoreError>;

    /// Inserts a credential, or replaces the ciphertext, nonce, key id and update time of the
    /// one with the same name, keeping its creation time.
    async fn upsert_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError>;

    /// Deletes a credential and returns whether it existed.
    async fn delete_credential(&mut self, name: &str) -> Result<bool, StoreError>;

    async fn commit(self) -> Result<(), StoreError>;

    async fn rollback(self) -> Result<(), StoreError>;
}
