//! OAuth 2.0 token introspection against the real gateway and a local authorization server.
//!
//! The authorization server is an in-process hyper server on port 0 that speaks RFC 7662: it
//! reads the form-encoded POST, checks the client authentication of the configured method, and
//! responds with JSON or with RFC 9701 JWTs. Keys and signed responses come from PyJWT through
//! `tests/introspection/authz.py`, which also verifies `private_key_jwt` client assertions, so
//! the gateway's signing code is checked by an independent implementation. The interpreter is
//! `PORTCULLIS_TEST_PYTHON`, or `.venv/bin/python` (made by `scripts/python-env.sh`).

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::{ADMIN_TOKEN, Gateway, client, error_body, upstream};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const CLIENT_ID: &str = "gateway";
const SECRET: &str = "introspection-client-secret-0001";
const SECRET_ENV: &str = "PORTCULLIS_TEST_INTROSPECTION_SECRET";
const KEY_ENV: &str = "PORTCULLIS_TEST_INTROSPECTION_KEY";

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        default.exists(),
        "no Python with PyJWT at {}: run scripts/python-env.sh, or set PORTCULLIS_TEST_PYTHON",
        default.display()
    );
    default
}

/// Runs `authz.py` with `request` and returns its JSON output.
fn authz(request: &Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/introspection/authz.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run authz.py");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "authz.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("authz.py writes JSON")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The client authentication the server expects.
#[derive(Clone)]
enum ExpectedAuth {
    Basic,
    Post,
    /// `private_key_jwt`, verified with this public key.
    PrivateKeyJwt(String),
}

/// The server's response for one token.
#[derive(Clone)]
enum Answer {
    Json(Value),
    Jwt(String),
}

#[derive(Default)]
struct ServerState {
    answers: HashMap<String, Answer>,
    documents: HashMap<String, String>,
    seen_jti: HashSet<String>,
    auth_failures: Vec<String>,
}

/// A local RFC 7662 authorization server.
struct AuthServer {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<ServerState>>,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// Tasks of open connections, aborted by [`AuthServer::stop`] so pooled connections close.
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl AuthServer {
    /// Starts the server, which delays every introspection response by `delay`.
    async fn start(auth: ExpectedAuth, delay: Duration) -> AuthServer {
        AuthServer::start_with(auth, delay, None).await
    }

    /// Starts the server over TLS with the certificate and key of `certified`.
    async fn start_tls(auth: ExpectedAuth, certified: &rcgen::CertifiedKey) -> AuthServer {
        let chain = vec![certified.cert.der().clone()];
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        AuthServer::start_with(auth, Duration::ZERO, Some(acceptor)).await
    }

    async fn start_with(
        auth: ExpectedAuth,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> AuthServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<ServerState>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = {
            let (state, calls, connections) = (state.clone(), calls.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (state, calls, auth) = (state.clone(), calls.clone(), auth.clone());
                    let service = hyper::service::service_fn(move |request| {
                        let (state, calls, auth) = (state.clone(), calls.clone(), auth.clone());
                        async move {
                            let endpoint = format!("{scheme}://{addr}/introspect");
                            Ok::<_, Infallible>(
                                handle(request, &endpoint, &state, &calls, &auth, delay).await,
                            )
                        }
                    });
                    let tls = tls.clone();
                    let connection = tokio::spawn(async move {
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            None => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    let io = hyper_util::rt::TokioIo::new(stream);
                                    let _ = http.serve_connection(io, service).await;
                                }
                            }
                        }
                    });
                    connections.lock().unwrap().push(connection.abort_handle());
                }
            })
        };
        AuthServer {
            addr,
            scheme,
            state,
            calls,
            task,
            connections,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn answer(&self, token: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(token.to_string(), answer);
    }

    fn document(&self, path: &str, body: String) {
        self.state
            .lock()
            .unwrap()
            .documents
            .insert(path.to_string(), body);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn auth_failures(&self) -> Vec<String> {
        self.state.lock().unwrap().auth_failures.clone()
    }

    /// Stops accepting connections; the port then refuses them.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn response(status: u16, content_type: &str, body: String) -> Response {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn form_value(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

/// Decodes `application/x-www-form-urlencoded` text.
fn parse_form(text: &str) -> Vec<(String, String)> {
    let decode = |part: &str| {
        let bytes = part.replace('+', " ");
        percent_decode(&bytes)
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut output = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            output.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            output.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(output).unwrap()
}

/// Checks the client authentication of one request and returns why it failed.
fn check_client(
    headers: &http::HeaderMap,
    form: &[(String, String)],
    auth: &ExpectedAuth,
    endpoint: &str,
    state: &Mutex<ServerState>,
) -> Result<(), String> {
    match auth {
        ExpectedAuth::Basic => {
            let header = headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .ok_or("no Authorization header")?;
            let encoded = header.strip_prefix("Basic ").ok_or("not Basic")?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| "not base64")?;
            let text = String::from_utf8(decoded).map_err(|_| "not UTF-8")?;
            let (id, secret) = text.split_once(':').ok_or("no `:`")?;
            if percent_decode(id) != CLIENT_ID || percent_decode(secret) != SECRET {
                return Err("wrong Basic credentials".into());
            }
            if form_value(form, "client_secret").is_some() {
                return Err("secret sent twice".into());
            }
        }
        ExpectedAuth::Post => {
            if headers.contains_key("authorization") {
                return Err("unexpected Authorization header".into());
            }
            if form_value(form, "client_id").as_deref() != Some(CLIENT_ID)
                || form_value(form, "client_secret").as_deref() != Some(SECRET)
            {
                return Err("wrong client_id or client_secret in the body".into());
            }
        }
        ExpectedAuth::PrivateKeyJwt(public_pem) => {
            if form_value(form, "client_assertion_type").as_deref()
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("wrong client_assertion_type".into());
            }
            let assertion = form_value(form, "client_assertion").ok_or("no client_assertion")?;
            let verdict = authz(&json!({
                "op": "verify",
                "assertion": assertion,
                "public_pem": public_pem,
                "client_id": CLIENT_ID,
                "audience": endpoint,
            }));
            if verdict["ok"] != true {
                return Err(format!("assertion rejected: {}", verdict["error"]));
            }
            let lifetime = verdict["lifetime"].as_i64().unwrap();
            if !(1..=300).contains(&lifetime) {
                return Err(format!("assertion lifetime {lifetime}s is not short"));
            }
            let jti = verdict["jti"].as_str().unwrap().to_string();
            if !state.lock().unwrap().seen_jti.insert(jti) {
                return Err("assertion jti reused".into());
            }
        }
    }
    Ok(())
}

async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    endpoint: &str,
    state: &Mutex<ServerState>,
    calls: &AtomicUsize,
    auth: &ExpectedAuth,
    delay: Duration,
) -> Response {
    let path = request.uri().path().to_string();
    if request.method() == http::Method::GET {
        let document = state.lock().unwrap().documents.get(&path).cloned();
        return match document {
            Some(body) => response(200, "application/json", body),
            None => response(404, "text/plain", String::new()),
        };
    }
    if path != "/introspect" {
        return response(404, "text/plain", String::new());
    }

    calls.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let form = parse_form(std::str::from_utf8(&body).unwrap());

    // `authz.py` blocks, so `block_in_place` moves this worker's other tasks elsewhere.
    let auth_check =
        tokio::task::block_in_place(|| check_client(&parts.headers, &form, auth, endpoint, state));
    if let Err(reason) = auth_check {
        state.lock().unwrap().auth_failures.push(reason);
        return response(
            401,
            "application/json",
            r#"{"error":"invalid_client"}"#.into(),
        );
    }

    tokio::time::sleep(delay).await;
    let token = form_value(&form, "token").unwrap_or_default();
    let answer = state.lock().unwrap().answers.get(&token).cloned();
    let accepts_jwt = parts
        .headers
        .get("accept")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("application/token-introspection+jwt"));
    match answer {
        Some(Answer::Json(value)) => response(200, "application/json", value.to_string()),
        // RFC 9701 section 4: a JWT response only for a request whose `Accept` names its type.
        Some(Answer::Jwt(_)) if !accepts_jwt => response(
            406,
            "application/json",
            r#"{"error":"not_acceptable"}"#.into(),
        ),
        Some(Answer::Jwt(jwt)) => response(200, "application/token-introspection+jwt", jwt),
        None => response(200, "application/json", r#"{"active":false}"#.into()),
    }
}

