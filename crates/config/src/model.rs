//! The declarative configuration model.
//!
//! Two kinds of settings live here. Node settings (listeners, admin, store, logging, limits)
//! belong to one process and come only from its file. Entities (services, routes, consumers and
//! their policies) are the shared gateway configuration: they are synced from the file into the
//! store, edited through the admin API, and read back from the store into each snapshot. Entity
//! types therefore serialise to the same shape that they deserialise from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ai::{AiConfig, AiRouteSpec};
use crate::browser::{CorsSpec, CsrfSpec, SecurityHeadersSpec};
use crate::duration;
use crate::upstream::{
    CircuitBreakerSpec, HealthChecksSpec, Http2Settings, LoadBalancingSpec, RetrySpec, TargetSpec,
};

/// A whole configuration file after loading.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub access_log: AccessLogTarget,
    #[serde(default)]
    pub log: LogConfig,
    /// Peers whose `X-Forwarded-For` and `Forwarded` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    #[serde(default)]
    pub limits: RequestLimits,
    #[serde(default)]
    pub timeouts: ClientTimeouts,
    #[serde(default)]
    pub http2: Http2Settings,
    /// How often the node compares the store's config version with the one it serves, which
    /// is how it finds writes made through other nodes when no change message arrives.
    #[serde(default = "default_version_check_interval", with = "duration")]
    pub version_check_interval: Duration,
    /// Redis, shared by the nodes of a cluster for change messages.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Secret for the keyed hash of API keys; generated and kept in the store when absent.
    #[serde(default)]
    pub key_hash_secret: Option<String>,
    /// API-key rotation defaults and the webhook that delivers scheduled rotations.
    #[serde(default)]
    pub key_rotation: KeyRotationConfig,
    /// The master key that encrypts the provider credentials kept in the store.
    #[serde(default)]
    pub secrets: crate::secrets::SecretsConfig,
    /// Policies that apply to every route.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// LLM providers, model aliases and prices for routes with `ai: {}`.
    #[serde(default)]
    pub ai: Option<AiConfig>,
    /// Services, routes and consumers, gathered from the three top-level keys after loading.
    #[serde(skip)]
    pub entities: Entities,
    // The three entity lists are read as plain fields rather than a flattened struct so that
    // errors inside them keep their key path.
    #[serde(default, rename = "services")]
    pub(crate) raw_services: Vec<ServiceSpec>,
    #[serde(default, rename = "routes")]
    pub(crate) raw_routes: Vec<RouteSpec>,
    #[serde(default, rename = "consumers")]
    pub(crate) raw_consumers: Vec<ConsumerSpec>,
    /// Folder of the config file, against which relative paths resolve.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Path of the config file, or `None` for the embedded default.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The entities that form the shared gateway configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entities {
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
}

fn default_version_check_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        address: SocketAddr::from(([127, 0, 0, 1], 8000)),
        tls: None,
    }]
}

/// One address the proxy accepts client connections on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(deserialize_with = "socket_address")]
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates chosen by SNI; the first is the default for clients that send no SNI.
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Offer HTTP/2 through ALPN.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Request or require client certificates, verified against a CA bundle.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

/// Client certificate verification on a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CA certificates that client certificates must chain to.
    pub ca_file: PathBuf,
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a TLS listener requires a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    /// The handshake fails without a valid client certificate.
    #[default]
    Required,
    /// A client may connect without a certificate, but a certificate it sends must be valid.
    Optional,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Reads a listen address, with an error that shows the value and the expected form.
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address `{text}`: expected an IP address and a port, such as 127.0.0.1:8000 or [::1]:8000 (host names are not accepted)"
        ))
    })
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// Reads `"1.2"` or `"1.3"`, and also the unquoted `1.2` and `1.3` that YAML parses as numbers.
impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsVersion;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("\"1.2\" or \"1.3\"")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<TlsVersion, E> {
                match value {
                    "1.2" => Ok(TlsVersion::Tls12),
                    "1.3" => Ok(TlsVersion::Tls13),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<TlsVersion, E> {
                if value == 1.2 {
                    Ok(TlsVersion::Tls12)
                } else if value == 1.3 {
                    Ok(TlsVersion::Tls13)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(value), &self))
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_address", deserialize_with = "socket_address")]
    pub address: SocketAddr,
    /// Bearer token for every admin call; generated on first start when absent.
    #[serde(default)]
    pub token: Option<String>,
    /// Where a generated token is written; defaults to `portcullis-admin.token` beside the store.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            token: None,
            token_file: None,
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8001))
}

