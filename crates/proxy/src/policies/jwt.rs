//! `jwt`: authenticates callers by a JWT in `Authorization: Bearer`. Runs in
//! [`Phase::Authenticate`].
//!
//! The model in `portcullis_policy::jwt` decodes and verifies the token. This adapter finds the
//! token and picks keys from the static set and the cached JWK Set (see [`crate::jwks`]). It then
//! maps the consumer claim to a consumer and puts the verified claims, roles and scopes on the
//! [`Exchange`] for authorization and rate limits.
//!
//! Every failure is a 401 with `WWW-Authenticate: Bearer` (RFC 6750 section 3): without
//! `error` when no token was sent, with `error="invalid_token"` otherwise. The body says only
//! whether the token was missing, expired or invalid; the reason code goes to the debug log. No
//! response or log line contains the token.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_config::{JwtSpec, UnknownConsumer};
use portcullis_policy::jwt::{
    self, Algorithm, ClaimRules, JwtError, KeySet, Selection, VerifyingKey, claim_at, string_list,
};
use serde_json::{Map, Value};

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::jwks::{JwksHandle, KeyLocation, SourceSettings};
use crate::policies::PolicyContext;
use crate::policies::key_auth::bearer_token;
use crate::snapshot::ConsumerInfo;

const CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";

pub struct Jwt {
    algorithms: Vec<Algorithm>,
    rules: ClaimRules,
    max_token_bytes: usize,
    static_keys: KeySet,
    remote: Option<Arc<JwksHandle>>,
    consumer_claim: String,
    unknown_consumer: UnknownConsumer,
    roles_claim: Option<String>,
    scopes_claim: String,
    forward_claims: Vec<(String, HeaderName)>,
    hide_credentials: bool,
}

impl Jwt {
    /// Builds the policy. Fails when a static key cannot be parsed or a `secret_env` variable is
    /// unset; the message names the key by its index in `keys`.
    pub fn new(spec: &JwtSpec, context: &PolicyContext) -> Result<Self, String> {
        let algorithms = spec
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .map_err(|()| format!("unsupported algorithm `{name}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = Vec::new();
        for (index, key_spec) in spec.keys.iter().enumerate() {
            keys.push(static_key(key_spec).map_err(|message| format!("keys[{index}]: {message}"))?);
        }
        let location = match (&spec.jwks_uri, spec.discovery, &spec.issuer) {
            (Some(uri), _, _) => Some(KeyLocation::JwksUri(uri.clone())),
            (None, true, Some(issuer)) => Some(KeyLocation::Discovery {
                issuer: issuer.clone(),
            }),
            _ => None,
        };
        let remote = location
            .map(|location| {
                context.jwks.source(SourceSettings {
                    location,
                    refresh_interval: spec.jwks_refresh_interval,
                    min_refresh_interval: spec.jwks_min_refresh_interval,
                    timeout: spec.jwks_timeout,
                    ca_file: None,
                })
            })
            .transpose()?;
        let forward_claims = spec
            .forward_claims
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map(|name| (claim.clone(), name))
                    .map_err(|_| format!("invalid header name `{header}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Jwt {
            algorithms,
            rules: ClaimRules {
                issuer: spec.issuer.clone(),
                audiences: spec.audiences.clone(),
                leeway_seconds: i64::try_from(spec.leeway.as_secs()).unwrap_or(i64::MAX),
                require_exp: spec.require_exp,
                required: spec.required_claims.clone(),
            },
            max_token_bytes: spec.max_token_bytes,
            static_keys: KeySet::new(keys),
            remote,
            consumer_claim: spec.consumer_claim.clone(),
            unknown_consumer: spec.unknown_consumer,
            roles_claim: spec.roles_claim.clone(),
            scopes_claim: spec.scopes_claim.clone(),
            forward_claims,
            hide_credentials: spec.hide_credentials,
        })
    }

    /// Returns the bearer token, `Ok(None)` when there is none, or a rejection when the
    /// `Authorization` header is repeated or is not valid text.
    fn find_token<'h>(&self, exchange: &'h Exchange<'_>) -> Result<Option<&'h str>, Rejection> {
        let mut values = exchange.headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid(JwtError::Malformed));
        }
        let text = value.to_str().map_err(|_| invalid(JwtError::Malformed))?;
        Ok(bearer_token(text))
    }

