//! `mtls-auth`: authenticates callers by the TLS client certificate of their connection. Runs in
//! [`Phase::Authenticate`].
//!
//! The listener's `tls.client_auth` has verified the certificate during the handshake, so this
//! adapter only maps its names to a consumer through the snapshot's
//! [`CertificateTable`](portcullis_policy::client_certificate::CertificateTable). A request
//! without a certificate, and one whose certificate names no consumer or more than one, gets
//! 401. The matched name, such as `CN=alice` or `DNS:billing.clients.example`, becomes the
//! credential id of the access log; the certificate itself is never logged.

use http::StatusCode;
use portcullis_policy::client_certificate::CertificateMatch;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;

pub struct MtlsAuth;

impl MtlsAuth {
    fn authenticate(exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        let Some(certificate) = exchange.client_certificate else {
            return Err(unauthorized(
                "missing_client_certificate",
                "a client certificate is required",
            ));
        };
        let names = certificate.names().map_err(|message| {
            tracing::debug!(%message, "client certificate names cannot be read");
            unauthorized(
                "invalid_client_certificate",
                "the client certificate is invalid",
            )
        })?;
        let snapshot = exchange.snapshot;
        match snapshot.certificates.find(names) {
            CertificateMatch::Consumer { consumer, name } => {
                let Some(info) = snapshot.consumers.get(&**consumer) else {
                    return Err(unknown());
                };
                exchange.consumer = Some(info.clone());
                exchange.credential_id = Some(name.to_string().into());
                Ok(())
            }
            CertificateMatch::Unknown => {
                tracing::debug!(certificate.names = ?display_names(names), "client certificate names no consumer");
                Err(unknown())
            }
            CertificateMatch::Ambiguous => {
                tracing::warn!(certificate.names = ?display_names(names), "client certificate names more than one consumer, so it is rejected");
                Err(unknown())
            }
        }
    }
}

fn display_names(names: &[portcullis_config::CertificateName]) -> Vec<String> {
    names.iter().map(ToString::to_string).collect()
}

fn unknown() -> Rejection {
    unauthorized(
        "unknown_client_certificate",
        "the client certificate does not identify a consumer",
    )
}

fn unauthorized(code: &'static str, message: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, message).by_policy("mtls-auth")
}

impl Policy for MtlsAuth {
    fn name(&self) -> &'static str {
        "mtls-auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(std::future::ready(MtlsAuth::authenticate(exchange)))
    }
}
