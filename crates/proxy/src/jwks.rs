//! Background fetching and caching of JWK Sets for the `jwt` policy.
//!
//! Each key location (a `jwks_uri`, or an issuer for OIDC discovery) has one [`JwksSource`],
//! shared by every policy that names it and kept across snapshots by [`JwksRegistry`]. A tokio
//! task per source fetches the set at start, every `jwks_refresh_interval`, and when a token names
//! an unknown `kid`. Requests read the cached set without waiting on the network, except that a
//! request whose `kid` is unknown waits up to `jwks_timeout` for a refresh that it triggered or
//! that is already running.
//!
//! A discovery source also keeps the provider's endpoints from the discovery document
//! ([`ProviderMetadata`]), for the `openid-connect` policy, under the same refresh and failure
//! policy as the keys.
//!
//! Fetches use HTTP/1.1 over plain TCP or TLS. TLS trusts the CA file of the source's settings,
//! or else the operating system's certificate store, read once per process by
//! `rustls-native-certs`, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`. Redirects are not
//! followed.
//!
//! Failure policy: a failed fetch (connection error, timeout, non-200 status, invalid document)
//! is logged at warn with the URL. The last good key set stays in use with no time limit, so an
//! IdP outage does not reject tokens whose keys are cached. Retries back off from 1s, doubling, up to
//! `jwks_refresh_interval`. Refreshes that unknown `kid` values trigger are rate-limited to one
//! per `jwks_min_refresh_interval`; a token whose `kid` is still unknown gets 401.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_policy::jwt::{self, Algorithm, ClaimRules, JwtError, KeySet, Selection};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

/// Largest JWK Set or discovery document accepted, in bytes.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// First retry delay after a failed fetch. It doubles up to the refresh interval.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The location of a source's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyLocation {
    JwksUri(String),
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery {
        issuer: String,
    },
}

/// The settings that identify a source. Policies with equal settings share one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceSettings {
    pub location: KeyLocation,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub timeout: Duration,
    /// PEM file with the CA certificates trusted for `https` fetches, in place of the system's
    /// trust store.
    pub ca_file: Option<PathBuf>,
}

/// The endpoints of an OpenID provider that its discovery document names (OpenID Connect
/// Discovery 1.0 section 3). Each is an `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// The URL that a relying party sends the browser to for logout (OpenID Connect
    /// RP-Initiated Logout 1.0 section 2).
    pub end_session_endpoint: Option<String>,
}

/// The JWK Set sources alive in this process.
pub struct JwksRegistry {
    sources: Mutex<HashMap<SourceSettings, Weak<JwksHandle>>>,
    /// Built when the first source is created, so a gateway without `jwt` policies never reads
    /// the system's certificate store.
    client: OnceLock<FetchClient>,
}

impl Default for JwksRegistry {
    fn default() -> Self {
        JwksRegistry::new()
    }
}

impl JwksRegistry {
    pub fn new() -> Self {
        JwksRegistry {
            sources: Mutex::new(HashMap::new()),
            client: OnceLock::new(),
        }
    }

    /// Returns the source for `settings`, creating it (and starting its fetch task when a tokio
    /// runtime is running) if no live policy uses it yet. Fails only when the settings name a
    /// CA file that cannot be read.
    pub fn source(&self, settings: SourceSettings) -> Result<Arc<JwksHandle>, String> {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(|error| error.into_inner());
        sources.retain(|_, weak| weak.strong_count() > 0);
        if let Some(handle) = sources.get(&settings).and_then(Weak::upgrade) {
            return Ok(handle);
        }
        let client = match &settings.ca_file {
            Some(path) => https_client(Some(path))?,
            None => self.client.get_or_init(fetch_client).clone(),
        };
        let (attempts, _) = watch::channel(0);
        let source = Arc::new(JwksSource {
            settings: settings.clone(),
            keys: ArcSwap::from_pointee(KeySet::default()),
            metadata: ArcSwapOption::empty(),
            attempts,
            refresh: Notify::new(),
            stop: Notify::new(),
            last_triggered: Mutex::new(None),
            started: OnceLock::new(),
            client,
        });
        let handle = Arc::new(JwksHandle { source });
        if tokio::runtime::Handle::try_current().is_ok() {
            handle.source.ensure_started();
        }
        sources.insert(settings, Arc::downgrade(&handle));
        Ok(handle)
    }
}

/// A policy's reference to a source. When the last one is dropped, the fetch task stops.
pub struct JwksHandle {
    source: Arc<JwksSource>,
}

impl Drop for JwksHandle {
    fn drop(&mut self) {
        self.source.stop.notify_one();
    }
}

impl JwksHandle {
    /// Returns the current key set. It is empty until the first fetch succeeds.
    pub fn keys(&self) -> Arc<KeySet> {
        self.source.keys.load_full()
    }

