//! `openid-connect`: logs browsers in at an OpenID provider with the authorization code flow
//! and PKCE, keeps them in an encrypted session cookie, and optionally accepts bearer JWTs of
//! the same issuer. Runs in [`Phase::Authenticate`].
//!
//! The model in `portcullis_policy::oidc` seals cookies and reads token responses. This
//! adapter handles four kinds of request on the route:
//!
//! - the callback (the path of `redirect_uri`): checks `state` against the login cookie and
//!   redeems the code with the PKCE verifier at the token endpoint. It then verifies the ID
//!   token (signature through the provider's JWK Set, `iss`, `aud`, `azp`, `exp`, `nonce`) and
//!   redirects back to the page that started the login with a session cookie;
//! - the logout path: deletes the session cookie and redirects to the provider's
//!   `end_session_endpoint`, or to `post_logout_redirect_uri` when the provider has none;
//! - a request with `Authorization: Bearer`, when `accept_bearer` is set: verifies the JWT like
//!   the `jwt` policy, against the provider's keys;
//! - any other request: opens the session cookie, refreshes the access token when it expires
//!   within `refresh_before`, and maps the ID token's claims to a consumer. Without a valid
//!   session, a browser navigation gets a 302 to the provider and any other request a 401.
//!
//! Discovery and keys come from the [`crate::jwks`] cache, which keeps the last good discovery
//! document and JWK Set through a provider outage.
//!
//! Failure policy: when the provider cannot be reached, times out or answers with a server
//! error, the request fails with 503 `idp_unavailable`. When it answers with something that is
//! not a valid response (an ID token that fails verification included), the request fails with
//! 502 `idp_invalid_response`. Both are logged at warn with the issuer, at most once per
//! [`super::introspection::WARN_INTERVAL`]. No response or log line contains a token, a code or
//! a cookie value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_config::{OpenIdConnectSpec, UnknownConsumer};
use portcullis_policy::introspection::client::{ClientAuth, form_encode};
use portcullis_policy::jwt::{Algorithm, ClaimRules, JwtError, claim_at, string_list};
use portcullis_policy::oidc::{
    ConsumedNonces, LoginState, Purpose, Session, SessionKeys, SetCookie, TokenResponse,
    cookie_values, pkce_challenge, token_error_code,
};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::jwks::{JwksHandle, KeyLocation, ProviderMetadata, SourceSettings};
use crate::policies::PolicyContext;
use crate::policies::introspection::{ClientCredentials, WarnState, client_auth_from_env};
use crate::policies::jwt::claim_header_value;
use crate::policies::key_auth::bearer_token;
use crate::snapshot::ConsumerInfo;

const POLICY: &str = "openid-connect";
const CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";

/// Code of the rejection when a session cannot be refreshed, which sends the browser to log in.
const SESSION_ENDED: &str = "session_expired";

/// Largest token endpoint response accepted, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Largest ID token or bearer token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest `return_to` kept in the login cookie. A longer path and query returns to the path
/// alone.
const MAX_RETURN_TO_BYTES: usize = 1024;

/// Most nonces of finished logins remembered per client, enough for this many logins within
/// one `login_timeout`.
const MAX_CONSUMED_NONCES: usize = 100_000;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// State shared by every policy instance for one client at one issuer, kept across snapshots so
/// that a reload does not forget which logins have finished.
struct SharedState {
    nonces: Mutex<ConsumedNonces>,
    warnings: Mutex<WarnState>,
}

/// The shared state of the `openid-connect` policies alive in this process.
#[derive(Default)]
pub struct OpenIdConnectRegistry {
    states: Mutex<HashMap<(String, String), Weak<SharedState>>>,
}

impl OpenIdConnectRegistry {
    fn state(&self, issuer: &str, client_id: &str) -> Arc<SharedState> {
        let mut states = lock(&self.states);
        states.retain(|_, weak| weak.strong_count() > 0);
        let key = (issuer.to_string(), client_id.to_string());
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(SharedState {
            nonces: Mutex::new(ConsumedNonces::new(MAX_CONSUMED_NONCES)),
            warnings: Mutex::new(WarnState::default()),
        });
        states.insert(key, Arc::downgrade(&state));
        state
    }
}

/// A failed call to the provider.
enum ProviderError {
    /// Connection error, timeout or server error: 503.
    Unavailable(String),
    /// A response that is not valid: 502.
    Invalid(String),
    /// A 4xx OAuth error response, such as `invalid_grant`, with its error code.
    Rejected(String),
}

/// The attributes shared by the session and login cookies.
struct CookieSettings {
    session_name: String,
    login_name: String,
    path: String,
    domain: Option<String>,
    secure: bool,
    same_site: &'static str,
}

