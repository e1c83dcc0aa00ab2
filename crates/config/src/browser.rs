//! Settings and validation of the browser protections: `cors`, `csrf` and `security-headers`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration;
use crate::load::KeyError;

/// Cross-origin resource sharing (the CORS protocol of the Fetch standard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Origins allowed to read responses, each written exactly as browsers send it
    /// (`https://app.example.com`, or `http://localhost:3000` with its port), or `*` alone for
    /// any origin without credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Origin patterns of the form `https://*.example.com`, which match any subdomain of
    /// `example.com` (one or more labels) with that scheme and port, but not `example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origin_patterns: Vec<String>,
    /// Methods a preflight may ask for.
    #[serde(default = "default_cors_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for, or `*` alone for any header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// Response headers that scripts may read beyond the CORS-safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache a preflight result (`Access-Control-Max-Age`).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Let browsers send cookies and HTTP authentication (`Access-Control-Allow-Credentials`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// The answer to a request from an origin that is not allowed.
    #[serde(default)]
    pub disallowed_origin: DisallowedOrigin,
}

fn default_cors_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

/// The action of a `cors` policy on a request whose origin is not allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisallowedOrigin {
    /// Serve the request without CORS headers, so the browser withholds the response from
    /// the page.
    #[default]
    Ignore,
    /// Answer 403 without forwarding.
    Reject,
}

/// Longest `max_age`; browsers cap it lower (Chromium at two hours, Firefox at one day).
pub const MAX_CORS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Cross-site request forgery protection for routes that browsers call with cookies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfSpec {
    /// Origins, besides the request's own, whose pages may send unsafe requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// `Sec-Fetch-Site` values that admit an unsafe request.
    #[serde(default = "default_sec_fetch_site")]
    pub sec_fetch_site: Vec<SecFetchSite>,
    /// Name of the environment variable that contains the secret (at least 32 bytes) that signs
    /// double-submit tokens. Only the name is stored.
    pub secret_env: String,
    /// Name of the cookie that carries the double-submit token.
    #[serde(default = "default_csrf_cookie")]
    pub cookie_name: String,
    /// Request header that must repeat the token.
    #[serde(default = "default_csrf_header")]
    pub header_name: String,
    /// Lifetime of an issued token.
    #[serde(default = "default_csrf_token_ttl", with = "duration")]
    pub token_ttl: Duration,
    /// `SameSite` attribute of the token cookie.
    #[serde(default)]
    pub cookie_same_site: CookieSameSite,
    /// Headers that exempt a request without a `Cookie` header from the check, such as
    /// `authorization` or `apikey`. `authorization` exempts only with the `Bearer` scheme.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt_headers: Vec<String>,
}

fn default_sec_fetch_site() -> Vec<SecFetchSite> {
    vec![SecFetchSite::SameOrigin]
}

fn default_csrf_cookie() -> String {
    "portcullis-csrf".into()
}

fn default_csrf_header() -> String {
    "x-csrf-token".into()
}

fn default_csrf_token_ttl() -> Duration {
    Duration::from_secs(12 * 60 * 60)
}

/// A `Sec-Fetch-Site` value (Fetch Metadata Request Headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecFetchSite {
    SameOrigin,
    SameSite,
    /// A navigation that the user started, such as a bookmark.
    None,
}

impl SecFetchSite {
    /// Returns the header value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecFetchSite::SameOrigin => "same-origin",
            SecFetchSite::SameSite => "same-site",
            SecFetchSite::None => "none",
        }
    }
}

/// The `SameSite` attribute of a cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieSameSite {
    #[default]
    Strict,
    Lax,
}

/// Minimum length of the CSRF token secret, in bytes.
pub const MIN_CSRF_SECRET_BYTES: usize = 32;

/// Security response headers.
///
/// Each header takes a value, `false` to leave it out, or is absent for its default. A header
/// that the response already has is kept unless the header is listed in `override`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersSpec {
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub strict_transport_security: HeaderSetting,
    /// Send `Strict-Transport-Security` on plain HTTP too, such as behind a TLS-terminating
    /// proxy that is not in `trusted_proxies`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hsts_on_plain_http: bool,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub x_content_type_options: HeaderSetting,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub x_frame_options: HeaderSetting,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub referrer_policy: HeaderSetting,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub permissions_policy: HeaderSetting,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub cross_origin_opener_policy: HeaderSetting,
    #[serde(skip_serializing_if = "HeaderSetting::is_default")]
    pub content_security_policy: HeaderSetting,
    /// Header names whose value replaces one set by the upstream.
    #[serde(rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub override_headers: Vec<String>,
}

