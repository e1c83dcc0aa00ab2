//! `key-auth`: authenticates callers by API key. Runs in [`Phase::Authenticate`].
//!
//! The key is read from the configured headers, then from `Authorization: Bearer`, then from
//! the query parameter when one is enabled. A missing key and an unknown, mistyped or expired
//! key all get 401 with `WWW-Authenticate`; the message tells them apart only as far as a
//! client can act on it, and never echoes the key.

use std::sync::Arc;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_config::KeyAuthSpec;
use portcullis_policy::api_key::KeyRejection;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;

pub struct KeyAuth {
    header_names: Vec<HeaderName>,
    bearer: bool,
    query_param: Option<String>,
    hide_credentials: bool,
    challenge: HeaderValue,
}

/// Where the presented key was found, so it can be removed before forwarding.
enum Source {
    Header(HeaderName),
    Bearer,
    Query,
}

impl KeyAuth {
    pub fn new(spec: &KeyAuthSpec) -> Self {
        let header_names = spec
            .header_names
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        let challenge = if spec.bearer {
            HeaderValue::from_static("Bearer realm=\"portcullis\"")
        } else {
            HeaderValue::from_static("ApiKey realm=\"portcullis\"")
        };
        KeyAuth {
            header_names,
            bearer: spec.bearer,
            query_param: spec.query_param.clone(),
            hide_credentials: spec.hide_credentials,
            challenge,
        }
    }

    fn find_key(&self, exchange: &Exchange<'_>) -> Result<Option<(String, Source)>, Rejection> {
        for name in &self.header_names {
            let mut values = exchange.headers.get_all(name).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    return Err(
                        self.unauthorized("invalid_api_key", "more than one API key was sent")
                    );
                }
                let key = value
                    .to_str()
                    .map_err(|_| self.unauthorized("invalid_api_key", "the API key is invalid"))?;
                return Ok(Some((key.trim().to_string(), Source::Header(name.clone()))));
            }
        }
        if self.bearer
            && let Some(value) = exchange.headers.get(AUTHORIZATION)
            && let Some(token) = value.to_str().ok().and_then(bearer_token)
        {
            return Ok(Some((token.to_string(), Source::Bearer)));
        }
        if let (Some(param), Some(query)) = (&self.query_param, &exchange.canonical.query) {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == param {
                    let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                    return Ok(Some((value.into_owned(), Source::Query)));
                }
            }
        }
        Ok(None)
    }

    fn unauthorized(&self, code: &'static str, message: &'static str) -> Rejection {
        Rejection::new(StatusCode::UNAUTHORIZED, code, message)
            .by_policy("key-auth")
            .with_header(WWW_AUTHENTICATE, self.challenge.clone())
    }

    fn remove_credential(&self, exchange: &mut Exchange<'_>, source: Source) {
        match source {
            Source::Header(name) => {
                exchange.headers.remove(name);
            }
            Source::Bearer => {
                exchange.headers.remove(AUTHORIZATION);
            }
            Source::Query => {
                let Some(param) = &self.query_param else {
                    return;
                };
                if let Some(query) = exchange.canonical.query.take() {
                    let kept: Vec<&str> = query
                        .split('&')
                        .filter(|pair| {
                            pair.split_once('=').map_or(*pair, |(name, _)| name) != param
                        })
                        .collect();
                    exchange.canonical.query = (!kept.is_empty()).then(|| kept.join("&"));
                }
            }
        }
    }
}

/// Returns the token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

impl Policy for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            let Some((key, source)) = self.find_key(exchange)? else {
                return Err(self.unauthorized("missing_api_key", "an API key is required"));
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let snapshot = exchange.snapshot;
            let entry = match snapshot.keys.verify(&snapshot.hasher, &key, now) {
                Ok(entry) => entry,
                Err(KeyRejection::Expired) => {
                    return Err(self.unauthorized("expired_api_key", "the API key has expired"));
                }
                Err(KeyRejection::Invalid) => {
                    return Err(self.unauthorized("invalid_api_key", "the API key is invalid"));
                }
            };
            let Some(consumer) = snapshot.consumers.get(entry.consumer.as_str()) else {
                tracing::warn!(key.id = %entry.id, consumer.name = %entry.consumer, "API key belongs to a consumer that no longer exists");
                return Err(self.unauthorized("invalid_api_key", "the API key is invalid"));
            };
            exchange.consumer = Some(consumer.clone());
            exchange.scopes = std::borrow::Cow::Borrowed(&entry.scopes);
            exchange.credential_id = Some(Arc::from(entry.id.as_str()));
            if entry.note_use(now) {
                snapshot.key_usage.record(&entry.id, now);
            }
            if self.hide_credentials {
                self.remove_credential(exchange, source);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
