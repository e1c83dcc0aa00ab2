//! Browser protections through a real gateway process in front of a real upstream. The tests
//! cover CORS preflights and actual requests, preflights under a rate limit, CSRF checks with
//! the double-submit token in a cookie jar, and security headers on plain and TLS listeners.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ALICE_KEY, Gateway, client, error_body, node_config};
use reqwest::Method;
use reqwest::cookie::CookieStore;
use reqwest::header::HeaderMap;

const APP_ORIGIN: &str = "https://app.example.com";
const EVIL_ORIGIN: &str = "https://evil.example.net";
const CSRF_SECRET_VARIABLE: &str = "PORTCULLIS_TEST_CSRF_SECRET";
const CSRF_SECRET: &str = "test-csrf-secret-0123456789abcdef-0123456789";

/// An upstream that records the method and path of every request it receives. Responses to
/// paths that contain `/with-headers` carry headers that the gateway's policies also set:
/// `Access-Control-Allow-Origin: *`, `X-Frame-Options: SAMEORIGIN` and `Vary: Accept-Encoding`.
struct RecordingUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RecordingUpstream {
    async fn start() -> RecordingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        respond(request, recorded.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn respond(
    request: hyper::Request<hyper::body::Incoming>,
    recorded: Arc<Mutex<Vec<String>>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let line = format!("{} {}", request.method(), request.uri().path());
    recorded.lock().unwrap().push(line.clone());
    let with_headers = request.uri().path().contains("/with-headers");
    let _ = request.into_body().collect().await;
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(line)));
    if with_headers {
        let headers = response.headers_mut();
        headers.insert("access-control-allow-origin", "*".parse().unwrap());
        headers.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
        headers.insert("vary", "Accept-Encoding".parse().unwrap());
    }
    Ok(response)
}

/// Returns every value of `name`, in order.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .collect()
}

/// Returns the single value of `name`, or `None` when the response lacks it.
fn value(headers: &HeaderMap, name: &str) -> Option<String> {
    let all = values(headers, name);
    assert!(
        all.len() <= 1,
        "{name} appears {} times: {all:?}",
        all.len()
    );
    all.into_iter().next()
}

/// Sends a request with `Origin` and Alice's API key, as a page's script would.
async fn send_from_page(
    gateway: &Gateway,
    method: Method,
    path: &str,
    origin: &str,
) -> reqwest::Response {
    client()
        .request(method, gateway.url(path))
        .header("origin", origin)
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap()
}

/// Returns whether `Vary` lists `field`.
fn varies_by(headers: &HeaderMap, field: &str) -> bool {
    values(headers, "vary").iter().any(|value| {
        value
            .split(',')
            .any(|listed| listed.trim().eq_ignore_ascii_case(field))
    })
}

fn cors_config(upstream: SocketAddr) -> String {
    format!(
        r#"{node}
services:
  - name: app
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
routes:
  - name: api
    service: app
    paths: [/api]
    methods: [GET, POST, PUT, DELETE]
    policies:
      - cors:
          allowed_origins: [{APP_ORIGIN}]
          allowed_methods: [GET, POST, PUT]
          allowed_headers: [Content-Type, apikey]
          exposed_headers: [x-request-id]
          max_age: 10m
          allow_credentials: true
  - name: strict
    service: app
    paths: [/strict]
    policies:
      - cors: {{ allowed_origins: [{APP_ORIGIN}], disallowed_origin: reject }}
  - name: limited
    service: app
    paths: [/limited]
    policies:
      - cors: {{ allowed_origins: [{APP_ORIGIN}], allowed_methods: [GET, PUT] }}
      - rate-limit: {{ limit: 2, window: 1m, by: ip }}
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
"#,
        node = node_config(),
    )
}