impl CookieSettings {
    fn session(&self) -> SetCookie<'_> {
        SetCookie {
            name: &self.session_name,
            path: &self.path,
            domain: self.domain.as_deref(),
            secure: self.secure,
            same_site: self.same_site,
        }
    }

    /// The login cookie is `SameSite=Lax` unless `None` is configured, because the provider's
    /// redirect to the callback is a cross-site navigation, which drops `Strict` cookies.
    fn login(&self) -> SetCookie<'_> {
        SetCookie {
            name: &self.login_name,
            path: &self.path,
            domain: self.domain.as_deref(),
            secure: self.secure,
            same_site: if self.same_site == "None" {
                "None"
            } else {
                "Lax"
            },
        }
    }
}

pub struct OpenIdConnect {
    issuer: String,
    client_id: String,
    auth: ClientAuth,
    client: HttpClient,
    provider: Arc<JwksHandle>,
    keys: SessionKeys,
    redirect_uri: String,
    callback_path: String,
    logout_path: Option<String>,
    post_logout_redirect_uri: Option<String>,
    /// The fixed part of the authorization request's query: `client_id`, `redirect_uri`,
    /// `scope` and the configured extra parameters, already encoded.
    authorization_query: String,
    cookies: CookieSettings,
    max_cookie_bytes: usize,
    session_lifetime: i64,
    login_timeout: i64,
    refresh_before: i64,
    accept_bearer: bool,
    bearer_only: bool,
    algorithms: Vec<Algorithm>,
    id_token_rules: ClaimRules,
    bearer_rules: ClaimRules,
    consumer_claim: String,
    unknown_consumer: UnknownConsumer,
    roles_claim: Option<String>,
    forward_claims: Vec<(String, HeaderName)>,
    forward_access_token: bool,
    hide_credentials: bool,
    timeout: Duration,
    shared: Arc<SharedState>,
}

