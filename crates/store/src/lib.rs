//! Configuration stores for portcullis.
//!
//! A [`Store`] keeps the shared gateway configuration: services, routes, consumers, API-key
//! records, AI prices set through the admin API and a monotonically increasing config version. The data plane never calls a store;
//! the control plane loads a [`StoreState`] when the version changes and compiles it into an
//! immutable snapshot. Every write runs in one transaction that also bumps the version, so a
//! reader sees either all of a write or none of it.
//!
//! Two backends implement the trait: [`SqliteStore`] for a single node and [`PostgresStore`]
//! for several nodes that share one database.

pub mod ai_usage;
mod backend;
mod codec;
pub mod credentials;
mod diff;
mod error;
pub mod notify;
mod ops;
mod postgres;
mod record;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

use portcullis_config::{ConsumerSpec, Entities, PriceSpec, RouteSpec, ServiceSpec, StoreConfig};

pub use ai_usage::{AiUsageFilter, AiUsageKey, AiUsageRow, AiUsageTotals};
pub use diff::{Change, EntityKind, diff};
pub use error::StoreError;
pub use postgres::PostgresStore;
pub use record::{ApiKeyRecord, KeyStatus};
pub use sqlite::SqliteStore;

/// A boxed future, so that [`Store`] can be used as a trait object.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Everything the control plane needs to build a snapshot, read in one consistent transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreState {
    /// Config version at the time of the read.
    pub version: u64,
    pub entities: Entities,
    /// All key records not revoked at the time of the read. Expired keys and keys whose
    /// revocation time is later are included, and lookups filter them with
    /// [`ApiKeyRecord::status`].
    pub keys: Vec<ApiKeyRecord>,
    /// AI prices set through the admin API, ordered by the bytes of the model. Each overrides
    /// the price of the same model in the node's `ai.prices`.
    pub ai_prices: Vec<PriceSpec>,
    /// All provider credentials, still encrypted.
    pub credentials: Vec<CredentialRecord>,
}

/// A provider credential as stored: encrypted with the nodes' master key, see
/// [`credentials::CredentialCipher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub name: String,
    /// The ChaCha20-Poly1305 ciphertext followed by its tag.
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    /// The id of the master key that sealed it.
    pub key_id: String,
    pub created_at: time::OffsetDateTime,
    pub updated_at: time::OffsetDateTime,
}

/// A request to rotate a key: the key to replace, and the new key's identity. The caller
/// generates the identity because only the caller has the new plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    pub consumer: String,
    /// Id of the key to replace.
    pub id: String,
    pub successor_id: String,
    /// Keyed hash of the new key's plaintext, hex-encoded.
    pub successor_hash: String,
    pub successor_prefix: String,
    /// How long the old key keeps working after `at`. An earlier expiry of the old key stays.
    pub overlap: time::Duration,
    /// Time of the rotation: the new key's creation time and the start of the overlap.
    pub at: time::OffsetDateTime,
}

/// A committed rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// Config version after the write.
    pub version: u64,
    /// The replaced key, with its new expiry and `rotated_to`.
    pub previous: ApiKeyRecord,
    /// The new key.
    pub successor: ApiKeyRecord,
}