fn preflight(
    gateway: &Gateway,
    path: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut request = client()
        .request(Method::OPTIONS, gateway.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(headers) = headers {
        request = request.header("access-control-request-headers", headers);
    }
    request
}

#[tokio::test]
async fn preflight_answered_by_gateway() {
    let upstream = RecordingUpstream::start().await;
    let gateway = Gateway::start(&cors_config(upstream.addr));

    let response = preflight(
        &gateway,
        "/api/items",
        APP_ORIGIN,
        "PUT",
        Some("content-type, apikey"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        value(headers, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN)
    );
    assert_eq!(
        value(headers, "access-control-allow-methods").as_deref(),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        value(headers, "access-control-allow-headers").as_deref(),
        Some("content-type, apikey")
    );
    assert_eq!(
        value(headers, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        value(headers, "access-control-max-age").as_deref(),
        Some("600")
    );
    assert!(varies_by(headers, "origin"), "{headers:?}");
    assert!(
        varies_by(headers, "access-control-request-method"),
        "{headers:?}"
    );
    let request_id = value(headers, "x-request-id").unwrap();
    assert!(response.bytes().await.unwrap().is_empty());

    // Not allowed: the origin, the method, a header. Each gets 204 without CORS headers.
    let denied = [
        (EVIL_ORIGIN, "PUT", None),
        (APP_ORIGIN, "DELETE", None),
        (APP_ORIGIN, "PUT", Some("x-secret")),
    ];
    for (origin, method, request_headers) in denied {
        let response = preflight(&gateway, "/api/items", origin, method, request_headers)
            .send()
            .await
            .unwrap();
        let case = format!("{origin} {method} {request_headers:?}");
        assert_eq!(response.status(), 204, "{case}");
        assert_eq!(
            value(response.headers(), "access-control-allow-origin"),
            None,
            "{case}"
        );
        assert_eq!(
            value(response.headers(), "access-control-allow-methods"),
            None,
            "{case}"
        );
    }

    // With `disallowed_origin: reject`, a denied preflight gets a 403 JSON error.
    let response = preflight(&gateway, "/strict/x", EVIL_ORIGIN, "GET", None)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "cors_origin_not_allowed");

    assert_eq!(
        upstream.requests(),
        Vec::<String>::new(),
        "no preflight reaches the upstream"
    );
    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["rejected_by"], "cors", "{line}");
    assert_eq!(line["error"], "cors_preflight", "{line}");
    assert_eq!(line["status"], 204, "{line}");
}

#[tokio::test]
async fn credentialed_request_from_allowed_origin() {
    let upstream = RecordingUpstream::start().await;
    let gateway = Gateway::start(&cors_config(upstream.addr));
    let client = client();

    for path in ["/api/items", "/api/with-headers"] {
        let response = send_from_page(&gateway, Method::GET, path, APP_ORIGIN).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(
            value(headers, "access-control-allow-origin").as_deref(),
            Some(APP_ORIGIN),
            "{path}: the gateway's value replaces the upstream's `*`"
        );
        assert_eq!(
            value(headers, "access-control-allow-credentials").as_deref(),
            Some("true"),
            "{path}"
        );
        assert_eq!(
            value(headers, "access-control-expose-headers").as_deref(),
            Some("x-request-id"),
            "{path}"
        );
        assert!(varies_by(headers, "origin"), "{path}: {headers:?}");
    }
    let response = send_from_page(&gateway, Method::GET, "/api/with-headers", APP_ORIGIN).await;
    assert!(varies_by(response.headers(), "accept-encoding"));
    assert!(varies_by(response.headers(), "origin"));

    // A rejection by a later policy carries the CORS headers, so the page can read it.
    let response = client
        .get(gateway.url("/api/items"))
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        value(response.headers(), "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN)
    );
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_api_key");

    assert_eq!(
        upstream.requests(),
        [
            "GET /api/items",
            "GET /api/with-headers",
            "GET /api/with-headers"
        ]
    );
}

#[tokio::test]
async fn disallowed_origin_gets_no_cors_headers() {
    let upstream = RecordingUpstream::start().await;
    let gateway = Gateway::start(&cors_config(upstream.addr));
    let client = client();

    for path in ["/api/items", "/api/with-headers"] {
        let response = send_from_page(&gateway, Method::GET, path, EVIL_ORIGIN).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            assert_eq!(value(headers, name), None, "{path}: {name}");
        }
        assert!(varies_by(headers, "origin"), "{path}: {headers:?}");
    }

    // A request without `Origin` still varies by it, so a cache keeps the two apart.
    let response = client
        .get(gateway.url("/api/items"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(varies_by(response.headers(), "origin"));
    assert_eq!(
        value(response.headers(), "access-control-allow-origin"),
        None
    );

    let response = send_from_page(&gateway, Method::GET, "/strict/items", EVIL_ORIGIN).await;
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "cors_origin_not_allowed");

    // A same-origin request carries `Origin` too, and `reject` lets it through.
    let own_origin = format!("http://{}", gateway.proxy[0]);
    let response = send_from_page(&gateway, Method::POST, "/strict/items", &own_origin).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        value(response.headers(), "access-control-allow-origin"),
        None
    );

    assert_eq!(
        upstream.requests(),
        [
            "GET /api/items",
            "GET /api/with-headers",
            "GET /api/items",
            "POST /strict/items"
        ],
        "the rejected request does not reach the upstream"
    );
}

