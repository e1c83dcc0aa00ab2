//! CSRF: whether an unsafe request from a browser comes from a page that may send it.
//!
//! The browser's own headers decide first: an accepted `Sec-Fetch-Site` value admits the
//! request, then `Origin` (or, without it, the origin of `Referer`) must be the request's own
//! origin or an allowed one. A browser that sends none of the three must present a
//! double-submit token: the value of a cookie that the gateway issued, repeated in a request
//! header. A page on another site cannot read the cookie, so it cannot repeat it.
//!
//! A token is `{issued}.{nonce}.{mac}`: the issue time in Unix seconds, 16 random bytes and
//! HMAC-SHA-256 over both under the configured secret, each part in unpadded base64url except
//! the time. The MAC stops a sibling subdomain from planting a token of its own choosing in the
//! cookie.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use portcullis_config::CsrfSpec;
use portcullis_config::browser::Origin;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Context string of the token MAC, so the secret signs nothing else by accident.
const MAC_CONTEXT: &[u8] = b"portcullis-csrf-token-v1|";

/// Clock skew tolerated on a token's issue time, in seconds.
const ISSUE_SKEW_SECONDS: u64 = 60;

/// The browser headers of an unsafe request.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserHeaders<'a> {
    pub sec_fetch_site: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
}

/// The decision on an unsafe request from its browser headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The browser named a site that may not send this request.
    Rejected(Failure),
    /// The browser sent no header that decides, so the request needs a double-submit token.
    TokenRequired,
}

/// The reason a request failed the CSRF check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `Origin` or `Referer` names a site that is not allowed.
    OriginNotAllowed,
    /// `Sec-Fetch-Site` is a value that is not accepted and no allowed origin came with it.
    CrossSite,
    /// The token cookie or header is missing.
    TokenMissing,
    /// The token is malformed, forged, expired, or the header does not match the cookie.
    TokenInvalid,
}

impl Failure {
    /// Returns the error code.
    pub fn code(self) -> &'static str {
        match self {
            Failure::OriginNotAllowed => "csrf_origin_not_allowed",
            Failure::CrossSite => "csrf_cross_site",
            Failure::TokenMissing => "csrf_token_missing",
            Failure::TokenInvalid => "csrf_token_invalid",
        }
    }

    /// Returns a message for clients.
    pub fn message(self) -> &'static str {
        match self {
            Failure::OriginNotAllowed => {
                "the request origin may not send this request (cross-site request forgery check)"
            }
            Failure::CrossSite => {
                "cross-site requests may not use this method (cross-site request forgery check)"
            }
            Failure::TokenMissing => {
                "the request needs the CSRF token cookie and the same token in the CSRF header"
            }
            Failure::TokenInvalid => "the CSRF token is invalid or expired",
        }
    }
}

/// The CSRF settings of one attachment, with the token key.
pub struct Csrf {
    allowed_origins: Vec<String>,
    sec_fetch_site: Vec<&'static str>,
    key: Vec<u8>,
    token_ttl_seconds: u64,
}

impl std::fmt::Debug for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csrf")
            .field("allowed_origins", &self.allowed_origins)
            .field("sec_fetch_site", &self.sec_fetch_site)
            .finish_non_exhaustive()
    }
}

/// Returns whether `method` is safe (RFC 9110 section 9.2.1), so it needs no CSRF check.
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

impl Csrf {
    /// Builds the model from a validated spec and the token secret.
    pub fn new(spec: &CsrfSpec, secret: &[u8]) -> Self {
        Csrf {
            allowed_origins: spec.allowed_origins.clone(),
            sec_fetch_site: spec
                .sec_fetch_site
                .iter()
                .map(|site| site.as_str())
                .collect(),
            key: secret.to_vec(),
            token_ttl_seconds: spec.token_ttl.as_secs(),
        }
    }

    /// Returns the token lifetime in seconds.
    pub fn token_ttl_seconds(&self) -> u64 {
        self.token_ttl_seconds
    }

    /// Decides an unsafe request by its browser headers. `own_origin` is the origin the request
    /// was sent to, when the gateway knows it.
    pub fn check(&self, own_origin: Option<&Origin>, headers: BrowserHeaders<'_>) -> Verdict {
        if let Some(site) = headers.sec_fetch_site
            && self.sec_fetch_site.contains(&site.trim())
        {
            return Verdict::Allowed;
        }
        let claimed = match (headers.origin, headers.referer) {
            (Some(origin), _) => Some(origin.trim()),
            (None, Some(referer)) => Some(referer_origin(referer.trim()).unwrap_or("null")),
            (None, None) => None,
        };
        match claimed {
            Some(origin) => {
                let own = own_origin.is_some_and(|own| own.to_string() == origin);
                if own || self.allowed_origins.iter().any(|allowed| allowed == origin) {
                    Verdict::Allowed
                } else {
                    Verdict::Rejected(Failure::OriginNotAllowed)
                }
            }
            None if headers.sec_fetch_site.is_some() => Verdict::Rejected(Failure::CrossSite),
            None => Verdict::TokenRequired,
        }
    }