    /// Verifies `token` and returns its claims. Waits on the network only when the token's key
    /// is not cached: for the first JWK Set fetch, or for a refresh that an unknown `kid`
    /// triggers.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        let decoded = jwt::decode(token, self.max_token_bytes, &self.algorithms)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Some(remote) = &self.remote else {
            let keys = selected(
                self.static_keys
                    .select(decoded.kid.as_deref(), decoded.algorithm),
            )?;
            return jwt::verify(decoded, &keys, &self.rules, now);
        };

        if remote.keys().is_empty() {
            remote.wait_first_attempt().await;
        }
        let mut remote_keys = remote.keys();
        let mut selection = self.select(&remote_keys, decoded.kid.as_deref(), decoded.algorithm);
        if matches!(selection, Err(JwtError::UnknownKid)) && remote.refresh_for_unknown_kid().await
        {
            remote_keys = remote.keys();
            selection = self.select(&remote_keys, decoded.kid.as_deref(), decoded.algorithm);
        }
        let keys = selection?;
        jwt::verify(decoded, &keys, &self.rules, now)
    }

    /// Selects keys from the static set first, then from the fetched set.
    fn select<'k>(
        &'k self,
        remote: &'k KeySet,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<Vec<&'k VerifyingKey>, JwtError> {
        let from_static = self.static_keys.select(kid, algorithm);
        let from_remote = remote.select(kid, algorithm);
        match (from_static, from_remote) {
            (Selection::Keys(mut keys), Selection::Keys(more)) => {
                keys.extend(more);
                Ok(keys)
            }
            (Selection::Keys(keys), _) | (_, Selection::Keys(keys)) => Ok(keys),
            (Selection::UnknownKid, Selection::UnknownKid) => Err(JwtError::UnknownKid),
            _ => Err(JwtError::NoMatchingKey),
        }
    }

    /// Finds the consumer that the consumer claim names.
    fn consumer(
        &self,
        exchange: &Exchange<'_>,
        claims: &Map<String, Value>,
    ) -> Result<Arc<ConsumerInfo>, Rejection> {
        let name = match claim_at(claims, &self.consumer_claim) {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => return Err(invalid(JwtError::MissingClaim)),
        };
        if let Some(consumer) = exchange.snapshot.consumers.get(name.as_str()) {
            return Ok(consumer.clone());
        }
        match self.unknown_consumer {
            UnknownConsumer::Reject => {
                tracing::debug!(policy = "jwt", route.name = %exchange.route.name, "token names no configured consumer");
                Err(unauthorized(
                    "invalid_token",
                    "the bearer token does not belong to a known consumer",
                    INVALID_TOKEN_CHALLENGE,
                ))
            }
            UnknownConsumer::Anonymous => Ok(Arc::new(ConsumerInfo {
                name: name.as_str().into(),
                roles: Vec::new(),
                policies: Vec::new(),
            })),
        }
    }
}

fn selected(selection: Selection<'_>) -> Result<Vec<&VerifyingKey>, JwtError> {
    match selection {
        Selection::Keys(keys) => Ok(keys),
        Selection::UnknownKid => Err(JwtError::UnknownKid),
        Selection::NoMatchingKey => Err(JwtError::NoMatchingKey),
    }
}

/// Parses one key from the configuration.
fn static_key(spec: &portcullis_config::JwtKeySpec) -> Result<VerifyingKey, String> {
    let algorithm = match &spec.alg {
        Some(name) => Some(
            name.parse::<Algorithm>()
                .map_err(|()| format!("unsupported algorithm `{name}`"))?,
        ),
        None => None,
    };
    if let Some(pem) = &spec.pem {
        return VerifyingKey::from_pem(spec.kid.clone(), pem, algorithm).map_err(|e| e.0);
    }
    if let Some(jwk) = &spec.jwk {
        let key = VerifyingKey::from_jwk(jwk).map_err(|e| e.0)?;
        if spec.kid.is_some() || algorithm.is_some() {
            return Err("set `kid` and `alg` inside the JWK, not beside it".into());
        }
        return Ok(key);
    }
    if let Some(variable) = &spec.secret_env {
        let secret = std::env::var(variable).map_err(|_| {
            format!("environment variable `{variable}` with the HMAC secret is not set")
        })?;
        return VerifyingKey::hmac(spec.kid.clone(), secret.as_bytes(), algorithm)
            .map_err(|e| format!("`{variable}`: {}", e.0));
    }
    Err("set one of `pem`, `jwk` and `secret_env`".into())
}

fn unauthorized(code: &'static str, message: &'static str, challenge: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, message)
        .by_policy("jwt")
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
}

/// Returns the 401 for a token that failed verification. Only expiry has its own message,
/// because a client can act on it by getting a new token.
fn invalid(error: JwtError) -> Rejection {
    match error {
        JwtError::Expired => unauthorized(
            "invalid_token",
            "the bearer token has expired",
            INVALID_TOKEN_CHALLENGE,
        ),
        _ => unauthorized(
            "invalid_token",
            "the bearer token is invalid",
            INVALID_TOKEN_CHALLENGE,
        ),
    }
}

/// Renders a claim as a header value: strings as they are, numbers and booleans as JSON, arrays
/// of strings joined by `,`. Other values and values that are not valid header text are skipped.
pub(crate) fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(text) => Cow::Borrowed(text.as_str()),
        Value::Number(_) | Value::Bool(_) => Cow::Owned(value.to_string()),
        Value::Array(items) if items.iter().all(Value::is_string) => Cow::Owned(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

impl Policy for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            // A client must not be able to set the headers that carry verified claims.
            for (_, header) in &self.forward_claims {
                exchange.headers.remove(header);
            }
            let Some(token) = self.find_token(exchange)? else {
                return Err(unauthorized(
                    "missing_token",
                    "a bearer token is required",
                    CHALLENGE,
                ));
            };
            let token = token.to_string();
            let claims = match self.verify(&token).await {
                Ok(claims) => claims,
                Err(error) => {
                    tracing::debug!(policy = "jwt", route.name = %exchange.route.name, reason = error.code(), "bearer token rejected");
                    return Err(invalid(error));
                }
            };

            let consumer = self.consumer(exchange, &claims)?;
            let list = |name: &str| {
                claim_at(&claims, name)
                    .and_then(string_list)
                    .unwrap_or_default()
            };
            exchange.scopes = Cow::Owned(list(&self.scopes_claim));
            if let Some(roles_claim) = &self.roles_claim {
                exchange.credential_roles = list(roles_claim);
            }
            for (claim, header) in &self.forward_claims {
                if let Some(value) = claim_at(&claims, claim).and_then(claim_header_value) {
                    exchange.headers.insert(header.clone(), value);
                }
            }
            if self.hide_credentials {
                exchange.headers.remove(AUTHORIZATION);
            }
            exchange.credential_id = Some(Arc::from(match claims.get("iss") {
                Some(Value::String(issuer)) => format!("jwt:{issuer}"),
                _ => "jwt".to_string(),
            }));
            exchange.consumer = Some(consumer);
            exchange.claims = Some(Arc::new(claims));
            Ok(())
        })
    }
}