#[tokio::test]
async fn preflight_counted_by_ip_limit() {
    let upstream = RecordingUpstream::start().await;
    let gateway = Gateway::start(&cors_config(upstream.addr));

    for remaining in ["1", "0"] {
        let response = preflight(&gateway, "/limited/x", APP_ORIGIN, "PUT", None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(
            value(response.headers(), "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(
            value(response.headers(), "access-control-allow-origin").as_deref(),
            Some(APP_ORIGIN)
        );
    }
    let response = preflight(&gateway, "/limited/x", APP_ORIGIN, "PUT", None)
        .send()
        .await
        .unwrap();
    assert!(value(response.headers(), "retry-after").is_some());
    let body = error_body(response, 429).await;
    assert_eq!(body["error"]["code"], "rate_limited");

    // The actual request from the same address shares the counter.
    let response = send_from_page(&gateway, Method::PUT, "/limited/x", APP_ORIGIN).await;
    let body = error_body(response, 429).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(upstream.requests(), Vec::<String>::new());
}

#[test]
fn wildcard_with_credentials_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cors.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: app\n    targets: [http://127.0.0.1:9000]\nroutes:\n  - name: app\n    service: app\n    paths: [/app]\n    policies:\n      - cors:\n          allowed_origins: ['*']\n          allow_credentials: true\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:11: key `routes[0].policies[0].cors.allow_credentials`",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("cannot be combined"), "{stderr}");
}

fn csrf_config(upstream: SocketAddr) -> String {
    format!(
        r#"{node}
services:
  - name: web
    targets: [http://{upstream}]
routes:
  - name: account
    service: web
    paths: [/account]
    policies:
      - csrf:
          allowed_origins: [{APP_ORIGIN}]
          secret_env: {CSRF_SECRET_VARIABLE}
          exempt_headers: [authorization]
"#,
        node = node_config(),
    )
}

fn start_csrf_gateway(upstream: SocketAddr) -> Gateway {
    Gateway::start_with_env(
        &csrf_config(upstream),
        &[(CSRF_SECRET_VARIABLE, CSRF_SECRET)],
    )
}

#[tokio::test]
async fn csrf_checks_browser_headers() {
    let upstream = RecordingUpstream::start().await;
    let gateway = start_csrf_gateway(upstream.addr);
    let client = client();
    let own_origin = format!("http://{}", gateway.proxy[0]);
    let post = |headers: &[(&str, &str)]| {
        let mut request = client
            .post(gateway.url("/account/email"))
            .header("cookie", "session=s1")
            .body("email=a@example.com");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    let rejected = [
        (
            vec![("origin", EVIL_ORIGIN), ("sec-fetch-site", "cross-site")],
            "csrf_origin_not_allowed",
        ),
        (vec![("origin", "null")], "csrf_origin_not_allowed"),
        (
            vec![("referer", "https://evil.example.net/form")],
            "csrf_origin_not_allowed",
        ),
        (vec![("sec-fetch-site", "cross-site")], "csrf_cross_site"),
        (vec![("sec-fetch-site", "same-site")], "csrf_cross_site"),
        (vec![], "csrf_token_missing"),
    ];
    for (headers, code) in rejected {
        let response = post(&headers).await.unwrap();
        let body = error_body(response, 403).await;
        assert_eq!(body["error"]["code"], code, "{headers:?}");
    }
    assert_eq!(upstream.requests(), Vec::<String>::new());

    let referer = format!("{own_origin}/account");
    let admitted = [
        vec![("origin", own_origin.as_str())],
        vec![("origin", APP_ORIGIN), ("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-origin")],
        vec![("referer", referer.as_str())],
    ];
    for headers in &admitted {
        let response = post(headers).await.unwrap();
        assert_eq!(response.status(), 200, "{headers:?}");
    }
    assert_eq!(upstream.requests().len(), admitted.len());

    // A bearer token without cookies is exempt; with a cookie, or with Basic, it is not.
    let response = client
        .delete(gateway.url("/account/sessions"))
        .header("authorization", "Bearer some-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .delete(gateway.url("/account/sessions"))
        .header("authorization", "Bearer some-token")
        .header("cookie", "session=s1")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "csrf_token_missing");
    let response = client
        .delete(gateway.url("/account/sessions"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "csrf_token_missing");
}

#[tokio::test]
async fn csrf_double_submit_with_cookie_jar() {
    let upstream = RecordingUpstream::start().await;
    let gateway = start_csrf_gateway(upstream.addr);
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    let url: reqwest::Url = gateway.url("/account").parse().unwrap();

    let response = browser.get(url.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = value(response.headers(), "set-cookie").expect("a token cookie");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(set_cookie.contains("Path=/"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookies = jar.cookies(&url).expect("the jar holds the cookie");
    let token = cookies
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|pair| pair.strip_prefix("portcullis-csrf="))
        .expect("the token cookie")
        .to_string();

    // A request that carries a valid token gets no new one.
    let response = browser.get(url.clone()).send().await.unwrap();
    assert_eq!(value(response.headers(), "set-cookie"), None);

    let response = browser
        .post(gateway.url("/account/email"))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "csrf_token_missing");

    let response = browser
        .post(gateway.url("/account/email"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The header must repeat the cookie exactly.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let response = browser
        .post(gateway.url("/account/email"))
        .header("x-csrf-token", &tampered)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "csrf_token_invalid");

    // A matching pair that the gateway did not sign is rejected: a forged MAC, and a changed
    // issue time under the original MAC.
    let (payload, _) = token.rsplit_once('.').unwrap();
    let forged_mac = format!("{payload}.{}", "A".repeat(43));
    let (issued, rest) = token.split_once('.').unwrap();
    let later: u64 = issued.parse::<u64>().unwrap() + 100;
    let forged_time = format!("{later}.{rest}");
    for forged in [forged_mac, forged_time] {
        let response = client()
            .put(gateway.url("/account/email"))
            .header("cookie", format!("portcullis-csrf={forged}"))
            .header("x-csrf-token", &forged)
            .send()
            .await
            .unwrap();
        let body = error_body(response, 403).await;
        assert_eq!(body["error"]["code"], "csrf_token_invalid", "{forged}");
    }
    assert_eq!(
        upstream.requests(),
        ["GET /account", "GET /account", "POST /account/email"]
    );
}

fn security_headers_config(upstream: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
  - address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert_file: localhost.crt, key_file: localhost.key }}
admin:
  address: 127.0.0.1:0
  token: {admin_token}
store:
  sqlite: portcullis.db
access_log: access.log
policies:
  - security-headers: {{}}
services:
  - name: app
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
routes:
  - name: defaults
    service: app
    paths: [/defaults]
  - name: custom
    service: app
    paths: [/custom]
    policies:
      - security-headers:
          x_frame_options: DENY
          content_security_policy: "default-src 'self'"
          permissions_policy: false
          strict_transport_security: max-age=600
          hsts_on_plain_http: true
          override: [x-frame-options]
consumers:
  - name: alice
    api_keys: [{ALICE_KEY}]
"#,
        admin_token = common::ADMIN_TOKEN,
    )
}

const DEFAULT_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "camera=(), geolocation=(), microphone=(), payment=(), usb=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

#[tokio::test]
async fn security_headers_on_http_and_tls() {
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, certificate) = common::write_certificate(dir.path(), "localhost", &["localhost"]);
    let gateway = Gateway::start_in(dir, &security_headers_config(upstream.addr));
    let plain = client();
    let tls_addr = gateway.proxy[1];
    let tls = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .resolve("localhost", tls_addr)
        .add_root_certificate(reqwest::Certificate::from_der(certificate.der()).unwrap())
        .build()
        .unwrap();
    let tls_url = |path: &str| format!("https://localhost:{}{path}", tls_addr.port());

    let response = plain
        .get(gateway.url("/defaults/a"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (name, expected) in DEFAULT_HEADERS {
        assert_eq!(
            value(response.headers(), name).as_deref(),
            Some(expected),
            "{name}"
        );
    }
    assert_eq!(
        value(response.headers(), "strict-transport-security"),
        None,
        "no HSTS on plain HTTP"
    );

    let response = tls
        .get(tls_url("/defaults/a"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        value(response.headers(), "strict-transport-security").as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    for (name, expected) in DEFAULT_HEADERS {
        assert_eq!(
            value(response.headers(), name).as_deref(),
            Some(expected),
            "TLS {name}"
        );
    }

    // The upstream's X-Frame-Options stays, once.
    let response = plain
        .get(gateway.url("/defaults/with-headers"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        values(response.headers(), "x-frame-options"),
        ["SAMEORIGIN"]
    );

    // A route's own settings replace the global policy, and `override` replaces the upstream's.
    let response = plain
        .get(gateway.url("/custom/with-headers"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(values(headers, "x-frame-options"), ["DENY"]);
    assert_eq!(
        value(headers, "content-security-policy").as_deref(),
        Some("default-src 'self'")
    );
    assert_eq!(value(headers, "permissions-policy"), None);
    assert_eq!(
        value(headers, "strict-transport-security").as_deref(),
        Some("max-age=600"),
        "hsts_on_plain_http"
    );

    // Rejections carry the headers too.
    let response = tls.get(tls_url("/defaults/a")).send().await.unwrap();
    assert_eq!(
        value(response.headers(), "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        value(response.headers(), "strict-transport-security").is_some(),
        "{:?}",
        response.headers()
    );
    error_body(response, 401).await;
}
