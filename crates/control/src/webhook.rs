//! Delivery of key-rotation events to webhooks.
//!
//! Each event is one JSON `POST`, signed with `X-Portcullis-Signature: sha256=<hex>`, the
//! HMAC-SHA-256 of the exact body under `key_rotation.webhook_secret`. A failed delivery (no
//! connection, a timeout, or a status outside 2xx) is retried with exponential backoff up to
//! `key_rotation.webhook_attempts` times. The body contains a plaintext key, so logs name the
//! URL, the key ids and the error, never the body.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use time::OffsetDateTime;

/// Header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";

/// Time allowed for one delivery attempt, from connecting to reading the response.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait before the second attempt. Each later wait is twice the previous one, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Maximum wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The body of a `key.rotated` event.
#[derive(Debug, Serialize)]
pub struct RotationEvent<'a> {
    /// Always `key.rotated`.
    pub event: &'static str,
    pub consumer: &'a str,
    /// The new key's plaintext, which appears nowhere else.
    pub key: &'a str,
    pub key_id: &'a str,
    pub prefix: &'a str,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: &'a [String],
    pub old_key_id: &'a str,
    /// When the old key stops working.
    #[serde(with = "time::serde::rfc3339::option")]
    pub old_key_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub rotated_at: OffsetDateTime,
}

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends signed webhook events.
#[derive(Clone)]
pub struct WebhookSender {
    client: WebhookClient,
    secret: Arc<[u8]>,
    attempts: u32,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("secret", &"<redacted>")
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl WebhookSender {
    /// Creates a sender that signs with `secret` and makes up to `attempts` attempts per event.
    pub fn new(secret: &[u8], attempts: u32) -> Self {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(portcullis_proxy::jwks::tls_config())
            .https_or_http()
            .enable_http1()
            .build();
        WebhookSender {
            client: Client::builder(TokioExecutor::new()).build(connector),
            secret: secret.into(),
            attempts: attempts.max(1),
        }
    }

    /// Delivers `event` to `url`, retrying with backoff. Returns the last error when every
    /// attempt failed.
    pub async fn send(&self, url: &str, event: &RotationEvent<'_>) -> Result<(), String> {
        let body = Bytes::from(
            serde_json::to_vec(event)
                .map_err(|error| format!("cannot encode the event: {error}"))?,
        );
        let signature = format!("sha256={}", sign(&self.secret, &body));
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = self.attempt(url, body.clone(), &signature).await;
            match result {
                Ok(()) => {
                    tracing::info!(webhook.url = %url, consumer.name = %event.consumer, key.id = %event.key_id, attempt, "delivered a key rotation to the webhook");
                    return Ok(());
                }
                Err(error) if attempt < self.attempts => {
                    tracing::warn!(webhook.url = %url, key.id = %event.key_id, attempt, %error, retry_in = ?backoff, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn attempt(&self, url: &str, body: Bytes, signature: &str) -> Result<(), String> {
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "portcullis-key-rotation")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
            .map_err(|error| format!("invalid request: {error}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("request failed: {error}"))?;
            let status = response.status();
            // The body is read so that the connection can be reused, and then dropped.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the webhook returned status {status}"))
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("timed out after {ATTEMPT_TIMEOUT:?}"))?
    }
}

/// Returns the hex HMAC-SHA-256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
