//! JWT authentication and authorization against the real gateway.
//!
//! Keys and tokens come from PyJWT (an independent implementation) through
//! `tests/jwt/tokens.py`. The interpreter is `PORTCULLIS_TEST_PYTHON`, or `.venv/bin/python` in the
//! repository, which `scripts/python-env.sh` creates. The JWK Set is served by a small HTTP server
//! on port 0 that each test starts and can stop.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ADMIN_TOKEN, Gateway, client, error_body, upstream};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const ISSUER: &str = "https://idp.test";
const SECRET_ENV: &str = "PORTCULLIS_TEST_JWT_SECRET";
const SECRET: &str = "jwt-test-shared-secret-0123456789abcdef";

/// Returns the Python interpreter that has PyJWT installed.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        default.exists(),
        "no Python with PyJWT at {}: run scripts/python-env.sh, or set PORTCULLIS_TEST_PYTHON to an interpreter with pyjwt[crypto]",
        default.display()
    );
    default
}

/// Keys and tokens made by `tokens.py`.
struct Minted {
    jwks: HashMap<String, Value>,
    pem: HashMap<String, String>,
    tokens: HashMap<String, String>,
}

impl Minted {
    fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token named {name}"))
    }

    /// Returns a JWK Set with the named public keys, each with its name as `kid`.
    fn jwks(&self, names: &[&str]) -> String {
        let keys: Vec<Value> = names
            .iter()
            .map(|name| {
                let mut jwk = self.jwks[*name].clone();
                jwk["kid"] = json!(name);
                jwk
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }
}

/// Runs `tokens.py` with `request` and parses its output.
fn mint(request: &Value) -> Minted {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jwt/tokens.py");
    let interpreter = python();
    let mut child = Command::new(&interpreter)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): run scripts/python-env.sh, or set PORTCULLIS_TEST_PYTHON to an interpreter with pyjwt[crypto]",
                interpreter.display()
            )
        });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "tokens.py failed; is pyjwt[crypto] installed (scripts/python-env.sh)?\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("tokens.py writes JSON");
    let strings = |field: &str| -> HashMap<String, String> {
        value[field]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, text)| (name.clone(), text.as_str().unwrap().to_string()))
            .collect()
    };
    Minted {
        jwks: value["jwks"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, jwk)| (name.clone(), jwk.clone()))
            .collect(),
        pem: strings("pem"),
        tokens: strings("tokens"),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check of the test routes.
fn good_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": "orders",
        "sub": "alice",
        "tenant": "t1",
        "iat": now,
        "nbf": now - 10,
        "exp": now + 600,
    })
}

/// Returns `good_claims` with `changes` applied; a `null` value removes the claim.
fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// An HTTP or HTTPS server for JWK Sets and discovery documents that counts requests by path.
struct KeyServer {
    addr: SocketAddr,
    scheme: &'static str,
    documents: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start() -> KeyServer {
        KeyServer::start_with(None).await
    }

