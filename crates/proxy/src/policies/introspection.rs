//! `oauth2-introspection`: authenticates callers by asking an authorization server about their
//! bearer token (RFC 7662). Runs in [`Phase::Authenticate`].
//!
//! The model in `portcullis_policy::introspection` builds requests, reads responses and caches
//! results. This adapter sends the POST and verifies JWT responses (RFC 9701) with the JWK Set
//! cache of [`crate::jwks`]. It maps an active result to a consumer, roles, scopes and claims on
//! the [`Exchange`] as the `jwt` policy does, so `acl` and `rate-limit` with `by: claim` work the
//! same behind either policy.
//!
//! Caching: an active result is cached until the token's `exp` and at most `cache_ttl`, an
//! inactive one for `negative_cache_ttl`. Concurrent requests with the same uncached token share
//! one call. Results are keyed by the token's SHA-256, and no log line or response contains the
//! token. The cache lives in [`IntrospectionRegistry`], so it survives snapshot rebuilds while
//! the policy's settings stay the same.
//!
//! Failure policy: a connection error, a timeout, a non-200 status or an unreadable response
//! fails closed with 503 `introspection_unavailable`, because the token may be valid. Within
//! `stale_if_error` after its cache lifetime, an active cached result is used instead. Each
//! failure is counted in `portcullis_introspection_calls` and logged at warn with the endpoint,
//! at most once per [`WARN_INTERVAL`] for each set of policy settings. A JWT response that fails
//! verification is a 401, like an inactive token.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_config::{
    ClientAuthMethod, IntrospectionFormat, IntrospectionSpec, UnknownConsumer,
};
use portcullis_policy::introspection::cache::{CacheKey, Lookup, ResultCache};
use portcullis_policy::introspection::client::{ClientAuth, SigningKey};
use portcullis_policy::introspection::{self, Introspected};
use portcullis_policy::jwt::{self, Algorithm, ClaimRules, JwtError, claim_at, string_list};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::jwks::{JwksHandle, KeyLocation, SourceSettings};
use crate::metrics::{IntrospectionLabels, Name};
use crate::policies::PolicyContext;
use crate::policies::jwt::claim_header_value;
use crate::policies::key_auth::bearer_token;
use crate::snapshot::ConsumerInfo;

const POLICY: &str = "oauth2-introspection";
const CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";

