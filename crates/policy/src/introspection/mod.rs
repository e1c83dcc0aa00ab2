//! OAuth 2.0 token introspection (RFC 7662) with JWT responses (RFC 9701).
//!
//! The model has three plain parts, and the `oauth2-introspection` adapter in `portcullis-proxy`
//! does the HTTP around them:
//!
//! - [`client`] builds the form body and client authentication of an introspection request,
//!   including `private_key_jwt` client assertions (RFC 7523 section 2.2);
//! - this module reads a response, JSON or the `token_introspection` claim of a verified JWT,
//!   into an [`Introspected`] result and computes how long it may be cached;
//! - [`cache`] stores results by a SHA-256 hash of the token, bounded in entries, so no token
//!   is kept in memory longer than the request that carried it.

pub mod cache;
pub mod client;

use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The authorization server's introspection result for one token.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    /// `active: true`, with every member of the response as claims.
    Active(Map<String, Value>),
    /// `active: false`, or any response that does not say `active: true`.
    Inactive,
}

/// An introspection response that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the response is not a JSON object")]
    NotAnObject,
    #[error("the response has no boolean `active` member")]
    MissingActive,
    #[error("the JWT response has no `token_introspection` object")]
    MissingTokenIntrospection,
}

impl ResponseError {
    /// Returns a short stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ResponseError::NotAnObject => "not_an_object",
            ResponseError::MissingActive => "missing_active",
            ResponseError::MissingTokenIntrospection => "missing_token_introspection",
        }
    }
}

/// Parses a JSON introspection response (RFC 7662 section 2.2).
pub fn parse_json_response(body: &[u8]) -> Result<Introspected, ResponseError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(members)) => from_members(members),
        _ => Err(ResponseError::NotAnObject),
    }
}

/// Reads the `token_introspection` claim of a JWT response whose signature, `iss` and `aud`
/// the caller has verified (RFC 9701 section 5).
pub fn from_jwt_claims(mut claims: Map<String, Value>) -> Result<Introspected, ResponseError> {
    match claims.remove("token_introspection") {
        Some(Value::Object(members)) => from_members(members),
        _ => Err(ResponseError::MissingTokenIntrospection),
    }
}

/// Reads `active`, the only required member. RFC 7662 section 2.2 makes it a boolean, so a
/// string such as `"true"` is rejected rather than guessed at.
fn from_members(members: Map<String, Value>) -> Result<Introspected, ResponseError> {
    match members.get("active") {
        Some(Value::Bool(true)) => Ok(Introspected::Active(members)),
        Some(Value::Bool(false)) => Ok(Introspected::Inactive),
        _ => Err(ResponseError::MissingActive),
    }
}

/// Returns the cache key of a token: its SHA-256 digest.
pub fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Returns how long an active result may be cached at `now` (seconds since the Unix epoch):
/// `max`, shortened to the time left until the token's `exp`. A token that has expired, or whose
/// `exp` is not a number, gets zero.
pub fn active_ttl(claims: &Map<String, Value>, now: i64, max: Duration) -> Duration {
    let exp = match claims.get("exp") {
        None => return max,
        Some(value) => match value.as_i64().or_else(|| value.as_f64().map(|f| f as i64)) {
            Some(exp) => exp,
            None => return Duration::ZERO,
        },
    };
    let left = u64::try_from(exp.saturating_sub(now)).unwrap_or(0);
    max.min(Duration::from_secs(left))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn json_response_active_keeps_members() {
        let result = parse_json_response(br#"{"active":true,"sub":"alice","scope":"a b"}"#);
        let Ok(Introspected::Active(claims)) = result else {
            panic!("expected an active result, got {result:?}");
        };
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "a b");
    }

    #[test]
    fn json_response_inactive() {
        assert_eq!(
            parse_json_response(br#"{"active":false}"#),
            Ok(Introspected::Inactive)
        );
    }

    #[test]
    fn json_response_malformed_cases() {
        let cases: [(&[u8], ResponseError); 5] = [
            (b"not json", ResponseError::NotAnObject),
            (b"[1]", ResponseError::NotAnObject),
            (br#"{"sub":"alice"}"#, ResponseError::MissingActive),
            (br#"{"active":"true"}"#, ResponseError::MissingActive),
            (br#"{"active":1}"#, ResponseError::MissingActive),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_json_response(body),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn jwt_claims_read_token_introspection() {
        let claims = object(json!({
            "iss": "https://as.test",
            "token_introspection": {"active": true, "sub": "bob"}
        }));
        let Ok(Introspected::Active(members)) = from_jwt_claims(claims) else {
            panic!("expected an active result");
        };
        assert_eq!(members["sub"], "bob");
        assert!(!members.contains_key("iss"));
    }

    #[test]
    fn jwt_claims_without_token_introspection() {
        let claims = object(json!({"active": true}));
        assert_eq!(
            from_jwt_claims(claims),
            Err(ResponseError::MissingTokenIntrospection)
        );
    }

    #[test]
    fn active_ttl_bounded_by_exp_and_max() {
        let max = Duration::from_secs(300);
        let now = 1_000_000;
        let cases = [
            (json!({}), max),
            (json!({"exp": now + 60}), Duration::from_secs(60)),
            (json!({"exp": now + 3600}), max),
            (json!({"exp": now - 5}), Duration::ZERO),
            (json!({"exp": "soon"}), Duration::ZERO),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                active_ttl(&object(claims.clone()), now, max),
                expected,
                "{claims}"
            );
        }
    }

    #[test]
    fn cache_key_differs_per_token() {
        assert_ne!(cache_key("a"), cache_key("b"));
        assert_eq!(cache_key("a"), cache_key("a"));
    }
}
