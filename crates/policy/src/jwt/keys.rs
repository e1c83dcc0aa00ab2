//! Verification keys: parsed from a JWK Set (RFC 7517), a PEM public key or a shared secret, and
//! selected for a token by `kid` and algorithm.

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::{hmac, signature};
use serde_json::Value;

use super::Algorithm;

/// Minimum HMAC secret length, in bytes: RFC 7518 section 3.2 requires a key at least as long as
/// the hash output, and this applies the HS256 bound to every HS algorithm.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A key that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

fn key_error(message: impl Into<String>) -> KeyError {
    KeyError(message.into())
}

/// The public key or secret of a [`VerifyingKey`].
enum Material {
    /// RSA modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 or P-384 point (`0x04 || x || y`).
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
    Hmac(Vec<u8>),
}

/// One key and the algorithms it may verify. The key type fixes the algorithms: an RSA key
/// verifies only RS* and PS*, a P-256 key only ES256, a P-384 key only ES384, an Ed25519 key only
/// EdDSA and a shared secret only HS*. A JWK `alg` narrows this to one algorithm.
pub struct VerifyingKey {
    pub kid: Option<String>,
    algorithms: Vec<Algorithm>,
    material: Material,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The material is left out because a shared secret must never reach a log.
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Returns the algorithms this key verifies.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Builds an HMAC key from a shared secret. `algorithm` pins one HS algorithm, and `None`
    /// allows all three.
    pub fn hmac(
        kid: Option<String>,
        secret: &[u8],
        algorithm: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(key_error(format!(
                "the HMAC secret is {} bytes; use at least {MIN_HMAC_SECRET_BYTES}",
                secret.len()
            )));
        }
        let family = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        Ok(VerifyingKey {
            kid,
            algorithms: narrow(&family, algorithm)?,
            material: Material::Hmac(secret.to_vec()),
        })
    }

    /// Parses a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo) for RSA, P-256, P-384 or
    /// Ed25519, or `RSA PUBLIC KEY` (PKCS #1).
    pub fn from_pem(
        kid: Option<String>,
        pem: &str,
        algorithm: Option<Algorithm>,
    ) -> Result<Self, KeyError> {
        let (label, der) = pem_decode(pem)?;
        let (family, material) = match label.as_str() {
            "PUBLIC KEY" => der::parse_spki(&der)?,
            "RSA PUBLIC KEY" => der::parse_pkcs1(&der)?,
            other => {
                return Err(key_error(format!(
                    "PEM label `{other}` is not a public key; use `PUBLIC KEY` or `RSA PUBLIC KEY`"
                )));
            }
        };
        Ok(VerifyingKey {
            kid,
            algorithms: narrow(family, algorithm)?,
            material,
        })
    }

    /// Parses one public JWK. A symmetric (`oct`) key is rejected, so an HMAC secret never comes
    /// from a JWK Set or from a JWK that the store and admin API would show.
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyError> {
        let object = jwk
            .as_object()
            .ok_or_else(|| key_error("a JWK must be a JSON object"))?;
        let text = |name: &str| -> Result<Option<&str>, KeyError> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::String(value)) => Ok(Some(value)),
                Some(_) => Err(key_error(format!("JWK member `{name}` must be a string"))),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, KeyError> {
            let value = text(name)?.ok_or_else(|| key_error(format!("JWK has no `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| key_error(format!("JWK member `{name}` is not base64url")))
        };
        if let Some(usage) = text("use")?
            && usage != "sig"
        {
            return Err(key_error(format!("JWK `use` is `{usage}`, not `sig`")));
        }
        if let Some(operations) = object.get("key_ops") {
            let verifies = operations
                .as_array()
                .is_some_and(|list| list.iter().any(|op| op == "verify"));
            if !verifies {
                return Err(key_error("JWK `key_ops` does not include `verify`"));
            }
        }
        let algorithm = match text("alg")? {
            None => None,
            Some(name) => Some(
                name.parse::<Algorithm>()
                    .map_err(|()| key_error(format!("JWK `alg` `{name}` is not supported")))?,
            ),
        };
        let kid = text("kid")?.map(str::to_string);
        let kty = text("kty")?.ok_or_else(|| key_error("JWK has no `kty`"))?;
        let (family, material): (&[Algorithm], Material) = match kty {
            "RSA" => {
                let n = strip_leading_zeros(bytes("n")?);
                let e = strip_leading_zeros(bytes("e")?);
                check_rsa_modulus(&n)?;
                (RSA_ALGORITHMS, Material::Rsa { n, e })
            }
            "EC" => {
                let (family, size): (&[Algorithm], usize) = match text("crv")? {
                    Some("P-256") => (&[Algorithm::ES256], 32),
                    Some("P-384") => (&[Algorithm::ES384], 48),
                    Some(other) => {
                        return Err(key_error(format!("EC curve `{other}` is not supported")));
                    }
                    None => return Err(key_error("EC JWK has no `crv`")),
                };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != size || y.len() != size {
                    return Err(key_error("EC JWK coordinates have the wrong length"));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (family, Material::Ec(point))
            }
            "OKP" => {
                if text("crv")? != Some("Ed25519") {
                    return Err(key_error("OKP JWK must have `crv` Ed25519"));
                }
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(key_error("Ed25519 JWK `x` must be 32 bytes"));
                }
                (&[Algorithm::EdDSA], Material::Ed25519(x))
            }
            "oct" => {
                return Err(key_error(
                    "symmetric (`oct`) JWKs are not accepted; configure HMAC secrets with `secret_env`",
                ));
            }
            other => return Err(key_error(format!("JWK `kty` `{other}` is not supported"))),
        };
        Ok(VerifyingKey {
            kid,
            algorithms: narrow(family, algorithm)?,
            material,
        })
    }

    /// Returns whether `signature` over `input` is valid for `algorithm` under this key. An
    /// algorithm that the key does not allow never verifies.
    pub fn verify(&self, algorithm: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        if !self.algorithms.contains(&algorithm) {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => {
                let parameters: &signature::RsaParameters = match algorithm {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(parameters, input, signature)
                    .is_ok()
            }
            Material::Ec(point) => {
                let parameters = match algorithm {
                    Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return false,
                };
                signature::UnparsedPublicKey::new(parameters, point)
                    .verify(input, signature)
                    .is_ok()
            }
            Material::Ed25519(key) => signature::UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(input, signature)
                .is_ok(),
            Material::Hmac(secret) => {
                let hash = match algorithm {
                    Algorithm::HS256 => hmac::HMAC_SHA256,
                    Algorithm::HS384 => hmac::HMAC_SHA384,
                    Algorithm::HS512 => hmac::HMAC_SHA512,
                    _ => return false,
                };
                // `ring::hmac::verify` compares the tags in constant time.
                hmac::verify(&hmac::Key::new(hash, secret), input, signature).is_ok()
            }
        }
    }
}

/// RS256 to PS512, the first six entries of [`Algorithm::ALL`].
const RSA_ALGORITHMS: &[Algorithm] = Algorithm::ALL.split_at(6).0;

/// Narrows a key type's algorithms to `pinned` when one is given.
fn narrow(family: &[Algorithm], pinned: Option<Algorithm>) -> Result<Vec<Algorithm>, KeyError> {
    match pinned {
        None => Ok(family.to_vec()),
        Some(algorithm) if family.contains(&algorithm) => Ok(vec![algorithm]),
        Some(algorithm) => Err(key_error(format!(
            "algorithm {algorithm} does not fit this key type"
        ))),
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Rejects RSA moduli outside 2048 to 8192 bits, the range `ring` verifies.
fn check_rsa_modulus(n: &[u8]) -> Result<(), KeyError> {
    // `n` has no leading zero bytes, so only the first byte can have leading zero bits.
    let bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    if !(2048..=8192).contains(&bits) {
        return Err(key_error(format!(
            "RSA modulus is {bits} bits; use 2048 to 8192"
        )));
    }
    Ok(())
}

/// Decodes the first PEM block in `text` into its label and DER bytes.
pub(crate) fn pem_decode(text: &str) -> Result<(String, Vec<u8>), KeyError> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| key_error("no `-----BEGIN` line in the PEM text"))?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| key_error("unterminated PEM `BEGIN` line"))?;
    let label = rest[..label_end].to_string();
    let body_and_end = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body_and_end
        .find(&end_marker)
        .ok_or_else(|| key_error(format!("no `{end_marker}` line in the PEM text")))?;
    let body: String = body_and_end[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| key_error("the PEM body is not base64"))?;
    Ok((label, der))
}

/// A set of keys for one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// The keys that may verify a token, or why there are none.
#[derive(Debug)]
pub enum Selection<'k> {
    Keys(Vec<&'k VerifyingKey>),
    /// The token names a `kid` that no key has. A refreshed key set may have it.
    UnknownKid,
    /// No key with the token's `kid` (or, without one, no key at all) allows its algorithm.
    NoMatchingKey,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Returns whether some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// Parses a JWK Set document. Keys that cannot verify signatures here (encryption keys,
    /// unsupported types, symmetric keys, short RSA moduli) are skipped and returned with the
    /// reason, so one odd key does not take the whole set down.
    pub fn from_jwks(document: &[u8]) -> Result<(KeySet, Vec<KeyError>), KeyError> {
        let value: Value = serde_json::from_slice(document)
            .map_err(|error| key_error(format!("the JWK Set is not JSON: {error}")))?;
        let Some(Value::Array(entries)) = value.get("keys") else {
            return Err(key_error("the JWK Set has no `keys` array"));
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        let mut seen = HashSet::new();
        for entry in entries {
            match VerifyingKey::from_jwk(entry) {
                Ok(key) => {
                    if let Some(kid) = &key.kid
                        && !seen.insert(kid.clone())
                    {
                        skipped.push(key_error(format!("duplicate kid `{kid}`")));
                        continue;
                    }
                    keys.push(key);
                }
                Err(error) => skipped.push(error),
            }
        }
        Ok((KeySet { keys }, skipped))
    }

    /// Selects the keys that may verify a token with `kid` and `algorithm`.
    ///
    /// With a `kid`, only the key with that `kid` is used. Without one, every key that allows the
    /// algorithm is tried.
    pub fn select(&self, kid: Option<&str>, algorithm: Algorithm) -> Selection<'_> {
        let mut kid_found = false;
        let usable: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
            .inspect(|_| kid_found = true)
            .filter(|key| key.algorithms.contains(&algorithm))
            .collect();
        if !usable.is_empty() {
            Selection::Keys(usable)
        } else if kid.is_some() && !kid_found {
            Selection::UnknownKid
        } else {
            Selection::NoMatchingKey
        }
    }
}

/// A minimal DER reader for the two public-key structures PEM files carry.
mod der {
    use super::{KeyError, Material, RSA_ALGORITHMS, check_rsa_modulus, key_error};
    use crate::jwt::Algorithm;

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OBJECT_IDENTIFIER: u8 = 0x06;

    // Object identifiers, as the content bytes of their DER encoding.
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    /// Reads one TLV with tag `tag` and returns its content and the bytes after it.
    fn read(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), KeyError> {
        let invalid = || key_error("the public key is not valid DER");
        let (&found, rest) = input.split_first().ok_or_else(invalid)?;
        if found != tag {
            return Err(invalid());
        }
        let (&first, rest) = rest.split_first().ok_or_else(invalid)?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(invalid());
            }
            let length = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (length, &rest[count..])
        };
        if rest.len() < length {
            return Err(invalid());
        }
        Ok(rest.split_at(length))
    }

    /// Parses a SubjectPublicKeyInfo (RFC 5280 section 4.1).
    pub(super) fn parse_spki(input: &[u8]) -> Result<(&'static [Algorithm], Material), KeyError> {
        let (spki, _) = read(input, SEQUENCE)?;
        let (algorithm, rest) = read(spki, SEQUENCE)?;
        let (bits, _) = read(rest, BIT_STRING)?;
        let (oid, parameters) = read(algorithm, OBJECT_IDENTIFIER)?;
        // The first byte of a BIT STRING counts unused bits, which is 0 for every key here.
        let key = match bits.split_first() {
            Some((0, key)) => key,
            _ => return Err(key_error("the public key is not valid DER")),
        };
        match oid {
            RSA_ENCRYPTION => parse_pkcs1(key),
            EC_PUBLIC_KEY => {
                let (curve, _) = read(parameters, OBJECT_IDENTIFIER)?;
                let (family, size): (&'static [Algorithm], usize) = match curve {
                    P256 => (&[Algorithm::ES256], 32),
                    P384 => (&[Algorithm::ES384], 48),
                    _ => return Err(key_error("EC curve is not P-256 or P-384")),
                };
                if key.len() != 1 + 2 * size || key[0] != 0x04 {
                    return Err(key_error("EC public key is not an uncompressed point"));
                }
                Ok((family, Material::Ec(key.to_vec())))
            }
            ED25519 if key.len() == 32 => {
                Ok((&[Algorithm::EdDSA], Material::Ed25519(key.to_vec())))
            }
            _ => Err(key_error(
                "the public key type is not RSA, P-256, P-384 or Ed25519",
            )),
        }
    }

    /// Parses an RSAPublicKey (RFC 8017 appendix A.1.1).
    pub(super) fn parse_pkcs1(input: &[u8]) -> Result<(&'static [Algorithm], Material), KeyError> {
        let (sequence, _) = read(input, SEQUENCE)?;
        let (n, rest) = read(sequence, INTEGER)?;
        let (e, _) = read(rest, INTEGER)?;
        let n = super::strip_leading_zeros(n.to_vec());
        let e = super::strip_leading_zeros(e.to_vec());
        check_rsa_modulus(&n)?;
        Ok((RSA_ALGORITHMS, Material::Rsa { n, e }))
    }
}
