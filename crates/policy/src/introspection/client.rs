//! The request side of introspection: form body and client authentication.
//!
//! RFC 7662 section 2.1 sends the token as `application/x-www-form-urlencoded` in a POST, with
//! the client authenticated by one of the methods of RFC 6749 section 2.3 or OpenID Connect Core
//! section 9.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde_json::json;

use crate::jwt::{Algorithm, pem_decode};

/// Lifetime of a `private_key_jwt` client assertion, in seconds. The assertion is made for one
/// request, so a minute covers clock skew and nothing more.
pub const ASSERTION_LIFETIME_SECONDS: i64 = 60;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Characters left as they are in `application/x-www-form-urlencoded`, as in the WHATWG URL
/// standard. Every other byte is percent-encoded, spaces included.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// A private key that signs client assertions.
pub enum SigningKey {
    /// An RSA key, signing RS256.
    Rsa(RsaKeyPair),
    /// A P-256 key, signing ES256.
    P256(EcdsaKeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key material is left out so that a private key never reaches a log.
        write!(f, "SigningKey({})", self.algorithm())
    }
}

impl SigningKey {
    /// Parses a PEM private key: `PRIVATE KEY` (PKCS #8) with an RSA or P-256 key, or
    /// `RSA PRIVATE KEY` (PKCS #1).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_decode(pem).map_err(|error| error.0)?;
        match label.as_str() {
            "PRIVATE KEY" => {
                if let Ok(key) = RsaKeyPair::from_pkcs8(&der) {
                    return Ok(SigningKey::Rsa(key));
                }
                let random = SystemRandom::new();
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &random)
                    .map(SigningKey::P256)
                    .map_err(|_| {
                        "the PKCS #8 key is neither an RSA key of 2048 bits or more nor a P-256 key"
                            .to_string()
                    })
            }
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|error| format!("the RSA private key is not usable: {error}")),
            "EC PRIVATE KEY" => Err(
                "SEC1 `EC PRIVATE KEY` is not supported; convert it with `openssl pkcs8 -topk8 -nocrypt`"
                    .into(),
            ),
            other => Err(format!(
                "PEM label `{other}` is not a private key; use `PRIVATE KEY` or `RSA PRIVATE KEY`"
            )),
        }
    }

    /// Returns the JWS algorithm of the key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::RS256,
            SigningKey::P256(_) => Algorithm::ES256,
        }
    }

    /// Signs `input` and returns the JWS signature bytes (for ES256, `r || s`).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let random = SystemRandom::new();
        match self {
            SigningKey::Rsa(key) => {
                let mut output = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &random, input, &mut output)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(output)
            }
            SigningKey::P256(key) => key
                .sign(&random, input)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_string()),
        }
    }
}

/// The gateway's client authentication at the introspection endpoint.
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    SecretBasic { client_id: String, secret: String },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    SecretPost { client_id: String, secret: String },
    /// `private_key_jwt`: a signed client assertion in the body.
    PrivateKeyJwt {
        client_id: String,
        key: Box<SigningKey>,
        kid: Option<String>,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets are left out, so only the method and client id reach a log.
        let (method, client_id) = match self {
            ClientAuth::SecretBasic { client_id, .. } => ("client_secret_basic", client_id),
            ClientAuth::SecretPost { client_id, .. } => ("client_secret_post", client_id),
            ClientAuth::PrivateKeyJwt { client_id, .. } => ("private_key_jwt", client_id),
        };
        f.debug_struct("ClientAuth")
            .field("method", &method)
            .field("client_id", client_id)
            .finish_non_exhaustive()
    }
}

/// The parts of one form POST to the authorization server, such as an introspection or token
/// request, that depend on the form and the client.
#[derive(Debug)]
pub struct IntrospectionRequest {
    /// The `application/x-www-form-urlencoded` body.
    pub body: String,
    /// The `Authorization` header value, for `client_secret_basic`.
    pub authorization: Option<String>,
}

