//! Key records for the plaintext API keys declared in a config file.

use portcullis_config::Entities;
use portcullis_policy::api_key::{KeyHasher, display_prefix};
use portcullis_store::ApiKeyRecord;

/// Returns the hashed records of every key the file declares. Ids derive from the keys, so
/// syncing the same file twice yields the same records.
pub fn declared_key_records(entities: &Entities, hasher: &KeyHasher) -> Vec<ApiKeyRecord> {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    entities
        .consumers
        .iter()
        .flat_map(|consumer| {
            consumer.api_keys.iter().map(move |key| ApiKeyRecord {
                id: hasher.declared_key_id(key),
                consumer: consumer.name.clone(),
                hash: hasher.digest_hex(key),
                prefix: display_prefix(key),
                created_at: now,
                expires_at: None,
                revoked_at: None,
                rotated_from: None,
                scopes: Vec::new(),
                source: "config".into(),
                last_used_at: None,
            })
        })
        .collect()
}