/// The headers of `security-headers` with their field names and default values.
pub const SECURITY_HEADER_DEFAULTS: [(&str, &str, &str); 7] = [
    (
        "strict_transport_security",
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    (
        "x_content_type_options",
        "x-content-type-options",
        "nosniff",
    ),
    ("x_frame_options", "x-frame-options", "DENY"),
    ("referrer_policy", "referrer-policy", "no-referrer"),
    (
        "permissions_policy",
        "permissions-policy",
        "camera=(), geolocation=(), microphone=(), payment=(), usb=()",
    ),
    (
        "cross_origin_opener_policy",
        "cross-origin-opener-policy",
        "same-origin",
    ),
    (
        "content_security_policy",
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

impl SecurityHeadersSpec {
    /// Returns each header's field name, header name and setting, in the order of
    /// [`SECURITY_HEADER_DEFAULTS`].
    pub fn settings(&self) -> [(&'static str, &'static str, &HeaderSetting); 7] {
        let settings = [
            &self.strict_transport_security,
            &self.x_content_type_options,
            &self.x_frame_options,
            &self.referrer_policy,
            &self.permissions_policy,
            &self.cross_origin_opener_policy,
            &self.content_security_policy,
        ];
        std::array::from_fn(|i| {
            let (field, header, _) = SECURITY_HEADER_DEFAULTS[i];
            (field, header, settings[i])
        })
    }

    /// Returns the value each header gets, as header name and value; a header left out is
    /// missing from the list.
    pub fn resolved(&self) -> Vec<(&'static str, String)> {
        self.settings()
            .iter()
            .zip(SECURITY_HEADER_DEFAULTS)
            .filter_map(|((_, header, setting), (_, _, default))| match setting {
                HeaderSetting::Default => Some((*header, default.to_string())),
                HeaderSetting::Value(value) => Some((*header, value.clone())),
                HeaderSetting::Off => None,
            })
            .collect()
    }
}

/// The setting of one security header: its default value, a value of its own, or left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HeaderSetting {
    #[default]
    Default,
    Value(String),
    Off,
}

impl HeaderSetting {
    fn is_default(&self) -> bool {
        *self == HeaderSetting::Default
    }
}

impl Serialize for HeaderSetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderSetting::Default => serializer.serialize_bool(true),
            HeaderSetting::Value(value) => serializer.serialize_str(value),
            HeaderSetting::Off => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for HeaderSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Switch(bool),
            Value(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a header value, `false` to leave the header out, or `true` for its default",
            )
        })? {
            Raw::Switch(true) => Ok(HeaderSetting::Default),
            Raw::Switch(false) => Ok(HeaderSetting::Off),
            Raw::Value(value) => Ok(HeaderSetting::Value(value)),
        }
    }
}

/// A serialised origin (`scheme://host[:port]`), split into its parts. The port is `None` when
/// it is the scheme's default, as browsers leave it out then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Origin {
    /// Parses an origin as browsers send it in `Origin`: lower-case `http` or `https`, a host
    /// and an optional port, with no path, query or trailing slash. Returns `None` for anything
    /// else, including the opaque origin `null`.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        Origin::parse_authority(scheme, rest)
    }

    /// Parses `host[:port]` of the given scheme; the host must be lower case.
    pub fn parse_authority(scheme: &str, authority: &str) -> Option<Origin> {
        let (host, port) = match authority.strip_prefix('[') {
            Some(rest) => {
                let end = rest.find(']')?;
                rest[..end].parse::<std::net::Ipv6Addr>().ok()?;
                let port = match &rest[end + 1..] {
                    "" => None,
                    after => Some(after.strip_prefix(':')?),
                };
                (&authority[..end + 2], port)
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let host_valid = !host.is_empty()
            && (host.starts_with('[')
                || host.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
                }));
        if !host_valid {
            return None;
        }
        let port = match port {
            None => None,
            Some(digits) => {
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let port: u16 = digits.parse().ok()?;
                let default = if scheme == "https" { 443 } else { 80 };
                (port != default).then_some(port)
            }
        };
        Some(Origin {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Checks that `text` is an origin in the exact form browsers send.
fn check_origin(errors: &mut Vec<KeyError>, key: String, text: &str) {
    match Origin::parse(text) {
        Some(origin) if origin.to_string() == text => {}
        Some(origin) => errors.push(KeyError::new(
            key,
            format!("write the origin `{text}` as browsers send it: `{origin}`"),
        )),
        None => errors.push(KeyError::new(
            key,
            format!(
                "invalid origin `{text}`; write `scheme://host` or `scheme://host:port` in lower \
                 case, with no path or trailing slash"
            ),
        )),
    }
}

fn check_header_names(errors: &mut Vec<KeyError>, key: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(KeyError::new(
                format!("{key}[{i}]"),
                format!("invalid header name `{name}`"),
            ));
        }
    }
}

/// Checks a `cors` policy.
pub(crate) fn validate_cors(key: &str, spec: &CorsSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let wildcard = spec.allowed_origins.iter().any(|origin| origin == "*");
    for (i, origin) in spec.allowed_origins.iter().enumerate() {
        let at = format!("{key}.allowed_origins[{i}]");
        if origin == "*" {
            if spec.allowed_origins.len() > 1 || !spec.allowed_origin_patterns.is_empty() {
                errors.push(KeyError::new(
                    at,
                    "`*` allows every origin, so it must be the only allowed origin",
                ));
            }
        } else {
            check_origin(&mut errors, at, origin);
        }
    }
    if wildcard && spec.allow_credentials {
        errors.push(KeyError::new(
            format!("{key}.allow_credentials"),
            "`allow_credentials: true` cannot be combined with the allowed origin `*`, because \
             any site could then read responses with the user's cookies; list the allowed \
             origins exactly",
        ));
    }
    for (i, pattern) in spec.allowed_origin_patterns.iter().enumerate() {
        let at = format!("{key}.allowed_origin_patterns[{i}]");
        let valid = pattern.split_once("://*.").is_some_and(|(scheme, rest)| {
            (scheme == "http" || scheme == "https")
                && Origin::parse_authority(scheme, rest)
                    .is_some_and(|origin| origin.host.contains('.') || origin.host == "localhost")
        });
        if !valid {
            errors.push(KeyError::new(
                at,
                format!(
                    "invalid origin pattern `{pattern}`; write `https://*.example.com`, which \
                     matches every subdomain of a registered domain"
                ),
            ));
        }
    }
    if spec.allowed_origins.is_empty() && spec.allowed_origin_patterns.is_empty() {
        errors.push(KeyError::new(
            key,
            "cors needs `allowed_origins` or `allowed_origin_patterns`",
        ));
    }
    for (i, method) in spec.allowed_methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method == "*" {
            errors.push(KeyError::new(
                format!("{key}.allowed_methods[{i}]"),
                format!("invalid method `{method}`"),
            ));
        }
    }
    if spec.allowed_headers.iter().any(|name| name == "*") {
        if spec.allowed_headers.len() > 1 {
            errors.push(KeyError::new(
                format!("{key}.allowed_headers"),
                "`*` allows every header, so it must be the only entry",
            ));
        }
    } else {
        check_header_names(
            &mut errors,
            &format!("{key}.allowed_headers"),
            &spec.allowed_headers,
        );
    }
    check_header_names(
        &mut errors,
        &format!("{key}.exposed_headers"),
        &spec.exposed_headers,
    );
    if spec.max_age.is_some_and(|age| age > MAX_CORS_MAX_AGE) {
        errors.push(KeyError::new(
            format!("{key}.max_age"),
            "must be at most 24h; browsers cap the preflight cache lower anyway",
        ));
    }
    errors
}