/// Where entities, keys and the config version are stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum StoreConfig {
    /// A SQLite database file, created when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite(PathBuf::from("portcullis.db"))
    }
}

/// A Redis server shared by the nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// A URL such as `redis://127.0.0.1:6379`; `rediss://` for TLS.
    pub url: String,
    /// Pub/sub channel on which nodes announce config versions.
    #[serde(default = "default_redis_channel")]
    pub channel: String,
    /// Prefix of the rate-limit counter keys; nodes that enforce limits together share it.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
    /// Time one counter operation may take before the limit's `on_backend_error` applies.
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_redis_key_prefix() -> String {
    "portcullis:rl:".into()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_redis_channel() -> String {
    "portcullis:config".into()
}

/// Destination of the JSON access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    #[default]
    Stdout,
    Stderr,
    Off,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLogTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Switch(bool),
            Text(String),
        }
        let text = match Option::<Raw>::deserialize(deserializer)? {
            None | Some(Raw::Switch(false)) => None,
            Some(Raw::Switch(true)) => Some("stdout".to_string()),
            Some(Raw::Text(text)) => Some(text),
        };
        Ok(match text.as_deref() {
            None | Some("off") | Some("false") => AccessLogTarget::Off,
            Some("stdout") => AccessLogTarget::Stdout,
            Some("stderr") => AccessLogTarget::Stderr,
            Some(path) => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

/// Diagnostic logging, separate from the access log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `portcullis_proxy=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Format of diagnostic logs on standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// An IP network such as `10.0.0.0/8`; a bare address means that one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        text.parse::<std::net::IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("invalid CIDR or IP address `{text}`")))
    }
}

/// Size limits on client requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Total size of the header fields, counted as name + value + 4 bytes each (431 past it).
    pub max_header_bytes: usize,
    /// Number of header fields (431 past it).
    pub max_headers: usize,
    /// Length of the request target, in bytes (414 past it).
    pub max_uri_bytes: usize,
    /// Size of a request body, in bytes (413 past it).
    pub max_body_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Timeouts on client connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeouts {
    /// Time a client has to send a request's headers.
    #[serde(with = "duration")]
    pub header_read: Duration,
    /// Time an idle keep-alive connection is kept open.
    #[serde(with = "duration")]
    pub idle: Duration,
    /// Time in-flight requests get to finish on shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// An upstream service: where requests go and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Upstream base URLs such as `http://127.0.0.1:9000`, with optional weights.
    pub targets: Vec<TargetSpec>,
    #[serde(default, skip_serializing_if = "LoadBalancingSpec::is_default")]
    pub load_balancing: LoadBalancingSpec,
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// Send the client's `Host` upstream instead of the target's.
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<HealthChecksSpec>,
    #[serde(default, skip_serializing_if = "RetrySpec::is_default")]
    pub retries: RetrySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// Timeouts for requests to a service's upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// Time to open a TCP connection to a target (504 past it).
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Time from sending the request to receiving the response headers (504 past it).
    #[serde(with = "duration")]
    pub response: Duration,
    /// Time a pooled idle connection to a target is kept.
    #[serde(with = "duration")]
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(90),
        }
    }
}

/// A route: which requests it matches and which service serves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    /// The service that requests are forwarded to; absent on an `ai` route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Serve the OpenAI-compatible API from the `ai` section instead of forwarding to a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiRouteSpec>,
    pub paths: Vec<PathMatch>,
    /// Methods the route accepts; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host names the route accepts, exact or `*.example.com`; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Remove the matched path prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// A route path: a plain string is a prefix that matches whole segments, `{exact: /p}` one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathMatch {
    Prefix(String),
    Exact { exact: String },
}

impl PathMatch {
    pub fn path(&self) -> &str {
        match self {
            PathMatch::Prefix(path) | PathMatch::Exact { exact: path } => path,
        }
    }
}

/// Node-wide settings of API-key rotation. `every`, `overlap` and `webhook` are also the
/// defaults of each consumer's `key_rotation`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotationConfig {
    /// How long a rotated key keeps working next to its successor, when a rotation does not
    /// set it.
    #[serde(default = "default_rotation_overlap", with = "duration")]
    pub overlap: Duration,
    /// Age at which an issued key is rotated by the schedule; no scheduled rotation when unset.
    #[serde(default, with = "duration::option")]
    pub every: Option<Duration>,
    /// URL that receives each scheduled rotation, with the new key's plaintext.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Secret for the HMAC-SHA-256 signature of webhook bodies.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Delivery attempts per webhook event, the first included.
    #[serde(default = "default_webhook_attempts")]
    pub webhook_attempts: u32,
    /// How often the node looks for keys that are due for rotation.
    #[serde(default = "default_rotation_check_interval", with = "duration")]
    pub check_interval: Duration,
}

