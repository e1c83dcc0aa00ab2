//! TLS termination with rustls: certificates chosen by SNI and reloaded without a restart.
//!
//! Each listener has a [`CertificateResolver`] holding the certificates of its config. A client
//! that sends SNI gets the certificate whose DNS names (from the subject alternative name
//! extension) match exactly, then one whose wildcard matches, then the first certificate. The
//! resolver re-reads its files when [`CertificateResolver::reload_if_changed`] sees a newer
//! modification time; a reload that fails keeps the certificates in use and logs the error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_config::{CertificateConfig, TlsConfig, TlsVersion};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain `{path}`: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("cannot read the private key `{path}`: {message}")]
    Key { path: PathBuf, message: String },
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
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = set.wildcard.get(parent) {
                return Some(key.clone());
            }
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

/// Builds the rustls server config of a listener.
pub fn server_config(
    tls: &TlsConfig,
    resolver: Arc<CertificateResolver>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = if tls.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
