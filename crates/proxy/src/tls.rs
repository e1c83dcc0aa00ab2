//! TLS termination with rustls: certificates chosen by SNI, client certificates verified against
//! a CA bundle, and both reloaded without a restart.
//!
//! Each listener has a [`ListenerTls`]. Its [`CertificateResolver`] contains the certificates
//! of its config: a client that sends SNI gets the certificate whose DNS names (from the subject
//! alternative name extension) match exactly, then one whose wildcard matches, then the first
//! certificate. With `client_auth`, the listener's rustls config verifies client certificates
//! against the CA bundle with `WebPkiClientVerifier`, which checks the chain, the validity
//! period and the client-authentication key usage. The files are re-read when
//! [`ListenerTls::reload_if_changed`] sees a newer modification time; a reload that fails keeps
//! the certificates and CA bundle in use and logs the error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_config::{
    CertificateConfig, CertificateName, ClientAuthConfig, ClientAuthMode, TlsConfig, TlsVersion,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain `{path}`: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("cannot read the private key `{path}`: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot use the client CA bundle `{path}`: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

struct CertificateSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    names: Vec<String>,
    modified: Vec<Option<SystemTime>>,
}

/// Picks a certificate for each handshake from the current set.
pub struct CertificateResolver {
    sources: Vec<CertificateConfig>,
    current: ArcSwap<CertificateSet>,
}

impl std::fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateResolver")
            .field("names", &self.current.load().names)
            .finish()
    }
}