impl Default for KeyRotationConfig {
    fn default() -> Self {
        KeyRotationConfig {
            overlap: default_rotation_overlap(),
            every: None,
            webhook: None,
            webhook_secret: None,
            webhook_attempts: default_webhook_attempts(),
            check_interval: default_rotation_check_interval(),
        }
    }
}

fn default_rotation_overlap() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

fn default_webhook_attempts() -> u32 {
    5
}

fn default_rotation_check_interval() -> Duration {
    Duration::from_secs(60)
}

/// A consumer's schedule for rotating its API keys. Unset fields take the values of the
/// top-level `key_rotation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotationSpec {
    /// Age at which an issued key is rotated.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// How long the old key keeps working next to its successor.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub overlap: Option<Duration>,
    /// URL that receives the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// A caller of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// API keys declared in the file, as plaintext or as hashed records. The store keeps only
    /// hashed records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<DeclaredKey>,
    /// Policies that apply to this consumer's requests once it is authenticated.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// Scheduled rotation of the consumer's issued keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotationSpec>,
    /// Client certificate names that `mtls-auth` maps to this consumer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateMatch>,
}

/// A client certificate name that identifies a consumer: the subject common name (CN) or one
/// subject alternative name. Exactly one of the two fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMatch {
    /// The subject CN, compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// A subject alternative name in OpenSSL notation: `DNS:client.example.com`,
    /// `email:ops@example.com` or `URI:spiffe://example.com/billing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
}

impl CertificateMatch {
    /// Returns the name this entry matches, or a message saying why the entry is invalid.
    pub fn name(&self) -> Result<CertificateName, String> {
        match (&self.subject_cn, &self.san) {
            (Some(cn), None) if cn.is_empty() => Err("`subject_cn` must not be empty".into()),
            (Some(cn), None) => Ok(CertificateName::SubjectCn(cn.clone())),
            (None, Some(san)) => CertificateName::parse_san(san),
            (Some(_), Some(_)) => Err("set either `subject_cn` or `san`, not both".into()),
            (None, None) => Err("set `subject_cn` or `san`".into()),
        }
    }
}

/// One name of a client certificate, in the form used to compare names. DNS names and the
/// domain of an email address are lowercase, because they compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertificateName {
    SubjectCn(String),
    Dns(String),
    Email(String),
    Uri(String),
}

impl CertificateName {
    /// Parses a subject alternative name written as `DNS:`, `email:` or `URI:` followed by the
    /// value. The prefix is case-insensitive, as in OpenSSL.
    pub fn parse_san(text: &str) -> Result<CertificateName, String> {
        let invalid = || {
            format!(
                "invalid subject alternative name `{text}`: expected `DNS:name`, `email:address` or `URI:uri`"
            )
        };
        let (kind, value) = text.split_once(':').ok_or_else(invalid)?;
        if value.is_empty() {
            return Err(invalid());
        }
        match kind.to_ascii_lowercase().as_str() {
            "dns" => Ok(CertificateName::dns(value)),
            "email" => Ok(CertificateName::email(value)),
            "uri" => Ok(CertificateName::Uri(value.to_string())),
            _ => Err(invalid()),
        }
    }

    pub fn dns(name: &str) -> CertificateName {
        CertificateName::Dns(name.to_ascii_lowercase())
    }

    /// Returns an email name with its domain lowercased; the local part stays as written,
    /// because RFC 5321 lets a mail server treat it case-sensitively.
    pub fn email(address: &str) -> CertificateName {
        match address.rsplit_once('@') {
            Some((local, domain)) => {
                CertificateName::Email(format!("{local}@{}", domain.to_ascii_lowercase()))
            }
            None => CertificateName::Email(address.to_string()),
        }
    }
}

/// Writes the name as `CN=value` or in the OpenSSL notation of subject alternative names.
impl std::fmt::Display for CertificateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateName::SubjectCn(cn) => write!(f, "CN={cn}"),
            CertificateName::Dns(name) => write!(f, "DNS:{name}"),
            CertificateName::Email(address) => write!(f, "email:{address}"),
            CertificateName::Uri(uri) => write!(f, "URI:{uri}"),
        }
    }
}

/// An API key declared in a file: a plaintext string, or a hashed record such as
/// `portcullis export` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DeclaredKey {
    /// The key itself, hashed under the store's key-hash secret when it is synced.
    Plain(String),
    Hashed(HashedKey),
}

