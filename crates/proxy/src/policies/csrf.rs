//! `csrf`: cross-site request forgery protection for routes that browsers call with cookies.
//! Runs in [`Phase::Browser`], before authentication, so a forged request never reaches a
//! credential check or the upstream.
//!
//! Safe methods pass, and a response to `GET` or `HEAD` gets the double-submit token cookie when
//! the request did not carry a valid one. Unsafe methods are decided by the model in
//! [`portcullis_policy::csrf`]: `Sec-Fetch-Site`, then `Origin` or `Referer`, then the token.
//! Failures get 403 with a `csrf_*` code.

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, ORIGIN, REFERER, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use portcullis_config::CsrfSpec;
use portcullis_config::browser::CookieSameSite;
use portcullis_policy::csrf::{BrowserHeaders, Csrf as Model, Failure, Verdict, is_safe_method};
use rand::Rng;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::policies::key_auth::bearer_token;
use crate::policies::{Clock, PolicyContext, own_origin};

const NAME: &str = "csrf";
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

pub struct Csrf {
    model: Model,
    cookie_name: String,
    header_name: HeaderName,
    same_site: &'static str,
    exempt_headers: Vec<HeaderName>,
    clock: Arc<dyn Clock>,
}

impl Csrf {
    /// Builds the policy. Fails when the `secret_env` variable is not set.
    pub fn new(spec: &CsrfSpec, context: &PolicyContext) -> Result<Self, String> {
        let secret = std::env::var(&spec.secret_env).map_err(|_| {
            format!(
                "environment variable `{}` with the CSRF token secret is not set",
                spec.secret_env
            )
        })?;
        let header_name = HeaderName::from_bytes(spec.header_name.as_bytes())
            .map_err(|_| format!("invalid header name `{}`", spec.header_name))?;
        Ok(Csrf {
            model: Model::new(spec, secret.as_bytes()),
            cookie_name: spec.cookie_name.clone(),
            header_name,
            same_site: match spec.cookie_same_site {
                CookieSameSite::Strict => "Strict",
                CookieSameSite::Lax => "Lax",
            },
            exempt_headers: spec
                .exempt_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            clock: context.clock.clone(),
        })
    }

    fn now(&self) -> u64 {
        self.clock.now_nanos() / 1_000_000_000
    }

    /// Returns whether the request carries a non-cookie credential in an exempt header and no
    /// cookie, so a browser cannot have added its credential on its own.
    fn is_exempt(&self, headers: &HeaderMap) -> bool {
        if headers.contains_key(COOKIE) {
            return false;
        }
        self.exempt_headers.iter().any(|name| {
            let Some(value) = headers.get(name) else {
                return false;
            };
            // Browsers resend Basic credentials on their own, so only a bearer token exempts.
            *name != AUTHORIZATION || value.to_str().ok().and_then(bearer_token).is_some()
        })
    }

    fn token_cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == self.cookie_name).then_some(value)
            })
    }

    /// Adds a `Set-Cookie` with a new token unless the request carries a valid one.
    fn issue_token(&self, exchange: &mut Exchange<'_>, now: u64) {
        if self
            .token_cookie(exchange.headers)
            .is_some_and(|token| self.model.token_is_valid(token, now))
        {
            return;
        }
        let nonce: [u8; 16] = rand::thread_rng().r#gen();
        let token = self.model.issue_token(now, nonce);
        let secure = if exchange.canonical.scheme == "https" {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{}={token}; Path=/; Max-Age={}; SameSite={}{secure}",
            self.cookie_name,
            self.model.token_ttl_seconds(),
            self.same_site,
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            exchange.response_headers.append(SET_COOKIE, value);
        }
    }

    fn check(&self, exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        let now = self.now();
        if is_safe_method(exchange.method.as_str()) {
            // Pages load with GET, so its responses carry the token to the page's script.
            if exchange.method == Method::GET || exchange.method == Method::HEAD {
                self.issue_token(exchange, now);
            }
            return Ok(());
        }
        let headers: &HeaderMap = exchange.headers;
        if self.is_exempt(headers) {
            return Ok(());
        }
        let text = |name: &HeaderName| headers.get(name).map(|value| value.to_str().unwrap_or(""));
        let browser = BrowserHeaders {
            sec_fetch_site: text(&SEC_FETCH_SITE),
            origin: text(&ORIGIN),
            referer: text(&REFERER),
        };
        let own_origin = own_origin(exchange);
        let failure = match self.model.check(own_origin.as_ref(), browser) {
            Verdict::Allowed => return Ok(()),
            Verdict::Rejected(failure) => failure,
            Verdict::TokenRequired => {
                let cookie = self.token_cookie(headers);
                let header = text(&self.header_name);
                match self.model.verify_submission(cookie, header, now) {
                    Ok(()) => return Ok(()),
                    Err(failure) => failure,
                }
            }
        };
        Err(rejection(failure))
    }
}

fn rejection(failure: Failure) -> Rejection {
    Rejection::new(StatusCode::FORBIDDEN, failure.code(), failure.message()).by_policy(NAME)
}

impl Policy for Csrf {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Browser
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        let outcome = self.check(exchange);
        Box::pin(std::future::ready(outcome))
    }
}
