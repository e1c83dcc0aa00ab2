//! OpenID Connect relying party: the parts of the authorization code flow that do not touch
//! HTTP.
//!
//! - [`SessionKeys`] seals and opens the session and login cookies with ChaCha20-Poly1305
//!   (RFC 8439). Keys come from the configured secret through HKDF-SHA-256 (RFC 5869), with the
//!   issuer, the client id and the cookie's purpose in the `info` input. So a login cookie never
//!   opens as a session, and two policies with the same secret reject each other's cookies.
//!   The cookie name is the associated data.
//! - [`LoginState`] is what the login cookie carries between the redirect to the provider and
//!   the callback: `state`, `nonce` and the PKCE verifier (RFC 7636, method `S256`).
//! - [`Session`] is what the session cookie carries after the login.
//! - [`TokenResponse`] reads the token endpoint's response (OpenID Connect Core section 3.1.3.3,
//!   RFC 6749 section 5.1).
//! - [`ConsumedNonces`] remembers the nonces of finished logins until their login cookies
//!   expire, so that a callback cannot be replayed with a copied login cookie.

mod cookie;

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cookie::{SetCookie, cookie_values};

/// Bytes of randomness in `state`, `nonce` and the PKCE verifier: 256 bits, which RFC 7636
/// section 7.1 recommends for the verifier.
const RANDOM_BYTES: usize = 32;

/// Salt of the HKDF extraction step. A fixed salt is allowed by RFC 5869 section 3.1; the
/// secret is the input keying material.
const HKDF_SALT: &[u8] = b"portcullis openid-connect cookie keys v1";

/// Claims of the ID token that the session does not keep: they only matter when the token is
/// verified, and leaving them out keeps the cookie small.
const TRANSIENT_CLAIMS: [&str; 4] = ["nonce", "at_hash", "c_hash", "s_hash"];

/// The purpose of a cookie. Each purpose has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Login,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Session => "session",
            Purpose::Login => "login",
        }
    }
}

/// The AEAD keys of one policy's cookies.
pub struct SessionKeys {
    session: LessSafeKey,
    login: LessSafeKey,
    random: SystemRandom,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are left out so that they never reach a log.
        f.write_str("SessionKeys")
    }
}

impl SessionKeys {
    /// Derives the keys from `secret` for the cookies of `client_id` at `issuer`.
    pub fn derive(secret: &[u8], issuer: &str, client_id: &str) -> SessionKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let key = |purpose: Purpose| {
            let info = format!("{}\n{issuer}\n{client_id}", purpose.label());
            let info = [info.as_bytes()];
            let okm = prk
                .expand(&info, &CHACHA20_POLY1305)
                .expect("HKDF-SHA-256 can produce a 32-byte key");
            LessSafeKey::new(UnboundKey::from(okm))
        };
        SessionKeys {
            session: key(Purpose::Session),
            login: key(Purpose::Login),
            random: SystemRandom::new(),
        }
    }

    fn key(&self, purpose: Purpose) -> &LessSafeKey {
        match purpose {
            Purpose::Session => &self.session,
            Purpose::Login => &self.login,
        }
    }

    /// Encrypts `plaintext` for the cookie `name` and returns the cookie value:
    /// `base64url(nonce || ciphertext || tag)`, with a random 96-bit nonce.
    pub fn seal(&self, purpose: Purpose, name: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| "the system random generator failed".to_string())?;
        let mut buffer = plaintext.to_vec();
        self.key(purpose)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| "cookie encryption failed".to_string())?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        Ok(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Decrypts a cookie value made by [`SessionKeys::seal`] for the same purpose and name.
    /// Returns `None` when the value is not base64url, was changed, or was sealed with another
    /// key.
    pub fn open(&self, purpose: Purpose, name: &str, value: &str) -> Option<Vec<u8>> {
        let mut sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
        if sealed.len() < aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let mut ciphertext = sealed.split_off(aead::NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).ok()?;
        let plaintext = self
            .key(purpose)
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut ciphertext)
            .ok()?;
        Some(plaintext.to_vec())
    }

    /// Returns 256 random bits in base64url, for `state`, `nonce` and PKCE verifiers.
    pub fn random_token(&self) -> Result<String, String> {
        let mut bytes = [0u8; RANDOM_BYTES];
        self.random
            .fill(&mut bytes)
            .map_err(|_| "the system random generator failed".to_string())?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Returns the PKCE `code_challenge` of `verifier` for method `S256`:
/// `base64url(SHA-256(verifier))` (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The login in progress, carried by the login cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub code_verifier: String,
    /// Path and query of the request that started the login, where the callback returns to.
    pub return_to: String,
    /// Seconds since the Unix epoch after which the login cannot finish.
    pub expires_at: i64,
}