// Written by hand instead of `#[serde(untagged)]` so that an invalid record reports the
// field at fault, such as `api_keys[0].created_at`, and not only that no variant matched.
impl<'de> Deserialize<'de> for DeclaredKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeclaredKeyVisitor;

        impl<'de> serde::de::Visitor<'de> for DeclaredKeyVisitor {
            type Value = DeclaredKey;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(
                    "a plaintext API key, or a hashed key with `id`, `hash`, `prefix` and `created_at`",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DeclaredKey, E> {
                Ok(DeclaredKey::Plain(text.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<DeclaredKey, E> {
                Ok(DeclaredKey::Plain(text))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<DeclaredKey, A::Error> {
                let deserializer = serde::de::value::MapAccessDeserializer::new(map);
                HashedKey::deserialize(deserializer).map(DeclaredKey::Hashed)
            }
        }

        deserializer.deserialize_any(DeclaredKeyVisitor)
    }
}

/// An API key record without its plaintext: the keyed hash and the record's metadata.
///
/// The hash is HMAC-SHA-256 under the key-hash secret of the store it came from, so the record
/// authenticates requests only in stores that use the same secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashedKey {
    /// Public identifier, such as `key_5Qm2...` for an issued key or `cfg_...` for a plaintext
    /// key declared in a file.
    pub id: String,
    /// HMAC-SHA-256 of the plaintext, as 64 lowercase hex digits.
    pub hash: String,
    /// The first characters of the plaintext.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<time::OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Id of the key this one replaced in a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

/// One policy attached globally, to a service, a route or a consumer.
///
/// Written in YAML as a single-key mapping: `- rate-limit: { limit: 5, window: 1s }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySpec {
    KeyAuth(KeyAuthSpec),
    Acl(AclSpec),
    IpRestriction(IpRestrictionSpec),
    RateLimit(RateLimitSpec),
    Jwt(JwtSpec),
    Oauth2Introspection(IntrospectionSpec),
    Cors(CorsSpec),
    Csrf(CsrfSpec),
    SecurityHeaders(SecurityHeadersSpec),
    Waf(WafSpec),
    OpenidConnect(Box<OpenIdConnectSpec>),
    MtlsAuth(MtlsAuthSpec),
    AiLimits(crate::ai_limits::AiLimitsSpec),
}

impl PolicySpec {
    /// Returns the policy's type name as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicySpec::KeyAuth(_) => "key-auth",
            PolicySpec::Acl(_) => "acl",
            PolicySpec::IpRestriction(_) => "ip-restriction",
            PolicySpec::RateLimit(_) => "rate-limit",
            PolicySpec::Jwt(_) => "jwt",
            PolicySpec::Oauth2Introspection(_) => "oauth2-introspection",
            PolicySpec::Cors(_) => "cors",
            PolicySpec::Csrf(_) => "csrf",
            PolicySpec::SecurityHeaders(_) => "security-headers",
            PolicySpec::Waf(_) => "waf",
            PolicySpec::OpenidConnect(_) => "openid-connect",
            PolicySpec::MtlsAuth(_) => "mtls-auth",
            PolicySpec::AiLimits(_) => "ai-limits",
        }
    }

    /// Returns whether the policy runs before authentication, in the proxy's browser phase, so
    /// that a consumer's own policies cannot include it.
    pub fn runs_before_authentication(&self) -> bool {
        matches!(
            self,
            PolicySpec::Cors(_) | PolicySpec::Csrf(_) | PolicySpec::SecurityHeaders(_)
        )
    }

    /// Returns the identity under which a more specific attachment overrides a less specific
    /// one: the type name, plus the instance name when one is given.
    pub fn override_key(&self) -> String {
        match self {
            PolicySpec::RateLimit(RateLimitSpec {
                name: Some(name), ..
            }) => format!("rate-limit:{name}"),
            PolicySpec::AiLimits(crate::ai_limits::AiLimitsSpec {
                name: Some(name), ..
            }) => format!("ai-limits:{name}"),
            other => other.kind().to_string(),
        }
    }
}

/// API-key authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyAuthSpec {
    /// Request headers that may carry the key.
    pub header_names: Vec<String>,
    /// Accept `Authorization: Bearer <key>`.
    pub bearer: bool,
    /// Query parameter that may carry the key; off by default because query strings reach logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
    /// Remove the credential before forwarding.
    pub hide_credentials: bool,
}

impl Default for KeyAuthSpec {
    fn default() -> Self {
        KeyAuthSpec {
            header_names: vec!["apikey".into()],
            bearer: true,
            query_param: None,
            hide_credentials: true,
        }
    }
}