impl OpenIdConnect {
    /// Builds the policy. Fails when a secret variable is unset or too short, the private key
    /// or the CA file cannot be read, or a header name is invalid.
    pub fn new(spec: &OpenIdConnectSpec, context: &PolicyContext) -> Result<Self, String> {
        let auth = client_auth_from_env(&ClientCredentials {
            client_id: &spec.client_id,
            method: spec.client_auth,
            client_secret_env: spec.client_secret_env.as_deref(),
            private_key_env: spec.private_key_env.as_deref(),
            private_key_id: spec.private_key_id.as_deref(),
        })?;
        let secret = std::env::var(&spec.session_secret_env).map_err(|_| {
            format!(
                "environment variable `{}` with the session secret is not set",
                spec.session_secret_env
            )
        })?;
        if secret.len() < portcullis_config::MIN_SESSION_SECRET_BYTES {
            return Err(format!(
                "the session secret in `{}` must be at least {} bytes long",
                spec.session_secret_env,
                portcullis_config::MIN_SESSION_SECRET_BYTES
            ));
        }
        let keys = SessionKeys::derive(secret.as_bytes(), &spec.issuer, &spec.client_id);
        let client = crate::jwks::https_client(spec.ca_file.as_deref())?;
        let provider = context.jwks.source(SourceSettings {
            location: KeyLocation::Discovery {
                issuer: spec.issuer.clone(),
            },
            refresh_interval: spec.discovery_refresh_interval,
            min_refresh_interval: Duration::from_secs(30),
            timeout: spec.timeout,
            ca_file: spec.ca_file.clone(),
        })?;
        let callback_path = spec
            .redirect_uri
            .parse::<http::Uri>()
            .map_err(|_| format!("invalid `redirect_uri` {}", spec.redirect_uri))?
            .path()
            .to_string();
        let algorithms = spec
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .map_err(|()| format!("unsupported algorithm `{name}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let forward_claims = spec
            .forward_claims
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map(|name| (claim.clone(), name))
                    .map_err(|_| format!("invalid header name `{header}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut query = vec![
            ("response_type".to_string(), "code".to_string()),
            ("client_id".to_string(), spec.client_id.clone()),
            ("redirect_uri".to_string(), spec.redirect_uri.clone()),
            ("scope".to_string(), spec.scopes.join(" ")),
        ];
        query.extend(
            spec.authorization_params
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        let authorization_query = query
            .iter()
            .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");

        let leeway_seconds = seconds(spec.leeway);
        Ok(OpenIdConnect {
            issuer: spec.issuer.clone(),
            client_id: spec.client_id.clone(),
            auth,
            client,
            provider,
            keys,
            redirect_uri: spec.redirect_uri.clone(),
            callback_path,
            logout_path: spec.logout_path.clone(),
            post_logout_redirect_uri: spec.post_logout_redirect_uri.clone(),
            authorization_query,
            cookies: CookieSettings {
                session_name: spec.cookie_name.clone(),
                login_name: format!("{}_login", spec.cookie_name),
                path: spec.cookie_path.clone(),
                domain: spec.cookie_domain.clone(),
                secure: spec.cookie_secure,
                same_site: spec.cookie_same_site.as_str(),
            },
            max_cookie_bytes: spec.max_cookie_bytes,
            session_lifetime: seconds(spec.session_lifetime),
            login_timeout: seconds(spec.login_timeout),
            refresh_before: seconds(spec.refresh_before),
            accept_bearer: spec.accept_bearer,
            bearer_only: spec.bearer_only,
            algorithms,
            // OpenID Connect Core section 3.1.3.7: `iss` is the issuer, `aud` contains the
            // client id, and `exp` and `iat` are present.
            id_token_rules: ClaimRules {
                issuer: Some(spec.issuer.clone()),
                audiences: vec![spec.client_id.clone()],
                leeway_seconds,
                require_exp: true,
                required: vec!["sub".into(), "iat".into()],
            },
            bearer_rules: ClaimRules {
                issuer: Some(spec.issuer.clone()),
                audiences: spec.bearer_audiences.clone(),
                leeway_seconds,
                require_exp: true,
                required: Vec::new(),
            },
            consumer_claim: spec.consumer_claim.clone(),
            unknown_consumer: spec.unknown_consumer,
            roles_claim: spec.roles_claim.clone(),
            forward_claims,
            forward_access_token: spec.forward_access_token,
            hide_credentials: spec.hide_credentials,
            timeout: spec.timeout,
            shared: context.openid_connect.state(&spec.issuer, &spec.client_id),
        })
    }

    /// Runs the policy on one request.
    async fn handle(&self, exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        // A client must not be able to set the headers that carry verified claims.
        for (_, header) in &self.forward_claims {
            exchange.headers.remove(header);
        }
        if !self.bearer_only {
            if exchange.canonical.path == self.callback_path {
                return Err(self.finish_login(exchange).await);
            }
            if self.logout_path.as_deref() == Some(exchange.canonical.path.as_str()) {
                return Err(self.logout(exchange));
            }
        }
        if self.accept_bearer
            && let Some(token) = find_bearer(exchange)?
        {
            return self.authenticate_bearer(exchange, &token).await;
        }
        if self.bearer_only {
            return Err(unauthorized(
                "missing_token",
                "a bearer token is required",
                CHALLENGE,
            ));
        }

        let now = unix_now();
        let (session, cookie_present) = self.read_session(exchange, now);
        let Some(mut session) = session else {
            return Err(self.unauthenticated(exchange, cookie_present).await);
        };
        if session.needs_refresh(now, self.refresh_before) {
            match self.refresh(&session, now).await {
                Ok(refreshed) => {
                    session = refreshed;
                    let cookie = self.session_cookie(&session, now)?;
                    exchange.response_headers.append(SET_COOKIE, cookie);
                }
                // The provider ended the session, or never issued a refresh token: log in again.
                Err(rejection)
                    if rejection.code == SESSION_ENDED && session.access_expired(now) =>
                {
                    return Err(self.unauthenticated(exchange, true).await);
                }
                Err(rejection) if session.access_expired(now) => return Err(rejection),
                // The access token is still valid, so the session goes on and the next
                // request tries again.
                Err(_) => {}
            }
        }
        self.strip_own_cookies(exchange.headers);
        let consumer = self.consumer(exchange, &session.claims)?;
        if self.forward_access_token
            && let Some(value) = session
                .access_token
                .as_deref()
                .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok())
        {
            exchange.headers.insert(AUTHORIZATION, value);
        }
        exchange.credential_id = Some(Arc::from(format!("oidc-session:{}", self.issuer)));
        self.accept(exchange, consumer, session.claims);
        Ok(())
    }

    /// Puts the consumer, roles, scopes and claims on the exchange.
    fn accept(
        &self,
        exchange: &mut Exchange<'_>,
        consumer: Arc<ConsumerInfo>,
        claims: Map<String, Value>,
    ) {
        let list = |name: &str| {
            claim_at(&claims, name)
                .and_then(string_list)
                .unwrap_or_default()
        };
        exchange.scopes = Cow::Owned(list("scope"));
        if let Some(roles_claim) = &self.roles_claim {
            exchange.credential_roles = list(roles_claim);
        }
        for (claim, header) in &self.forward_claims {
            if let Some(value) = claim_at(&claims, claim).and_then(claim_header_value) {
                exchange.headers.insert(header.clone(), value);
            }
        }
        exchange.consumer = Some(consumer);
        exchange.claims = Some(Arc::new(claims));
    }

    /// Verifies a bearer JWT against the provider's keys.
    async fn authenticate_bearer(
        &self,
        exchange: &mut Exchange<'_>,
        token: &str,
    ) -> Result<(), Rejection> {
        let verified = self
            .provider
            .verify(
                token,
                MAX_TOKEN_BYTES,
                &self.algorithms,
                &self.bearer_rules,
                unix_now(),
            )
            .await;
        let claims = match verified {
            Ok(claims) => claims,
            Err(error) => {
                tracing::debug!(policy = POLICY, route.name = %exchange.route.name, reason = error.code(), "bearer token rejected");
                let message = if error == JwtError::Expired {
                    "the bearer token has expired"
                } else {
                    "the bearer token is invalid"
                };
                return Err(unauthorized(
                    "invalid_token",
                    message,
                    INVALID_TOKEN_CHALLENGE,
                ));
            }
        };
        let consumer = self.consumer(exchange, &claims)?;
        if self.hide_credentials {
            exchange.headers.remove(AUTHORIZATION);
        }
        exchange.credential_id = Some(Arc::from(format!("jwt:{}", self.issuer)));
        self.accept(exchange, consumer, claims);
        Ok(())
    }

    /// Opens the session cookie. Returns the session when one of the cookies with the session
    /// name opens and has not ended, and whether any such cookie was sent.
    fn read_session(&self, exchange: &Exchange<'_>, now: i64) -> (Option<Session>, bool) {
        let headers = exchange
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok());
        let values = cookie_values(headers, &self.cookies.session_name);
        let session = values
            .iter()
            .filter(|value| value.len() <= self.max_cookie_bytes)
            .filter_map(|value| {
                self.keys
                    .open(Purpose::Session, &self.cookies.session_name, value)
            })
            .filter_map(|plaintext| serde_json::from_slice::<Session>(&plaintext).ok())
            .find(|session| session.expires_at > now);
        if session.is_none() && !values.is_empty() {
            tracing::debug!(policy = POLICY, route.name = %exchange.route.name, "session cookie is invalid or has expired");
        }
        (session, !values.is_empty())
    }

    /// Seals `session` into a `Set-Cookie` value. The ID token is left out when the cookie
    /// would exceed `max_cookie_bytes` with it; without it the logout sends no `id_token_hint`.
    fn session_cookie(&self, session: &Session, now: i64) -> Result<HeaderValue, Rejection> {
        let name = &self.cookies.session_name;
        let seal = |session: &Session| -> Result<String, Rejection> {
            let plaintext = serde_json::to_vec(session).map_err(|_| internal_error())?;
            self.keys
                .seal(Purpose::Session, name, &plaintext)
                .map_err(|error| {
                    tracing::error!(policy = POLICY, %error, "cannot seal the session cookie");
                    internal_error()
                })
        };
        let fits = |value: &str| name.len() + 1 + value.len() <= self.max_cookie_bytes;
        let mut value = seal(session)?;
        if !fits(&value) && session.id_token.is_some() {
            let mut smaller = session.clone();
            smaller.id_token = None;
            value = seal(&smaller)?;
        }
        if !fits(&value) {
            tracing::warn!(
                policy = POLICY,
                oidc.issuer = %self.issuer,
                cookie_bytes = name.len() + 1 + value.len(),
                max_cookie_bytes = self.max_cookie_bytes,
                "the session does not fit in the session cookie; raise `max_cookie_bytes` or request fewer claims"
            );
            return Err(Rejection::new(
                StatusCode::BAD_GATEWAY,
                "session_too_large",
                "the login succeeded but its session is too large for a cookie",
            )
            .by_policy(POLICY));
        }
        let max_age = session.expires_at.saturating_sub(now);
        header_value(&self.cookies.session().store(&value, max_age))
    }

    /// Returns the response to a request without a valid session: a redirect to the provider
    /// for a browser navigation, a 401 otherwise.
    async fn unauthenticated(&self, exchange: &Exchange<'_>, cookie_present: bool) -> Rejection {
        if !is_navigation(exchange.method, exchange.headers) {
            let (code, message) = if cookie_present {
                ("invalid_session", "the session is invalid or has expired")
            } else {
                (
                    "missing_session",
                    "a login session or a bearer token is required",
                )
            };
            let mut rejection = Rejection::new(StatusCode::UNAUTHORIZED, code, message)
                .by_policy(POLICY)
                .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            if cookie_present && let Ok(delete) = header_value(&self.cookies.session().delete()) {
                rejection = rejection.with_header(SET_COOKIE, delete);
            }
            return rejection;
        }
        match self.start_login(exchange).await {
            Ok(mut rejection) => {
                if cookie_present && let Ok(delete) = header_value(&self.cookies.session().delete())
                {
                    rejection = rejection.with_header(SET_COOKIE, delete);
                }
                rejection
            }
            Err(rejection) => rejection,
        }
    }

    /// Returns the 302 to the authorization endpoint with a new login cookie.
    async fn start_login(&self, exchange: &Exchange<'_>) -> Result<Rejection, Rejection> {
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.authorization_endpoint else {
            return Err(self.provider_failed(ProviderError::Invalid(
                "the discovery document has no `authorization_endpoint`".into(),
            )));
        };
        let random = || {
            self.keys.random_token().map_err(|error| {
                tracing::error!(policy = POLICY, %error, "cannot start a login");
                internal_error()
            })
        };
        let login = LoginState {
            state: random()?,
            nonce: random()?,
            code_verifier: random()?,
            return_to: return_to(
                &exchange.canonical.path,
                exchange.canonical.query.as_deref(),
            ),
            expires_at: unix_now().saturating_add(self.login_timeout),
        };
        let plaintext = serde_json::to_vec(&login).map_err(|_| internal_error())?;
        let sealed = self
            .keys
            .seal(Purpose::Login, &self.cookies.login_name, &plaintext)
            .map_err(|error| {
                tracing::error!(policy = POLICY, %error, "cannot seal the login cookie");
                internal_error()
            })?;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!(
            "{endpoint}{separator}{}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            self.authorization_query,
            form_encode(&login.state),
            form_encode(&login.nonce),
            pkce_challenge(&login.code_verifier),
        );
        tracing::debug!(policy = POLICY, route.name = %exchange.route.name, oidc.issuer = %self.issuer, "redirecting to the OpenID provider for login");
        Ok(redirect("oidc_login_redirect", &location)?.with_header(
            SET_COOKIE,
            header_value(&self.cookies.login().store(&sealed, self.login_timeout))?,
        ))
    }

    /// Handles the callback and returns the response: a redirect with the session cookie, or
    /// an error. The login cookie is deleted either way.
    async fn finish_login(&self, exchange: &Exchange<'_>) -> Rejection {
        let delete_login = header_value(&self.cookies.login().delete()).ok();
        let mut response = match self.redeem(exchange).await {
            Ok(response) => response,
            Err(rejection) => rejection,
        };
        if let Some(delete) = delete_login {
            response = response.with_header(SET_COOKIE, delete);
        }
        response
    }

    async fn redeem(&self, exchange: &Exchange<'_>) -> Result<Rejection, Rejection> {
        let route = &exchange.route.name;
        let params = query_params(exchange.canonical.query.as_deref().unwrap_or_default());
        if let Some(error) = params.get("error") {
            let code = printable_code(error);
            tracing::info!(policy = POLICY, route.name = %route, oidc.issuer = %self.issuer, error = code, "the OpenID provider returned an error to the callback");
            return Err(login_failed(format!(
                "the OpenID provider did not log the user in: {code}"
            )));
        }
        let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
            return Err(Rejection::bad_request(
                "invalid_callback",
                "the login callback needs `code` and `state` query parameters",
            )
            .by_policy(POLICY));
        };

        let headers = exchange
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok());
        let now = unix_now();
        let login = cookie_values(headers, &self.cookies.login_name)
            .into_iter()
            .filter_map(|value| {
                self.keys
                    .open(Purpose::Login, &self.cookies.login_name, value)
            })
            .filter_map(|plaintext| serde_json::from_slice::<LoginState>(&plaintext).ok())
            .find(|login| bool::from(login.state.as_bytes().ct_eq(state.as_bytes())));
        let Some(login) = login else {
            tracing::info!(policy = POLICY, route.name = %route, "login callback rejected: no login cookie with a matching `state`");
            return Err(unauthorized_login(
                "state_mismatch",
                "the login callback does not match a login started in this browser",
            ));
        };
        if login.expires_at <= now {
            return Err(unauthorized_login(
                "login_expired",
                "the login took too long; start it again",
            ));
        }
        // NOTE: each node keeps its own set of used nonces. A replay sent to another node of a
        // cluster passes this check and is then rejected by the provider, which redeems each
        // code once.
        if !lock(&self.shared.nonces).consume(&login.nonce, login.expires_at, now) {
            tracing::warn!(policy = POLICY, route.name = %route, oidc.issuer = %self.issuer, "login callback replayed with a login cookie that was already used");
            return Err(unauthorized_login(
                "nonce_replayed",
                "this login has already been used",
            ));
        }

        let metadata = self.metadata().await?;
        let tokens = self
            .token_request(
                &metadata,
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", code.clone()),
                    ("redirect_uri", self.redirect_uri.clone()),
                    ("code_verifier", login.code_verifier.clone()),
                ],
            )
            .await
            .map_err(|error| match error {
                ProviderError::Rejected(code) => {
                    tracing::info!(policy = POLICY, route.name = %route, oidc.issuer = %self.issuer, error = %code, "the token endpoint rejected the authorization code");
                    login_failed(format!("the OpenID provider rejected the login: {code}"))
                }
                other => self.provider_failed(other),
            })?;
        let Some(id_token) = &tokens.id_token else {
            return Err(self.provider_failed(ProviderError::Invalid(
                "the token response has no `id_token`".into(),
            )));
        };
        let claims = self.verify_id_token(id_token).await?;
        let nonce = claims
            .get("nonce")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bool::from(nonce.as_bytes().ct_eq(login.nonce.as_bytes())) {
            tracing::warn!(policy = POLICY, route.name = %route, oidc.issuer = %self.issuer, "ID token rejected: its `nonce` does not match the login");
            return Err(unauthorized_login(
                "nonce_mismatch",
                "the ID token does not belong to this login",
            ));
        }
        self.consumer(exchange, &claims)?;

