//! JSON Web Token (RFC 7519) verification for JWS compact tokens (RFC 7515).
//!
//! Verification runs in three steps, each a plain function. [`decode`] splits a token and parses
//! its header and payload without trusting them. [`KeySet::select`] picks the keys that may verify
//! it. [`verify`] checks the signature and then the claims against [`ClaimRules`].
//!
//! The signature code is a small JOSE layer over `ring` (already used by rustls here) instead of
//! a general JOSE library, so that the rules which prevent the classic attacks live in one place
//! and can be read whole:
//!
//! - the algorithm must be in the issuer's configured list, and every key fixes the algorithms it
//!   verifies by its type (an RSA key never verifies `HS256`, so an RSA public key cannot be used
//!   as an HMAC secret);
//! - `alg: none` and unknown algorithms are not representable;
//! - a header that names or embeds a key (`jwk`, `jku`, `x5u`, `x5c`) or carries `crit` is
//!   rejected, so no key or URL ever comes from the token;
//! - `kid` is only a lookup key into the configured key set.

mod claims;
mod keys;

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

pub use claims::{ClaimRules, claim_at, string_list};
pub(crate) use keys::pem_decode;
pub use keys::{KeyError, KeySet, Selection, VerifyingKey};

/// Default maximum size of a token, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Maximum length of a `kid` header value, in bytes.
const MAX_KID_BYTES: usize = 256;

/// Header parameters that name or embed a key or demand extensions. A token carrying any of them
/// is rejected instead of having them ignored.
const FORBIDDEN_HEADER_PARAMETERS: [&str; 5] = ["jwk", "jku", "x5u", "x5c", "crit"];

/// A JWS signature algorithm (RFC 7518 section 3, RFC 8037 for `EdDSA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// Returns the `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Returns whether the algorithm is an HMAC, which needs a shared secret.
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == text)
            .ok_or(())
    }
}

/// The reason a token was rejected. [`JwtError::code`] is short and safe to log; clients see only
/// whether the token was missing, expired or otherwise invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than the maximum size")]
    TooLarge,
    #[error("the token is not three base64url parts with JSON objects")]
    Malformed,
    #[error("the header has no supported `alg`")]
    UnsupportedAlgorithm,
    #[error("the algorithm is not accepted for this issuer")]
    AlgorithmNotAllowed,
    #[error("the header carries a key, a key URL or `crit`")]
    ForbiddenHeader,
    #[error("the `kid` is not a short printable string")]
    InvalidKid,
    #[error("no key has this `kid`")]
    UnknownKid,
    #[error("no key matches the algorithm")]
    NoMatchingKey,
    #[error("the signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("a time claim is not a number")]
    InvalidTimeClaim,
    #[error("the issuer does not match")]
    WrongIssuer,
    #[error("the audience does not match")]
    WrongAudience,
    #[error("a required claim is missing")]
    MissingClaim,
}

impl JwtError {
    /// Returns a short stable code for logs and metrics. It never contains token content.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::UnsupportedAlgorithm => "unsupported_alg",
            JwtError::AlgorithmNotAllowed => "alg_not_allowed",
            JwtError::ForbiddenHeader => "forbidden_header",
            JwtError::InvalidKid => "invalid_kid",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::NoMatchingKey => "no_matching_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "iat_in_future",
            JwtError::InvalidTimeClaim => "invalid_time_claim",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingClaim => "missing_claim",
        }
    }
}

/// A token split and parsed, with nothing verified yet.
#[derive(Debug)]
pub struct Decoded<'t> {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`, the bytes the signature covers.
    signing_input: &'t str,
    signature: Vec<u8>,
}

/// Splits a compact JWS and parses its header and payload.
///
/// Rejects tokens over `max_bytes`, parts that are not unpadded base64url, a header or payload
/// that is not a JSON object, an `alg` outside `allowed`, the header parameters in
/// [`FORBIDDEN_HEADER_PARAMETERS`] and a `kid` that is not a short printable string.
pub fn decode<'t>(
    token: &'t str,
    max_bytes: usize,
    allowed: &[Algorithm],
) -> Result<Decoded<'t>, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::TooLarge);
    }

    let mut parts = token.split('.');
    let (Some(header_part), Some(payload_part), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };

    let header = decode_object(header_part)?;
    let algorithm = match header.get("alg") {
        Some(Value::String(name)) => {
            Algorithm::from_str(name).map_err(|()| JwtError::UnsupportedAlgorithm)?
        }
        _ => return Err(JwtError::UnsupportedAlgorithm),
    };
    if !allowed.contains(&algorithm) {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    if FORBIDDEN_HEADER_PARAMETERS
        .iter()
        .any(|name| header.contains_key(*name))
    {
        return Err(JwtError::ForbiddenHeader);
    }

    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if is_valid_kid(kid) => Some(kid.clone()),
        Some(_) => return Err(JwtError::InvalidKid),
    };

    let claims = decode_object(payload_part)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_part)
        .map_err(|_| JwtError::Malformed)?;
    let signing_input = &token[..header_part.len() + 1 + payload_part.len()];
    Ok(Decoded {
        algorithm,
        kid,
        claims,
        signing_input,
        signature,
    })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

/// Accepts 1 to 256 printable ASCII characters. The value is only ever compared with the `kid`
/// of configured keys, so this bound keeps logs and lookups small rather than preventing injection.
fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID_BYTES && kid.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Checks the signature of `decoded` with the selected keys, then its claims.
///
/// Returns the claims when one of `keys` verifies the signature and the claims pass `rules` at
/// `now` (seconds since the Unix epoch).
pub fn verify(
    decoded: Decoded<'_>,
    keys: &[&VerifyingKey],
    rules: &ClaimRules,
    now: i64,
) -> Result<Map<String, Value>, JwtError> {
    let input = decoded.signing_input.as_bytes();
    let verified = keys
        .iter()
        .any(|key| key.verify(decoded.algorithm, input, &decoded.signature));
    if !verified {
        return Err(JwtError::BadSignature);
    }
    rules.check(&decoded.claims, now)?;
    Ok(decoded.claims)
}

#[cfg(test)]
mod tests;