/// Authentication by a verified TLS client certificate, mapped to a consumer through the
/// consumers' `certificates`. The listener's `tls.client_auth` verifies the certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsAuthSpec {}

/// Access control by consumer, role and credential scope, for authenticated requests.
///
/// A request passes when its consumer is not denied, is allowed (or `allow_consumers` is empty),
/// has one of `roles` (or `roles` is empty), every role in `all_roles` and none of `deny_roles`,
/// and its credential carries every scope in `scopes` and one of `any_scopes` (or `any_scopes` is
/// empty). The caller's roles are the consumer's configured roles plus the roles its credential
/// carries, such as a JWT roles claim. A request without an authenticated consumer is rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_roles: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_consumers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_consumers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Roles that the caller must all have, on top of one of `roles`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_roles: Vec<String>,
    /// Scopes of which the credential must carry at least one, on top of every one of `scopes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_scopes: Vec<String>,
}

/// Access control by canonical client IP.
///
/// A request passes when its client IP is in none of the `deny` networks and, if `allow` is not
/// empty, in one of the `allow` networks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRestrictionSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
}

/// Web application firewall: inspects the request line, headers, cookies and body with the
/// OWASP Core Rule Set (CRS) from `rules_dir`, or with the built-in rule set when `rules_dir` is
/// not set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WafSpec {
    pub mode: WafMode,
    /// Directory of SecLang rule files (every `*.conf`, in name order), such as the CRS `rules`
    /// directory. A relative path resolves against the config file's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_dir: Option<PathBuf>,
    /// CRS paranoia level, 1 to 4.
    pub paranoia: u8,
    /// Inbound anomaly score at which a request is blocked.
    pub anomaly_threshold: u32,
    /// Bytes of the request body that are buffered and inspected.
    pub body_limit: u64,
    pub on_body_over_limit: WafOverLimit,
    /// Rules, and rule targets, that are not evaluated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<WafExclusion>,
    /// Whether the learned model runs. `None` means on for the built-in rules and off with
    /// `rules_dir`; see [`WafSpec::model_enabled`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<WafModel>,
    /// Attack probability at which the model alone adds 5 to the anomaly score. `None` is the
    /// threshold shipped with the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_threshold: Option<f64>,
    /// Attack probability that a value matched by a built-in rule must reach for the match to
    /// count. `None` is the confirmation threshold shipped with the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_confirm_threshold: Option<f64>,
}

impl WafSpec {
    /// Returns whether the learned model runs: `model` when set, otherwise only with the
    /// built-in rules.
    pub fn model_enabled(&self) -> bool {
        match self.model {
            Some(model) => model == WafModel::On,
            None => self.rules_dir.is_none(),
        }
    }
}

/// `waf.model`: whether the learned model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WafModel {
    On,
    Off,
}

/// Default of `waf.body_limit`: 128 KiB, the request body limit that ModSecurity's
/// recommended configuration sets for bodies without files (`SecRequestBodyNoFilesLimit`).
pub const DEFAULT_WAF_BODY_LIMIT: u64 = 128 * 1024;

impl Default for WafSpec {
    fn default() -> Self {
        WafSpec {
            mode: WafMode::Block,
            rules_dir: None,
            paranoia: 1,
            anomaly_threshold: 5,
            body_limit: DEFAULT_WAF_BODY_LIMIT,
            on_body_over_limit: WafOverLimit::Block,
            exclusions: Vec::new(),
            model: None,
            model_threshold: None,
            model_confirm_threshold: None,
        }
    }
}

/// Action of the WAF on a request whose anomaly score reaches the threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WafMode {
    /// Reject it with 403.
    #[default]
    Block,
    /// Forward it and record the verdict in the access log and metrics.
    Detect,
}

/// Action of the WAF on a request body larger than `body_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WafOverLimit {
    /// Reject the request with 413.
    #[default]
    Block,
    /// Inspect the first `body_limit` bytes and forward the whole body.
    Pass,
}

/// Rules removed from a `waf` policy, or rule targets removed from those rules.
///
/// `rules` and `tags` select rules. Without `variables` the selected rules do not run at all;
/// with `variables`, such as `ARGS:password`, the rules still run but skip those values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WafExclusion {
    /// Rule ids such as `942100`, or id ranges such as `"942100-942199"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleIds>,
    /// Rule tags such as `attack-sqli`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// SecLang targets such as `ARGS:password` or `REQUEST_COOKIES:/^session/`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<String>,
}

/// A rule id, or an inclusive id range written `"LOW-HIGH"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuleIds {
    Id(u32),
    Range(String),
}