        let session = Session::new(claims, &tokens, now, self.session_lifetime);
        let cookie = self.session_cookie(&session, now)?;
        tracing::info!(policy = POLICY, route.name = %route, oidc.issuer = %self.issuer, "login finished");
        Ok(redirect("oidc_login_finished", &login.return_to)?.with_header(SET_COOKIE, cookie))
    }

    /// Verifies an ID token: signature, `iss`, `aud`, `exp`, `iat`, and `azp` when `aud` names
    /// other clients too (OpenID Connect Core section 3.1.3.7). A token that fails is a
    /// provider fault, because it came straight from the token endpoint.
    async fn verify_id_token(&self, token: &str) -> Result<Map<String, Value>, Rejection> {
        let claims = self
            .provider
            .verify(
                token,
                MAX_TOKEN_BYTES,
                &self.algorithms,
                &self.id_token_rules,
                unix_now(),
            )
            .await
            .map_err(|error| {
                self.provider_failed(ProviderError::Invalid(format!(
                    "the ID token failed verification: {}",
                    error.code()
                )))
            })?;
        let audiences = claims.get("aud").and_then(string_list).unwrap_or_default();
        let azp = claims.get("azp").and_then(Value::as_str);
        if audiences.len() > 1 && azp != Some(self.client_id.as_str()) {
            return Err(self.provider_failed(ProviderError::Invalid(
                "the ID token names several audiences and its `azp` is not this client".into(),
            )));
        }
        Ok(claims)
    }

    /// Refreshes the session's access token with its refresh token. The new ID token, if the
    /// provider sends one, must name the same subject. Fails with [`SESSION_ENDED`] when there
    /// is no refresh token or the provider rejects it.
    ///
    /// NOTE: concurrent requests of one browser may each refresh with the same refresh token.
    /// A provider that rotates refresh tokens then rejects all but the first, and the requests
    /// whose access token is still valid go on with the old session.
    async fn refresh(&self, session: &Session, now: i64) -> Result<Session, Rejection> {
        let Some(refresh_token) = &session.refresh_token else {
            return Err(unauthorized_login(
                SESSION_ENDED,
                "the session has expired; log in again",
            ));
        };
        let metadata = self.metadata().await?;
        let form = vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh_token.clone()),
        ];
        let tokens = match self.token_request(&metadata, form).await {
            Ok(tokens) => tokens,
            Err(ProviderError::Rejected(code)) => {
                tracing::info!(policy = POLICY, oidc.issuer = %self.issuer, error = %code, "the token endpoint rejected the refresh token; the session ends");
                return Err(unauthorized_login(
                    SESSION_ENDED,
                    "the session has expired; log in again",
                ));
            }
            Err(other) => return Err(self.provider_failed(other)),
        };
        let claims = match &tokens.id_token {
            Some(id_token) => {
                let claims = self.verify_id_token(id_token).await?;
                if claims.get("sub") != session.claims.get("sub") {
                    return Err(self.provider_failed(ProviderError::Invalid(
                        "the refreshed ID token names another subject".into(),
                    )));
                }
                Some(claims)
            }
            None => None,
        };
        tracing::debug!(policy = POLICY, oidc.issuer = %self.issuer, "access token refreshed");
        Ok(session.refreshed(&tokens, claims, now))
    }

    /// Ends the session and redirects to the provider's logout.
    fn logout(&self, exchange: &Exchange<'_>) -> Rejection {
        let (session, _) = self.read_session(exchange, unix_now());
        let metadata = self.provider.metadata();
        let end_session = metadata
            .as_ref()
            .and_then(|metadata| metadata.end_session_endpoint.as_deref());
        let location = match end_session {
            Some(endpoint) => {
                let mut query = vec![format!("client_id={}", form_encode(&self.client_id))];
                if let Some(id_token) = session.as_ref().and_then(|s| s.id_token.as_deref()) {
                    query.push(format!("id_token_hint={}", form_encode(id_token)));
                }
                if let Some(uri) = &self.post_logout_redirect_uri {
                    query.push(format!("post_logout_redirect_uri={}", form_encode(uri)));
                }
                let separator = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{separator}{}", query.join("&"))
            }
            None => self
                .post_logout_redirect_uri
                .clone()
                .unwrap_or_else(|| "/".into()),
        };
        tracing::info!(policy = POLICY, route.name = %exchange.route.name, oidc.issuer = %self.issuer, had_session = session.is_some(), "logout");
        let response = redirect("oidc_logout", &location).unwrap_or_else(|rejection| rejection);
        match header_value(&self.cookies.session().delete()) {
            Ok(delete) => response.with_header(SET_COOKIE, delete),
            Err(rejection) => rejection,
        }
    }

    /// Returns the provider's endpoints, waiting for the first discovery when none is cached.
    async fn metadata(&self) -> Result<Arc<ProviderMetadata>, Rejection> {
        if let Some(metadata) = self.provider.metadata() {
            return Ok(metadata);
        }
        self.provider.wait_first_attempt().await;
        self.provider.metadata().ok_or_else(|| {
            self.provider_failed(ProviderError::Unavailable(
                "the discovery document is not loaded".into(),
            ))
        })
    }

    /// Sends an authenticated token request and parses a successful response.
    async fn token_request(
        &self,
        metadata: &ProviderMetadata,
        form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, ProviderError> {
        let Some(endpoint) = &metadata.token_endpoint else {
            return Err(ProviderError::Invalid(
                "the discovery document has no `token_endpoint`".into(),
            ));
        };
        let request = self
            .auth
            .form_request(form, endpoint, unix_now())
            .map_err(ProviderError::Unavailable)?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(endpoint.as_str())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if let Some(authorization) = &request.authorization {
            builder = builder.header(AUTHORIZATION, authorization);
        }
        let request = builder
            .body(Full::new(Bytes::from(request.body)))
            .map_err(|_| ProviderError::Invalid(format!("invalid token endpoint `{endpoint}`")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| ProviderError::Unavailable(format!("{endpoint}: {error}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    ProviderError::Unavailable(format!(
                        "{endpoint}: reading the response failed: {error}"
                    ))
                })?
                .to_bytes();
            Ok::<_, ProviderError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                ProviderError::Unavailable(format!(
                    "{endpoint}: timed out after {:?}",
                    self.timeout
                ))
            })??;
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "{endpoint}: status {}",
                status.as_u16()
            )));
        }
        if status.is_client_error() {
            return Err(match token_error_code(&body) {
                Some(code) => ProviderError::Rejected(code),
                None => ProviderError::Invalid(format!("{endpoint}: status {}", status.as_u16())),
            });
        }
        if status != StatusCode::OK {
            return Err(ProviderError::Invalid(format!(
                "{endpoint}: status {}",
                status.as_u16()
            )));
        }
        TokenResponse::parse(&body)
            .map_err(|error| ProviderError::Invalid(format!("{endpoint}: {error}")))
    }

    /// Logs a provider failure with the issuer and returns its 503 or 502.
    fn provider_failed(&self, error: ProviderError) -> Rejection {
        let (status, code, message, detail) = match error {
            ProviderError::Unavailable(detail) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "idp_unavailable",
                "the OpenID provider is unavailable",
                detail,
            ),
            ProviderError::Invalid(detail) => (
                StatusCode::BAD_GATEWAY,
                "idp_invalid_response",
                "the OpenID provider returned an invalid response",
                detail,
            ),
            ProviderError::Rejected(detail) => (
                StatusCode::BAD_GATEWAY,
                "idp_invalid_response",
                "the OpenID provider returned an invalid response",
                format!("unexpected error `{detail}`"),
            ),
        };
        if let Some(suppressed) = lock(&self.shared.warnings).admit(Instant::now()) {
            tracing::warn!(
                policy = POLICY,
                oidc.issuer = %self.issuer,
                error = %detail,
                suppressed,
                status = status.as_u16(),
                "OpenID provider call failed"
            );
        }
        Rejection::new(status, code, message).by_policy(POLICY)
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
            _ => {
                tracing::debug!(policy = POLICY, route.name = %exchange.route.name, claim = %self.consumer_claim, "the consumer claim is missing");
                return Err(unauthorized(
                    "unknown_consumer",
                    "the identity has no consumer claim",
                    INVALID_TOKEN_CHALLENGE,
                ));
            }
        };
        if let Some(consumer) = exchange.snapshot.consumers.get(name.as_str()) {
            return Ok(consumer.clone());
        }
        match self.unknown_consumer {
            UnknownConsumer::Reject => {
                tracing::debug!(policy = POLICY, route.name = %exchange.route.name, "identity names no configured consumer");
                Err(unauthorized(
                    "unknown_consumer",
                    "the identity does not belong to a known consumer",
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

    /// Removes the session and login cookies from the request, so the upstream never receives
    /// them.
    fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        if values.is_empty() {
            return;
        }
        headers.remove(COOKIE);
        for value in values {
            let Ok(text) = value.to_str() else {
                headers.append(COOKIE, value);
                continue;
            };
            let kept: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
                    name != self.cookies.session_name && name != self.cookies.login_name
                })
                .filter(|pair| !pair.is_empty())
                .collect();
            if kept.is_empty() {
                continue;
            }
            if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                headers.append(COOKIE, value);
            }
        }
    }
}