    /// Returns the provider's endpoints from the last good discovery document, or `None` for a
    /// `jwks_uri` source and until the first fetch succeeds.
    pub fn metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.source.metadata.load_full()
    }

    /// Returns the issuer or URL of the source, for logs.
    pub fn describe(&self) -> &str {
        self.source.describe()
    }

    /// Waits, up to the fetch timeout, until the first fetch attempt has finished.
    pub async fn wait_first_attempt(&self) {
        self.source.wait_first_attempt().await;
    }

    /// Verifies a JWS-signed JWT with this source's keys and returns its claims. The token is
    /// decoded with `algorithms` and `max_bytes`, its key picked by `kid` and algorithm after
    /// one refresh for an unknown `kid`, and its claims checked against `rules` at `now`
    /// (seconds since the Unix epoch). Waits for the first fetch when no key is loaded yet.
    pub async fn verify(
        &self,
        token: &str,
        max_bytes: usize,
        algorithms: &[Algorithm],
        rules: &ClaimRules,
        now: i64,
    ) -> Result<Map<String, Value>, JwtError> {
        let decoded = jwt::decode(token, max_bytes, algorithms)?;
        if self.keys().is_empty() {
            self.wait_first_attempt().await;
        }
        let mut keys = self.keys();
        let kid = decoded.kid.clone();
        if kid.as_deref().is_some_and(|kid| !keys.has_kid(kid))
            && self.refresh_for_unknown_kid().await
        {
            keys = self.keys();
        }
        let selected = match keys.select(kid.as_deref(), decoded.algorithm) {
            Selection::Keys(selected) => selected,
            Selection::UnknownKid => return Err(JwtError::UnknownKid),
            Selection::NoMatchingKey => return Err(JwtError::NoMatchingKey),
        };
        jwt::verify(decoded, &selected, rules, now)
    }

    /// Triggers a refresh for a token with an unknown `kid` and waits for it, up to the fetch
    /// timeout. Returns `false` without waiting when a triggered refresh already finished within
    /// `jwks_min_refresh_interval`.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        self.source.refresh_for_unknown_kid().await
    }
}

/// One cached JWK Set and the state of its refreshes.
pub struct JwksSource {
    settings: SourceSettings,
    keys: ArcSwap<KeySet>,
    metadata: ArcSwapOption<ProviderMetadata>,
    /// Number of finished fetch attempts, successful or not. Waiters watch it change.
    attempts: watch::Sender<u64>,
    refresh: Notify,
    stop: Notify,
    /// When the last refresh for an unknown `kid` was triggered, and the attempt count then.
    last_triggered: Mutex<Option<(Instant, u64)>>,
    started: OnceLock<()>,
    client: FetchClient,
}

impl JwksSource {
    /// Returns the URL or issuer, for logs.
    fn describe(&self) -> &str {
        match &self.settings.location {
            KeyLocation::JwksUri(uri) => uri,
            KeyLocation::Discovery { issuer } => issuer,
        }
    }

    async fn wait_first_attempt(self: &Arc<Self>) {
        self.ensure_started();
        let mut receiver = self.attempts.subscribe();
        if *receiver.borrow_and_update() > 0 {
            return;
        }
        let _ = tokio::time::timeout(self.settings.timeout, receiver.changed()).await;
    }

    async fn refresh_for_unknown_kid(self: &Arc<Self>) -> bool {
        self.ensure_started();
        let mut receiver = self.attempts.subscribe();
        let current = *receiver.borrow_and_update();
        {
            let mut last = self
                .last_triggered
                .lock()
                .unwrap_or_else(|error| error.into_inner());
            let now = Instant::now();
            match *last {
                // A triggered refresh is still running: wait for it instead of starting another.
                Some((_, triggered_at)) if triggered_at == current => {}
                Some((at, _)) if now.duration_since(at) < self.settings.min_refresh_interval => {
                    return false;
                }
                _ => {
                    *last = Some((now, current));
                    self.refresh.notify_one();
                }
            }
        }
        tokio::time::timeout(self.settings.timeout, receiver.changed())
            .await
            .is_ok()
    }