impl RuleIds {
    /// Returns the inclusive range, or `None` when a range is not `LOW-HIGH` with LOW <= HIGH.
    pub fn range(&self) -> Option<(u32, u32)> {
        match self {
            RuleIds::Id(id) => Some((*id, *id)),
            RuleIds::Range(text) => {
                let (low, high) = match text.split_once('-') {
                    Some((low, high)) => (low.trim().parse().ok()?, high.trim().parse().ok()?),
                    None => {
                        let id = text.trim().parse().ok()?;
                        (id, id)
                    }
                };
                (low <= high).then_some((low, high))
            }
        }
    }
}

/// A rate limit, quota or concurrency limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Instance name; limits with different names apply together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: LimitAlgorithm,
    /// Requests admitted per window or period, or requests in flight for `concurrency`.
    pub limit: u64,
    /// The window of `gcra` and `sliding-window`.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// The calendar period of a `quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<QuotaPeriod>,
    /// Requests that may arrive at once under `gcra`; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What the limit counts by.
    #[serde(default)]
    pub by: LimitKey,
    /// Header whose value keys the limit when `by: header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// JWT claim whose value keys the limit when `by: claim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Consumer roles (or plans) the limit applies to; empty means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Delay a request that is over the limit instead of rejecting it, up to a bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    /// The store of the counters.
    #[serde(default, skip_serializing_if = "is_default")]
    pub backend: CounterBackend,
    /// Requests a node takes from Redis at once and then admits locally. With 1, every request
    /// calls Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// The action on a request when the counter backend fails.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_backend_error: BackendErrorAction,
    /// Time after which Redis drops a concurrency slot that was never released.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_ttl: Option<Duration>,
    /// Also send the older `X-RateLimit-*` headers.
    #[serde(default)]
    pub legacy_headers: bool,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The algorithm of a `rate-limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitAlgorithm {
    /// A rate with a burst (generic cell rate algorithm, a token bucket).
    #[default]
    Gcra,
    /// At most `limit` requests in any `window`.
    SlidingWindow,
    /// At most `limit` requests per calendar day or month, in UTC.
    Quota,
    /// At most `limit` requests in flight.
    Concurrency,
}

/// The calendar period of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// Throttling: how long a request over the limit may wait for capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// Maximum wait. A request that would wait longer is rejected at once.
    #[serde(with = "duration")]
    pub max: Duration,
}

/// The store of a limit's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CounterBackend {
    /// In this process; each node counts on its own.
    #[default]
    Local,
    /// In the Redis server of the top-level `redis` key, shared by every node.
    Redis,
}

/// The action a limit takes on a request when its counter backend fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendErrorAction {
    /// Admit the request (fail open).
    #[default]
    Allow,
    /// Reject the request with 503 (fail closed).
    Deny,
}

/// The quantity a rate limit is keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// The authenticated consumer; requests without one are keyed by client IP.
    #[default]
    Consumer,
    /// The consumer's role (or plan): all consumers with that role share one counter.
    Role,
    Route,
    Service,
    Ip,
    Header,
    /// A claim of the verified JWT; requests without it are keyed by client IP.
    Claim,
}

/// JWT bearer-token authentication for one issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Expected `iss` claim, and the base URL for OIDC discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; a token must name at least one. Empty skips the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the issuer's JWK Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Find `jwks_uri` in `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Keys written in the configuration: PEM public keys, JWKs or HMAC secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<JwtKeySpec>,
    /// Accepted `alg` values, such as `RS256`.
    pub algorithms: Vec<String>,
    /// Claim whose value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The action when the consumer claim names no configured consumer.
    #[serde(default)]
    pub unknown_consumer: UnknownConsumer,
    /// Claim with the caller's roles: a space-separated string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// Claim with the token's scopes: a space-separated string or an array of strings.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Claims that every token must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_jwt_leeway", with = "duration")]
    pub leeway: Duration,
    /// Reject tokens without an `exp` claim.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Largest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Claims sent to the upstream as request headers, as claim name to header name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// Time between scheduled JWK Set refreshes.
    #[serde(default = "default_jwks_refresh_interval", with = "duration")]
    pub jwks_refresh_interval: Duration,
    /// Shortest time between two refreshes that tokens with an unknown `kid` trigger.
    #[serde(default = "default_jwks_min_refresh_interval", with = "duration")]
    pub jwks_min_refresh_interval: Duration,
    /// Time limit of one JWK Set or discovery fetch.
    #[serde(default = "default_jwks_timeout", with = "duration")]
    pub jwks_timeout: Duration,
}

