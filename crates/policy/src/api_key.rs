//! API keys: their format, their keyed hash, and the lookup table the data plane reads.
//!
//! Issued keys look like `pcs_` followed by 32 random base62 characters and a 6-character base62
//! CRC-32 of the rest, for example `pcs_4vQe...Xa1b2c`. The prefix lets secret scanners recognise
//! a leaked key, and the checksum rejects a mistyped key without a table lookup. Keys declared in
//! a config file may have any form; they skip the checksum test.
//!
//! The store keeps only HMAC-SHA-256 of each key under a server secret. A lookup hashes the
//! presented key, finds the record by that digest, and compares the digests again in constant
//! time before accepting it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Prefix of every key that portcullis issues.
pub const ISSUED_PREFIX: &str = "pcs_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Characters of the plaintext kept in the store to find a key by its beginning.
pub const DISPLAY_PREFIX_LEN: usize = 12;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Generates a new key in the issued format.
pub fn generate_key() -> String {
    let mut rng = rand::thread_rng();
    let mut key = String::with_capacity(ISSUED_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN);
    key.push_str(ISSUED_PREFIX);
    for _ in 0..RANDOM_LEN {
        key.push(BASE62[rng.gen_range(0..BASE62.len())] as char);
    }
    let checksum = checksum(&key);
    key.push_str(&checksum);
    key
}

/// Generates a public key identifier such as `key_5Qm2...`.
pub fn generate_key_id() -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::from("key_");
    for _ in 0..16 {
        id.push(BASE62[rng.gen_range(0..BASE62.len())] as char);
    }
    id
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes()) as u64;
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits.to_vec()).expect("base62 digits are ASCII")
}

/// Returns false for a key in the issued format whose checksum does not match, so a typo is
/// rejected without a lookup. Keys of any other form pass.
pub fn checksum_matches(key: &str) -> bool {
    let Some(rest) = key.strip_prefix(ISSUED_PREFIX) else {
        return true;
    };
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.is_ascii() {
        return false;
    }
    let (body, sum) = key.split_at(key.len() - CHECKSUM_LEN);
    checksum(body).as_bytes().ct_eq(sum.as_bytes()).into()
}

/// Returns the beginning of `key` that the store keeps for finding it.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// A keyed SHA-256 digest of an API key.
pub type KeyDigest = [u8; 32];

/// Computes the keyed hash of API keys under the server secret.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher { secret: <redacted> }")
    }
}

impl KeyHasher {
    pub fn new(secret: &[u8]) -> Self {
        KeyHasher {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length"),
        }
    }

    pub fn digest(&self, key: &str) -> KeyDigest {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn digest_hex(&self, key: &str) -> String {
        hex::encode(self.digest(key))
    }

    /// Returns a stable id for a key declared in a config file, derived from its digest, so
    /// that syncing the same file twice finds the same record.
    pub fn declared_key_id(&self, key: &str) -> String {
        let digest = self.digest(&format!("portcullis declared key id\0{key}"));
        format!("cfg_{}", &hex::encode(digest)[..16])
    }
}

/// One key the data plane accepts.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub consumer: String,
    /// Seconds since the Unix epoch after which the key is rejected.
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
    digest: KeyDigest,
    /// Second of the last use that was reported, so that uses are reported at most once a
    /// second per key instead of on every request.
    reported_use: AtomicI64,
}

impl Clone for KeyEntry {
    fn clone(&self) -> Self {
        KeyEntry {
            id: self.id.clone(),
            consumer: self.consumer.clone(),
            expires_at: self.expires_at,
            scopes: self.scopes.clone(),
            digest: self.digest,
            reported_use: AtomicI64::new(self.reported_use.load(Ordering::Relaxed)),
        }
    }
}

impl KeyEntry {
    /// Notes a use at `now` (seconds since the Unix epoch). Returns true when this is the first
    /// use in that second, which is when the caller should report it.
    pub fn note_use(&self, now: i64) -> bool {
        self.reported_use.swap(now, Ordering::Relaxed) != now
    }
}

