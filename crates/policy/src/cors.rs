//! CORS: which origins may read responses, and the answer to a preflight (the CORS protocol of
//! the Fetch standard).
//!
//! Allowed origins are compared exactly with the `Origin` header, after the same
//! normalisation browsers apply. The allow-origin value is the request's origin only when that
//! origin is listed or matches an explicit pattern, so the gateway never reflects an arbitrary
//! origin. `*` is sent only when any origin is allowed, which configuration validation forbids
//! together with credentials.

use std::collections::HashSet;

use portcullis_config::CorsSpec;
use portcullis_config::browser::{DisallowedOrigin, Origin};

/// An origin pattern such as `https://*.example.com`.
#[derive(Debug, Clone)]
struct OriginPattern {
    scheme: String,
    /// The registered domain with a leading dot, such as `.example.com`.
    suffix: String,
    port: Option<u16>,
}

impl OriginPattern {
    fn parse(text: &str) -> Option<OriginPattern> {
        let (scheme, rest) = text.split_once("://*.")?;
        let base = Origin::parse_authority(scheme, rest)?;
        Some(OriginPattern {
            scheme: base.scheme,
            suffix: format!(".{}", base.host),
            port: base.port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        origin.scheme == self.scheme
            && origin.port == self.port
            && origin.host.len() > self.suffix.len()
            && origin.host.ends_with(&self.suffix)
    }
}

/// Request headers a preflight may ask for.
#[derive(Debug, Clone)]
enum AllowedHeaders {
    Any,
    /// Lower-case header names.
    Listed(Vec<String>),
}

/// The reason a preflight gets no CORS headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightDenial {
    OriginNotAllowed,
    MethodNotAllowed,
    HeaderNotAllowed,
}

impl PreflightDenial {
    /// Returns the error code of the denial.
    pub fn code(self) -> &'static str {
        match self {
            PreflightDenial::OriginNotAllowed => "cors_origin_not_allowed",
            PreflightDenial::MethodNotAllowed => "cors_method_not_allowed",
            PreflightDenial::HeaderNotAllowed => "cors_header_not_allowed",
        }
    }

    /// Returns a message for clients.
    pub fn message(self) -> &'static str {
        match self {
            PreflightDenial::OriginNotAllowed => "the request origin is not allowed",
            PreflightDenial::MethodNotAllowed => "the requested method is not allowed by CORS",
            PreflightDenial::HeaderNotAllowed => "a requested header is not allowed by CORS",
        }
    }
}

/// The CORS settings of one attachment.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: HashSet<String>,
    patterns: Vec<OriginPattern>,
    methods: Vec<String>,
    allow_methods: String,
    headers: AllowedHeaders,
    exposed_headers: Option<String>,
    max_age: Option<String>,
    pub allow_credentials: bool,
    pub reject_disallowed: bool,
}

impl Cors {
    /// Builds the model from a validated spec.
    pub fn new(spec: &CorsSpec) -> Self {
        let any_origin = spec.allowed_origins.iter().any(|origin| origin == "*");
        let headers = if spec.allowed_headers.iter().any(|name| name == "*") {
            AllowedHeaders::Any
        } else {
            AllowedHeaders::Listed(
                spec.allowed_headers
                    .iter()
                    .map(|name| name.to_ascii_lowercase())
                    .collect(),
            )
        };
        Cors {
            any_origin,
            origins: spec
                .allowed_origins
                .iter()
                .filter(|origin| *origin != "*")
                .cloned()
                .collect(),
            patterns: spec
                .allowed_origin_patterns
                .iter()
                .filter_map(|pattern| OriginPattern::parse(pattern))
                .collect(),
            methods: spec.allowed_methods.clone(),
            allow_methods: spec.allowed_methods.join(", "),
            headers,
            exposed_headers: (!spec.exposed_headers.is_empty())
                .then(|| spec.exposed_headers.join(", ")),
            max_age: spec.max_age.map(|age| age.as_secs().to_string()),
            allow_credentials: spec.allow_credentials,
            reject_disallowed: spec.disallowed_origin == DisallowedOrigin::Reject,
        }
    }

    /// Returns whether responses differ by `Origin`, so caches must key them by it
    /// (`Vary: Origin`). Only a policy that allows any origin answers every origin alike.
    pub fn varies_by_origin(&self) -> bool {
        !self.any_origin
    }