/// Checks a `csrf` policy.
pub(crate) fn validate_csrf(key: &str, spec: &CsrfSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (i, origin) in spec.allowed_origins.iter().enumerate() {
        check_origin(&mut errors, format!("{key}.allowed_origins[{i}]"), origin);
    }
    if spec.secret_env.is_empty() {
        errors.push(KeyError::new(
            format!("{key}.secret_env"),
            "name the environment variable that contains the token secret",
        ));
    }
    let cookie_valid = !spec.cookie_name.is_empty()
        && spec
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !cookie_valid {
        errors.push(KeyError::new(
            format!("{key}.cookie_name"),
            format!(
                "invalid cookie name `{}`; use letters, digits, `-`, `_` or `.`",
                spec.cookie_name
            ),
        ));
    }
    if http::HeaderName::from_bytes(spec.header_name.as_bytes()).is_err() {
        errors.push(KeyError::new(
            format!("{key}.header_name"),
            format!("invalid header name `{}`", spec.header_name),
        ));
    }
    if spec.token_ttl < Duration::from_secs(60) {
        errors.push(KeyError::new(
            format!("{key}.token_ttl"),
            "must be at least 1m",
        ));
    }
    check_header_names(
        &mut errors,
        &format!("{key}.exempt_headers"),
        &spec.exempt_headers,
    );
    errors
}

/// Checks a `security-headers` policy.
pub(crate) fn validate_security_headers(key: &str, spec: &SecurityHeadersSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (field, _, setting) in spec.settings() {
        if let HeaderSetting::Value(value) = setting
            && (value.is_empty() || http::HeaderValue::from_str(value).is_err())
        {
            errors.push(KeyError::new(
                format!("{key}.{field}"),
                "invalid header value; write visible ASCII text, or `false` to leave the \
                     header out",
            ));
        }
    }
    for (i, name) in spec.override_headers.iter().enumerate() {
        let known = SECURITY_HEADER_DEFAULTS
            .iter()
            .any(|(_, header, _)| header == name);
        if !known {
            let names: Vec<&str> = SECURITY_HEADER_DEFAULTS
                .iter()
                .map(|(_, header, _)| *header)
                .collect();
            errors.push(KeyError::new(
                format!("{key}.override[{i}]"),
                format!(
                    "`{name}` is not a header of this policy; use one of {}",
                    names.join(", ")
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_drops_default_port() {
        let origin = Origin::parse("https://app.example.com:443").unwrap();
        assert_eq!(origin.to_string(), "https://app.example.com");
        let origin = Origin::parse("http://localhost:3000").unwrap();
        assert_eq!(origin.port, Some(3000));
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
    }

    #[test]
    fn origin_rejects_other_forms() {
        for text in [
            "null",
            "https://app.example.com/",
            "https://App.example.com",
            "ftp://example.com",
            "https://",
            "https://example.com:99999",
            "https://example.com:",
        ] {
            assert_eq!(Origin::parse(text), None, "{text}");
        }
    }
}