    fn ensure_started(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            tokio::spawn(run(Arc::downgrade(self)));
        });
    }

    /// Fetches and parses the key set once, after the discovery document for a discovery
    /// source.
    async fn fetch(&self) -> Result<(KeySet, Option<ProviderMetadata>), String> {
        let (jwks_uri, metadata) = match &self.settings.location {
            KeyLocation::JwksUri(uri) => (uri.clone(), None),
            KeyLocation::Discovery { issuer } => {
                let (jwks_uri, metadata) = self.discover(issuer).await?;
                (jwks_uri, Some(metadata))
            }
        };
        let body = self.get(&jwks_uri).await?;
        let (set, skipped) = KeySet::from_jwks(&body).map_err(|error| error.to_string())?;
        for reason in skipped {
            tracing::warn!(jwks.url = %jwks_uri, reason = %reason, "skipping a key in the JWK Set");
        }
        Ok((set, metadata))
    }

    /// Reads `jwks_uri` and the endpoints from the issuer's OpenID Provider metadata (OpenID
    /// Connect Discovery 1.0 section 4), which must name the same issuer.
    async fn discover(&self, issuer: &str) -> Result<(String, ProviderMetadata), String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let metadata: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|error| format!("{url}: the discovery document is not JSON: {error}"))?;
        if metadata.get("issuer").and_then(|value| value.as_str()) != Some(issuer) {
            return Err(format!(
                "{url}: the discovery document names a different issuer"
            ));
        }
        let jwks_uri = metadata
            .get("jwks_uri")
            .and_then(|value| value.as_str())
            .ok_or_else(|| format!("{url}: the discovery document has no `jwks_uri`"))?;
        if !is_fetch_url(jwks_uri) {
            return Err(format!(
                "{url}: `jwks_uri` {jwks_uri} is not an http:// or https:// URL"
            ));
        }
        let endpoint = |name: &str| -> Result<Option<String>, String> {
            match metadata.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(value)) if is_fetch_url(value) => {
                    Ok(Some(value.clone()))
                }
                Some(_) => Err(format!("{url}: `{name}` is not an http:// or https:// URL")),
            }
        };
        let endpoints = ProviderMetadata {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            end_session_endpoint: endpoint("end_session_endpoint")?,
        };
        Ok((jwks_uri.to_string(), endpoints))
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: Uri = url.parse().map_err(|_| format!("invalid URL `{url}`"))?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|error| error.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("request failed: {error}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("status {}", response.status().as_u16()));
            }
            Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|error| format!("reading the body failed: {error}"))
        };
        tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| format!("timed out after {:?}", self.settings.timeout))?
    }
}

fn is_fetch_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// Builds an HTTP and HTTPS client for calls to an identity provider. TLS trusts the
/// certificates in `ca_file` only, or the system's trust store without one. Fails when the CA
/// file cannot be read or has no usable certificate.
pub(crate) fn https_client<B>(
    ca_file: Option<&Path>,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let tls = match ca_file {
        None => tls_config(),
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|error| format!("cannot read CA file `{}`: {error}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(format!(
                    "CA file `{}` has no usable certificate",
                    path.display()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("TLS setup failed: {error}"))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Builds the HTTP and HTTPS client for key fetches.
fn fetch_client() -> FetchClient {
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Builds the TLS settings for outbound HTTPS requests, such as key fetches and webhooks: rustls
/// with `ring`, trusting the system's roots. Certificates that fail to load are logged and
/// skipped, so one bad file in the store does not stop requests to other hosts.
pub fn tls_config() -> rustls::ClientConfig {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "cannot load a certificate from the system store for outbound HTTPS");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "skipped system certificates that do not parse");
    }
    tracing::debug!(roots = added, "loaded trust roots for outbound HTTPS");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Fetches on start, on schedule and on request until every handle is dropped.
async fn run(weak: Weak<JwksSource>) {
    let mut failures: u32 = 0;
    loop {
        let Some(source) = weak.upgrade() else {
            return;
        };
        let outcome = tokio::select! {
            outcome = source.fetch() => outcome,
            () = source.stop.notified() => return,
        };
        match outcome {
            Ok((set, metadata)) => {
                if failures > 0 || source.keys.load().is_empty() {
                    tracing::info!(
                        jwks.url = source.describe(),
                        keys = set.len(),
                        "JWK Set loaded"
                    );
                } else {
                    tracing::debug!(
                        jwks.url = source.describe(),
                        keys = set.len(),
                        "JWK Set refreshed"
                    );
                }
                source.keys.store(Arc::new(set));
                if let Some(metadata) = metadata {
                    source.metadata.store(Some(Arc::new(metadata)));
                }
                failures = 0;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    jwks.url = source.describe(),
                    %error,
                    failures,
                    cached_keys = source.keys.load().len(),
                    "JWK Set fetch failed; keeping the last good key set"
                );
            }
        }
        source.attempts.send_modify(|count| *count += 1);

        let delay = if failures == 0 {
            source.settings.refresh_interval
        } else {
            let exponent = (failures - 1).min(16);
            FIRST_RETRY_DELAY
                .saturating_mul(1 << exponent)
                .min(source.settings.refresh_interval)
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = source.refresh.notified() => {}
            () = source.stop.notified() => return,
        }
    }
}