/// Largest introspection response or discovery document accepted, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Shortest time between two warnings about failed calls, for each set of policy settings.
/// Failures in between are counted and reported with the next warning.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Media type of JWT introspection responses (RFC 9701 section 4).
const JWT_RESPONSE_TYPE: &str = "application/token-introspection+jwt";

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The outcome of one introspection call, shared by every request that waited on it.
#[derive(Debug, Clone)]
enum CallOutcome {
    Completed(Introspected),
    /// A JWT response that failed verification. The code is for the debug log.
    Rejected(&'static str),
    /// The endpoint could not be reached or returned no usable response. The message names the
    /// cause, never the token.
    Unavailable(String),
}

/// The source of the introspection endpoint URL.
enum Endpoint {
    Configured(String),
    /// Found once in the issuer's discovery document, then kept for the policy's lifetime.
    Discovered {
        issuer: String,
        found: OnceCell<String>,
    },
}

/// Warning rate-limit state: the time of the last warning and the number skipped since.
#[derive(Default)]
pub(crate) struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnState {
    /// Returns the number of warnings skipped since the last one when a warning may be logged
    /// now, at most once per [`WARN_INTERVAL`], or `None` when this one is skipped and counted.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

pub struct Introspection {
    endpoint: Endpoint,
    client: HttpClient,
    auth: ClientAuth,
    format: IntrospectionFormat,
    response_algorithms: Vec<Algorithm>,
    response_rules: ClaimRules,
    response_keys: Option<Arc<JwksHandle>>,
    issuer: Option<String>,
    token_rules: ClaimRules,
    max_token_bytes: usize,
    timeout: Duration,
    shared: Arc<SharedState>,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    stale_if_error: Duration,
    consumer_claim: String,
    unknown_consumer: UnknownConsumer,
    roles_claim: Option<String>,
    scopes_claim: String,
    forward_claims: Vec<(String, HeaderName)>,
    hide_credentials: bool,
    calls: Family<IntrospectionLabels, Counter>,
}

/// The state that outlives one snapshot: cached results, calls in flight and the warning rate
/// limit, shared by every policy instance with the same spec.
struct SharedState {
    cache: Mutex<ResultCache<Introspected>>,
    in_flight: Mutex<HashMap<CacheKey, Arc<OnceCell<CallOutcome>>>>,
    warnings: Mutex<WarnState>,
}

/// The shared state of the `oauth2-introspection` policies alive in this process, kept across
/// snapshots so that a reload or an admin change does not empty their caches.
///
/// State is keyed by the whole spec in JSON, so any change to a policy's settings starts it
/// with an empty cache. It is dropped with the last policy that uses it.
pub struct IntrospectionRegistry {
    states: Mutex<HashMap<String, Weak<SharedState>>>,
    /// `portcullis_introspection_calls`, shared with [`crate::metrics::Metrics`].
    calls: Family<IntrospectionLabels, Counter>,
}

impl IntrospectionRegistry {
    pub fn new(calls: Family<IntrospectionLabels, Counter>) -> Self {
        IntrospectionRegistry {
            states: Mutex::new(HashMap::new()),
            calls,
        }
    }

    /// Returns the state for `spec`, creating it when no live policy uses it.
    fn state(&self, spec: &IntrospectionSpec) -> Arc<SharedState> {
        let key = serde_json::to_string(spec).unwrap_or_default();
        let mut states = lock(&self.states);
        states.retain(|_, weak| weak.strong_count() > 0);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(SharedState {
            cache: Mutex::new(ResultCache::new(spec.cache_max_entries)),
            in_flight: Mutex::new(HashMap::new()),
            warnings: Mutex::new(WarnState::default()),
        });
        states.insert(key, Arc::downgrade(&state));
        state
    }
}

impl Default for IntrospectionRegistry {
    fn default() -> Self {
        IntrospectionRegistry::new(Family::default())
    }
}

impl Introspection {
    /// Builds the policy. Fails when a secret variable is unset, the private key or the CA file
    /// cannot be read, or a header name is invalid.
    pub fn new(spec: &IntrospectionSpec, context: &PolicyContext) -> Result<Self, String> {
        let auth = client_auth(spec)?;
        let client = crate::jwks::https_client(spec.ca_file.as_deref())?;
        let endpoint = match (&spec.introspection_endpoint, &spec.issuer) {
            (Some(url), _) => Endpoint::Configured(url.clone()),
            (None, Some(issuer)) => Endpoint::Discovered {
                issuer: issuer.clone(),
                found: OnceCell::new(),
            },
            (None, None) => return Err("set `introspection_endpoint` or `issuer`".into()),
        };
        let response_algorithms = spec
            .response_algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .map_err(|()| format!("unsupported algorithm `{name}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let response_keys = match (spec.response_format, &spec.jwks_uri, &spec.issuer) {
            (IntrospectionFormat::Json, _, _) => None,
            (IntrospectionFormat::Jwt, Some(uri), _) => Some(KeyLocation::JwksUri(uri.clone())),
            (IntrospectionFormat::Jwt, None, Some(issuer)) => Some(KeyLocation::Discovery {
                issuer: issuer.clone(),
            }),
            (IntrospectionFormat::Jwt, None, None) => {
                return Err("`response_format: jwt` needs `jwks_uri` or `issuer`".into());
            }
        }
        .map(|location| {
            context.jwks.source(SourceSettings {
                location,
                refresh_interval: spec.jwks_refresh_interval,
                min_refresh_interval: Duration::from_secs(30),
                timeout: spec.timeout,
                ca_file: spec.ca_file.clone(),
            })
        })
        .transpose()?;
        let leeway_seconds = i64::try_from(spec.leeway.as_secs()).unwrap_or(i64::MAX);
        let forward_claims = spec
            .forward_claims
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map(|name| (claim.clone(), name))
                    .map_err(|_| format!("invalid header name `{header}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Introspection {
            endpoint,
            client,
            auth,
            format: spec.response_format,
            response_algorithms,
            // RFC 9701 section 5: `iss` is the authorization server, `aud` the client.
            response_rules: ClaimRules {
                issuer: spec.issuer.clone(),
                audiences: vec![spec.client_id.clone()],
                leeway_seconds,
                require_exp: false,
                required: Vec::new(),
            },
            response_keys,
            issuer: spec.issuer.clone(),
            // `iss` is optional in introspection responses, so it is compared separately, and
            // only when present.
            token_rules: ClaimRules {
                issuer: None,
                audiences: spec.audiences.clone(),
                leeway_seconds,
                require_exp: false,
                required: Vec::new(),
            },
            max_token_bytes: spec.max_token_bytes,
            timeout: spec.timeout,
            shared: context.introspection.state(spec),
            cache_ttl: spec.cache_ttl,
            negative_cache_ttl: spec.negative_cache_ttl,
            stale_if_error: spec.stale_if_error,
            consumer_claim: spec.consumer_claim.clone(),
            unknown_consumer: spec.unknown_consumer,
            roles_claim: spec.roles_claim.clone(),
            scopes_claim: spec.scopes_claim.clone(),
            forward_claims,
            hide_credentials: spec.hide_credentials,
            calls: context.introspection.calls.clone(),
        })
    }

    /// Returns the result for `token`: from the cache when fresh, otherwise from one call shared
    /// with every concurrent request for the same token. A failed call falls back to a stale
    /// active result within `stale_if_error`.
    async fn introspect(&self, token: &str) -> CallOutcome {
        let key = introspection::cache_key(token);
        let cached = lock(&self.shared.cache).get(&key, Instant::now());
        let stale = match cached {
            Lookup::Fresh(result) => return CallOutcome::Completed(result),
            Lookup::Stale(result) => Some(result),
            Lookup::Missing => None,
        };

        let cell = lock(&self.shared.in_flight)
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let outcome = cell
            .get_or_init(|| async {
                let outcome = self.call(token).await;
                self.store(key, &outcome);
                outcome
            })
            .await
            .clone();
        {
            let mut in_flight = lock(&self.shared.in_flight);
            if in_flight
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(current, &cell))
            {
                in_flight.remove(&key);
            }
        }

        match (outcome, stale) {
            (CallOutcome::Unavailable(_), Some(stale @ Introspected::Active(_))) => {
                tracing::debug!(
                    policy = POLICY,
                    "introspection endpoint unavailable; using a stale cached result"
                );
                CallOutcome::Completed(stale)
            }
            (outcome, _) => outcome,
        }
    }

    /// Caches a call's result. An active result is fresh until `exp` and at most `cache_ttl`,
    /// then stale for `stale_if_error`. An inactive result, and a JWT response that failed
    /// verification, are cached as inactive for `negative_cache_ttl`, so a token with a forged
    /// or broken response does not cause a call per request.
    fn store(&self, key: CacheKey, outcome: &CallOutcome) {
        let (result, fresh_for, stale_for) = match outcome {
            CallOutcome::Completed(Introspected::Active(claims)) => (
                Introspected::Active(claims.clone()),
                introspection::active_ttl(claims, unix_now(), self.cache_ttl),
                self.stale_if_error,
            ),
            CallOutcome::Completed(Introspected::Inactive) | CallOutcome::Rejected(_) => (
                Introspected::Inactive,
                self.negative_cache_ttl,
                Duration::ZERO,
            ),
            CallOutcome::Unavailable(_) => return,
        };
        lock(&self.shared.cache).insert(key, result, Instant::now(), fresh_for, stale_for);
    }

    /// Calls the endpoint once, counts the result and logs failures.
    async fn call(&self, token: &str) -> CallOutcome {
        let outcome = match self.endpoint().await {
            Ok(endpoint) => {
                let outcome = self.post(&endpoint, token).await;
                self.count(&endpoint, &outcome);
                if let CallOutcome::Unavailable(error) = &outcome {
                    self.warn(&endpoint, error);
                }
                outcome
            }
            Err(error) => {
                let outcome = CallOutcome::Unavailable(error);
                let issuer = self.issuer.as_deref().unwrap_or_default();
                self.count(issuer, &outcome);
                if let CallOutcome::Unavailable(error) = &outcome {
                    self.warn(issuer, error);
                }
                outcome
            }
        };
        if let CallOutcome::Rejected(reason) = &outcome {
            tracing::debug!(
                policy = POLICY,
                reason,
                "introspection response failed verification"
            );
        }
        outcome
    }

    /// Returns the endpoint URL, running discovery on first use. A failed discovery is retried
    /// by the next call.
    async fn endpoint(&self) -> Result<String, String> {
        match &self.endpoint {
            Endpoint::Configured(url) => Ok(url.clone()),
            Endpoint::Discovered { issuer, found } => found
                .get_or_try_init(|| self.discover(issuer))
                .await
                .cloned(),
        }
    }

    /// Reads `introspection_endpoint` from OpenID Provider metadata, or failing that from
    /// OAuth 2.0 Authorization Server Metadata (RFC 8414 section 3). Either must name `issuer`.
    async fn discover(&self, issuer: &str) -> Result<String, String> {
        let base = issuer.trim_end_matches('/');
        let mut errors = Vec::new();
        for url in metadata_urls(base) {
            match self.metadata_endpoint(&url, issuer).await {
                Ok(endpoint) => {
                    tracing::info!(
                        policy = POLICY,
                        issuer,
                        introspection.endpoint = %endpoint,
                        "introspection endpoint discovered"
                    );
                    return Ok(endpoint);
                }
                Err(error) => errors.push(error),
            }
        }
        Err(format!("discovery failed: {}", errors.join("; ")))
    }

    async fn metadata_endpoint(&self, url: &str, issuer: &str) -> Result<String, String> {
        let request = Request::get(url)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| format!("invalid URL `{url}`"))?;
        let (status, _, body) = self
            .send(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!("{url}: status {}", status.as_u16()));
        }
        let metadata: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("{url}: the metadata document is not JSON"))?;
        if metadata.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("{url}: the metadata names a different issuer"));
        }
        let endpoint = metadata
            .get("introspection_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: the metadata has no `introspection_endpoint`"))?;
        if !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
            return Err(format!(
                "{url}: `introspection_endpoint` is not an http:// or https:// URL"
            ));
        }
        Ok(endpoint.to_string())
    }

    /// Sends the introspection POST and reads the response.
    async fn post(&self, endpoint: &str, token: &str) -> CallOutcome {
        let form = match self.auth.request(token, endpoint, unix_now()) {
            Ok(form) => form,
            Err(error) => return CallOutcome::Unavailable(error),
        };
        let accept = match self.format {
            IntrospectionFormat::Json => "application/json",
            IntrospectionFormat::Jwt => JWT_RESPONSE_TYPE,
        };
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, accept);
        if let Some(authorization) = &form.authorization {
            builder = builder.header(AUTHORIZATION, authorization);
        }
        let request = match builder.body(Full::new(Bytes::from(form.body))) {
            Ok(request) => request,
            Err(_) => return CallOutcome::Unavailable("invalid endpoint URL".into()),
        };
        let (status, content_type, body) = match self.send(request).await {
            Ok(response) => response,
            Err(error) => return CallOutcome::Unavailable(error),
        };
        if status != StatusCode::OK {
            return CallOutcome::Unavailable(format!("status {}", status.as_u16()));
        }
        match self.format {
            IntrospectionFormat::Json => match introspection::parse_json_response(&body) {
                Ok(result) => CallOutcome::Completed(result),
                Err(error) => CallOutcome::Unavailable(format!("invalid response: {error}")),
            },
            IntrospectionFormat::Jwt => {
                let is_jwt = content_type
                    .as_deref()
                    .is_some_and(|value| value.starts_with(JWT_RESPONSE_TYPE));
                if !is_jwt {
                    return CallOutcome::Unavailable(format!(
                        "the response content type is not {JWT_RESPONSE_TYPE}"
                    ));
                }
                self.verify_jwt_response(&body).await
            }
        }
    }

    /// Verifies a JWT response with the authorization server's JWK Set and reads its
    /// `token_introspection` claim.
    ///
    /// NOTE: the JWS `typ` header is not checked against `token-introspection+jwt`, because the
    /// `jwt` model does not expose the header. `aud` naming this client limits the confusion
    /// with other JWTs that this check would prevent.
    async fn verify_jwt_response(&self, body: &[u8]) -> CallOutcome {
        let Some(remote) = &self.response_keys else {
            return CallOutcome::Unavailable("no JWK Set for JWT responses".into());
        };

        let Ok(text) = std::str::from_utf8(body) else {
            return CallOutcome::Rejected(JwtError::Malformed.code());
        };
        let decoded = match jwt::decode(text.trim(), MAX_RESPONSE_BYTES, &self.response_algorithms)
        {
            Ok(decoded) => decoded,
            Err(error) => return CallOutcome::Rejected(error.code()),
        };

        if remote.keys().is_empty() {
            remote.wait_first_attempt().await;
        }
        let mut keys = remote.keys();
        if keys.is_empty() {
            return CallOutcome::Unavailable(
                "the authorization server's JWK Set is not loaded".into(),
            );
        }

        let kid = decoded.kid.clone();
        if kid.as_deref().is_some_and(|kid| !keys.has_kid(kid))
            && remote.refresh_for_unknown_kid().await
        {
            keys = remote.keys();
        }
        let selected = match keys.select(kid.as_deref(), decoded.algorithm) {
            jwt::Selection::Keys(selected) => selected,
            jwt::Selection::UnknownKid => {
                return CallOutcome::Rejected(JwtError::UnknownKid.code());
            }
            jwt::Selection::NoMatchingKey => {
                return CallOutcome::Rejected(JwtError::NoMatchingKey.code());
            }
        };

        let claims = match jwt::verify(decoded, &selected, &self.response_rules, unix_now()) {
            Ok(claims) => claims,
            Err(error) => return CallOutcome::Rejected(error.code()),
        };
        match introspection::from_jwt_claims(claims) {
            Ok(result) => CallOutcome::Completed(result),
            Err(error) => CallOutcome::Unavailable(format!("invalid response: {error}")),
        }
    }

    /// Sends `request` within the timeout and returns the status, content type and body.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>, Bytes), String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("request failed: {error}"))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_ascii_lowercase);
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading the response failed: {error}"))?
                .to_bytes();
            Ok((status, content_type, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("timed out after {:?}", self.timeout))?
    }

    fn count(&self, endpoint: &str, outcome: &CallOutcome) {
        let result = match outcome {
            CallOutcome::Completed(Introspected::Active(_)) => "active",
            CallOutcome::Completed(Introspected::Inactive) => "inactive",
            CallOutcome::Rejected(_) => "rejected",
            CallOutcome::Unavailable(_) => "unavailable",
        };
        self.calls
            .get_or_create(&IntrospectionLabels {
                endpoint: Name(Arc::from(endpoint)),
                result,
            })
            .inc();
    }

    /// Logs a failed call at warn, at most once per [`WARN_INTERVAL`].
    fn warn(&self, endpoint: &str, error: &str) {
        let Some(suppressed) = lock(&self.shared.warnings).admit(Instant::now()) else {
            return;
        };
        tracing::warn!(
            policy = POLICY,
            introspection.endpoint = endpoint,
            %error,
            suppressed,
            "token introspection failed; rejecting uncached tokens with 503"
        );
    }

    /// Checks the claims of an active token: `exp`, `nbf`, `iat`, `aud` when configured and
    /// `iss` when both configured and present.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), JwtError> {
        self.token_rules.check(claims, unix_now())?;
        if let (Some(expected), Some(issuer)) = (&self.issuer, claims.get("iss"))
            && issuer.as_str() != Some(expected.as_str())
        {
            return Err(JwtError::WrongIssuer);
        }
        Ok(())
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
                tracing::debug!(policy = POLICY, route.name = %exchange.route.name, "token names no configured consumer");
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

