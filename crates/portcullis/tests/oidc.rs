//! OpenID Connect against the real gateway and the certified `oidc-provider` npm package.
//!
//! `tests/oidc/provider.js` runs the provider on 127.0.0.1 on a port the OS picks. It needs
//! Node.js and `npm ci` in `tests/oidc` (`.ci/run` does both). Without `node` on the `PATH`,
//! each test prints a message and passes without running. Without the installed package, it
//! fails with the install command.
//!
//! A small browser in this file keeps cookies and follows redirects, and it fills in the
//! provider's development login and consent forms, so the whole authorization code flow runs
//! as it does for a user.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{Gateway, admin, client, error_body, node_config, upstream};
use portcullis_policy::oidc::{Purpose, SessionKeys};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

const CLIENT_ID: &str = "gateway";
const CLIENT_SECRET: &str = "oidc-test-client-secret-00000000001";
const API_CLIENT_ID: &str = "api-client";
const API_CLIENT_SECRET: &str = "oidc-test-api-client-secret-000000002";
const SESSION_SECRET: &str = "oidc-test-session-secret-0000000000000000000000003";
const SESSION_COOKIE: &str = "portcullis_session";
const LOGIN_COOKIE: &str = "portcullis_session_login";
const API_RESOURCE: &str = "urn:portcullis:api";

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Returns whether `node` runs. The tests skip without it.
fn node_available() -> bool {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!("skipping: `node` is not installed, so the OpenID provider cannot run");
    }
    found
}

