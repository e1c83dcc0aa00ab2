//! Key records for the API keys declared in a config file, and the hasher they are keyed with.

use portcullis_config::{Config, DeclaredKey, Entities, HashedKey};
use portcullis_policy::api_key::{KeyHasher, display_prefix};
use portcullis_store::{ApiKeyRecord, Store, StoreError};
use time::OffsetDateTime;

/// Name of the store secret that keys API-key hashes when the config sets none.
const KEY_HASH_SECRET: &str = "key_hash_secret";

/// Returns the hasher for API keys: keyed with `key_hash_secret` from the config, or else with
/// the store's secret, which is generated and stored on first use.
pub async fn key_hasher(config: &Config, store: &dyn Store) -> Result<KeyHasher, StoreError> {
    let secret = match &config.key_hash_secret {
        Some(secret) => secret.clone(),
        None => {
            store
                .secret(KEY_HASH_SECRET, &crate::generate_secret)
                .await?
        }
    };
    Ok(KeyHasher::new(secret.as_bytes()))
}

/// Returns the records of every key the file declares. Plaintext keys are hashed with `hasher`
/// and get ids derived from the key, so syncing the same file twice yields the same records.
/// Hashed keys become records as they are written. Every record has source `config`.
pub fn declared_key_records(entities: &Entities, hasher: &KeyHasher) -> Vec<ApiKeyRecord> {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    entities
        .consumers
        .iter()
        .flat_map(|consumer| {
            consumer.api_keys.iter().map(move |key| match key {
                DeclaredKey::Plain(key) => ApiKeyRecord {
                    id: hasher.declared_key_id(key),
                    consumer: consumer.name.clone(),
                    hash: hasher.digest_hex(key),
                    prefix: display_prefix(key),
                    created_at: now,
                    expires_at: None,
                    revoked_at: None,
                    rotated_from: None,
                    rotated_to: None,
                    scopes: Vec::new(),
                    source: "config".into(),
                    last_used_at: None,
                },
                DeclaredKey::Hashed(record) => hashed_key_record(&consumer.name, record),
            })
        })
        .collect()
}

/// Converts a hashed key to a record. Times are truncated to whole microseconds, the precision
/// the stores keep, so that the record equals the one read back from a store.
fn hashed_key_record(consumer: &str, key: &HashedKey) -> ApiKeyRecord {
    ApiKeyRecord {
        id: key.id.clone(),
        consumer: consumer.to_owned(),
        hash: key.hash.clone(),
        prefix: key.prefix.clone(),
        created_at: truncate_to_microseconds(key.created_at),
        expires_at: key.expires_at.map(truncate_to_microseconds),
        revoked_at: None,
        rotated_from: key.rotated_from.clone(),
        rotated_to: None,
        scopes: key.scopes.clone(),
        source: "config".into(),
        last_used_at: None,
    }
}

fn truncate_to_microseconds(at: OffsetDateTime) -> OffsetDateTime {
    let nanoseconds = at.nanosecond() / 1_000 * 1_000;
    at.replace_nanosecond(nanoseconds)
        .expect("a nanosecond value below the original is in range")
}

#[cfg(test)]
mod tests {
    use portcullis_config::ConsumerSpec;
    use time::macros::datetime;

    use super::*;

    fn entities_with_keys(api_keys: Vec<DeclaredKey>) -> Entities {
        Entities {
            consumers: vec![ConsumerSpec {
                name: "alice".into(),
                roles: Vec::new(),
                api_keys,
                policies: Vec::new(),
                key_rotation: None,
                certificates: Vec::new(),
            }],
            ..Entities::default()
        }
    }

    #[test]
    fn plain_key_record_is_stable() {
        let hasher = KeyHasher::new(b"secret-for-tests");
        let entities = entities_with_keys(vec![DeclaredKey::Plain("alice-demo-key-0001".into())]);
        let first = declared_key_records(&entities, &hasher);
        let second = declared_key_records(&entities, &hasher);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, second[0].id);
        assert!(first[0].id.starts_with("cfg_"), "{}", first[0].id);
        assert_eq!(first[0].hash, hasher.digest_hex("alice-demo-key-0001"));
        assert_eq!(first[0].prefix, "alice-demo-k");
        assert_eq!(first[0].consumer, "alice");
        assert_eq!(first[0].source, "config");
    }

    #[test]
    fn hashed_key_record_is_taken_as_written() {
        let hasher = KeyHasher::new(b"secret-for-tests");
        let key = HashedKey {
            id: "key_abc".into(),
            hash: "ab".repeat(32),
            prefix: "pcs_abcdefgh".into(),
            created_at: datetime!(2024-05-01 12:00:00.123456789 UTC),
            expires_at: Some(datetime!(2030-01-01 00:00:00.000000999 UTC)),
            scopes: vec!["read".into()],
            rotated_from: Some("key_old".into()),
        };
        let entities = entities_with_keys(vec![DeclaredKey::Hashed(key.clone())]);
        let records = declared_key_records(&entities, &hasher);
        let expected = ApiKeyRecord {
            id: key.id,
            consumer: "alice".into(),
            hash: key.hash,
            prefix: key.prefix,
            created_at: datetime!(2024-05-01 12:00:00.123456 UTC),
            expires_at: Some(datetime!(2030-01-01 00:00:00 UTC)),
            revoked_at: None,
            rotated_from: key.rotated_from,
            rotated_to: None,
            scopes: key.scopes,
            source: "config".into(),
            last_used_at: None,
        };
        assert_eq!(records, vec![expected]);
    }
}
