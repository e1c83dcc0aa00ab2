//! The request path through the real gateway: authentication, limits, canonical requests,
//! forwarding headers, upstream failures and the access log.

mod common;

use std::time::Duration;

use common::{ALICE_KEY, Gateway, client, error_body, example_config, raw_exchange, upstream};

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_401_with_challenge() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let response = client().get(gateway.url("/echo/x")).send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"portcullis\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_key_is_401_and_not_echoed() {
    let gateway = Gateway::start(&example_config(upstream().await));
    for key in [
        "wrong-key-000000000001",
        "pcs_0000000000000000000000000000000000000A",
    ] {
        let response = client()
            .get(gateway.url("/echo/x"))
            .header("apikey", key)
            .send()
            .await
            .unwrap();
        assert!(response.headers().contains_key("www-authenticate"));
        let body = error_body(response, 401).await;
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(
            !body.to_string().contains(key),
            "the key was echoed: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_key_reaches_upstream_without_credential() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();

    let response = client
        .get(gateway.url("/echo/hello?a=1"))
        .header("apikey", ALICE_KEY)
        .header("x-consumer-name", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/hello", "strip_prefix removes /echo");
    assert_eq!(echo["query"], "a=1");
    assert_eq!(
        echo["headers"]["x-consumer-name"], "alice",
        "the client cannot choose the consumer header"
    );
    assert!(
        echo["headers"].get("apikey").is_none(),
        "the credential was forwarded: {echo}"
    );

    let response = client
        .get(gateway.url("/echo/bearer"))
        .bearer_auth(ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert!(
        echo["headers"].get("authorization").is_none(),
        "the bearer token was forwarded: {echo}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_key_is_off_unless_enabled() {
    let upstream = upstream().await;
    let gateway = Gateway::start(&example_config(upstream));
    let response = client()
        .get(gateway.url(&format!("/echo/x?apikey={ALICE_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let config = example_config(upstream).replace(
        "      - key-auth: {}",
        "      - key-auth: { query_param: apikey }",
    );
    let gateway = Gateway::start(&config);
    let response = client()
        .get(gateway.url(&format!("/echo/x?apikey={ALICE_KEY}&b=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echo["query"], "b=2",
        "the key stays out of the upstream query"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_429_with_headers() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let response = client
            .get(gateway.url("/echo/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 200 {
            assert_eq!(response.headers()["ratelimit-limit"], "5");
            assert!(response.headers().contains_key("ratelimit-remaining"));
            assert!(response.headers().contains_key("ratelimit-policy"));
        } else {
            last = Some(response);
        }
    }
    // The first five pass within the burst; the limit refills one request per 200 ms, so a
    // slow machine can admit one more before the eighth.
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    let response = last.expect("a rejected response");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after));
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    assert!(response.headers().contains_key("ratelimit-reset"));
    let body = error_body(response, 429).await;
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_by_ip_counts_each_client() {
    let upstream = upstream().await;
    let config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {token} }}
store: {{ sqlite: portcullis.db }}
access_log: off
trusted_proxies: [127.0.0.1]
services:
  - name: echo
    targets: [http://{upstream}]
    policies:
      - rate-limit: {{ limit: 2, window: 1m, by: ip }}
routes:
  - {{ name: echo, service: echo, paths: [/] }}
"#,
        token = common::ADMIN_TOKEN
    );
    let gateway = Gateway::start(&config);
    let client = client();
    let status = |ip: &'static str| {
        let request = client.get(gateway.url("/")).header("x-forwarded-for", ip);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("198.51.100.1").await, 200);
    assert_eq!(status("198.51.100.1").await, 200);
    assert_eq!(status("198.51.100.1").await, 429);
    assert_eq!(
        status("198.51.100.2").await,
        200,
        "another client IP has its own limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_route_is_404_and_method_is_405() {
    let upstream = upstream().await;
    let config = example_config(upstream).replace(
        "    strip_prefix: true",
        "    strip_prefix: true\n    methods: [GET]",
    );
    let gateway = Gateway::start(&config);
    let body = error_body(
        client()
            .get(gateway.url("/nothing-here"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(body["error"]["code"], "route_not_found");
    let body = error_body(
        client().get(gateway.url("/echoes")).send().await.unwrap(),
        404,
    )
    .await;
    assert_eq!(
        body["error"]["code"], "route_not_found",
        "prefixes match whole segments"
    );
    let body = error_body(
        client().post(gateway.url("/echo/x")).send().await.unwrap(),
        405,
    )
    .await;
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_get_413_414_431() {
    let upstream = upstream().await;
    let config = example_config(upstream).replace(
        "access_log: access.log",
        "access_log: access.log\nlimits: { max_body_bytes: 1024, max_header_bytes: 4096, max_uri_bytes: 512 }",
    );
    let gateway = Gateway::start(&config);
    let client = client();

    let response = client
        .post(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 413).await["error"]["code"],
        "body_too_large"
    );

    // A chunked body has no Content-Length, so the limit cuts the stream instead.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 512])));
    let response = client
        .post(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 413).await["error"]["code"],
        "body_too_large"
    );

    let response = client
        .post(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a body under the limit passes");

    let long_path = format!("/echo/{}", "a".repeat(600));
    let response = client
        .get(gateway.url(&long_path))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 414).await["error"]["code"],
        "uri_too_long"
    );

    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .header("x-big", "b".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 431).await["error"]["code"],
        "headers_too_large"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_paths_are_400_and_never_forwarded() {
    let upstream = upstream().await;
    let config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {token} }}
store: {{ sqlite: portcullis.db }}
access_log: off
services:
  - name: public
    targets: [http://{upstream}]
  - name: admin
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
routes:
  - {{ name: public, service: public, paths: [/] }}
  - {{ name: admin, service: admin, paths: [/admin] }}
consumers:
  - {{ name: alice, api_keys: [{ALICE_KEY}] }}
"#,
        token = common::ADMIN_TOKEN
    );
    let gateway = Gateway::start(&config);
    let addr = gateway.proxy[0];
    for path in [
        "/admin%2fusers",
        "/%2e%2e/admin",
        "/public/..%2fadmin",
        "/public%5c..%5cadmin",
        "/admin;x=1",
        "/admin%00",
        "/%252e%252e/admin",
        "/public/%2e%2e/%2e%2e/admin",
    ] {
        let response = raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(
            response.contains("\"code\":\"invalid_path\""),
            "{path}: {response}"
        );
    }
    // Every spelling that resolves to /admin is routed to the protected route.
    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/public/../admin",
        "/%61dmin",
        "/public/%2e%2e/admin",
    ] {
        let response = raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(
            response.starts_with("HTTP/1.1 401"),
            "{path} bypassed key-auth: {response}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_framing_cannot_smuggle() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let addr = gateway.proxy[0];
    // Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3) and the connection
    // closes after the response, so the bytes after the chunked body never become a request.
    let both = format!(
        "POST /echo/x HTTP/1.1\r\nHost: localhost\r\napikey: {ALICE_KEY}\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\napikey: {ALICE_KEY}\r\n\r\n"
    );
    let response = raw_exchange(addr, both.as_bytes());
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert!(!response.contains("/smuggled"), "{response}");

    let duplicate = format!(
        "POST /echo/x HTTP/1.1\r\nHost: localhost\r\napikey: {ALICE_KEY}\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcd"
    );
    let response = raw_exchange(addr, duplicate.as_bytes());
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");

    let garbage = raw_exchange(addr, b"NOT A REQUEST\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    let header_injection = raw_exchange(
        addr,
        b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x00b\r\n\r\n",
    );
    assert!(
        header_injection.starts_with("HTTP/1.1 400"),
        "{header_injection}"
    );

    let response = raw_exchange(
        addr,
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("invalid_host"), "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_generated_or_kept() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();

    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        echo["headers"]["x-request-id"],
        generated.as_str(),
        "the upstream gets the same id"
    );

    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-123");

    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], "bad id with spaces");

    let response = client
        .get(gateway.url("/missing"))
        .header("x-request-id", "rid-404")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 404).await;
    assert_eq!(body["error"]["request_id"], "rid-404");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_trust_only_configured_proxies() {
    let upstream = upstream().await;
    let base = example_config(upstream);
    let client = client();

    let gateway = Gateway::start(&base);
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-forwarded-for, x-request-id")
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's chain is replaced"
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    let forwarded_host = echo["headers"]["x-forwarded-host"].as_str();
    assert!(
        forwarded_host.is_some_and(|host| host.starts_with("127.0.0.1:")),
        "{echo}"
    );
    assert!(
        echo["headers"]["x-request-id"].is_string(),
        "Connection cannot remove gateway headers"
    );
    // The line is written once the response body is done, so it may trail the response.
    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["client_ip"], "127.0.0.1");

    let trusted = base.replace(
        "access_log: access.log",
        "access_log: access.log\ntrusted_proxies: [127.0.0.0/8]",
    );
    let gateway = Gateway::start(&trusted);
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .header("x-forwarded-for", "203.0.113.7, 10.1.1.1")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        "203.0.113.7, 10.1.1.1, 127.0.0.1"
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    // 10.1.1.1 is not trusted, so it is the client.
    assert_eq!(
        gateway.access_log_line(&request_id)["client_ip"],
        "10.1.1.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502() {
    let closed = common::closed_port();
    let gateway = Gateway::start(&example_config(closed));
    let response = client()
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = error_body(response, 502).await;
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert!(
        gateway.stderr().contains(&closed.to_string()),
        "the failure log names the upstream"
    );
    assert_eq!(gateway.access_log_line(&request_id)["status"], 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504() {
    let upstream = upstream().await;
    let config = example_config(upstream).replace(
        "    targets: [http://",
        "    timeouts: { response: 300ms }\n    targets: [http://",
    );
    let gateway = Gateway::start(&config);
    let started = std::time::Instant::now();
    let response = client()
        .get(gateway.url("/echo/delay/3000"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout fired late: {:?}",
        started.elapsed()
    );
    let body = error_body(response, 504).await;
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_closing_mid_response_is_logged() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let response = client()
        .get(gateway.url("/echo/abort/1000"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the headers arrived before the failure"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        response.bytes().await.is_err(),
        "the client must see the body fail, not a short success"
    );
    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["outcome"], "upstream_error");
    assert_eq!(line["bytes_out"], 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_response_passes_through() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let response = client()
        .get(gateway.url("/echo/stream/5/20"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().await.unwrap();
    assert_eq!(text.lines().count(), 5);
    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["outcome"], "completed");
    assert_eq!(line["bytes_out"], text.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_fields_and_no_secrets() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();
    let response = client
        .post(gateway.url("/echo/path?token=hunter2"))
        .header("apikey", ALICE_KEY)
        .body("hello")
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await.unwrap();
    let line = gateway.access_log_line(&request_id);
    for field in [
        "time",
        "request_id",
        "client_ip",
        "method",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "route",
        "service",
        "consumer",
    ] {
        assert!(
            line.get(field).is_some(),
            "access-log line lacks {field}: {line}"
        );
    }
    assert_eq!(line["path"], "/echo/path");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["consumer"], "alice");
    assert_eq!(line["route"], "echo");

    let rejected = client
        .get(gateway.url("/echo/x"))
        .header("apikey", "not-the-key-00000001")
        .send()
        .await
        .unwrap();
    let rejected_id = rejected.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let line = gateway.access_log_line(&rejected_id);
    assert_eq!(line["rejected_by"], "key-auth");
    assert_eq!(line["status"], 401);

    let everything =
        std::fs::read_to_string(gateway.path("access.log")).unwrap() + &gateway.stderr();
    for secret in [
        ALICE_KEY,
        "hunter2",
        "not-the-key-00000001",
        common::ADMIN_TOKEN,
    ] {
        assert!(
            !everything.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connection_serves_many_requests() {
    use http_body_util::{BodyExt, Empty};

    let gateway =
        Gateway::start(&example_config(upstream().await).replace("limit: 5,", "limit: 1000,"));
    let stream = tokio::net::TcpStream::connect(gateway.proxy[0])
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for i in 0..50 {
        let request = http::Request::get(format!("/echo/{i}"))
            .header("host", "localhost")
            .header("apikey", ALICE_KEY)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await.unwrap();
    }
    let metrics = client()
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_requests_total{route=\"echo\",status=\"200\"} 50"),
        "{metrics}"
    );
    let open: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("portcullis_open_connections "))
        .collect();
    assert_eq!(
        open,
        ["portcullis_open_connections 1"],
        "all 50 requests used one connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_and_ip_restriction_are_403() {
    let upstream = upstream().await;
    let config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {token} }}
store: {{ sqlite: portcullis.db }}
access_log: access.log
trusted_proxies: [127.0.0.1]
services:
  - name: echo
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
routes:
  - name: gold
    service: echo
    paths: [/gold]
    policies:
      - acl: {{ roles: [gold] }}
  - name: internal
    service: echo
    paths: [/internal]
    policies:
      - ip-restriction: {{ allow: [10.0.0.0/8], deny: [10.0.0.5] }}
consumers:
  - {{ name: alice, roles: [gold], api_keys: [{ALICE_KEY}] }}
  - {{ name: bob, roles: [silver], api_keys: [bob-demo-key-00000001] }}
"#,
        token = common::ADMIN_TOKEN
    );
    let gateway = Gateway::start(&config);
    let client = client();
    let get = |path: &str, key: &str, ip: &str| {
        client
            .get(gateway.url(path))
            .header("apikey", key)
            .header("x-forwarded-for", ip)
            .send()
    };

    assert_eq!(
        get("/gold/x", ALICE_KEY, "192.0.2.1")
            .await
            .unwrap()
            .status(),
        200
    );
    let response = get("/gold/x", "bob-demo-key-00000001", "192.0.2.1")
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        error_body(response, 403).await["error"]["code"],
        "access_denied"
    );
    assert_eq!(gateway.access_log_line(&request_id)["rejected_by"], "acl");
    assert_eq!(
        client
            .get(gateway.url("/gold/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no key is 401, not 403"
    );

    assert_eq!(
        get("/internal/x", ALICE_KEY, "10.1.2.3")
            .await
            .unwrap()
            .status(),
        200
    );
    let response = get("/internal/x", ALICE_KEY, "10.0.0.5").await.unwrap();
    assert_eq!(
        error_body(response, 403).await["error"]["code"],
        "ip_denied"
    );
    let response = get("/internal/x", ALICE_KEY, "192.0.2.1").await.unwrap();
    assert_eq!(
        error_body(response, 403).await["error"]["code"],
        "ip_denied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_header_connections_are_closed() {
    use std::io::{Read, Write};

    let config = example_config(upstream().await).replace(
        "access_log: access.log",
        "access_log: access.log\ntimeouts: { idle: 300ms, header_read: 300ms }",
    );
    let gateway = Gateway::start(&config);

    // A keep-alive connection with no new request is closed after the idle timeout.
    let mut idle = std::net::TcpStream::connect(gateway.proxy[0]).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(
        format!("GET /echo/x HTTP/1.1\r\nHost: localhost\r\napikey: {ALICE_KEY}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let _ = idle.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );

    // A client that never finishes its headers is cut off after the header-read timeout.
    let mut slow = std::net::TcpStream::connect(gateway.proxy[0]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /echo/x HTTP/1.1\r\nHost: local")
        .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let _ = slow.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the slow client held the connection for {waited:?}"
    );

    // The admin listener applies the same header-read timeout.
    let mut slow_admin = std::net::TcpStream::connect(gateway.admin).unwrap();
    slow_admin
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    slow_admin
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: local")
        .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let _ = slow_admin.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the slow client held the admin connection for {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_client_input_is_400_not_502() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let addr = gateway.proxy[0];

    // A broken chunked body is the client's fault, not the upstream's.
    let bad_chunk = format!(
        "POST /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\napikey: {ALICE_KEY}\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    );
    let response = raw_exchange(addr, bad_chunk.as_bytes());
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("\"code\":\"invalid_body\""), "{response}");

    // Userinfo and a non-numeric port are not a host.
    for host in ["evil@localhost", "localhost:abc", "localhost:99999"] {
        let request = format!(
            "GET /echo/x HTTP/1.1\r\nHost: {host}\r\napikey: {ALICE_KEY}\r\nConnection: close\r\n\r\n"
        );
        let response = raw_exchange(addr, request.as_bytes());
        assert!(response.starts_with("HTTP/1.1 400"), "{host}: {response}");
        assert!(response.contains("invalid_host"), "{host}: {response}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failure_keeps_rate_limit_headers() {
    let gateway = Gateway::start(&example_config(common::closed_port()));
    let response = client()
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["ratelimit-limit"], "5");
    assert_eq!(response.headers()["ratelimit-remaining"], "4");
}

/// How the counting upstream ends a connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamClose {
    /// Keep the connection open for more requests.
    Never,
    /// Send `Connection: close` and close after the response.
    WithHeader,
}

/// A raw HTTP/1.1 upstream that counts the connections it accepted and the ones its peer closed.
/// Every request must be a GET without a body; each gets `200 ok`.
struct CountingUpstream {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed_by_peer: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    async fn start(close: UpstreamClose) -> CountingUpstream {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (accepted_count, closed_count) = (accepted.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let closed_count = closed_count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        let read = match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => {
                                closed_count.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(read) => read,
                        };
                        head.extend_from_slice(&buffer[..read]);
                        while let Some(end) =
                            head.windows(4).position(|window| window == b"\r\n\r\n")
                        {
                            head.drain(..end + 4);
                            let response: &[u8] = match close {
                                UpstreamClose::Never => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                                }
                                UpstreamClose::WithHeader => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                                }
                            };
                            if stream.write_all(response).await.is_err() {
                                return;
                            }
                            if close == UpstreamClose::WithHeader {
                                return;
                            }
                        }
                    }
                });
            }
        });
        CountingUpstream {
            addr,
            accepted,
            closed_by_peer,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed_by_peer(&self) -> usize {
        self.closed_by_peer
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Sends `count` sequential requests through the gateway and checks that each one gets `ok`.
async fn send_sequential_requests(gateway: &Gateway, count: usize) {
    let client = client();
    for i in 0..count {
        let response = client
            .get(gateway.url(&format!("/echo/{i}")))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok\n", "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connection_is_reused() {
    let upstream = CountingUpstream::start(UpstreamClose::Never).await;
    let gateway =
        Gateway::start(&example_config(upstream.addr).replace("limit: 5,", "limit: 1000,"));
    send_sequential_requests(&gateway, 20).await;
    assert_eq!(
        upstream.accepted(),
        1,
        "20 sequential requests share one connection"
    );
    assert_eq!(upstream.closed_by_peer(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connection_close_is_honoured() {
    let upstream = CountingUpstream::start(UpstreamClose::WithHeader).await;
    let gateway =
        Gateway::start(&example_config(upstream.addr).replace("limit: 5,", "limit: 1000,"));
    send_sequential_requests(&gateway, 10).await;
    assert_eq!(
        upstream.accepted(),
        10,
        "each response closed its connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_upstream_connection_is_closed() {
    let upstream = CountingUpstream::start(UpstreamClose::Never).await;
    let config = example_config(upstream.addr).replace(
        "    targets: [",
        "    timeouts: { idle: 300ms }\n    targets: [",
    );
    let gateway = Gateway::start(&config);
    send_sequential_requests(&gateway, 1).await;

    // The gateway closes the connection between one and two idle timeouts after its last use.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.closed_by_peer() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle upstream connection was still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.accepted(), 1);

    // A later request opens a new connection.
    send_sequential_requests(&gateway, 1).await;
    assert_eq!(upstream.accepted(), 2);
}