/// Returns the metadata URLs to try for `base` (an issuer without a trailing `/`): OpenID
/// Connect Discovery 1.0 section 4 appends the well-known path, RFC 8414 section 3 inserts it
/// between the host and the issuer's path.
fn metadata_urls(base: &str) -> Vec<String> {
    let mut urls = vec![format!("{base}/.well-known/openid-configuration")];
    let path_start = base
        .find("://")
        .and_then(|scheme_end| base[scheme_end + 3..].find('/').map(|i| scheme_end + 3 + i));
    urls.push(match path_start {
        Some(index) => format!(
            "{}/.well-known/oauth-authorization-server{}",
            &base[..index],
            &base[index..]
        ),
        None => format!("{base}/.well-known/oauth-authorization-server"),
    });
    urls
}

/// Builds the client authentication from the spec, reading secrets from the environment.
fn client_auth(spec: &IntrospectionSpec) -> Result<ClientAuth, String> {
    client_auth_from_env(&ClientCredentials {
        client_id: &spec.client_id,
        method: spec.client_auth,
        client_secret_env: spec.client_secret_env.as_deref(),
        private_key_env: spec.private_key_env.as_deref(),
        private_key_id: spec.private_key_id.as_deref(),
    })
}

/// The client authentication settings of a policy that calls an authorization server.
pub(crate) struct ClientCredentials<'a> {
    pub client_id: &'a str,
    pub method: ClientAuthMethod,
    pub client_secret_env: Option<&'a str>,
    pub private_key_env: Option<&'a str>,
    pub private_key_id: Option<&'a str>,
}