impl Policy for OpenIdConnect {
    fn name(&self) -> &'static str {
        POLICY
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(self.handle(exchange))
    }
}

/// Returns the bearer token, `Ok(None)` when there is none, or a 401 when the `Authorization`
/// header is repeated or is not valid text.
fn find_bearer(exchange: &Exchange<'_>) -> Result<Option<String>, Rejection> {
    let mut values = exchange.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || {
        unauthorized(
            "invalid_token",
            "the bearer token is invalid",
            INVALID_TOKEN_CHALLENGE,
        )
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let text = value.to_str().map_err(|_| invalid())?;
    Ok(bearer_token(text).map(str::to_string))
}

/// Returns whether a request is a browser navigation that can follow a login redirect: a GET or
/// HEAD that accepts HTML, is not marked as XHR, and, when the browser sends `Sec-Fetch-Mode`,
/// is a navigation.
fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    if text("x-requested-with").eq_ignore_ascii_case("xmlhttprequest") {
        return false;
    }
    let mode = text("sec-fetch-mode");
    if !mode.is_empty() && !mode.eq_ignore_ascii_case("navigate") {
        return false;
    }
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let media_type = item.split(';').next().unwrap_or_default().trim();
            media_type.eq_ignore_ascii_case("text/html")
        })
}

