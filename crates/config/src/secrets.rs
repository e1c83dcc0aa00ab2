//! The `secrets` section: the node's master key, which encrypts the provider credentials kept
//! in the store. The key itself is never written to the store.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::Deserialize;

use crate::load::KeyError;

/// Length of the master key in bytes: a 256-bit ChaCha20-Poly1305 key.
pub const MASTER_KEY_BYTES: usize = 32;

/// The `secrets` section of a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of 32 random bytes, normally `${PORTCULLIS_MASTER_KEY}`. Without it, the node
    /// neither reads nor writes stored credentials.
    #[serde(default)]
    pub master_key: Option<MasterKey>,
}

/// The master key as written in the file: base64 text. Its `Debug` form is `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MasterKey(String);

impl MasterKey {
    /// Creates a master key from its base64 text, as the file writes it.
    pub fn new(text: impl Into<String>) -> MasterKey {
        MasterKey(text.into())
    }

    /// Decodes the key. Standard and URL-safe base64 are accepted, with or without padding.
    pub fn bytes(&self) -> Result<[u8; MASTER_KEY_BYTES], String> {
        let text: String = self
            .0
            .trim()
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let decoded = STANDARD_NO_PAD.decode(text.as_bytes()).map_err(|_| {
            "the master key is not valid base64; generate one with `openssl rand -base64 32`"
                .to_string()
        })?;
        <[u8; MASTER_KEY_BYTES]>::try_from(decoded.as_slice()).map_err(|_| {
            format!(
                "the master key decodes to {} bytes, but it must be {MASTER_KEY_BYTES} random \
                 bytes; generate one with `openssl rand -base64 32`",
                decoded.len()
            )
        })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Checks the `secrets` section.
pub(crate) fn validate(secrets: &SecretsConfig) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if let Some(key) = &secrets.master_key
        && let Err(message) = key.bytes()
    {
        errors.push(KeyError::new("secrets.master_key", message));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::tests::errors;

    /// Base64 of the bytes 0 to 31.
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn master_key_forms_decode() {
        let expected: Vec<u8> = (0..32).collect();
        for text in [
            KEY,
            KEY.trim_end_matches('='),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        ] {
            assert_eq!(MasterKey::new(text).bytes().unwrap().to_vec(), expected);
        }
        let url_safe = MasterKey::new("-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8").bytes();
        assert!(url_safe.is_ok(), "{url_safe:?}");
    }

    #[test]
    fn malformed_master_key_is_located() {
        for (value, expected) in [
            ("not base64!", "not valid base64"),
            ("c2hvcnQ=", "decodes to 5 bytes"),
        ] {
            let source = format!("secrets:\n  master_key: \"{value}\"\n");
            let found = errors(&source);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with("line 2: key `secrets.master_key`"),
                "{found:?}"
            );
            assert!(found[0].contains(expected), "{found:?}");
            assert!(!found[0].contains(value), "the key is echoed: {found:?}");
        }
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let secrets = SecretsConfig {
            master_key: Some(MasterKey::new(KEY)),
        };
        let debug = format!("{secrets:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}