/// A verification key written in the configuration. Exactly one of `pem`, `jwk` and
/// `secret_env` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySpec {
    /// Key id that tokens name in their `kid` header; a key without one matches tokens without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Pins the key to one algorithm; by default the key type decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// A public JWK as a mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwk: Option<serde_json::Value>,
    /// Name of the environment variable that contains an HMAC secret for HS256, HS384 or HS512.
    /// Only the name is stored, so the secret never reaches the store or the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

/// The action of a `jwt` policy on a valid token whose consumer claim names no consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownConsumer {
    /// Answer 401.
    #[default]
    Reject,
    /// Continue as a consumer named by the claim value, with no roles or policies of its own.
    Anonymous,
}

/// OAuth 2.0 token introspection (RFC 7662) of opaque or JWT bearer tokens at one
/// authorization server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    /// URL of the introspection endpoint. Without it, the endpoint is read from the issuer's
    /// discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    /// Issuer identifier of the authorization server: the base URL for discovery, the expected
    /// `iss` of introspected tokens and of JWT introspection responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Client identifier of the gateway at the authorization server.
    pub client_id: String,
    /// How the gateway authenticates to the introspection endpoint.
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// Name of the environment variable that contains the client secret, for
    /// `client_secret_basic` and `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Name of the environment variable that contains the PEM private key (PKCS #8, or PKCS #1
    /// for RSA) that signs `private_key_jwt` client assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_env: Option<String>,
    /// `kid` header of the client assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_id: Option<String>,
    /// Format of introspection responses: plain JSON or signed JWTs (RFC 9701).
    #[serde(default)]
    pub response_format: IntrospectionFormat,
    /// URL of the authorization server's JWK Set, which verifies JWT responses. Without it, the
    /// `jwks_uri` of the issuer's OpenID discovery document is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted `alg` values of JWT responses.
    #[serde(default = "default_introspection_algorithms")]
    pub response_algorithms: Vec<String>,
    /// Accepted `aud` values of introspected tokens; empty skips the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_jwt_leeway", with = "duration")]
    pub leeway: Duration,
    /// Claim whose value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The action when the consumer claim names no configured consumer.
    #[serde(default)]
    pub unknown_consumer: UnknownConsumer,
    /// Claim with the caller's roles: a space-separated string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// Claim with the token's scopes: a space-separated string or an array of strings.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Claims sent to the upstream as request headers, as claim name to header name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// Largest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// PEM file with the CA certificates trusted for an `https` endpoint, discovery and JWK Set
    /// fetches of this policy. Without it, the system's trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Time limit of one introspection call, connection included.
    #[serde(default = "default_jwks_timeout", with = "duration")]
    pub timeout: Duration,
    /// Longest time an active result is cached; the token's `exp` shortens it.
    #[serde(default = "default_introspection_cache_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// Time an inactive result is cached.
    #[serde(default = "default_introspection_negative_ttl", with = "duration")]
    pub negative_cache_ttl: Duration,
    /// Maximum number of cached results.
    #[serde(default = "default_introspection_cache_entries")]
    pub cache_max_entries: usize,
    /// How long after its cache lifetime an active result may still be used while the endpoint
    /// is unavailable. Zero rejects with 503 as soon as the endpoint fails.
    #[serde(default = "default_zero_duration", with = "duration")]
    pub stale_if_error: Duration,
    /// Time between scheduled JWK Set refreshes, for JWT responses.
    #[serde(default = "default_jwks_refresh_interval", with = "duration")]
    pub jwks_refresh_interval: Duration,
}