/// Returns the local path and query to return to after login. A path that a browser could read
/// as another host (`//host` or `/\host`) returns to `/`.
fn return_to(path: &str, query: Option<&str>) -> String {
    if path.starts_with("//") || path.starts_with("/\\") || !path.starts_with('/') {
        return "/".into();
    }
    match query {
        Some(query) if path.len() + 1 + query.len() <= MAX_RETURN_TO_BYTES => {
            format!("{path}?{query}")
        }
        _ if path.len() <= MAX_RETURN_TO_BYTES => path.to_string(),
        _ => "/".into(),
    }
}

/// Parses a query string into its first value for each name, percent-decoded, with `+` as a
/// space.
fn query_params(query: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(&text.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        params.entry(decode(name)).or_insert_with(|| decode(value));
    }
    params
}

/// Returns an OAuth error code from the provider if it is a short printable word, for logs and
/// messages, and `invalid` otherwise.
fn printable_code(code: &str) -> &str {
    let printable = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if printable { code } else { "invalid" }
}

fn redirect(code: &'static str, location: &str) -> Result<Rejection, Rejection> {
    Ok(Rejection::respond(StatusCode::FOUND, code, Bytes::new())
        .by_policy(POLICY)
        .with_header(LOCATION, header_value(location)?))
}