impl ClientAuth {
    /// Builds the request that introspects `token` at `endpoint`, at `now` (seconds since the
    /// Unix epoch). Fails only when signing a client assertion fails.
    pub fn request(
        &self,
        token: &str,
        endpoint: &str,
        now: i64,
    ) -> Result<IntrospectionRequest, String> {
        let form = vec![
            ("token", token.to_string()),
            ("token_type_hint", "access_token".into()),
        ];
        self.form_request(form, endpoint, now)
    }

    /// Builds an authenticated form POST of `form` to `endpoint`, such as a token request
    /// (RFC 6749 section 4.1.3), at `now` (seconds since the Unix epoch). Fails only when
    /// signing a client assertion fails.
    pub fn form_request(
        &self,
        mut form: Vec<(&'static str, String)>,
        endpoint: &str,
        now: i64,
    ) -> Result<IntrospectionRequest, String> {
        let mut authorization = None;
        match self {
            ClientAuth::SecretBasic { client_id, secret } => {
                // RFC 6749 section 2.3.1 form-encodes both parts before Base64.
                let credentials = format!("{}:{}", form_encode(client_id), form_encode(secret));
                authorization = Some(format!("Basic {}", STANDARD.encode(credentials)));
            }
            ClientAuth::SecretPost { client_id, secret } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", secret.clone()));
            }
            ClientAuth::PrivateKeyJwt {
                client_id,
                key,
                kid,
            } => {
                let assertion = client_assertion(client_id, key, kid.as_deref(), endpoint, now)?;
                form.push(("client_id", client_id.clone()));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()));
                form.push(("client_assertion", assertion));
            }
        }
        let body = form
            .iter()
            .map(|(name, value)| format!("{name}={}", form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        Ok(IntrospectionRequest {
            body,
            authorization,
        })
    }
}

/// Builds a client assertion (RFC 7523 section 3): `iss` and `sub` are the client id, `aud` the
/// endpoint URL, `jti` 128 random bits, and `exp` [`ASSERTION_LIFETIME_SECONDS`] after `iat`.
pub fn client_assertion(
    client_id: &str,
    key: &SigningKey,
    kid: Option<&str>,
    endpoint: &str,
    now: i64,
) -> Result<String, String> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| "the system random generator failed".to_string())?;
    let mut header = json!({"alg": key.algorithm().as_str(), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": endpoint,
        "jti": hex::encode(id),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// Encodes `value` for an `application/x-www-form-urlencoded` body or a URL query.
pub fn form_encode(value: &str) -> String {
    utf8_percent_encode(value, FORM).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'b>(body: &'b str, name: &str) -> Option<&'b str> {
        body.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    #[test]
    fn secret_basic_encodes_credentials() {
        let auth = ClientAuth::SecretBasic {
            client_id: "gate way".into(),
            secret: "s:e&c".into(),
        };
        let request = auth
            .request("tok en", "https://as.test/introspect", 0)
            .unwrap();
        assert_eq!(field(&request.body, "token"), Some("tok%20en"));
        assert_eq!(
            field(&request.body, "token_type_hint"),
            Some("access_token")
        );
        assert_eq!(field(&request.body, "client_secret"), None);
        let expected = format!("Basic {}", STANDARD.encode("gate%20way:s%3Ae%26c"));
        assert_eq!(request.authorization, Some(expected));
    }

    #[test]
    fn secret_post_puts_credentials_in_body() {
        let auth = ClientAuth::SecretPost {
            client_id: "gateway".into(),
            secret: "s3cret+/".into(),
        };
        let request = auth.request("t", "https://as.test/introspect", 0).unwrap();
        assert_eq!(field(&request.body, "client_id"), Some("gateway"));
        assert_eq!(field(&request.body, "client_secret"), Some("s3cret%2B%2F"));
        assert_eq!(request.authorization, None);
    }

    #[test]
    fn debug_hides_secret() {
        let auth = ClientAuth::SecretPost {
            client_id: "gateway".into(),
            secret: "very-secret-value".into(),
        };
        let text = format!("{auth:?}");
        assert!(text.contains("gateway"));
        assert!(!text.contains("very-secret-value"));
    }

    #[test]
    fn non_key_pem_is_rejected() {
        let pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let error = SigningKey::from_pem(pem).unwrap_err();
        assert!(error.contains("not a private key"), "{error}");
    }
}