    /// Issues a token at `now` (Unix seconds) with 16 random bytes `nonce`.
    pub fn issue_token(&self, now: u64, nonce: [u8; 16]) -> String {
        let payload = format!("{now}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let mac = self.mac(&payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Returns whether `token` is one this key issued and is still within its lifetime at
    /// `now`.
    pub fn token_is_valid(&self, token: &str, now: u64) -> bool {
        let Some((payload, mac)) = token.rsplit_once('.') else {
            return false;
        };
        let Some((issued, nonce)) = payload.split_once('.') else {
            return false;
        };
        let Ok(issued) = issued.parse::<u64>() else {
            return false;
        };
        let nonce_valid = URL_SAFE_NO_PAD
            .decode(nonce)
            .is_ok_and(|bytes| bytes.len() == 16);
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        if !nonce_valid || self.mac(payload).verify_slice(&mac).is_err() {
            return false;
        }
        issued <= now.saturating_add(ISSUE_SKEW_SECONDS)
            && now < issued.saturating_add(self.token_ttl_seconds)
    }

    /// Checks a double-submit pair: the token cookie and the header that repeats it.
    pub fn verify_submission(
        &self,
        cookie: Option<&str>,
        header: Option<&str>,
        now: u64,
    ) -> Result<(), Failure> {
        let (Some(cookie), Some(header)) = (cookie, header) else {
            return Err(Failure::TokenMissing);
        };
        let same: bool = cookie.as_bytes().ct_eq(header.trim().as_bytes()).into();
        if same && self.token_is_valid(cookie, now) {
            Ok(())
        } else {
            Err(Failure::TokenInvalid)
        }
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(MAC_CONTEXT);
        mac.update(payload.as_bytes());
        mac
    }
}

/// Returns the `scheme://host[:port]` prefix of a `Referer` URL.
fn referer_origin(referer: &str) -> Option<&str> {
    let (_, rest) = referer.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let length = referer.len() - rest.len() + end;
    Some(&referer[..length])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portcullis_config::browser::{CookieSameSite, SecFetchSite};

    use super::*;

    fn model() -> Csrf {
        let spec = CsrfSpec {
            allowed_origins: vec!["https://app.example.com".into()],
            sec_fetch_site: vec![SecFetchSite::SameOrigin],
            secret_env: "UNUSED".into(),
            cookie_name: "csrf".into(),
            header_name: "x-csrf-token".into(),
            token_ttl: Duration::from_secs(3600),
            cookie_same_site: CookieSameSite::Strict,
            exempt_headers: vec![],
        };
        Csrf::new(&spec, &[7; 32])
    }

    fn headers<'a>(
        site: Option<&'a str>,
        origin: Option<&'a str>,
        referer: Option<&'a str>,
    ) -> BrowserHeaders<'a> {
        BrowserHeaders {
            sec_fetch_site: site,
            origin,
            referer,
        }
    }

    #[test]
    fn browser_headers_decide() {
        let csrf = model();
        let own = Origin::parse("https://api.example.com").unwrap();
        let own = Some(&own);
        let cases = [
            (headers(Some("same-origin"), None, None), Verdict::Allowed),
            (
                headers(Some("cross-site"), Some("https://app.example.com"), None),
                Verdict::Allowed,
            ),
            (
                headers(Some("cross-site"), Some("https://evil.test"), None),
                Verdict::Rejected(Failure::OriginNotAllowed),
            ),
            (
                headers(Some("same-site"), None, None),
                Verdict::Rejected(Failure::CrossSite),
            ),
            (
                headers(None, Some("https://api.example.com"), None),
                Verdict::Allowed,
            ),
            (
                headers(None, Some("null"), None),
                Verdict::Rejected(Failure::OriginNotAllowed),
            ),
            (
                headers(None, None, Some("https://app.example.com/page?x=1")),
                Verdict::Allowed,
            ),
            (
                headers(None, None, Some("https://app.example.com.evil.test/")),
                Verdict::Rejected(Failure::OriginNotAllowed),
            ),
            (headers(None, None, None), Verdict::TokenRequired),
        ];
        for (input, expected) in cases {
            assert_eq!(csrf.check(own, input), expected, "{input:?}");
        }
    }

    #[test]
    fn token_round_trip() {
        let csrf = model();
        let token = csrf.issue_token(1_000, [1; 16]);
        assert!(csrf.token_is_valid(&token, 1_000));
        assert!(csrf.token_is_valid(&token, 4_599));
        assert!(!csrf.token_is_valid(&token, 4_600), "expired");
        assert!(
            csrf.verify_submission(Some(&token), Some(&token), 1_001)
                .is_ok()
        );
        let other = csrf.issue_token(1_000, [2; 16]);
        assert_eq!(
            csrf.verify_submission(Some(&token), Some(&other), 1_001),
            Err(Failure::TokenInvalid)
        );
        assert_eq!(
            csrf.verify_submission(Some(&token), None, 1_001),
            Err(Failure::TokenMissing)
        );
    }

    #[test]
    fn forged_token_is_invalid() {
        let csrf = model();
        let token = csrf.issue_token(1_000, [1; 16]);
        let (payload, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(!csrf.token_is_valid(&forged, 1_000));
        let other_key = Csrf::new(
            &CsrfSpec {
                secret_env: "UNUSED".into(),
                ..serde_default_spec()
            },
            &[8; 32],
        );
        assert!(!other_key.token_is_valid(&token, 1_000));
        let later = token.replacen("1000.", "2000.", 1);
        assert!(!csrf.token_is_valid(&later, 2_000));
    }

    fn serde_default_spec() -> CsrfSpec {
        let yaml = serde_json::json!({ "secret_env": "UNUSED" });
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn referer_origin_is_the_prefix() {
        assert_eq!(
            referer_origin("https://a.test:8443/x/y?z"),
            Some("https://a.test:8443")
        );
        assert_eq!(referer_origin("https://a.test"), Some("https://a.test"));
        assert_eq!(referer_origin("about:blank"), None);
    }
}