fn header_value(text: &str) -> Result<HeaderValue, Rejection> {
    HeaderValue::from_str(text).map_err(|_| {
        tracing::error!(
            policy = POLICY,
            "a redirect or cookie is not valid header text"
        );
        internal_error()
    })
}

fn internal_error() -> Rejection {
    Rejection::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the gateway failed to handle the login",
    )
    .by_policy(POLICY)
}

fn unauthorized(code: &'static str, message: &'static str, challenge: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, message)
        .by_policy(POLICY)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
}

fn unauthorized_login(code: &'static str, message: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, message).by_policy(POLICY)
}

fn login_failed(message: String) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "login_failed", message).by_policy(POLICY)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|error| error.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_needs_html_get() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/html,*/*;q=0.8"));
        assert!(is_navigation(&Method::GET, &headers));
        assert!(!is_navigation(&Method::POST, &headers));
        headers.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(!is_navigation(&Method::GET, &headers));
        headers.remove("x-requested-with");
        headers.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        assert!(!is_navigation(&Method::GET, &headers));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.remove("sec-fetch-mode");
        assert!(!is_navigation(&Method::GET, &headers));
    }

    #[test]
    fn return_to_stays_local() {
        assert_eq!(return_to("/a/b", Some("x=1")), "/a/b?x=1");
        assert_eq!(return_to("//evil.test/x", None), "/");
        assert_eq!(return_to("/\\evil.test", None), "/");
        let long = "x".repeat(MAX_RETURN_TO_BYTES);
        assert_eq!(return_to("/a", Some(&long)), "/a");
    }

    #[test]
    fn query_params_decode() {
        let params = query_params("code=a%2Bb&state=s+t&code=second&flag");
        assert_eq!(params["code"], "a+b");
        assert_eq!(params["state"], "s t");
        assert_eq!(params["flag"], "");
    }

    #[test]
    fn printable_code_hides_odd_values() {
        assert_eq!(printable_code("access_denied"), "access_denied");
        assert_eq!(printable_code("<script>"), "invalid");
        assert_eq!(printable_code(""), "invalid");
    }
}
