//! `Cookie` request headers and `Set-Cookie` response headers (RFC 6265).

use std::fmt::Write;

/// Returns the values of every cookie called `name` in the `Cookie` header values, in order.
/// A browser sends several when cookies with the same name have different paths or domains.
pub fn cookie_values<'h>(headers: impl IntoIterator<Item = &'h str>, name: &str) -> Vec<&'h str> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .collect()
}

/// The attributes of a `Set-Cookie` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub domain: Option<&'a str>,
    pub secure: bool,
    /// `SameSite` value: `Lax`, `Strict` or `None`.
    pub same_site: &'a str,
}

impl SetCookie<'_> {
    /// Renders a header that stores `value` for `max_age_seconds`. The cookie is always
    /// `HttpOnly`, so scripts on the page cannot read the session.
    pub fn store(&self, value: &str, max_age_seconds: i64) -> String {
        let mut header = format!("{}={value}", self.name);
        self.append_attributes(&mut header, max_age_seconds.max(0));
        header
    }

    /// Renders a header that deletes the cookie.
    pub fn delete(&self) -> String {
        let mut header = format!("{}=", self.name);
        self.append_attributes(&mut header, 0);
        header
    }

    fn append_attributes(&self, header: &mut String, max_age_seconds: i64) {
        let _ = write!(header, "; Path={}", self.path);
        if let Some(domain) = self.domain {
            let _ = write!(header, "; Domain={domain}");
        }
        let _ = write!(header, "; Max-Age={max_age_seconds}; HttpOnly");
        if self.secure {
            header.push_str("; Secure");
        }
        let _ = write!(header, "; SameSite={}", self.same_site);
    }
}