/// An authenticated browser session, carried by the session cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Claims of the verified ID token, without [`TRANSIENT_CLAIMS`].
    pub claims: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Seconds since the Unix epoch when the access token expires, from `expires_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The raw ID token, sent as `id_token_hint` at logout. Left out when the cookie would be
    /// too large with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Seconds since the Unix epoch when the session ends, whatever its refreshes.
    pub expires_at: i64,
}

impl Session {
    /// Builds a session from verified ID token claims and the token response.
    pub fn new(
        mut claims: Map<String, Value>,
        tokens: &TokenResponse,
        now: i64,
        lifetime_seconds: i64,
    ) -> Session {
        for claim in TRANSIENT_CLAIMS {
            claims.remove(claim);
        }
        Session {
            claims,
            access_token: tokens.access_token.clone(),
            access_expires_at: tokens.expires_in.map(|seconds| now.saturating_add(seconds)),
            refresh_token: tokens.refresh_token.clone(),
            id_token: tokens.id_token.clone(),
            expires_at: now.saturating_add(lifetime_seconds),
        }
    }

    /// Applies a refresh: new access token and expiry, the new refresh token when the provider
    /// rotated it, and the new ID token's claims when it sent one. `claims` are the verified
    /// claims of `tokens.id_token`.
    pub fn refreshed(
        &self,
        tokens: &TokenResponse,
        claims: Option<Map<String, Value>>,
        now: i64,
    ) -> Session {
        let mut session = self.clone();
        session.access_token = tokens.access_token.clone();
        session.access_expires_at = tokens.expires_in.map(|seconds| now.saturating_add(seconds));
        if let Some(refresh_token) = &tokens.refresh_token {
            session.refresh_token = Some(refresh_token.clone());
        }
        if let Some(mut claims) = claims {
            for claim in TRANSIENT_CLAIMS {
                claims.remove(claim);
            }
            session.claims = claims;
            session.id_token = tokens.id_token.clone();
        }
        session
    }

    /// Returns whether the access token expires within `before_seconds` of `now`.
    pub fn needs_refresh(&self, now: i64, before_seconds: i64) -> bool {
        self.access_expires_at
            .is_some_and(|expires_at| expires_at.saturating_sub(before_seconds) <= now)
    }

    /// Returns whether the access token has expired at `now`.
    pub fn access_expired(&self, now: i64) -> bool {
        self.access_expires_at
            .is_some_and(|expires_at| expires_at <= now)
    }
}

/// The fields of a successful token endpoint response that the relying party reads.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Lifetime of the access token in seconds.
    #[serde(default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are left out so that they never reach a log.
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// Parses a 200 response body. Fails when it is not a JSON object, or when a `token_type`
    /// is present and is not `Bearer` (compared without case, RFC 6749 section 5.1).
    pub fn parse(body: &[u8]) -> Result<TokenResponse, String> {
        let response: TokenResponse = serde_json::from_slice(body)
            .map_err(|error| format!("the token response is not valid JSON: {error}"))?;
        if let Some(token_type) = &response.token_type
            && !token_type.eq_ignore_ascii_case("bearer")
        {
            return Err(format!(
                "the token response has token_type `{token_type}`; only `Bearer` is supported"
            ));
        }
        Ok(response)
    }
}

/// Reads the OAuth 2.0 error code of a failed token response (RFC 6749 section 5.2), such as
/// `invalid_grant`, if the body has one that is a short printable word.
pub fn token_error_code(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    let printable = code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic());
    printable.then(|| code.to_string())
}

/// The nonces of finished logins, each kept until its login cookie expires.
#[derive(Debug)]
pub struct ConsumedNonces {
    /// Nonce to its expiry, in seconds since the Unix epoch.
    entries: HashMap<String, i64>,
    max_entries: usize,
}

impl ConsumedNonces {
    pub fn new(max_entries: usize) -> ConsumedNonces {
        ConsumedNonces {
            entries: HashMap::new(),
            max_entries,
        }
    }

    /// Records `nonce` until `expires_at` and returns `true`, or returns `false` when it was
    /// recorded before and has not expired. When the set is full after dropping expired
    /// entries, the entry that expires first is dropped.
    pub fn consume(&mut self, nonce: &str, expires_at: i64, now: i64) -> bool {
        if self.entries.get(nonce).is_some_and(|expiry| *expiry > now) {
            return false;
        }
        if self.entries.len() >= self.max_entries {
            self.entries.retain(|_, expiry| *expiry > now);
        }
        if self.entries.len() >= self.max_entries {
            let first = self
                .entries
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(nonce, _)| nonce.clone());
            if let Some(first) = first {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(nonce.to_string(), expires_at);
        true
    }
}

#[cfg(test)]
mod tests;