/// The `oidc-provider` process.
struct Provider {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    issuer: String,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    fn start() -> Provider {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci` in {}",
            dir.display()
        );
        let log_dir = tempfile::tempdir().unwrap();
        let stderr_path = log_dir.path().join("provider.stderr");
        let mut child = Command::new("node")
            .arg("provider.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let first = read_json_line(&mut stdout, &stderr_path);
        Provider {
            child,
            stdin,
            stdout,
            issuer: first["issuer"].as_str().unwrap().to_string(),
            stderr_path,
            _dir: log_dir,
        }
    }

    /// Registers the clients, with the gateway's callback, and waits until the provider serves.
    fn configure(&mut self, gateway: SocketAddr, access_token_ttl: u64) {
        let secret_client = |id: &str, secret: &str| {
            json!({
                "client_id": id,
                "client_secret": secret,
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
            })
        };
        let settings = json!({
            "access_token_ttl": access_token_ttl,
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "redirect_uris": [format!("http://{gateway}/app/callback")],
                    "post_logout_redirect_uris": [format!("http://{gateway}/app/bye")],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
                secret_client(API_CLIENT_ID, API_CLIENT_SECRET),
            ],
        });
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{settings}").unwrap();
        stdin.flush().unwrap();
        let ready = read_json_line(&mut self.stdout, &self.stderr_path);
        assert_eq!(ready["ready"], true, "{ready}");
    }

    /// Returns the number of successful grants of `grant_type`.
    async fn grants(&self, grant_type: &str) -> u64 {
        let events: Value = client()
            .get(format!("{}/test/events", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events["grants"][grant_type].as_u64().unwrap_or(0)
    }

    /// Returns an access token of the API client: a JWT for the API resource when `jwt`,
    /// an opaque token otherwise.
    async fn client_credentials(&self, jwt: bool) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if jwt {
            form.push(("resource", API_RESOURCE));
            form.push(("scope", "api"));
        }
        let response = client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(API_CLIENT_ID, Some(API_CLIENT_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "client credentials grant failed");
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_json_line(stdout: &mut BufReader<ChildStdout>, stderr: &std::path::Path) -> Value {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| {
        panic!(
            "provider.js wrote {line:?} instead of JSON:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    })
}

/// A browser: a cookie jar shared by the gateway and the provider (cookies do not depend on
/// the port), no automatic redirects, and `Accept: text/html` on every navigation.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stores the response's cookies: an empty value or `Max-Age=0` deletes one.
    fn store_cookies(&mut self, response: &reqwest::Response) {
        for header in response.headers().get_all(SET_COOKIE) {
            let text = header.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let deleted = value.is_empty() || text.to_ascii_lowercase().contains("max-age=0");
            if deleted {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let mut request = request.header(ACCEPT, "text/html,application/xhtml+xml");
        if !self.cookies.is_empty() {
            request = request.header(COOKIE, self.cookie_header());
        }
        let response = request.send().await.unwrap();
        self.store_cookies(&response);
        response
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let request = self.http.post(url).form(form);
        self.send(request).await
    }

    /// Follows redirects from `response` until a response that is not a redirect, or until the
    /// next location starts with `stop_at`, which is returned without being requested.
    async fn follow(
        &mut self,
        mut response: reqwest::Response,
        stop_at: Option<&str>,
    ) -> Result<reqwest::Response, String> {
        for _ in 0..20 {
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let next = location(&response);
            if stop_at.is_some_and(|prefix| next.starts_with(prefix)) {
                return Err(next);
            }
            response = self.get(&next).await;
        }
        panic!("more than 20 redirects");
    }
}

/// Returns the absolute `Location` of a redirect.
fn location(response: &reqwest::Response) -> String {
    let value = response
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("{} without Location", response.status()))
        .to_str()
        .unwrap();
    response.url().join(value).unwrap().to_string()
}

/// Returns the absolute URL in the `action` attribute of the page's form.
fn form_action(page_url: &reqwest::Url, html: &str) -> String {
    let start = html.find("action=\"").expect("the page has a form") + "action=\"".len();
    let end = start + html[start..].find('"').unwrap();
    page_url.join(&html[start..end]).unwrap().to_string()
}

/// Returns the value of the hidden input `name` of the page's form.
fn hidden_input(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = start + html[start..].find('"')?;
    Some(html[start..end].to_string())
}

/// Returns the `Set-Cookie` header that sets `name`.
fn set_cookie<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with(&format!("{name}=")))
}

fn query_value(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A provider, an echo upstream and a gateway with the `openid-connect`, `jwt` and
/// `oauth2-introspection` routes on that provider.
struct Setup {
    provider: Provider,
    gateway: Gateway,
}

impl Setup {
    /// Starts everything, or returns `None` when `node` is missing. `refresh_before` and
    /// `access_token_ttl` are in seconds.
    async fn start(access_token_ttl: u64, refresh_before: u64) -> Option<Setup> {
        if !node_available() {
            return None;
        }
        let mut provider = Provider::start();
        let upstream = upstream().await;
        let config = format!(
            r#"{}
services:
  - name: app
    targets: [http://{upstream}]
consumers:
  - name: alice
    roles: [staff]
  - name: {API_CLIENT_ID}
"#,
            node_config()
        );
        let gateway = Gateway::start_with_env(
            &config,
            &[
                ("OIDC_CLIENT_SECRET", CLIENT_SECRET),
                ("OIDC_API_CLIENT_SECRET", API_CLIENT_SECRET),
                ("OIDC_SESSION_SECRET", SESSION_SECRET),
            ],
        );
        provider.configure(gateway.proxy[0], access_token_ttl);
        let setup = Setup { provider, gateway };
        let issuer = setup.provider.issuer.clone();
        let base = format!("http://{}", setup.gateway.proxy[0]);
        setup
            .put_route(json!({
                "name": "app",
                "service": "app",
                "paths": ["/app"],
                "strip_prefix": true,
                "policies": [{"openid-connect": {
                    "issuer": issuer,
                    "client_id": CLIENT_ID,
                    "client_secret_env": "OIDC_CLIENT_SECRET",
                    "session_secret_env": "OIDC_SESSION_SECRET",
                    "redirect_uri": format!("{base}/app/callback"),
                    "scopes": ["openid", "email"],
                    "logout_path": "/app/logout",
                    "post_logout_redirect_uri": format!("{base}/app/bye"),
                    "refresh_before": format!("{refresh_before}s"),
                    "accept_bearer": true,
                    "bearer_audiences": [API_RESOURCE],
                    "forward_claims": {"email": "x-user-email"},
                }}],
            }))
            .await;
        setup
            .put_route(json!({
                "name": "jwt",
                "service": "app",
                "paths": ["/jwt"],
                "strip_prefix": true,
                "policies": [{"jwt": {
                    "issuer": issuer,
                    "discovery": true,
                    "audiences": [API_RESOURCE],
                    "algorithms": ["RS256"],
                    "consumer_claim": "client_id",
                }}],
            }))
            .await;
        setup
            .put_route(json!({
                "name": "introspect",
                "service": "app",
                "paths": ["/introspect"],
                "strip_prefix": true,
                "policies": [{"oauth2-introspection": {
                    "issuer": issuer,
                    "client_id": API_CLIENT_ID,
                    "client_secret_env": "OIDC_API_CLIENT_SECRET",
                    "consumer_claim": "client_id",
                }}],
            }))
            .await;
        Some(setup)
    }

    async fn put_route(&self, route: Value) {
        let name = route["name"].as_str().unwrap().to_string();
        let response = admin(
            &client(),
            Method::PUT,
            &self.gateway,
            &format!("/routes/{name}"),
        )
        .json(&route)
        .send()
        .await
        .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "PUT /routes/{name}: {status} {body}");
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Runs the login from a navigation to `path` up to the callback, filling in the provider's
    /// login and consent forms as `user`. Returns the callback URL without requesting it.
    async fn login_until_callback(&self, browser: &mut Browser, path: &str, user: &str) -> String {
        let response = browser.get(&self.url(path)).await;
        assert_eq!(response.status(), 302, "navigation without a session");
        let callback = self.url("/app/callback");

        // The login form.
        let page = browser.follow(response, Some(&callback)).await.unwrap();
        assert_eq!(page.status(), 200);
        let page_url = page.url().clone();
        let html = page.text().await.unwrap();
        assert!(html.contains("name=\"login\""), "not a login form:\n{html}");
        let action = form_action(&page_url, &html);
        let response = browser
            .post_form(
                &action,
                &[("prompt", "login"), ("login", user), ("password", "any")],
            )
            .await;

        // The consent form.
        let page = browser.follow(response, Some(&callback)).await.unwrap();
        assert_eq!(page.status(), 200);
        let page_url = page.url().clone();
        let html = page.text().await.unwrap();
        assert!(
            html.contains("name=\"prompt\" value=\"consent\""),
            "not a consent form:\n{html}"
        );
        let action = form_action(&page_url, &html);
        let response = browser.post_form(&action, &[("prompt", "consent")]).await;
        browser
            .follow(response, Some(&callback))
            .await
            .expect_err("the provider redirects to the callback")
    }

    /// Logs `user` in and returns the page's final response.
    async fn login(&self, browser: &mut Browser, path: &str, user: &str) -> reqwest::Response {
        let callback = self.login_until_callback(browser, path, user).await;
        let response = browser.get(&callback).await;
        assert_eq!(
            response.status(),
            302,
            "callback: {}",
            response.text().await.unwrap()
        );
        browser.follow(response, None).await.unwrap()
    }

    /// Sends a request that is not a navigation, as a script would.
    async fn api_get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = client()
            .get(self.url(path))
            .header(ACCEPT, "application/json");
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn code_flow_reaches_upstream() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };

    // Discovery: the provider's document names the endpoints that the gateway uses.
    let discovery: Value = client()
        .get(format!(
            "{}/.well-known/openid-configuration",
            setup.provider.issuer
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authorization_endpoint = discovery["authorization_endpoint"].as_str().unwrap();

    let response = setup.api_get("/app/hello", None).await;
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_session");

    let mut browser = Browser::new();
    let response = browser.get(&setup.url("/app/hello?x=1")).await;
    assert_eq!(response.status(), 302);
    let redirect = location(&response);
    assert!(
        redirect.starts_with(authorization_endpoint),
        "{redirect} is not at {authorization_endpoint}"
    );
    for (name, expected) in [
        ("response_type", Some("code")),
        ("client_id", Some(CLIENT_ID)),
        ("code_challenge_method", Some("S256")),
        ("scope", Some("openid email")),
    ] {
        assert_eq!(query_value(&redirect, name).as_deref(), expected, "{name}");
    }
    for name in ["state", "nonce", "code_challenge"] {
        let value = query_value(&redirect, name).unwrap_or_default();
        assert_eq!(value.len(), 43, "{name} carries 256 bits");
    }
    let login_cookie = set_cookie(&response, LOGIN_COOKIE).expect("login cookie");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(login_cookie.contains(attribute), "{login_cookie}");
    }

    let callback = setup
        .login_until_callback(&mut browser, "/app/hello?x=1", "alice")
        .await;
    let response = browser.get(&callback).await;
    assert_eq!(response.status(), 302);
    assert_eq!(location(&response), setup.url("/app/hello?x=1"));
    let session_cookie = set_cookie(&response, SESSION_COOKIE).expect("session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(
        session_cookie.len() < 4096,
        "{} bytes",
        session_cookie.len()
    );
    let deleted_login = set_cookie(&response, LOGIN_COOKIE).expect("login cookie deleted");
    assert!(deleted_login.contains("Max-Age=0"), "{deleted_login}");

    let response = browser.get(&setup.url("/app/hello?x=1")).await;
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-consumer-name"], "alice");
    assert_eq!(echo["headers"]["x-user-email"], "alice@example.test");
    let upstream_cookies = echo["headers"]["cookie"].as_str().unwrap_or_default();
    assert!(
        !upstream_cookies.contains(SESSION_COOKIE),
        "the upstream saw the session cookie: {upstream_cookies}"
    );

    // A script on the page (not a navigation) uses the same session.
    let cookie = format!("{SESSION_COOKIE}={}", browser.cookies[SESSION_COOKIE]);
    let response = setup.api_get("/app/data", Some(&cookie)).await;
    assert_eq!(response.status(), 200);

    // A client cannot set the header that carries a claim.
    let response = client()
        .get(setup.url("/app/data"))
        .header(COOKIE, &cookie)
        .header("x-user-email", "mallory@example.test")
        .send()
        .await
        .unwrap();
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-email"], "alice@example.test");
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_or_forged_session_rejected() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let mut browser = Browser::new();
    let page = setup.login(&mut browser, "/app/", "alice").await;
    assert_eq!(page.status(), 200);
    let sealed = browser.cookies[SESSION_COOKIE].clone();

    // One changed character anywhere fails authentication.
    for index in [0, sealed.len() / 2, sealed.len() - 1] {
        let mut changed: Vec<u8> = sealed.clone().into_bytes();
        changed[index] = if changed[index] == b'A' { b'B' } else { b'A' };
        let cookie = format!("{SESSION_COOKIE}={}", String::from_utf8(changed).unwrap());
        let response = setup.api_get("/app/", Some(&cookie)).await;
        let body = error_body(response, 401).await;
        assert_eq!(body["error"]["code"], "invalid_session", "index {index}");
    }

    // A session sealed with another secret is forged. The same session sealed with the
    // configured secret is accepted, so the forgery fails only because of the key.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let session = json!({
        "claims": {"sub": "alice", "iss": setup.provider.issuer},
        "expires_at": now + 3600,
    })
    .to_string();
    let seal = |secret: &str| {
        SessionKeys::derive(secret.as_bytes(), &setup.provider.issuer, CLIENT_ID)
            .seal(Purpose::Session, SESSION_COOKIE, session.as_bytes())
            .unwrap()
    };
    let forged = format!(
        "{SESSION_COOKIE}={}",
        seal("another-secret-of-at-least-32-bytes-0000")
    );
    let response = setup.api_get("/app/", Some(&forged)).await;
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_session");

    let genuine = format!("{SESSION_COOKIE}={}", seal(SESSION_SECRET));
    let response = setup.api_get("/app/", Some(&genuine)).await;
    assert_eq!(response.status(), 200);

    // A browser with a broken cookie is redirected to log in again, and the cookie is deleted.
    let mut stranger = Browser::new();
    stranger
        .cookies
        .insert(SESSION_COOKIE.into(), sealed[1..].to_string());
    let response = stranger.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 302);
    assert!(location(&response).starts_with(&setup.provider.issuer));
    assert!(
        !stranger.cookies.contains_key(SESSION_COOKIE),
        "the broken cookie is deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_state_mismatch_rejected() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let mut browser = Browser::new();
    let callback = setup
        .login_until_callback(&mut browser, "/app/", "alice")
        .await;
    let state = query_value(&callback, "state").unwrap();
    let other_state = callback.replace(&state, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let mut request = reqwest::Client::new()
        .get(&other_state)
        .header(ACCEPT, "text/html");
    request = request.header(COOKIE, browser.cookie_header());
    let response = request.send().await.unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "state_mismatch");

    // Without the login cookie, as when a callback is sent to another browser.
    let response = client().get(&callback).send().await.unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "state_mismatch");

    // The genuine callback still works, so the code was not spent by the rejected ones.
    let response = browser.get(&callback).await;
    assert_eq!(response.status(), 302);
    assert!(browser.cookies.contains_key(SESSION_COOKIE));
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_callback_rejected() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let mut browser = Browser::new();
    let callback = setup
        .login_until_callback(&mut browser, "/app/", "alice")
        .await;
    let login_cookie = format!("{LOGIN_COOKIE}={}", browser.cookies[LOGIN_COOKIE]);
    let response = browser.get(&callback).await;
    assert_eq!(response.status(), 302);
    let codes_redeemed = setup.provider.grants("authorization_code").await;
    assert_eq!(codes_redeemed, 1);

    // The same callback with a copy of the login cookie: its nonce is spent.
    let response = client()
        .get(&callback)
        .header(COOKIE, &login_cookie)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "nonce_replayed");
    assert_eq!(
        setup.provider.grants("authorization_code").await,
        codes_redeemed,
        "a replay never reaches the token endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_refreshes_access_token() {
    // Access tokens live 6 s and are refreshed in their last 4 s.
    let Some(setup) = Setup::start(6, 4).await else {
        return;
    };
    let mut browser = Browser::new();
    let page = setup.login(&mut browser, "/app/", "alice").await;
    assert_eq!(page.status(), 200);
    assert_eq!(setup.provider.grants("refresh_token").await, 0);
    let first = browser.cookies[SESSION_COOKIE].clone();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = browser.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 200);
    assert!(
        set_cookie(&response, SESSION_COOKIE).is_some(),
        "a refresh sets a new session cookie"
    );
    assert_eq!(setup.provider.grants("refresh_token").await, 1);
    assert_ne!(browser.cookies[SESSION_COOKIE], first);

    // The refreshed session works and needs no other refresh yet.
    let response = browser.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 200);
    assert!(set_cookie(&response, SESSION_COOKIE).is_none());
    assert_eq!(setup.provider.grants("refresh_token").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_refresh_token_ends_session() {
    // Access tokens live 6 s and are refreshed in their last 4 s.
    let Some(setup) = Setup::start(6, 4).await else {
        return;
    };
    let mut browser = Browser::new();
    let page = setup.login(&mut browser, "/app/", "alice").await;
    assert_eq!(page.status(), 200);

    // The test has the session secret, so it can read the refresh token and revoke it.
    let keys = SessionKeys::derive(SESSION_SECRET.as_bytes(), &setup.provider.issuer, CLIENT_ID);
    let plaintext = keys
        .open(
            Purpose::Session,
            SESSION_COOKIE,
            &browser.cookies[SESSION_COOKIE],
        )
        .expect("the session cookie opens with the configured secret");
    let session: Value = serde_json::from_slice(&plaintext).unwrap();
    let refresh_token = session["refresh_token"].as_str().expect("a refresh token");
    let response = client()
        .post(format!("{}/token/revocation", setup.provider.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "revocation");

    // Within the refresh window the refresh fails, but the access token is still valid.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = browser.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 200);
    assert!(set_cookie(&response, SESSION_COOKIE).is_none());

    // Once the access token has expired, the session is over.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let cookie = format!("{SESSION_COOKIE}={}", browser.cookies[SESSION_COOKIE]);
    let response = setup.api_get("/app/", Some(&cookie)).await;
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_session");
    let response = browser.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 302);
    assert!(location(&response).starts_with(&setup.provider.issuer));
    assert!(
        !browser.cookies.contains_key(SESSION_COOKIE),
        "the ended session's cookie is deleted"
    );
    assert_eq!(setup.provider.grants("refresh_token").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_session_at_provider() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let mut browser = Browser::new();
    setup.login(&mut browser, "/app/", "alice").await;

    let response = browser.get(&setup.url("/app/logout")).await;
    assert_eq!(response.status(), 302);
    let redirect = location(&response);
    assert!(
        redirect.starts_with(&format!("{}/session/end", setup.provider.issuer)),
        "{redirect}"
    );
    assert!(
        query_value(&redirect, "id_token_hint").is_some(),
        "{redirect}"
    );
    assert_eq!(
        query_value(&redirect, "post_logout_redirect_uri"),
        Some(setup.url("/app/bye"))
    );
    assert!(
        !browser.cookies.contains_key(SESSION_COOKIE),
        "the session cookie is deleted"
    );

    // The provider accepts the request and, after the user confirms, returns to the app.
    let page = browser.get(&redirect).await;
    assert_eq!(page.status(), 200);
    let page_url = page.url().clone();
    let html = page.text().await.unwrap();
    let action = form_action(&page_url, &html);
    let xsrf = hidden_input(&html, "xsrf").expect("the logout form has an xsrf field");
    let response = browser
        .post_form(&action, &[("xsrf", &xsrf), ("logout", "yes")])
        .await;
    let end = browser
        .follow(response, Some(&setup.url("/app/bye")))
        .await
        .expect_err("the provider returns to post_logout_redirect_uri");
    assert!(end.starts_with(&setup.url("/app/bye")), "{end}");

    let response = browser.get(&setup.url("/app/")).await;
    assert_eq!(response.status(), 302, "logged out");
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_on_session_route() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let token = setup.provider.client_credentials(true).await;
    let response = client()
        .get(setup.url("/app/data"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-name"], API_CLIENT_ID);
    assert!(
        echo["headers"]["authorization"].is_null(),
        "the token is removed before forwarding"
    );

    // A presented token that fails gets 401, never a login redirect.
    let mut changed = token.clone();
    changed.pop();
    let response = client()
        .get(setup.url("/app/data"))
        .header(AUTHORIZATION, format!("Bearer {changed}"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_token");

    // An opaque token is not a JWT of the issuer.
    let opaque = setup.provider.client_credentials(false).await;
    let response = client()
        .get(setup.url("/app/data"))
        .header(AUTHORIZATION, format!("Bearer {opaque}"))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_policy_uses_provider_discovery() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let token = setup.provider.client_credentials(true).await;
    let response = client()
        .get(setup.url("/jwt/data"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-name"], API_CLIENT_ID);

    let mut changed = token.into_bytes();
    let middle = changed.len() / 2;
    changed[middle] = if changed[middle] == b'A' { b'B' } else { b'A' };
    let response = client()
        .get(setup.url("/jwt/data"))
        .bearer_auth(String::from_utf8(changed).unwrap())
        .send()
        .await
        .unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_uses_provider_endpoint() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let token = setup.provider.client_credentials(false).await;
    let response = client()
        .get(setup.url("/introspect/data"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-name"], API_CLIENT_ID);

    let response = client()
        .get(setup.url("/introspect/data"))
        .bearer_auth("not-a-token-the-provider-issued")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_provider_returns_503() {
    let Some(setup) = Setup::start(3600, 60).await else {
        return;
    };
    let closed = common::closed_port();
    let issuer = format!("http://{closed}");
    setup
        .put_route(json!({
            "name": "down",
            "service": "app",
            "paths": ["/down"],
            "policies": [{"openid-connect": {
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "client_secret_env": "OIDC_CLIENT_SECRET",
                "session_secret_env": "OIDC_SESSION_SECRET",
                "redirect_uri": setup.url("/down/callback"),
                "timeout": "1s",
            }}],
        }))
        .await;
    let mut browser = Browser::new();
    let response = browser.get(&setup.url("/down/page")).await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "idp_unavailable");
    let log = setup.gateway.stderr();
    assert!(
        log.lines()
            .any(|line| line.contains("OpenID provider call failed") && line.contains(&issuer)),
        "no warning with the issuer in:\n{log}"
    );
}