impl CertificateResolver {
    pub fn load(sources: &[CertificateConfig]) -> Result<Self, TlsError> {
        let set = load_set(sources, modification_times(sources))?;
        Ok(CertificateResolver {
            sources: sources.to_vec(),
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Returns the DNS names the certificates cover, for the start-up banner.
    pub fn names(&self) -> Vec<String> {
        self.current.load().names.clone()
    }

    /// Reloads the files when any of them changed since the last load. Returns true when a
    /// new set is in use.
    pub fn reload_if_changed(&self) -> bool {
        let modified = modification_times(&self.sources);
        if modified == self.current.load().modified {
            return false;
        }
        self.load_and_swap(modified)
    }

    /// Reloads the files now. Returns true when a new set is in use.
    pub fn reload(&self) -> bool {
        self.load_and_swap(modification_times(&self.sources))
    }

    /// Loads the files, whose modification times were `modified` just before, and swaps the
    /// new set in.
    fn load_and_swap(&self, modified: Vec<Option<SystemTime>>) -> bool {
        match load_set(&self.sources, modified.clone()) {
            Ok(set) => {
                tracing::info!(tls.names = ?set.names, "reloaded TLS certificates");
                self.current.store(Arc::new(set));
                true
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificate reload failed; keeping the certificates in use");
                // Remember the failed times so the same broken files are not retried every poll.
                // They are the times read before the attempt: a file written during the
                // attempt, such as the key after its new certificate, has a newer time, so the
                // next poll retries instead of keeping the old certificate until the next change.
                let mut kept = CertificateSet::clone_from(&self.current.load());
                kept.modified = modified;
                self.current.store(Arc::new(kept));
                false
            }
        }
    }
}

impl CertificateSet {
    fn clone_from(other: &CertificateSet) -> CertificateSet {
        CertificateSet {
            exact: other.exact.clone(),
            wildcard: other.wildcard.clone(),
            default: other.default.clone(),
            names: other.names.clone(),
            modified: other.modified.clone(),
        }
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let Some(name) = hello.server_name() else {
            return Some(set.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = set.exact.get(&name) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = set.wildcard.get(parent)
        {
            return Some(key.clone());
        }
        Some(set.default.clone())
    }
}

fn modification_times(sources: &[CertificateConfig]) -> Vec<Option<SystemTime>> {
    sources
        .iter()
        .flat_map(|source| [&source.cert_file, &source.key_file])
        .map(|path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok()
        })
        .collect()
}

/// Loads the files of `sources`. `modified` holds their modification times, read before the
/// files are, and is stored with the set.
fn load_set(
    sources: &[CertificateConfig],
    modified: Vec<Option<SystemTime>>,
) -> Result<CertificateSet, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut names = Vec::new();
    let mut default = None;
    for source in sources {
        let key = load_certified_key(source)?;
        let end_entity = key.cert.first().ok_or_else(|| TlsError::Certificate {
            path: source.cert_file.clone(),
            message: "the file contains no certificate".into(),
        })?;
        let parsed =
            webpki::EndEntityCert::try_from(end_entity).map_err(|error| TlsError::Certificate {
                path: source.cert_file.clone(),
                message: format!("invalid certificate: {error}"),
            })?;
        for name in parsed.valid_dns_names() {
            let name = name.to_ascii_lowercase();
            names.push(name.clone());
            match name.strip_prefix("*.") {
                Some(parent) => {
                    wildcard
                        .entry(parent.to_string())
                        .or_insert_with(|| key.clone());
                }
                None => {
                    exact.entry(name).or_insert_with(|| key.clone());
                }
            }
        }
        default.get_or_insert_with(|| key.clone());
    }
    let default = default.ok_or_else(|| TlsError::Certificate {
        path: PathBuf::new(),
        message: "no certificate is configured".into(),
    })?;
    Ok(CertificateSet {
        exact,
        wildcard,
        default,
        names,
        modified,
    })
}

fn load_certified_key(source: &CertificateConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(&source.cert_file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificate {
            path: source.cert_file.clone(),
            message: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: source.cert_file.clone(),
            message: "the file contains no PEM certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&source.key_file).map_err(|error| TlsError::Key {
        path: source.key_file.clone(),
        message: error.to_string(),
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|error| TlsError::Key {
            path: source.key_file.clone(),
            message: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|error| TlsError::Key {
        path: source.key_file.clone(),
        message: format!("the key does not match the certificate: {error}"),
    })?;
    Ok(Arc::new(certified))
}

/// The TLS state of one listener: its certificates, and the rustls config built from them and
/// from the client CA bundle.
pub struct ListenerTls {
    settings: TlsConfig,
    certificates: Arc<CertificateResolver>,
    /// Modification time of the client CA bundle when it was last read.
    client_ca_modified: Mutex<Option<SystemTime>>,
    server_config: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certificates", &self.certificates)
            .field("client_auth", &self.settings.client_auth)
            .finish()
    }
}

impl ListenerTls {
    /// Loads the certificates and the client CA bundle of `settings`.
    pub fn load(settings: &TlsConfig) -> Result<Self, TlsError> {
        let certificates = Arc::new(CertificateResolver::load(&settings.certificates)?);
        let client_ca_modified = settings
            .client_auth
            .as_ref()
            .and_then(|client_auth| modification_time(&client_auth.ca_file));
        let server_config = server_config(settings, certificates.clone())?;
        Ok(ListenerTls {
            settings: settings.clone(),
            certificates,
            client_ca_modified: Mutex::new(client_ca_modified),
            server_config: ArcSwap::new(server_config),
        })
    }

    /// Returns the DNS names the certificates cover, for the start-up banner.
    pub fn names(&self) -> Vec<String> {
        self.certificates.names()
    }

    /// Returns whether the listener verifies client certificates, for the start-up banner.
    pub fn client_auth(&self) -> Option<ClientAuthMode> {
        self.settings
            .client_auth
            .as_ref()
            .map(|client_auth| client_auth.mode)
    }

    /// Returns an acceptor with the current rustls config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config.load_full())
    }

    /// Reloads the certificates and the client CA bundle when their files changed since they
    /// were last read. Returns true when new ones are in use.
    pub fn reload_if_changed(&self) -> bool {
        let certificates = self.certificates.reload_if_changed();
        let client_ca = self.reload_client_ca(false);
        certificates || client_ca
    }

    /// Reloads the certificates and the client CA bundle now. Returns true when new ones are in
    /// use.
    pub fn reload(&self) -> bool {
        let certificates = self.certificates.reload();
        let client_ca = self.reload_client_ca(true);
        certificates || client_ca
    }

    /// Rebuilds the rustls config from the client CA bundle when the bundle changed, or always
    /// with `force`. Connections accepted later use the new config.
    fn reload_client_ca(&self, force: bool) -> bool {
        let Some(client_auth) = &self.settings.client_auth else {
            return false;
        };
        let modified = modification_time(&client_auth.ca_file);
        {
            let mut last = self
                .client_ca_modified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !force && *last == modified {
                return false;
            }
            // Remembered on failure too, so the same broken file is not retried every poll.
            *last = modified;
        }
        match server_config(&self.settings, self.certificates.clone()) {
            Ok(config) => {
                tracing::info!(tls.client_ca = %client_auth.ca_file.display(), "reloaded the client CA bundle");
                self.server_config.store(config);
                true
            }
            Err(error) => {
                tracing::error!(%error, "client CA bundle reload failed; keeping the bundle in use");
                false
            }
        }
    }
}

fn modification_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Builds the verifier of client certificates from the CA bundle of `client_auth`.
///
/// NOTE: no certificate revocation list or OCSP response is checked, so a revoked client
/// certificate stays valid until its CA leaves the bundle or its name leaves its consumer.
fn client_verifier(
    client_auth: &ClientAuthConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let path = &client_auth.ca_file;
    let invalid = |message: String| TlsError::ClientCa {
        path: path.clone(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid(error.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("the file contains no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|error| invalid(format!("certificate {}: {error}", index + 1)))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match client_auth.mode {
        ClientAuthMode::Required => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|error| invalid(error.to_string()))
}

/// The end-entity certificate that a client presented and the handshake verified. Its names
/// are read on first use, so connections whose requests never ask for them do not pay for it.
pub struct ClientCertificate {
    der: CertificateDer<'static>,
    names: OnceLock<Result<Vec<CertificateName>, String>>,
}

/// Leaves the certificate out, so that no log line contains it.
impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCertificate")
    }
}

impl ClientCertificate {
    pub fn new(der: CertificateDer<'static>) -> Self {
        ClientCertificate {
            der,
            names: OnceLock::new(),
        }
    }

    /// Returns the subject CNs and DNS, email and URI alternative names of the certificate, or
    /// the reason they cannot be read.
    pub fn names(&self) -> Result<&[CertificateName], &str> {
        self.names
            .get_or_init(|| portcullis_policy::client_certificate::certificate_names(&self.der))
            .as_deref()
            .map_err(String::as_str)
    }
}

/// Builds the rustls server config of a listener.
fn server_config(
    tls: &TlsConfig,
    resolver: Arc<CertificateResolver>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &tls.client_auth {
        Some(client_auth) => {
            builder.with_client_cert_verifier(client_verifier(client_auth, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if tls.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