    /// Returns the `Access-Control-Allow-Origin` value for a request's `Origin`, or `None`
    /// when the origin is not allowed.
    pub fn allow_origin(&self, origin: &str) -> Option<String> {
        if self.any_origin {
            return Some("*".into());
        }
        if self.origins.contains(origin) {
            return Some(origin.to_string());
        }
        // A browser sends the origin in its serialised form, so any other form is no match.
        let parsed = Origin::parse(origin).filter(|parsed| parsed.to_string() == origin)?;
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(&parsed))
            .then(|| origin.to_string())
    }

    /// Returns the headers of a response to an allowed origin's actual request.
    pub fn response_headers(&self, allow_origin: String) -> Vec<(&'static str, String)> {
        let mut headers = vec![("access-control-allow-origin", allow_origin)];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".into()));
        }
        if let Some(exposed) = &self.exposed_headers {
            headers.push(("access-control-expose-headers", exposed.clone()));
        }
        headers
    }

    /// Decides a preflight: `origin`, the `Access-Control-Request-Method` value and the
    /// `Access-Control-Request-Headers` value if any. Returns the headers of the answer.
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Result<Vec<(&'static str, String)>, PreflightDenial> {
        let allow_origin = self
            .allow_origin(origin)
            .ok_or(PreflightDenial::OriginNotAllowed)?;
        if !self.methods.iter().any(|allowed| allowed == method) {
            return Err(PreflightDenial::MethodNotAllowed);
        }
        let requested: Vec<String> = request_headers
            .unwrap_or("")
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        let allow_headers = match &self.headers {
            AllowedHeaders::Any => requested.join(", "),
            AllowedHeaders::Listed(allowed) => {
                if requested.iter().any(|name| !allowed.contains(name)) {
                    return Err(PreflightDenial::HeaderNotAllowed);
                }
                allowed.join(", ")
            }
        };
        let mut headers = vec![
            ("access-control-allow-origin", allow_origin),
            ("access-control-allow-methods", self.allow_methods.clone()),
        ];
        if !allow_headers.is_empty() {
            headers.push(("access-control-allow-headers", allow_headers));
        }
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".into()));
        }
        if let Some(max_age) = &self.max_age {
            headers.push(("access-control-max-age", max_age.clone()));
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(origins: &[&str], patterns: &[&str]) -> CorsSpec {
        CorsSpec {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            allowed_origin_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            allowed_methods: vec!["GET".into(), "PUT".into()],
            allowed_headers: vec!["Content-Type".into(), "X-Trace".into()],
            exposed_headers: vec!["x-request-id".into()],
            max_age: Some(Duration::from_secs(600)),
            allow_credentials: true,
            disallowed_origin: DisallowedOrigin::Ignore,
        }
    }

    #[test]
    fn exact_origins_only() {
        let cors = Cors::new(&spec(&["https://app.example.com"], &[]));
        assert_eq!(
            cors.allow_origin("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(cors.allow_origin("https://evil.example.com"), None);
        assert_eq!(cors.allow_origin("https://app.example.com.evil.net"), None);
        assert_eq!(cors.allow_origin("http://app.example.com"), None);
        assert_eq!(cors.allow_origin("null"), None);
        assert!(cors.varies_by_origin());
    }

    #[test]
    fn pattern_matches_subdomains() {
        let cors = Cors::new(&spec(&[], &["https://*.example.com"]));
        assert!(cors.allow_origin("https://a.example.com").is_some());
        assert!(cors.allow_origin("https://a.b.example.com").is_some());
        assert_eq!(cors.allow_origin("https://example.com"), None);
        assert_eq!(cors.allow_origin("https://badexample.com"), None);
        assert_eq!(cors.allow_origin("http://a.example.com"), None);
        assert_eq!(cors.allow_origin("https://a.example.com:8443"), None);
        assert_eq!(cors.allow_origin("https://A.example.com"), None);
    }

    #[test]
    fn wildcard_sends_star() {
        let mut wildcard = spec(&["*"], &[]);
        wildcard.allow_credentials = false;
        let cors = Cors::new(&wildcard);
        assert_eq!(cors.allow_origin("https://x.test").as_deref(), Some("*"));
        assert!(!cors.varies_by_origin());
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let cors = Cors::new(&spec(&["https://app.example.com"], &[]));
        let headers = cors
            .preflight(
                "https://app.example.com",
                "PUT",
                Some("x-trace, Content-Type"),
            )
            .unwrap();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(header, _)| *header == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(value("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            value("access-control-allow-headers"),
            Some("content-type, x-trace")
        );
        assert_eq!(value("access-control-max-age"), Some("600"));
        assert_eq!(value("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            cors.preflight("https://app.example.com", "DELETE", None),
            Err(PreflightDenial::MethodNotAllowed)
        );
        assert_eq!(
            cors.preflight("https://app.example.com", "GET", Some("x-other")),
            Err(PreflightDenial::HeaderNotAllowed)
        );
        assert_eq!(
            cors.preflight("https://evil.test", "GET", None),
            Err(PreflightDenial::OriginNotAllowed)
        );
    }
}