/// Builds the client authentication of `credentials`, reading secrets from the environment.
/// Fails when a variable is unset or the private key does not parse.
pub(crate) fn client_auth_from_env(
    credentials: &ClientCredentials<'_>,
) -> Result<ClientAuth, String> {
    let read = |variable: Option<&str>, field: &str, what: &str| -> Result<String, String> {
        let name =
            variable.ok_or_else(|| format!("`{field}` is required for this `client_auth`"))?;
        std::env::var(name)
            .map_err(|_| format!("environment variable `{name}` with the {what} is not set"))
    };
    let client_id = credentials.client_id.to_string();
    Ok(match credentials.method {
        ClientAuthMethod::ClientSecretBasic => ClientAuth::SecretBasic {
            client_id,
            secret: read(
                credentials.client_secret_env,
                "client_secret_env",
                "client secret",
            )?,
        },
        ClientAuthMethod::ClientSecretPost => ClientAuth::SecretPost {
            client_id,
            secret: read(
                credentials.client_secret_env,
                "client_secret_env",
                "client secret",
            )?,
        },
        ClientAuthMethod::PrivateKeyJwt => {
            let pem = read(
                credentials.private_key_env,
                "private_key_env",
                "private key",
            )?;
            let key = SigningKey::from_pem(&pem).map_err(|error| {
                format!(
                    "`{}`: {error}",
                    credentials.private_key_env.unwrap_or_default()
                )
            })?;
            ClientAuth::PrivateKeyJwt {
                client_id,
                key: Box::new(key),
                kid: credentials.private_key_id.map(str::to_string),
            }
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|error| error.into_inner())
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn unauthorized(code: &'static str, message: &'static str, challenge: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, message)
        .by_policy(POLICY)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
}

/// Returns the 401 for an inactive or invalid token. Only expiry has its own message, because a
/// client can act on it by getting a new token.
fn invalid(error: JwtError) -> Rejection {
    let message = match error {
        JwtError::Expired => "the bearer token has expired",
        _ => "the bearer token is invalid",
    };
    unauthorized("invalid_token", message, INVALID_TOKEN_CHALLENGE)
}

/// Returns the 503 for an authorization server that could not be reached.
fn unavailable() -> Rejection {
    Rejection::upstream(
        StatusCode::SERVICE_UNAVAILABLE,
        "introspection_unavailable",
        "the token could not be checked because the authorization server is unavailable",
    )
    .by_policy(POLICY)
}

/// Returns the bearer token, `Ok(None)` when there is none, or a rejection when the
/// `Authorization` header is repeated or is not valid text.
fn find_token(headers: &http::HeaderMap) -> Result<Option<&str>, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(JwtError::Malformed));
    }
    let text = value.to_str().map_err(|_| invalid(JwtError::Malformed))?;
    Ok(bearer_token(text))
}

