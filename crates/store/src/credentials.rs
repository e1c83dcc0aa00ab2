//! Encryption of the provider credentials kept in the `ai_credentials` table.
//!
//! Each value is sealed with ChaCha20-Poly1305 (RFC 8439) under a key derived from the node's
//! master key with HKDF-SHA-256 (RFC 5869), with a random 96-bit nonce per write. The
//! credential's name is the associated data, so a ciphertext copied to another name does not
//! open. The master key's id, also derived with HKDF, is stored next to each ciphertext, so a
//! node with another master key reports the mismatch by name instead of a bare decryption
//! failure.

use std::fmt;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::CredentialRecord;

/// Salt of the HKDF extraction step; a fixed salt is allowed by RFC 5869 section 3.1.
const HKDF_SALT: &[u8] = b"portcullis ai credentials v1";
/// Bytes of the master key id, shown as twice as many hex digits.
const KEY_ID_BYTES: usize = 8;

/// A credential value encrypted for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredential {
    pub name: String,
    /// The ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    /// The id of the master key that sealed it.
    pub key_id: String,
}

/// A stored credential that this node cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "credential `{name}` was encrypted with master key `{stored}`, but this node's master key \
         is `{current}`; start the node with the master key that wrote it, or store the \
         credential again"
    )]
    WrongMasterKey {
        name: String,
        stored: String,
        current: String,
    },
    #[error(
        "credential `{name}` cannot be decrypted: its ciphertext, nonce or name was changed in \
         the store; store the credential again"
    )]
    Corrupt { name: String },
    #[error("the system random generator failed")]
    Random,
}

/// The AEAD key derived from a master key.
pub struct CredentialCipher {
    key: LessSafeKey,
    key_id: String,
    random: SystemRandom,
}

impl fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out so that it never reaches a log.
        f.debug_struct("CredentialCipher")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CredentialCipher {
    /// Derives the encryption key and the key id from a 32-byte master key.
    pub fn new(master_key: &[u8; 32]) -> CredentialCipher {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(master_key);
        let okm = prk
            .expand(&[b"encryption key"], &CHACHA20_POLY1305)
            .expect("HKDF-SHA-256 can produce a 32-byte key");
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let mut id = [0u8; 32];
        prk.expand(&[b"key id"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut id))
            .expect("HKDF-SHA-256 can produce 32 bytes");
        CredentialCipher {
            key,
            key_id: hex::encode(&id[..KEY_ID_BYTES]),
            random: SystemRandom::new(),
        }
    }

    /// Returns the master key's id: 16 hex digits that reveal nothing about the key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `value` for the credential `name`, with a fresh random nonce.
    pub fn seal(&self, name: &str, value: &str) -> Result<SealedCredential, CredentialError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| CredentialError::Random)?;
        let mut buffer = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| CredentialError::Random)?;
        Ok(SealedCredential {
            name: name.to_string(),
            ciphertext: buffer,
            nonce: nonce.to_vec(),
            key_id: self.key_id.clone(),
        })
    }

    /// Decrypts a stored credential.
    pub fn open(&self, record: &CredentialRecord) -> Result<String, CredentialError> {
        if record.key_id != self.key_id {
            return Err(CredentialError::WrongMasterKey {
                name: record.name.clone(),
                stored: record.key_id.clone(),
                current: self.key_id.clone(),
            });
        }
        let corrupt = || CredentialError::Corrupt {
            name: record.name.clone(),
        };
        let nonce = Nonce::try_assume_unique_for_key(&record.nonce).map_err(|_| corrupt())?;
        let mut buffer = record.ciphertext.clone();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(record.name.as_bytes()), &mut buffer)
            .map_err(|_| corrupt())?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| corrupt())
    }
}

/// Returns the first 8 hex digits of the SHA-256 of `value`, which tell two values apart
/// without revealing either.
pub fn fingerprint(value: &str) -> String {
    hex::encode(&digest(&SHA256, value.as_bytes()).as_ref()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sealed: SealedCredential) -> CredentialRecord {
        let now = time::OffsetDateTime::now_utc();
        CredentialRecord {
            name: sealed.name,
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            key_id: sealed.key_id,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn sealed_value_opens() {
        let cipher = CredentialCipher::new(&[7; 32]);
        let sealed = cipher.seal("openai-prod", "sk-secret-value").unwrap();
        assert!(
            !sealed
                .ciphertext
                .windows(b"sk-secret".len())
                .any(|window| window == b"sk-secret")
        );
        assert_eq!(sealed.nonce.len(), aead::NONCE_LEN);
        let again = cipher.seal("openai-prod", "sk-secret-value").unwrap();
        assert_ne!(sealed.nonce, again.nonce, "each write takes a new nonce");
        assert_eq!(cipher.open(&record(sealed)).unwrap(), "sk-secret-value");
    }

    #[test]
    fn wrong_master_key_is_named() {
        let writer = CredentialCipher::new(&[1; 32]);
        let reader = CredentialCipher::new(&[2; 32]);
        assert_ne!(writer.key_id(), reader.key_id());
        assert_eq!(writer.key_id().len(), 16);
        let error = reader
            .open(&record(writer.seal("openai-prod", "sk-1").unwrap()))
            .unwrap_err();
        assert_eq!(
            error,
            CredentialError::WrongMasterKey {
                name: "openai-prod".into(),
                stored: writer.key_id().into(),
                current: reader.key_id().into(),
            }
        );
        assert!(error.to_string().contains("`openai-prod`"), "{error}");
    }

    #[test]
    fn moved_or_changed_ciphertext_fails() {
        let cipher = CredentialCipher::new(&[3; 32]);
        let mut moved = record(cipher.seal("a", "sk-1").unwrap());
        moved.name = "b".into();
        assert_eq!(
            cipher.open(&moved).unwrap_err(),
            CredentialError::Corrupt { name: "b".into() }
        );
        let mut changed = record(cipher.seal("a", "sk-1").unwrap());
        changed.ciphertext[0] ^= 1;
        assert!(matches!(
            cipher.open(&changed),
            Err(CredentialError::Corrupt { .. })
        ));
    }

    #[test]
    fn fingerprint_is_short_hash() {
        // SHA-256("abc") starts with ba7816bf (FIPS 180-2, appendix B.1).
        assert_eq!(fingerprint("abc"), "ba7816bf");
    }

    #[test]
    fn cipher_debug_hides_key() {
        let cipher = CredentialCipher::new(&[9; 32]);
        let debug = format!("{cipher:?}");
        assert!(debug.contains(cipher.key_id()), "{debug}");
        assert!(!debug.contains("key:"), "{debug}");
    }
}
