//! Security response headers: the header values one attachment sends, and which of them
//! replace a value the upstream set.

use portcullis_config::SecurityHeadersSpec;

const HSTS: &str = "strict-transport-security";

/// One header the policy sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeader {
    /// Lower-case header name.
    pub name: &'static str,
    pub value: String,
    /// Replace a value that the response already has, instead of keeping it.
    pub replace: bool,
}

/// The security headers of one attachment.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    headers: Vec<SecurityHeader>,
    hsts_on_plain_http: bool,
}

impl SecurityHeaders {
    /// Builds the model from a validated spec.
    pub fn new(spec: &SecurityHeadersSpec) -> Self {
        let headers = spec
            .resolved()
            .into_iter()
            .map(|(name, value)| SecurityHeader {
                name,
                value,
                replace: spec.override_headers.iter().any(|listed| listed == name),
            })
            .collect();
        SecurityHeaders {
            headers,
            hsts_on_plain_http: spec.hsts_on_plain_http,
        }
    }

    /// Returns the headers for a response to a request that reached the gateway over HTTPS
    /// (`secure`) or plain HTTP. `Strict-Transport-Security` goes only on HTTPS unless
    /// `hsts_on_plain_http` is set, because browsers ignore it on plain HTTP (RFC 6797
    /// section 8.1).
    pub fn headers(&self, secure: bool) -> impl Iterator<Item = &SecurityHeader> {
        let send_hsts = secure || self.hsts_on_plain_http;
        self.headers
            .iter()
            .filter(move |header| send_hsts || header.name != HSTS)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_config::browser::HeaderSetting;

    use super::*;

    #[test]
    fn defaults_and_hsts_only_on_https() {
        let model = SecurityHeaders::new(&SecurityHeadersSpec::default());
        let plain: Vec<&str> = model.headers(false).map(|header| header.name).collect();
        assert!(!plain.contains(&HSTS));
        assert!(plain.contains(&"x-content-type-options"));
        let secure: Vec<&str> = model.headers(true).map(|header| header.name).collect();
        assert!(secure.contains(&HSTS));
        assert_eq!(secure.len(), 7);
    }

    #[test]
    fn settings_change_and_remove_headers() {
        let spec = SecurityHeadersSpec {
            x_frame_options: HeaderSetting::Value("SAMEORIGIN".into()),
            permissions_policy: HeaderSetting::Off,
            hsts_on_plain_http: true,
            override_headers: vec!["x-frame-options".into()],
            ..SecurityHeadersSpec::default()
        };
        let model = SecurityHeaders::new(&spec);
        let headers: Vec<&SecurityHeader> = model.headers(false).collect();
        let frame = headers
            .iter()
            .find(|header| header.name == "x-frame-options")
            .unwrap();
        assert_eq!(frame.value, "SAMEORIGIN");
        assert!(frame.replace);
        assert!(
            headers
                .iter()
                .all(|header| header.name != "permissions-policy")
        );
        assert!(headers.iter().any(|header| header.name == HSTS));
        assert!(
            headers
                .iter()
                .filter(|header| header.name != "x-frame-options")
                .all(|header| !header.replace)
        );
    }
}