/// Why a presented key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// Malformed, failed its checksum, or unknown.
    Invalid,
    Expired,
}

/// The keys of one snapshot, indexed by digest.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_digest: HashMap<KeyDigest, KeyEntry>,
}

impl KeyTable {
    /// Adds a key by its hex digest; returns false when the digest is not 64 hex characters.
    pub fn insert(
        &mut self,
        hex_digest: &str,
        id: String,
        consumer: String,
        expires_at: Option<i64>,
        scopes: Vec<String>,
    ) -> bool {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hex_digest, &mut digest).is_err() {
            return false;
        }
        self.by_digest.insert(
            digest,
            KeyEntry {
                id,
                consumer,
                expires_at,
                scopes,
                digest,
                reported_use: AtomicI64::new(0),
            },
        );
        true
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Finds the key for a presented plaintext at `now` (seconds since the Unix epoch).
    pub fn verify(
        &self,
        hasher: &KeyHasher,
        presented: &str,
        now: i64,
    ) -> Result<&KeyEntry, KeyRejection> {
        if presented.is_empty() || presented.len() > 256 || !checksum_matches(presented) {
            return Err(KeyRejection::Invalid);
        }
        let digest = hasher.digest(presented);
        let entry = self.by_digest.get(&digest).ok_or(KeyRejection::Invalid)?;
        // The map lookup already matched; the constant-time comparison keeps the acceptance
        // decision itself independent of how many digest bytes agree.
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return Err(KeyRejection::Invalid);
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return Err(KeyRejection::Expired);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_has_prefix_and_valid_checksum() {
        let key = generate_key();
        assert!(key.starts_with(ISSUED_PREFIX));
        assert_eq!(key.len(), ISSUED_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN);
        assert!(checksum_matches(&key));
    }

    #[test]
    fn mistyped_key_fails_checksum() {
        let key = generate_key();
        let mut bytes = key.into_bytes();
        let i = ISSUED_PREFIX.len() + 3;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        assert!(!checksum_matches(&String::from_utf8(bytes).unwrap()));
    }

    #[test]
    fn declared_keys_skip_checksum() {
        assert!(checksum_matches("alice-demo-key-0001"));
        assert!(!checksum_matches("pcs_short"));
    }

    #[test]
    fn digest_depends_on_secret() {
        let a = KeyHasher::new(b"secret-a");
        let b = KeyHasher::new(b"secret-b");
        assert_ne!(a.digest("k"), b.digest("k"));
        assert_eq!(a.digest("k"), a.digest("k"));
    }

    #[test]
    fn table_verifies_expiry_and_unknown_keys() {
        let hasher = KeyHasher::new(b"secret");
        let mut table = KeyTable::default();
        assert!(table.insert(
            &hasher.digest_hex("live-key-000000001"),
            "k1".into(),
            "alice".into(),
            None,
            vec![]
        ));
        assert!(table.insert(
            &hasher.digest_hex("old-key-0000000001"),
            "k2".into(),
            "bob".into(),
            Some(100),
            vec![]
        ));
        assert!(!table.insert("not-hex", "k3".into(), "eve".into(), None, vec![]));

        assert_eq!(
            table
                .verify(&hasher, "live-key-000000001", 200)
                .unwrap()
                .consumer,
            "alice"
        );
        assert_eq!(
            table
                .verify(&hasher, "old-key-0000000001", 99)
                .unwrap()
                .consumer,
            "bob"
        );
        assert_eq!(
            table
                .verify(&hasher, "old-key-0000000001", 100)
                .unwrap_err(),
            KeyRejection::Expired
        );
        assert_eq!(
            table.verify(&hasher, "unknown-key-000001", 0).unwrap_err(),
            KeyRejection::Invalid
        );
        assert_eq!(
            table.verify(&hasher, "", 0).unwrap_err(),
            KeyRejection::Invalid
        );
    }

    #[test]
    fn debug_output_hides_secret() {
        let hasher = KeyHasher::new(b"top-secret");
        assert!(!format!("{hasher:?}").contains("top-secret"));
    }
}