impl Policy for Introspection {
    fn name(&self) -> &'static str {
        POLICY
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            // A client must not be able to set the headers that carry introspected claims.
            for (_, header) in &self.forward_claims {
                exchange.headers.remove(header);
            }
            let Some(token) = find_token(exchange.headers)? else {
                return Err(unauthorized(
                    "missing_token",
                    "a bearer token is required",
                    CHALLENGE,
                ));
            };
            if token.len() > self.max_token_bytes {
                return Err(invalid(JwtError::TooLarge));
            }
            let token = token.to_string();

            let claims = match self.introspect(&token).await {
                CallOutcome::Completed(Introspected::Active(claims)) => claims,
                CallOutcome::Completed(Introspected::Inactive) => {
                    tracing::debug!(policy = POLICY, route.name = %exchange.route.name, "token is not active");
                    return Err(invalid(JwtError::MissingClaim));
                }
                CallOutcome::Rejected(_) => return Err(invalid(JwtError::BadSignature)),
                CallOutcome::Unavailable(_) => return Err(unavailable()),
            };
            if let Err(error) = self.check_claims(&claims) {
                tracing::debug!(policy = POLICY, route.name = %exchange.route.name, reason = error.code(), "active token rejected");
                return Err(invalid(error));
            }

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
            exchange.credential_id = Some(Arc::from(match &self.issuer {
                Some(issuer) => format!("introspection:{issuer}"),
                None => "introspection".to_string(),
            }));
            exchange.consumer = Some(consumer);
            exchange.claims = Some(Arc::new(claims));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_for_plain_issuer() {
        assert_eq!(
            metadata_urls("https://as.test"),
            [
                "https://as.test/.well-known/openid-configuration",
                "https://as.test/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[test]
    fn metadata_urls_for_issuer_with_path() {
        assert_eq!(
            metadata_urls("https://as.test/tenant/1"),
            [
                "https://as.test/tenant/1/.well-known/openid-configuration",
                "https://as.test/.well-known/oauth-authorization-server/tenant/1",
            ]
        );
    }
}