fn config(upstream: SocketAddr, policy: &str) -> String {
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
  token: {ADMIN_TOKEN}
store:
  sqlite: portcullis.db
access_log: access.log
services:
  - name: orders
    targets: [http://{upstream}]
routes:
  - name: orders
    service: orders
    paths: [/orders]
    policies:
      - oauth2-introspection:
{policy}
  - name: admin-orders
    service: orders
    paths: [/admin-orders]
    policies:
      - oauth2-introspection:
{policy}
      - acl: {{ scopes: [orders.admin] }}
consumers:
  - name: alice
  - name: bob
"#
    )
}

/// Returns the policy body for `server`, indented for [`config`], with `extra` lines added.
fn policy(server: &AuthServer, client_auth: &str, extra: &str) -> String {
    let mut text = format!(
        "          introspection_endpoint: {}\n          client_id: {CLIENT_ID}\n          client_auth: {client_auth}\n",
        server.url("/introspect")
    );
    if client_auth == "private_key_jwt" {
        text.push_str(&format!("          private_key_env: {KEY_ENV}\n"));
    } else {
        text.push_str(&format!("          client_secret_env: {SECRET_ENV}\n"));
    }
    for line in extra.lines().filter(|line| !line.trim().is_empty()) {
        text.push_str(&format!("          {}\n", line.trim()));
    }
    text
}