/// OpenID Connect relying-party login (authorization code flow with PKCE) for browser routes,
/// with an encrypted session cookie, and optionally bearer tokens of the same issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIdConnectSpec {
    /// Issuer identifier of the OpenID provider, the base URL of its discovery document and the
    /// expected `iss` of ID tokens and bearer tokens.
    pub issuer: String,
    /// Client identifier of the gateway at the provider, and the expected `aud` of ID tokens.
    pub client_id: String,
    /// The gateway's authentication method at the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// Name of the environment variable that contains the client secret, for
    /// `client_secret_basic` and `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Name of the environment variable that contains the PEM private key for
    /// `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_env: Option<String>,
    /// `kid` header of `private_key_jwt` client assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_id: Option<String>,
    /// Absolute URL of the callback, registered at the provider. Requests to its path on this
    /// route finish the login.
    pub redirect_uri: String,
    /// Scopes requested at login; `openid` is required.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// Extra query parameters of the authorization request, such as `prompt` or `acr_values`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub authorization_params: std::collections::BTreeMap<String, String>,
    /// Request path that ends the session. Without it, the route has no logout path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout_path: Option<String>,
    /// The URL that the provider sends the browser to after logout
    /// (`post_logout_redirect_uri`), and that the gateway redirects to when the provider has
    /// no `end_session_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uri: Option<String>,
    /// Name of the environment variable that contains the secret that the session cookie keys
    /// are derived from, at least 32 bytes.
    pub session_secret_env: String,
    /// Name of the session cookie. The login cookie is this name with `_login` appended.
    #[serde(default = "default_session_cookie")]
    pub cookie_name: String,
    /// `SameSite` attribute of the cookies.
    #[serde(default)]
    pub cookie_same_site: SameSite,
    /// Set the `Secure` attribute. Only a route served over plain HTTP on loopback for
    /// development should turn it off.
    #[serde(default = "default_true")]
    pub cookie_secure: bool,
    /// `Path` attribute of the cookies.
    #[serde(default = "default_cookie_path")]
    pub cookie_path: String,
    /// `Domain` attribute of the cookies; without it the cookies are host-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<String>,
    /// Largest session cookie, in bytes, name and value included. A login whose session does
    /// not fit fails with 502.
    #[serde(default = "default_max_cookie_bytes")]
    pub max_cookie_bytes: usize,
    /// Maximum lifetime of a session after login, refreshes included.
    #[serde(default = "default_session_lifetime", with = "duration")]
    pub session_lifetime: Duration,
    /// Time a browser has to finish the login at the provider.
    #[serde(default = "default_login_timeout", with = "duration")]
    pub login_timeout: Duration,
    /// Refresh the access token when it expires within this time.
    #[serde(default = "default_refresh_before", with = "duration")]
    pub refresh_before: Duration,
    /// Accept `Authorization: Bearer` JWTs of the issuer on the route besides sessions.
    #[serde(default)]
    pub accept_bearer: bool,
    /// Accept only bearer tokens: no login redirect, no session.
    #[serde(default)]
    pub bearer_only: bool,
    /// Accepted `aud` values of bearer tokens; empty skips the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bearer_audiences: Vec<String>,
    /// Accepted `alg` values of ID tokens and bearer tokens.
    #[serde(default = "default_introspection_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_jwt_leeway", with = "duration")]
    pub leeway: Duration,
    /// Claim whose value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The action when the consumer claim names no configured consumer.
    #[serde(default)]
    pub unknown_consumer: UnknownConsumer,
    /// Claim with the caller's roles: a space-separated string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// Claims sent to the upstream as request headers, as claim name to header name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Send the session's access token to the upstream as `Authorization: Bearer`.
    #[serde(default)]
    pub forward_access_token: bool,
    /// Remove the `Authorization` header of bearer requests before forwarding.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// PEM file with the CA certificates trusted for the provider's `https` URLs. Without it,
    /// the system's trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Time limit of one call to the provider, connection included.
    #[serde(default = "default_jwks_timeout", with = "duration")]
    pub timeout: Duration,
    /// Time between scheduled refreshes of the discovery document and the JWK Set.
    #[serde(default = "default_jwks_refresh_interval", with = "duration")]
    pub discovery_refresh_interval: Duration,
}

/// The `SameSite` cookie attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, so the callback from the provider
    /// carries the login cookie.
    #[default]
    Lax,
    /// Never sent from other sites.
    Strict,
    /// Always sent; needs `cookie_secure`.
    None,
}

impl SameSite {
    /// Returns the attribute value as written in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Client authentication at the introspection endpoint (RFC 6749 section 2.3, OpenID Connect
/// Core section 9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT client assertion (RFC 7523) signed with the client's private key.
    PrivateKeyJwt,
}

/// The format of introspection responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionFormat {
    /// `application/json` (RFC 7662 section 2.2).
    #[default]
    Json,
    /// `application/token-introspection+jwt` (RFC 9701).
    Jwt,
}

/// The `alg` values a `jwt` policy accepts.
pub const JWT_ALGORITHMS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

fn default_consumer_claim() -> String {
    "sub".into()
}

fn default_scopes_claim() -> String {
    "scope".into()
}

fn default_jwt_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

fn default_jwks_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refresh_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_introspection_algorithms() -> Vec<String> {
    vec!["RS256".into(), "PS256".into(), "ES256".into()]
}

fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_introspection_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_introspection_cache_entries() -> usize {
    10_000
}

fn default_zero_duration() -> Duration {
    Duration::ZERO
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_session_cookie() -> String {
    "portcullis_session".into()
}

fn default_cookie_path() -> String {
    "/".into()
}

fn default_max_cookie_bytes() -> usize {
    4096
}

fn default_session_lifetime() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_login_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}

fn default_true() -> bool {
    true
}