    /// Starts the server over TLS with the certificate chain and key of `certified`.
    async fn start_tls(certified: &rcgen::CertifiedKey) -> KeyServer {
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
        KeyServer::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let documents: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = {
            let (documents, hits, total) = (documents.clone(), hits.clone(), total.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (documents, hits, total) = (documents.clone(), hits.clone(), total.clone());
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => answer(stream, &documents, &hits, &total).await,
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    answer(stream, &documents, &hits, &total).await;
                                }
                            }
                        }
                    });
                }
            })
        };
        KeyServer {
            addr,
            scheme,
            documents,
            hits,
            total,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn serve(&self, path: &str, body: String) {
        self.documents
            .lock()
            .unwrap()
            .insert(path.to_string(), body);
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Stops accepting connections; the port then refuses them.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Reads one request from `stream` and responds with the document served at its path.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    documents: &Mutex<HashMap<String, String>>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
        if request.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split(' ').nth(1).unwrap_or("").to_string();
    total.fetch_add(1, Ordering::SeqCst);
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let document = documents.lock().unwrap().get(&path).cloned();
    let response = match document {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Sends a GET with an optional bearer token and returns the response.
async fn get(gateway: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(gateway.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Checks a 401 from the `jwt` policy and returns the error code.
async fn expect_401(response: reqwest::Response, token: &str, case: &str) -> String {
    let status = response.status().as_u16();
    assert_eq!(status, 401, "case {case}: status");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("case {case}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "case {case}: {challenge}");
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "case {case}: {challenge}"
    );
    let body = error_body(response, 401).await;
    if token.len() > 8 {
        assert!(
            !body.to_string().contains(token),
            "case {case}: the body echoes the token"
        );
    }
    body["error"]["code"].as_str().unwrap().to_string()
}

fn base_config(upstream: SocketAddr, policies: &str, routes: &str) -> String {
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
    policies:
{policies}
routes:
{routes}
consumers:
  - name: alice
    roles: [staff]
  - name: bob
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cases_against_gateway() {
    let keys = KeyServer::start().await;
    let attacker_jwks = keys.url("/attacker.json");
    let attacker_pem = keys.url("/attacker.pem");

    let mut tokens = serde_json::Map::new();
    let mut add = |name: &str, spec: Value| {
        tokens.insert(name.to_string(), spec);
    };
    let signed = |key: &str, alg: &str, claims: Value| json!({"key": key, "alg": alg, "headers": {"kid": key}, "claims": claims});
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        add(alg, signed("rsa", alg, good_claims()));
    }
    add("ES256", signed("p256", "ES256", good_claims()));
    add("ES384", signed("p384", "ES384", good_claims()));
    add("EdDSA", signed("ed", "EdDSA", good_claims()));
    for alg in ["HS256", "HS384", "HS512"] {
        add(
            alg,
            json!({"key": "secret", "alg": alg, "headers": {"kid": "hs"}, "claims": good_claims()}),
        );
    }
    // Tokens with hand-picked headers, each signed by `key` with `alg` unless `attack` is set.
    let attacks = [
        (
            "alg_none",
            json!({"key": "rsa", "attack": "none", "headers": {"kid": "rsa"}}),
        ),
        (
            "hs256_with_rsa_public_key",
            json!({"key": "rsa", "attack": "hmac_with_public_pem", "headers": {"kid": "rsa"}}),
        ),
        (
            "embedded_jwk",
            json!({"key": "evil", "alg": "RS256", "embed_jwk": true, "headers": {"kid": "rsa"}}),
        ),
        (
            "jku_header",
            json!({"key": "evil", "alg": "RS256", "headers": {"kid": "evil", "jku": attacker_jwks}}),
        ),
        (
            "x5u_header",
            json!({"key": "evil", "alg": "RS256", "headers": {"kid": "evil", "x5u": attacker_pem}}),
        ),
        (
            "kid_path_traversal",
            json!({"key": "rsa", "alg": "RS256", "headers": {"kid": "../../../../etc/passwd"}}),
        ),
        (
            "kid_sql",
            json!({"key": "rsa", "alg": "RS256", "headers": {"kid": "rsa' OR '1'='1"}}),
        ),
        (
            "wrong_signature",
            json!({"key": "evil", "alg": "RS256", "headers": {"kid": "rsa"}}),
        ),
        (
            "unknown_kid",
            json!({"key": "evil", "alg": "RS256", "headers": {"kid": "evil"}}),
        ),
    ];
    for (name, mut spec) in attacks {
        spec["claims"] = good_claims();
        add(name, spec);
    }
    let now = now();
    let claim_cases = [
        ("expired", json!({"exp": now - 120})),
        ("expired_within_leeway", json!({"exp": now - 10})),
        ("not_yet_valid", json!({"nbf": now + 120})),
        ("iat_in_future", json!({"iat": now + 120})),
        ("iat_within_leeway", json!({"iat": now + 10})),
        ("wrong_iss", json!({"iss": "https://evil.test"})),
        ("aud_list_match", json!({"aud": ["billing", "orders"]})),
        ("aud_list_other", json!({"aud": ["billing"]})),
        ("aud_string_other", json!({"aud": "billing"})),
        ("aud_empty_list", json!({"aud": []})),
        ("aud_number", json!({"aud": 5})),
        ("missing_aud", json!({"aud": null})),
        ("missing_exp", json!({"exp": null})),
        ("missing_required_claim", json!({"tenant": null})),
        ("unknown_consumer", json!({"sub": "mallory"})),
        ("missing_consumer_claim", json!({"sub": null})),
        ("oversized", json!({"padding": "x".repeat(9000)})),
        ("spoofed_header_claim", json!({"sub": "alice"})),
    ];
    for (name, changes) in &claim_cases {
        add(name, signed("rsa", "RS256", claims_with(changes.clone())));
    }
    let minted = mint(&json!({
        "keys": {"rsa": "RSA", "p256": "P-256", "p384": "P-384", "ed": "Ed25519", "evil": "RSA"},
        "secret": SECRET,
        "tokens": tokens,
    }));
    keys.serve("/jwks.json", minted.jwks(&["rsa", "p256", "p384", "ed"]));

    let upstream = upstream().await;
    let jwks_uri = keys.url("/jwks.json");
    let policies = "      []";
    let routes = format!(
        r#"
  - name: strict
    service: orders
    paths: [/strict]
    policies:
      - jwt:
          issuer: https://idp.test
          audiences: [orders]
          jwks_uri: {jwks_uri}
          algorithms: [RS256, ES256, EdDSA]
          consumer_claim: sub
  - name: all
    service: orders
    paths: [/all]
    policies:
      - jwt:
          issuer: https://idp.test
          audiences: [orders]
          jwks_uri: {jwks_uri}
          algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512]
          keys:
            - kid: hs
              secret_env: {SECRET_ENV}
          consumer_claim: sub
          required_claims: [tenant]
          forward_claims:
            sub: X-User-Id
            tenant: X-Tenant
"#
    );
    let config = base_config(upstream, policies, &routes);
    let gateway = Gateway::start_with_env(
        &config,
        &[
            (SECRET_ENV, SECRET),
            ("RUST_LOG", "info,portcullis_proxy=debug"),
        ],
    );

    // Each supported algorithm is accepted.
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
        "HS384", "HS512",
    ] {
        let response = get(&gateway, "/all", Some(minted.token(alg))).await;
        assert_eq!(response.status().as_u16(), 200, "algorithm {alg} on /all");
    }
    // The policy exactly as documented accepts its three algorithms and nothing else.
    for (alg, status) in [
        ("RS256", 200),
        ("ES256", 200),
        ("EdDSA", 200),
        ("RS384", 401),
        ("PS256", 401),
        ("HS256", 401),
    ] {
        let response = get(&gateway, "/strict", Some(minted.token(alg))).await;
        assert_eq!(
            response.status().as_u16(),
            status,
            "algorithm {alg} on /strict"
        );
    }

    // Claim cases that must pass.
    for name in [
        "expired_within_leeway",
        "iat_within_leeway",
        "aud_list_match",
    ] {
        let response = get(&gateway, "/all", Some(minted.token(name))).await;
        assert_eq!(response.status().as_u16(), 200, "case {name}");
    }

    // Attacks and claim failures: 401, never 500.
    let mut rejected: Vec<(&str, String)> = [
        "alg_none",
        "hs256_with_rsa_public_key",
        "jku_header",
        "x5u_header",
        "kid_path_traversal",
        "kid_sql",
        "wrong_signature",
        "unknown_kid",
        "expired",
        "not_yet_valid",
        "iat_in_future",
        "wrong_iss",
        "aud_list_other",
        "aud_string_other",
        "aud_empty_list",
        "aud_number",
        "missing_aud",
        "missing_exp",
        "missing_required_claim",
        "unknown_consumer",
        "missing_consumer_claim",
        "oversized",
        "embedded_jwk",
    ]
    .into_iter()
    .map(|name| (name, minted.token(name).to_string()))
    .collect();

    // Hand-made malformed tokens.
    let good = minted.token("RS256");
    let parts: Vec<&str> = good.split('.').collect();
    let other = minted.token("aud_list_match");
    let other_parts: Vec<&str> = other.split('.').collect();
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let handmade = [
        (
            "malformed_base64",
            format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "padded_base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "bad_header_json",
            format!("{}.{}.{}", b64("{\"alg\":"), parts[1], parts[2]),
        ),
        (
            "bad_payload_json",
            format!("{}.{}.{}", parts[0], b64("{not json"), parts[2]),
        ),
        (
            "payload_not_object",
            format!("{}.{}.{}", parts[0], b64("[1,2]"), parts[2]),
        ),
        ("two_parts", format!("{}.{}", parts[0], parts[1])),
        ("four_parts", format!("{good}.{}", parts[2])),
        (
            "swapped_payload",
            format!("{}.{}.{}", parts[0], other_parts[1], parts[2]),
        ),
        ("empty_signature", format!("{}.{}.", parts[0], parts[1])),
        ("garbage", "not-a-token".to_string()),
    ];
    for (name, token) in handmade {
        rejected.push((name, token));
    }

    for (name, token) in &rejected {
        let response = get(&gateway, "/all", Some(token)).await;
        let code = expect_401(response, token, name).await;
        assert_eq!(code, "invalid_token", "case {name}");
    }

    // An expired token has its own message, so the client can get a new token.
    let response = get(&gateway, "/all", Some(minted.token("expired"))).await;
    let body = error_body(response, 401).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // No token, or another scheme: 401 with a challenge that has no error code (RFC 6750).
    for authorization in [None, Some("Basic YWxpY2U6cHc=")] {
        let mut request = client().get(gateway.url("/all"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(challenge, "Bearer realm=\"portcullis\"");
        let body = error_body(response, 401).await;
        assert_eq!(body["error"]["code"], "missing_token");
    }

    // A valid token reaches the upstream without `Authorization`, with claims in headers that
    // replace any the client sent.
    let response = client()
        .get(gateway.url("/all"))
        .bearer_auth(minted.token("spoofed_header_claim"))
        .header("x-user-id", "admin")
        .header("x-tenant", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let echo: Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    assert!(headers.get("authorization").is_none(), "{echo}");
    assert_eq!(headers["x-user-id"], "alice");
    assert_eq!(headers["x-tenant"], "t1");
    assert_eq!(headers["x-consumer-name"], "alice");

    // The gateway never fetched a URL that a token named.
    assert_eq!(keys.hits("/attacker.json"), 0, "jku was fetched");
    assert_eq!(keys.hits("/attacker.pem"), 0, "x5u was fetched");
    assert_eq!(keys.total_hits(), keys.hits("/jwks.json"));

    // Neither the diagnostic log nor the access log contains a token.
    let access_log = std::fs::read_to_string(gateway.path("access.log")).unwrap_or_default();
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("bearer token rejected"),
        "debug log of rejections is missing:\n{stderr}"
    );
    for (name, token) in &minted.tokens {
        let signature = token.rsplit('.').next().unwrap();
        if signature.len() < 16 {
            continue;
        }
        assert!(!stderr.contains(signature), "the log contains token {name}");
        assert!(
            !access_log.contains(signature),
            "the access log contains token {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refresh_on_unknown_kid_is_rate_limited() {
    let keys = KeyServer::start().await;
    let minted = mint(&json!({
        "keys": {"a": "RSA", "b": "RSA", "c": "RSA"},
        "secret": SECRET,
        "tokens": {
            "a": {"key": "a", "alg": "RS256", "headers": {"kid": "a"}, "claims": good_claims()},
            "b": {"key": "b", "alg": "RS256", "headers": {"kid": "b"}, "claims": good_claims()},
            "c": {"key": "c", "alg": "RS256", "headers": {"kid": "c"}, "claims": good_claims()},
        },
    }));
    keys.serve("/jwks.json", minted.jwks(&["a"]));
    let upstream = upstream().await;
    let policies = format!(
        r#"      - jwt:
          issuer: {ISSUER}
          audiences: [orders]
          jwks_uri: {}
          algorithms: [RS256]
          jwks_refresh_interval: 1h
          jwks_min_refresh_interval: 1h"#,
        keys.url("/jwks.json")
    );
    let routes = "  - name: r\n    service: orders\n    paths: [/r]\n";
    let gateway = Gateway::start(&base_config(upstream, &policies, routes));

    let response = get(&gateway, "/r", Some(minted.token("a"))).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "key a from the first fetch"
    );
    assert_eq!(keys.hits("/jwks.json"), 1, "one fetch at start");

    // The IdP rotates in key b; the first token with kid b triggers a refresh and passes.
    keys.serve("/jwks.json", minted.jwks(&["a", "b"]));
    let response = get(&gateway, "/r", Some(minted.token("b"))).await;
    assert_eq!(response.status().as_u16(), 200, "key b after a refresh");
    assert_eq!(keys.hits("/jwks.json"), 2, "one refresh for kid b");

    // Within the minimum interval, another unknown kid gets 401 without a fetch, even once
    // the IdP serves that key.
    keys.serve("/jwks.json", minted.jwks(&["a", "b", "c"]));
    for _ in 0..3 {
        let response = get(&gateway, "/r", Some(minted.token("c"))).await;
        expect_401(response, minted.token("c"), "rate-limited kid c").await;
    }
    assert_eq!(keys.hits("/jwks.json"), 2, "refreshes are rate-limited");

    // Cached keys still pass without a fetch.
    let response = get(&gateway, "/r", Some(minted.token("a"))).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(keys.hits("/jwks.json"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_keeps_cached_keys() {
    let keys = KeyServer::start().await;
    let minted = mint(&json!({
        "keys": {"a": "P-256", "b": "P-256"},
        "secret": SECRET,
        "tokens": {
            "a": {"key": "a", "alg": "ES256", "headers": {"kid": "a"}, "claims": good_claims()},
            "b": {"key": "b", "alg": "ES256", "headers": {"kid": "b"}, "claims": good_claims()},
        },
    }));
    keys.serve("/jwks.json", minted.jwks(&["a"]));
    let jwks_uri = keys.url("/jwks.json");
    let upstream = upstream().await;
    let policies = format!(
        r#"      - jwt:
          issuer: {ISSUER}
          audiences: [orders]
          jwks_uri: {jwks_uri}
          algorithms: [ES256]
          jwks_refresh_interval: 1s
          jwks_min_refresh_interval: 100ms
          jwks_timeout: 1s"#
    );
    let routes = "  - name: r\n    service: orders\n    paths: [/r]\n";
    let gateway = Gateway::start(&base_config(upstream, &policies, routes));

    let response = get(&gateway, "/r", Some(minted.token("a"))).await;
    assert_eq!(response.status().as_u16(), 200, "before the outage");

    keys.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stderr = gateway.stderr();
        let failure = stderr
            .lines()
            .find(|line| line.contains("JWK Set fetch failed"));
        if let Some(line) = failure {
            assert!(
                line.contains(&jwks_uri),
                "the failure names the URL: {line}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fetch failure logged:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The last good key set still verifies tokens, and an unknown kid is a 401, not a 500.
    for _ in 0..3 {
        let response = get(&gateway, "/r", Some(minted.token("a"))).await;
        assert_eq!(response.status().as_u16(), 200, "during the outage");
    }
    let started = Instant::now();
    let response = get(&gateway, "/r", Some(minted.token("b"))).await;
    expect_401(response, minted.token("b"), "unknown kid during the outage").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the unknown kid waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_scopes_authorization() {
    let keys = KeyServer::start().await;
    let token = |name: &str, changes: Value| -> (String, Value) {
        (
            name.to_string(),
            json!({"key": "k", "alg": "EdDSA", "headers": {"kid": "k"}, "claims": claims_with(changes)}),
        )
    };
    let specs: serde_json::Map<String, Value> = [
        token("plain", json!({})),
        token("admin_role", json!({"roles": ["admin"]})),
        token("billing_role", json!({"roles": "billing"})),
        token("read", json!({"scope": "orders:read"})),
        token("read_write", json!({"scope": "orders:read orders:write"})),
        token(
            "read_write_array",
            json!({"scope": ["orders:write", "orders:read"]}),
        ),
        token("admin_scope", json!({"scope": "orders:admin"})),
        token("billing_scope", json!({"scope": "billing"})),
        token("bob", json!({"sub": "bob"})),
        token("bob_t2", json!({"sub": "bob", "tenant": "t2"})),
        token("expired", json!({"exp": now() - 3600})),
    ]
    .into_iter()
    .collect();
    let minted = mint(&json!({"keys": {"k": "Ed25519"}, "secret": SECRET, "tokens": specs}));
    keys.serve("/jwks.json", minted.jwks(&["k"]));

    let upstream = upstream().await;
    let policies = format!(
        r#"      - jwt:
          issuer: {ISSUER}
          audiences: [orders]
          jwks_uri: {}
          algorithms: [EdDSA]
          roles_claim: roles"#,
        keys.url("/jwks.json")
    );
    let routes = r#"
  - name: admin
    service: orders
    paths: [/admin]
    policies:
      - acl: { roles: [admin] }
  - name: write
    service: orders
    paths: [/write]
    policies:
      - acl: { scopes: [orders:read, orders:write] }
  - name: any
    service: orders
    paths: [/any]
    policies:
      - acl: { any_scopes: [orders:read, orders:admin] }
  - name: staff
    service: orders
    paths: [/staff]
    policies:
      - acl: { all_roles: [staff, billing] }
  - name: nobob
    service: orders
    paths: [/nobob]
    policies:
      - acl: { deny_consumers: [bob] }
  - name: limited
    service: orders
    paths: [/limited]
    policies:
      - rate-limit: { limit: 1, window: 1m, by: claim, claim: tenant }
"#;
    let gateway = Gateway::start(&base_config(upstream, &policies, routes));

    let cases = [
        ("/admin", "plain", 403, Some("access_denied")),
        ("/admin", "admin_role", 200, None),
        ("/write", "read", 403, Some("insufficient_scope")),
        ("/write", "read_write", 200, None),
        ("/write", "read_write_array", 200, None),
        ("/any", "admin_scope", 200, None),
        ("/any", "billing_scope", 403, Some("insufficient_scope")),
        ("/any", "plain", 403, Some("insufficient_scope")),
        ("/staff", "billing_role", 200, None),
        ("/staff", "plain", 403, Some("access_denied")),
        ("/nobob", "bob", 403, Some("access_denied")),
        ("/nobob", "plain", 200, None),
        ("/admin", "expired", 401, Some("invalid_token")),
    ];
    for (path, name, status, code) in cases {
        let response = get(&gateway, path, Some(minted.token(name))).await;
        let case = format!("{name} on {path}");
        assert_eq!(response.status().as_u16(), status, "{case}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_string());
        if code == Some("insufficient_scope") {
            let challenge = challenge.unwrap_or_else(|| panic!("{case}: no challenge"));
            assert!(
                challenge.contains("error=\"insufficient_scope\""),
                "{case}: {challenge}"
            );
            assert!(challenge.contains("scope=\""), "{case}: {challenge}");
        }
        if let Some(code) = code {
            let body = error_body(response, status).await;
            assert_eq!(body["error"]["code"], code, "{case}");
        }
    }

    // `rate-limit` keyed by the verified `tenant` claim.
    let response = get(&gateway, "/limited", Some(minted.token("plain"))).await;
    assert_eq!(response.status().as_u16(), 200, "alice in t1");
    let response = get(&gateway, "/limited", Some(minted.token("bob"))).await;
    assert_eq!(
        response.status().as_u16(),
        429,
        "bob in t1 shares the limit"
    );
    let response = get(&gateway, "/limited", Some(minted.token("bob_t2"))).await;
    assert_eq!(response.status().as_u16(), 200, "bob in t2 has its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_static_keys_and_anonymous() {
    let keys = KeyServer::start().await;
    let issuer = format!("http://{}", keys.addr);
    let claims = |sub: &str| {
        let mut claims = good_claims();
        claims["iss"] = json!(issuer);
        claims["sub"] = json!(sub);
        claims
    };
    let minted = mint(&json!({
        "keys": {"d": "RSA", "pem": "P-384", "jwk": "Ed25519"},
        "secret": SECRET,
        "tokens": {
            "discovered": {"key": "d", "alg": "PS256", "headers": {"kid": "d"}, "claims": claims("alice")},
            "pem": {"key": "pem", "alg": "ES384", "headers": {}, "claims": claims("alice")},
            "jwk": {"key": "jwk", "alg": "EdDSA", "headers": {"kid": "jwk"}, "claims": claims("alice")},
            "stranger": {"key": "jwk", "alg": "EdDSA", "headers": {"kid": "jwk"}, "claims": claims("mallory")},
        },
    }));
    keys.serve(
        "/.well-known/openid-configuration",
        json!({"issuer": issuer, "jwks_uri": keys.url("/keys")}).to_string(),
    );
    keys.serve("/keys", minted.jwks(&["d"]));

    let mut jwk = minted.jwks["jwk"].clone();
    jwk["kid"] = json!("jwk");
    let pem = Value::String(minted.pem["pem"].clone());
    let upstream = upstream().await;
    let routes = format!(
        r#"
  - name: discovered
    service: orders
    paths: [/discovered]
    policies:
      - jwt:
          issuer: {issuer}
          discovery: true
          audiences: [orders]
          algorithms: [PS256]
  - name: static
    service: orders
    paths: [/static]
    policies:
      - jwt:
          issuer: {issuer}
          audiences: [orders]
          algorithms: [ES384, EdDSA]
          unknown_consumer: anonymous
          keys:
            - pem: {pem}
            - jwk: {jwk}
"#
    );
    let gateway = Gateway::start(&base_config(upstream, "      []", &routes));

    let response = get(&gateway, "/discovered", Some(minted.token("discovered"))).await;
    assert_eq!(response.status().as_u16(), 200, "key from discovery");
    assert_eq!(keys.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(keys.hits("/keys"), 1);

    let response = get(&gateway, "/static", Some(minted.token("pem"))).await;
    assert_eq!(response.status().as_u16(), 200, "static PEM key");
    let response = get(&gateway, "/static", Some(minted.token("jwk"))).await;
    assert_eq!(response.status().as_u16(), 200, "static JWK");

    // An unknown consumer continues under the claim value with `unknown_consumer: anonymous`.
    let response = get(&gateway, "/static", Some(minted.token("stranger"))).await;
    assert_eq!(response.status().as_u16(), 200, "anonymous consumer");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-name"], "mallory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_uses_system_trust() {
    // The gateway trusts the system store, which `SSL_CERT_FILE` replaces with this test's CA.
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let keys = KeyServer::start_tls(&certified).await;
    let minted = mint(&json!({
        "keys": {"a": "P-256"},
        "secret": SECRET,
        "tokens": {
            "a": {"key": "a", "alg": "ES256", "headers": {"kid": "a"}, "claims": good_claims()},
        },
    }));
    keys.serve("/jwks.json", minted.jwks(&["a"]));
    let upstream = upstream().await;
    let policies = format!(
        r#"      - jwt:
          issuer: {ISSUER}
          audiences: [orders]
          jwks_uri: {}
          algorithms: [ES256]"#,
        keys.url("/jwks.json")
    );
    assert!(keys.url("").starts_with("https://"));
    let routes = "  - name: r\n    service: orders\n    paths: [/r]\n";
    let config = base_config(upstream, &policies, routes);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let gateway = Gateway::start_in_with_env(
        dir,
        &config,
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    let response = get(&gateway, "/r", Some(minted.token("a"))).await;
    assert_eq!(response.status().as_u16(), 200, "{}", gateway.stderr());
    assert_eq!(keys.hits("/jwks.json"), 1);

    // Without that CA the certificate is not trusted: the fetch fails and tokens get 401.
    let other_dir = tempfile::tempdir().unwrap();
    let empty_ca = other_dir.path().join("empty.pem");
    std::fs::write(&empty_ca, "").unwrap();
    let untrusting = Gateway::start_in_with_env(
        other_dir,
        &config,
        &[("SSL_CERT_FILE", empty_ca.to_str().unwrap())],
    );
    let response = get(&untrusting, "/r", Some(minted.token("a"))).await;
    expect_401(response, minted.token("a"), "untrusted JWKS certificate").await;
    let stderr = untrusting.stderr();
    assert!(stderr.contains("JWK Set fetch failed"), "{stderr}");
    assert!(stderr.contains(&keys.url("/jwks.json")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_policy_through_admin_api() {
    let keys = KeyServer::start().await;
    let minted = mint(&json!({
        "keys": {"a": "Ed25519"},
        "secret": SECRET,
        "tokens": {
            "a": {"key": "a", "alg": "EdDSA", "headers": {"kid": "a"}, "claims": good_claims()},
        },
    }));
    keys.serve("/jwks.json", minted.jwks(&["a"]));
    let upstream = upstream().await;
    let gateway = Gateway::start(&base_config(upstream, "      []", "  []"));
    let client = client();
    let admin = |method: reqwest::Method, path: &str| {
        client
            .request(method, gateway.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
    };

    // An invalid policy is rejected whole, with the key path of each problem.
    let response = admin(reqwest::Method::POST, "/routes")
        .json(&json!({
            "name": "bad", "service": "orders", "paths": ["/bad"],
            "policies": [{"jwt": {"algorithms": ["none"], "jwks_uri": "ftp://x/jwks.json"}}],
        }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    let details = body["error"]["details"].to_string();
    assert!(details.contains("policies[0].jwt.algorithms[0]"), "{body}");
    assert!(details.contains("policies[0].jwt.jwks_uri"), "{body}");

    // A valid one applies without a restart and fetches its keys.
    let response = admin(reqwest::Method::POST, "/routes")
        .json(&json!({
            "name": "live", "service": "orders", "paths": ["/live"],
            "policies": [{"jwt": {
                "issuer": ISSUER, "audiences": ["orders"], "algorithms": ["EdDSA"],
                "jwks_uri": keys.url("/jwks.json"),
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
    let response = get(&gateway, "/live", Some(minted.token("a"))).await;
    assert_eq!(response.status().as_u16(), 200);
    let response = get(&gateway, "/live", None).await;
    assert_eq!(response.status().as_u16(), 401);

    // The stored policy reads back in the shape it was written in, with defaults filled in.
    let route: Value = admin(reqwest::Method::GET, "/routes/live")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let policy = &route["policies"][0]["jwt"];
    assert_eq!(
        policy["jwks_uri"],
        keys.url("/jwks.json").as_str(),
        "{route}"
    );
    assert_eq!(policy["consumer_claim"], "sub", "{route}");
}
