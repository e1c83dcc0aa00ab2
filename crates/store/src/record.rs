//! The stored form of an API key.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An API key as the store keeps it: never the plaintext, only its keyed hash.
///
/// The stores keep timestamps in UTC with microsecond precision and drop any finer part, so a
/// record read back equals the written one only when its times are whole microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier, used in admin paths and logs.
    pub id: String,
    pub consumer: String,
    /// HMAC-SHA-256 of the plaintext key under the store's key hash secret, hex-encoded.
    pub hash: String,
    /// The first characters of the plaintext, so an operator can find a key a user quotes.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Id of the key this one replaced in a rotation.
    #[serde(default)]
    pub rotated_from: Option<String>,
    /// Id of the key that replaced this one in a rotation.
    #[serde(default)]
    pub rotated_to: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Where the key came from: `config` for keys declared in the file, `admin` otherwise.
    pub source: String,
    /// Last time a request used the key, recorded in batches; `None` until the first flush.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Whether a key record admits requests at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl ApiKeyRecord {
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        if self.revoked_at.is_some_and(|at| at <= now) {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}
