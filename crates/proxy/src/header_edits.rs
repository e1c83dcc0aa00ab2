//! Changes that policies make to the response headers beyond appending, applied to every
//! response of a request: the upstream's, a rejection, or an answer the gateway gives itself.

use http::header::VARY;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Response header changes, applied in field order by [`HeaderEdits::apply`].
#[derive(Debug, Default)]
pub struct HeaderEdits {
    /// Headers removed from the response, such as upstream CORS headers that a `cors` policy
    /// replaces with its own.
    pub remove: Vec<HeaderName>,
    /// Headers set in place of any value the response has.
    pub replace: Vec<(HeaderName, HeaderValue)>,
    /// Headers set only when the response has none of that name.
    pub set_if_missing: Vec<(HeaderName, HeaderValue)>,
    /// Field names added to `Vary` unless it lists them or is `*`.
    pub vary: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.replace.is_empty()
            && self.set_if_missing.is_empty()
            && self.vary.is_empty()
    }

    /// Applies the edits to a response's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.replace {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.set_if_missing {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        for name in &self.vary {
            let listed = headers.get_all(VARY).iter().any(|value| {
                value.to_str().is_ok_and(|text| {
                    text.split(',').any(|field| {
                        let field = field.trim();
                        field == "*" || field.eq_ignore_ascii_case(name.as_str())
                    })
                })
            });
            if !listed {
                headers.append(VARY, HeaderValue::from(name.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_merges_without_duplicates() {
        let edits = HeaderEdits {
            vary: vec![HeaderName::from_static("origin")],
            ..HeaderEdits::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding, Origin"));
        edits.apply(&mut headers);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        edits.apply(&mut headers);
        let values: Vec<&HeaderValue> = headers.get_all(VARY).iter().collect();
        assert_eq!(values, ["accept-encoding", "origin"]);
    }

    #[test]
    fn missing_headers_keep_upstream_values() {
        let frame = HeaderName::from_static("x-frame-options");
        let edits = HeaderEdits {
            set_if_missing: vec![(frame.clone(), HeaderValue::from_static("DENY"))],
            replace: vec![(
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            )],
            ..HeaderEdits::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(&frame, HeaderValue::from_static("SAMEORIGIN"));
        headers.insert("referrer-policy", HeaderValue::from_static("unsafe-url"));
        edits.apply(&mut headers);
        assert_eq!(headers.get_all(&frame).iter().count(), 1);
        assert_eq!(headers[&frame], "SAMEORIGIN");
        assert_eq!(headers["referrer-policy"], "no-referrer");
    }
}