/// A configuration store. Writes return the new config version.
///
/// Names are the primary keys of services, routes and consumers. Writes that would leave a
/// dangling reference (a route naming a missing service, a key for a missing consumer) fail
/// with [`StoreError::Conflict`] or [`StoreError::NotFound`] and change nothing.
pub trait Store: Send + Sync + 'static {
    /// Returns the backend name for logs and health output: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Applies pending schema migrations.
    fn migrate(&self) -> StoreFuture<'_, ()>;

    /// Returns the current config version without reading the entities.
    fn version(&self) -> StoreFuture<'_, u64>;

    /// Reads the whole state in one transaction.
    fn load(&self) -> StoreFuture<'_, StoreState>;

    /// Returns a store-wide secret by name, creating it with `generate` on first use. Used for
    /// the API-key hash secret when the config does not set one, so that all nodes share it.
    /// When nodes race on first use, every node gets the value that was stored first. Secrets
    /// do not change the config version.
    fn secret<'a>(
        &'a self,
        name: &'a str,
        generate: &'a (dyn Fn() -> String + Send + Sync),
    ) -> StoreFuture<'a, String>;

    /// Creates or replaces a service.
    fn put_service<'a>(&'a self, service: &'a ServiceSpec) -> StoreFuture<'a, u64>;
    /// Deletes a service; [`StoreError::Conflict`] while a route uses it.
    fn delete_service<'a>(&'a self, name: &'a str) -> StoreFuture<'a, u64>;

    /// Creates or replaces a route; [`StoreError::Conflict`] when its service is missing.
    fn put_route<'a>(&'a self, route: &'a RouteSpec) -> StoreFuture<'a, u64>;
    fn delete_route<'a>(&'a self, name: &'a str) -> StoreFuture<'a, u64>;

    /// Creates or replaces a consumer. The spec's `api_keys` are ignored here: keys are
    /// written with [`Store::insert_key`] as hashed records.
    fn put_consumer<'a>(&'a self, consumer: &'a ConsumerSpec) -> StoreFuture<'a, u64>;
    /// Deletes a consumer and revokes all of its keys.
    fn delete_consumer<'a>(&'a self, name: &'a str) -> StoreFuture<'a, u64>;

    /// Creates or replaces the stored price of `price.model`. The caller validates the spec.
    fn put_ai_price<'a>(&'a self, price: &'a PriceSpec) -> StoreFuture<'a, u64>;
    /// Deletes the stored price of `model`; [`StoreError::NotFound`] when none is stored.
    fn delete_ai_price<'a>(&'a self, model: &'a str) -> StoreFuture<'a, u64>;

    /// Inserts a key record; [`StoreError::Conflict`] when the id or hash exists already.
    fn insert_key<'a>(&'a self, key: &'a ApiKeyRecord) -> StoreFuture<'a, u64>;
    /// Lists a consumer's keys, revoked ones included, ordered by creation time, then id;
    /// [`StoreError::NotFound`] when the consumer does not exist.
    fn list_keys<'a>(&'a self, consumer: &'a str) -> StoreFuture<'a, Vec<ApiKeyRecord>>;
    /// Marks a key revoked at the current time; [`StoreError::NotFound`] when the consumer has
    /// no such key. A key that is revoked already keeps its revocation time, and the call
    /// returns the current version without a write.
    fn revoke_key<'a>(&'a self, consumer: &'a str, id: &'a str) -> StoreFuture<'a, u64>;

    /// Inserts a successor of a key and marks the key rotated, in one transaction. The
    /// successor takes the key's consumer and scopes, `rotated_from` names the key, and when
    /// the key expires the successor gets the same lifetime from `rotation.at`. The key's
    /// expiry moves to `rotation.at + rotation.overlap` unless it is earlier already.
    ///
    /// Fails with [`StoreError::NotFound`] when the consumer has no such key, and with
    /// [`StoreError::Conflict`], changing nothing, when the key is revoked, expired or rotated
    /// already. Of several concurrent rotations of one key, on any number of nodes, exactly one
    /// commits.
    fn rotate_key<'a>(&'a self, rotation: &'a KeyRotation) -> StoreFuture<'a, RotatedKey>;

    /// Finds keys of any consumer, or of `consumer` only, whose stored prefix starts with
    /// `prefix`. Revoked keys are included. An empty `prefix` matches every key.
    fn find_keys<'a>(
        &'a self,
        prefix: &'a str,
        consumer: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<ApiKeyRecord>>;

    /// Records the last use of keys, as `(key id, seconds since the Unix epoch)`. A time earlier
    /// than the stored one is ignored. This is usage data, not configuration, so it does not
    /// change the config version.
    fn record_key_use<'a>(&'a self, uses: &'a [(String, i64)]) -> StoreFuture<'a, ()>;

    /// Adds each row's totals to the stored row with the same key, inserting it when missing,
    /// in one transaction. Concurrent writers on several nodes add up without losing counts.
    /// Like key uses, this does not change the config version.
    fn add_ai_usage<'a>(&'a self, rows: &'a [AiUsageRow]) -> StoreFuture<'a, ()>;

    /// Reads the `ai_usage` rows that `filter` selects, ordered by key. Every row of the range
    /// is loaded, so reports use [`Store::group_ai_usage`].
    fn ai_usage<'a>(&'a self, filter: &'a AiUsageFilter) -> StoreFuture<'a, Vec<AiUsageRow>>;

    /// Reads every provider credential, still encrypted, ordered by name.
    fn credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>>;

    /// Creates or replaces a provider credential and bumps the config version, so that every
    /// node decrypts the new value. A replaced credential keeps its creation time. Returns the
    /// new version and the stored record.
    fn put_credential<'a>(
        &'a self,
        credential: &'a credentials::SealedCredential,
    ) -> StoreFuture<'a, (u64, CredentialRecord)>;

    /// Deletes a provider credential; [`StoreError::NotFound`] when there is none by that name.
    fn delete_credential<'a>(&'a self, name: &'a str) -> StoreFuture<'a, u64>;
    /// Sums the `ai_usage` rows that `filter` selects per distinct value of `dimensions`, with
    /// SQL `GROUP BY` and `SUM`, so that only the groups are loaded. Returns the groups sorted
    /// by their values, as [`ai_usage::group_ai_usage`] does, or `None` when there are more than
    /// `max_groups`. Without dimensions, returns one group, or none when no row matches.
    fn group_ai_usage<'a>(
        &'a self,
        filter: &'a AiUsageFilter,
        dimensions: &'a [ai_usage::AiUsageDimension],
        max_groups: usize,
    ) -> StoreFuture<'a, Option<Vec<ai_usage::AiUsageGroup>>>;

    /// Makes the store's entities match `declared` for the names it lists, in one transaction.
    /// Declared services, routes and consumers are created or replaced, and `keys`, the records
    /// of the declared keys, are inserted unless a record with the same id exists. Entities the
    /// file does not name are left alone, since the admin API may have created them. Returns
    /// the new version, or the current one when nothing changed.
    fn sync_declared<'a>(
        &'a self,
        declared: &'a Entities,
        keys: &'a [ApiKeyRecord],
    ) -> StoreFuture<'a, u64>;

    /// Makes the store match `declared` and `keys` exactly, in one transaction that applies the
    /// changes [`diff`] returns. Declared entities that differ are created or replaced. Routes,
    /// services and consumers that are not declared are deleted in that order. Missing key
    /// records are inserted, and every key that is not revoked and not in `keys` is revoked,
    /// whatever its source. Stored AI prices are not entities, so they stay as they are.
    /// Returns the new version, bumped once, or the current one when nothing changed.
    ///
    /// Fails with [`StoreError::Conflict`] and changes nothing when [`diff`] does, and when a
    /// key in `keys` has the id or hash of a revoked record, because a revoked key is never
    /// restored.
    fn replace_all<'a>(
        &'a self,
        declared: &'a Entities,
        keys: &'a [ApiKeyRecord],
    ) -> StoreFuture<'a, u64>;
}

/// Opens the store that `config` names and applies its migrations.
pub async fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let store: std::sync::Arc<dyn Store> = match config {
        StoreConfig::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path).await?),
        StoreConfig::Postgres(url) => std::sync::Arc::new(PostgresStore::connect(url).await?),
    };
    store.migrate().await?;
    Ok(store)
}