async fn get(gateway: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(gateway.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Checks a 401 with `error="invalid_token"` and returns the message.
async fn expect_invalid(response: reqwest::Response, token: &str, case: &str) -> String {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("case {case}: no WWW-Authenticate"));
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "case {case}: {challenge}"
    );
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_token", "case {case}");
    assert!(
        !body.to_string().contains(token),
        "case {case}: body echoes the token"
    );
    body["error"]["message"].as_str().unwrap().to_string()
}

fn active(subject: &str, scope: &str) -> Answer {
    Answer::Json(json!({
        "active": true,
        "sub": subject,
        "scope": scope,
        "client_id": "app",
        "exp": now() + 600,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_against_gateway() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    server.answer("tok-inactive", Answer::Json(json!({"active": false})));
    server.answer(
        "tok-expired",
        Answer::Json(json!({"active": true, "sub": "alice", "aud": "orders", "exp": now() - 120})),
    );
    server.answer(
        "tok-wrong-aud",
        Answer::Json(json!({"active": true, "sub": "alice", "aud": "billing"})),
    );
    server.answer(
        "tok-wrong-iss",
        Answer::Json(
            json!({"active": true, "sub": "alice", "aud": "orders", "iss": "https://other.test"}),
        ),
    );
    server.answer(
        "tok-not-yet",
        Answer::Json(json!({"active": true, "sub": "alice", "aud": "orders", "nbf": now() + 600})),
    );
    server.answer(
        "tok-stranger",
        Answer::Json(json!({"active": true, "sub": "mallory", "aud": "orders"})),
    );
    server.answer(
        "tok-string-active",
        Answer::Json(json!({"active": "true", "sub": "alice"})),
    );
    server.answer(
        "tok-active",
        Answer::Json(json!({
            "active": true, "sub": "alice", "scope": "orders.read orders.admin",
            "aud": ["orders", "billing"], "exp": now() + 600, "tenant": "t1",
        })),
    );
    server.answer(
        "tok-reader",
        Answer::Json(
            json!({"active": true, "sub": "bob", "scope": "orders.read", "aud": "orders"}),
        ),
    );
    let upstream = upstream().await;
    let extra =
        "issuer: https://as.test\naudiences: [orders]\nforward_claims: { tenant: x-tenant }";
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_basic", extra)),
        &[(SECRET_ENV, SECRET)],
    );

    let response = get(&gateway, "/orders", Some("tok-active")).await;
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    let text = echoed.to_string();
    assert!(text.contains("t1"), "x-tenant not forwarded: {text}");
    assert!(
        !text.contains("tok-active"),
        "the token reached the upstream: {text}"
    );
    assert_eq!(server.calls(), 1);

    // A cache hit makes no call.
    let response = get(&gateway, "/orders", Some("tok-active")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.calls(), 1, "a cached token was introspected again");

    // Required scopes go through `acl`.
    let response = get(&gateway, "/admin-orders", Some("tok-active")).await;
    assert_eq!(response.status(), 200);
    let response = get(&gateway, "/admin-orders", Some("tok-reader")).await;
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "insufficient_scope", "{body}");

    let cases = [
        ("tok-inactive", "the bearer token is invalid"),
        ("tok-unknown", "the bearer token is invalid"),
        ("tok-expired", "the bearer token has expired"),
        ("tok-wrong-aud", "the bearer token is invalid"),
        ("tok-wrong-iss", "the bearer token is invalid"),
        ("tok-not-yet", "the bearer token is invalid"),
        (
            "tok-stranger",
            "the bearer token does not belong to a known consumer",
        ),
    ];
    for (token, message) in cases {
        let response = get(&gateway, "/orders", Some(token)).await;
        assert_eq!(response.status(), 401, "case {token}");
        assert_eq!(
            expect_invalid(response, token, token).await,
            message,
            "case {token}"
        );
    }

    let response = get(&gateway, "/orders", None).await;
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_token");

    // A response whose `active` is not a boolean is a broken server, not an invalid token.
    let response = get(&gateway, "/orders", Some("tok-string-active")).await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "introspection_unavailable");

    assert!(
        server.auth_failures().is_empty(),
        "{:?}",
        server.auth_failures()
    );
    let log = gateway.stderr();
    for token in ["tok-active", "tok-reader", "tok-inactive", "tok-expired"] {
        assert!(!log.contains(token), "the log contains {token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_methods() {
    let minted = authz(&json!({"op": "mint", "keys": {"rsa": "RSA", "p256": "P-256"}}));
    let upstream = upstream().await;
    let cases = [
        ("client_secret_basic", ExpectedAuth::Basic, None),
        ("client_secret_post", ExpectedAuth::Post, None),
        (
            "private_key_jwt",
            ExpectedAuth::PrivateKeyJwt(String::new()),
            Some("rsa"),
        ),
        (
            "private_key_jwt",
            ExpectedAuth::PrivateKeyJwt(String::new()),
            Some("p256"),
        ),
    ];
    for (method, expected, key) in cases {
        let case = format!("{method} {}", key.unwrap_or(""));
        let expected = match (expected, key) {
            (ExpectedAuth::PrivateKeyJwt(_), Some(key)) => {
                ExpectedAuth::PrivateKeyJwt(minted["public_pem"][key].as_str().unwrap().into())
            }
            (expected, _) => expected,
        };
        let server = AuthServer::start(expected, Duration::ZERO).await;
        server.answer("tok-1", active("alice", ""));
        server.answer("tok-2", active("bob", ""));
        let private_pem = key.map_or(String::new(), |key| {
            minted["private_pem"][key].as_str().unwrap().to_string()
        });
        let gateway = Gateway::start_with_env(
            &config(upstream, &policy(&server, method, "")),
            &[(SECRET_ENV, SECRET), (KEY_ENV, private_pem.as_str())],
        );
        for token in ["tok-1", "tok-2"] {
            let response = get(&gateway, "/orders", Some(token)).await;
            assert_eq!(
                response.status(),
                200,
                "case {case}: {:?}",
                server.auth_failures()
            );
        }
        assert_eq!(server.calls(), 2, "case {case}");
        assert!(
            server.auth_failures().is_empty(),
            "case {case}: {:?}",
            server.auth_failures()
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_gives_503() {
    let server = AuthServer::start(ExpectedAuth::Post, Duration::ZERO).await;
    server.answer("tok-1", active("alice", ""));
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_post", "")),
        &[(SECRET_ENV, "not-the-secret")],
    );
    let response = get(&gateway, "/orders", Some("tok-1")).await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "introspection_unavailable");
    assert_eq!(server.auth_failures().len(), 1);
    assert!(
        !gateway.stderr().contains("not-the-secret"),
        "the log contains the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_responses_verified() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    let issuer = server.url("");
    let response_claims = |introspection: Value, audience: &str| json!({"iss": issuer, "aud": audience, "iat": now(), "token_introspection": introspection});
    let good = json!({"active": true, "sub": "alice", "exp": now() + 600});
    let signed = |key: &str, claims: Value| {
        json!({"key": key, "alg": "RS256", "claims": claims,
               "headers": {"kid": "as", "typ": "token-introspection+jwt"}})
    };
    let minted = authz(&json!({
        "op": "mint",
        "keys": {"as": "RSA", "other": "RSA"},
        "tokens": {
            "good": signed("as", response_claims(good.clone(), CLIENT_ID)),
            "inactive": signed("as", response_claims(json!({"active": false}), CLIENT_ID)),
            "bad_signature": signed("other", response_claims(good.clone(), CLIENT_ID)),
            "wrong_audience": signed("as", response_claims(good.clone(), "someone-else")),
        }
    }));
    let mut jwk = minted["jwks"]["as"].clone();
    jwk["kid"] = json!("as");
    server.document("/jwks.json", json!({"keys": [jwk]}).to_string());
    for name in ["good", "inactive", "bad_signature", "wrong_audience"] {
        let jwt = minted["tokens"][name].as_str().unwrap().to_string();
        server.answer(&format!("tok-{name}"), Answer::Jwt(jwt));
    }
    let upstream = upstream().await;
    let extra = format!(
        "issuer: {issuer}\nresponse_format: jwt\njwks_uri: {}",
        server.url("/jwks.json")
    );
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_basic", &extra)),
        &[(SECRET_ENV, SECRET)],
    );

    let response = get(&gateway, "/orders", Some("tok-good")).await;
    assert_eq!(response.status(), 200);
    for name in ["inactive", "bad_signature", "wrong_audience"] {
        let token = format!("tok-{name}");
        let response = get(&gateway, "/orders", Some(&token)).await;
        assert_eq!(response.status(), 401, "case {name}");
        expect_invalid(response, &token, name).await;
    }
    assert_eq!(server.calls(), 4);

    // A response that failed verification is cached as inactive, so a retry makes no call.
    let response = get(&gateway, "/orders", Some("tok-bad_signature")).await;
    expect_invalid(response, "tok-bad_signature", "bad_signature again").await;
    assert_eq!(server.calls(), 4, "a rejected response was not cached");
    assert!(
        server.auth_failures().is_empty(),
        "{:?}",
        server.auth_failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_cache_is_bounded() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(
            upstream,
            &policy(&server, "client_secret_basic", "negative_cache_ttl: 1s"),
        ),
        &[(SECRET_ENV, SECRET)],
    );
    let started = Instant::now();
    for _ in 0..3 {
        let response = get(&gateway, "/orders", Some("tok-never")).await;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(server.calls(), 1, "inactive result was not cached");

    // Poll until the negative entry expires and the token is asked about again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.calls() < 2 {
        assert!(
            Instant::now() < deadline,
            "the negative cache entry never expired"
        );
        let response = get(&gateway, "/orders", Some("tok-never")).await;
        assert_eq!(response.status(), 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the negative entry expired after {:?}, before negative_cache_ttl",
        started.elapsed()
    );
    // A token that becomes active is accepted once the negative entry is gone.
    server.answer("tok-never", active("alice", ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(&gateway, "/orders", Some("tok-never")).await;
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the token never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_call() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::from_millis(500)).await;
    server.answer("tok-shared", active("alice", ""));
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_basic", "")),
        &[(SECRET_ENV, SECRET)],
    );
    let http = client();
    let url = gateway.url("/orders");
    let requests = (0..50).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth("tok-shared")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let statuses = futures_util::future::join_all(requests).await;
    for status in statuses {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        server.calls(),
        1,
        "50 concurrent requests made several calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_fails_closed() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    server.answer("tok-cached", active("alice", ""));
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_basic", "")),
        &[(SECRET_ENV, SECRET)],
    );
    let response = get(&gateway, "/orders", Some("tok-cached")).await;
    assert_eq!(response.status(), 200);
    let endpoint = server.url("/introspect");
    server.stop().await;

    // A cached token still passes; a new one fails closed.
    let response = get(&gateway, "/orders", Some("tok-cached")).await;
    assert_eq!(response.status(), 200);
    for _ in 0..3 {
        let response = get(&gateway, "/orders", Some("tok-new")).await;
        let body = error_body(response, 503).await;
        assert_eq!(body["error"]["code"], "introspection_unavailable");
    }

    let metrics = client()
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "portcullis_introspection_calls_total{{endpoint=\"{endpoint}\",result=\"unavailable\"}} 3"
    );
    assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    let log = gateway.stderr();
    let warnings = log
        .lines()
        .filter(|line| line.contains("token introspection failed"))
        .count();
    assert_eq!(warnings, 1, "failures were not rate-limited:\n{log}");
    assert!(
        log.contains(&endpoint),
        "the warning does not name the endpoint"
    );
    assert!(!log.contains("tok-new"), "the log contains the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_result_served_within_bound() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    server.answer("tok-stale", active("alice", ""));
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(
            upstream,
            &policy(
                &server,
                "client_secret_basic",
                "cache_ttl: 1s\nstale_if_error: 1h",
            ),
        ),
        &[(SECRET_ENV, SECRET)],
    );
    let response = get(&gateway, "/orders", Some("tok-stale")).await;
    assert_eq!(response.status(), 200);
    server.stop().await;
    // The entry's cache lifetime is time-based, so this waits it out rather than polling.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = get(&gateway, "/orders", Some("tok-stale")).await;
    assert_eq!(response.status(), 200, "the stale entry was not used");
    let response = get(&gateway, "/orders", Some("tok-other")).await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "introspection_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_found_by_discovery() {
    let server = AuthServer::start(ExpectedAuth::Basic, Duration::ZERO).await;
    server.answer("tok-1", active("alice", ""));
    let issuer = server.url("");
    // Only RFC 8414 metadata is served, so the OpenID location fails first.
    server.document(
        "/.well-known/oauth-authorization-server",
        json!({"issuer": issuer, "introspection_endpoint": server.url("/introspect")}).to_string(),
    );
    let upstream = upstream().await;
    let policy = format!(
        "          issuer: {issuer}\n          client_id: {CLIENT_ID}\n          client_secret_env: {SECRET_ENV}\n"
    );
    let gateway = Gateway::start_with_env(&config(upstream, &policy), &[(SECRET_ENV, SECRET)]);
    let response = get(&gateway, "/orders", Some("tok-1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_through_admin_api() {
    let server = AuthServer::start(ExpectedAuth::Post, Duration::ZERO).await;
    server.answer("tok-1", active("alice", ""));
    let upstream = upstream().await;
    let gateway = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_post", "")),
        &[(SECRET_ENV, SECRET)],
    );
    let http = client();
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, gateway.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
    };

    let response = admin(reqwest::Method::POST, "/routes")
        .json(&json!({
            "name": "bad", "service": "orders", "paths": ["/bad"],
            "policies": [{"oauth2-introspection": {"client_id": "gateway", "client_auth": "private_key_jwt"}}],
        }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    let details = body["error"]["details"].to_string();
    assert!(
        details.contains("policies[0].oauth2-introspection"),
        "{body}"
    );
    assert!(details.contains("private_key_env"), "{body}");

    let response = admin(reqwest::Method::POST, "/routes")
        .json(&json!({
            "name": "live", "service": "orders", "paths": ["/live"],
            "policies": [{"oauth2-introspection": {
                "introspection_endpoint": server.url("/introspect"),
                "client_id": CLIENT_ID,
                "client_auth": "client_secret_post",
                "client_secret_env": SECRET_ENV,
            }}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "{}",
        response.text().await.unwrap()
    );
    let response = get(&gateway, "/live", Some("tok-1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.calls(), 1);

    // Another change rebuilds every policy, and the cache survives it.
    let response = admin(reqwest::Method::POST, "/routes")
        .json(&json!({"name": "other", "service": "orders", "paths": ["/other"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gateway, "/other", None).await.status() == 404 {
        assert!(Instant::now() < deadline, "the new route never became live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = get(&gateway, "/live", Some("tok-1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.calls(), 1, "the snapshot rebuild emptied the cache");

    // Only the variable name is stored and shown.
    let route = admin(reqwest::Method::GET, "/routes/live")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(route.contains(SECRET_ENV), "{route}");
    assert!(
        !route.contains(SECRET),
        "the admin API shows the secret: {route}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoint_trusts_ca_file() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let server = AuthServer::start_tls(ExpectedAuth::Basic, &certified).await;
    server.answer("tok-1", active("alice", ""));
    let upstream = upstream().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("as-ca.pem"), certified.cert.pem()).unwrap();
    let gateway = Gateway::start_in_with_env(
        dir,
        &config(
            upstream,
            &policy(&server, "client_secret_basic", "ca_file: as-ca.pem"),
        ),
        &[(SECRET_ENV, SECRET)],
    );
    let response = get(&gateway, "/orders", Some("tok-1")).await;
    assert_eq!(response.status(), 200, "{}", gateway.stderr());
    assert_eq!(server.calls(), 1);

    // Without the CA file, the self-signed certificate is not trusted and the call fails.
    let untrusted = Gateway::start_with_env(
        &config(upstream, &policy(&server, "client_secret_basic", "")),
        &[(SECRET_ENV, SECRET)],
    );
    let response = get(&untrusted, "/orders", Some("tok-1")).await;
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "introspection_unavailable");
    assert_eq!(
        server.calls(),
        1,
        "a call passed TLS verification without the CA"
    );
}
