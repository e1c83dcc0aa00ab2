//! Test harness: runs the real `portcullis` binary on ephemeral ports in a temporary folder,
//! in front of the in-process echo upstream.

#![allow(dead_code)]

pub mod ai;
pub mod postgres;
pub mod redis;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0000000000000001";
pub const ALICE_KEY: &str = "alice-demo-key-0001";

/// A running gateway process.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub proxy: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

impl Gateway {
    /// Writes `config` to `gateway.yaml` in a new folder and starts the gateway on it.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        Gateway::start_in(dir, config)
    }

    /// Starts the gateway in an existing folder, for configs that reference files in it.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_in_with_env(dir, config, &[])
    }

    /// Starts the gateway like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        Gateway::start_in_with_env(dir, config, env)
    }

    /// Starts the gateway in an existing folder with extra environment variables.
    pub fn start_in_with_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, config).expect("write the config");
        let addresses = dir.path().join("addresses.json");
        // A restart in the same folder must not read the previous run's addresses.
        let _ = std::fs::remove_file(&addresses);
        let stderr =
            std::fs::File::create(dir.path().join("gateway.stderr")).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--addresses-file")
            .arg(&addresses)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start portcullis");
        let mut gateway = Gateway {
            child: Some(child),
            dir,
            proxy: Vec::new(),
            admin: "127.0.0.1:0".parse().unwrap(),
            config_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addresses) {
                let value: serde_json::Value =
                    serde_json::from_str(&text).expect("addresses file is JSON");
                gateway.proxy = value["proxy"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                gateway.admin = value["admin"].as_str().unwrap().parse().unwrap();
                return gateway;
            }
            if let Some(status) = gateway.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "portcullis exited with {status} during start:\n{}",
                    gateway.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not start in 30 s:\n{}",
                gateway.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy[0])
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.stderr")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns whether it exited with status 0.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Returns the access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("access-log line is not JSON ({error}): {line}"))
            })
            .collect()
    }

    /// Waits until the access log has a line with this request id.
    pub fn access_log_line(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .access_log()
                .into_iter()
                .find(|line| line["request_id"] == request_id)
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for request {request_id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the echo upstream in process and returns its address.
pub async fn upstream() -> SocketAddr {
    echo_upstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start the echo upstream")
}

/// Returns an address where nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Returns the node settings of a test gateway: one proxy listener and the admin API on
/// ephemeral ports, the test admin token, a SQLite store and an access-log file in the
/// gateway's folder.
pub fn node_config() -> String {
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
"#
    )
}

/// The documented example configuration, with ports replaced and the TLS listener removed.
pub fn example_config(upstream: SocketAddr) -> String {
    format!(
        r#"{}
services:
  - name: echo
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
      - rate-limit: {{ limit: 5, window: 1s, by: consumer }}
routes:
  - name: echo
    service: echo
    paths: [/echo]
    strip_prefix: true
consumers:
  - name: alice
    roles: [gold]
    api_keys: [{ALICE_KEY}]
"#,
        node_config()
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

pub fn admin(
    client: &reqwest::Client,
    method: reqwest::Method,
    gateway: &Gateway,
    path: &str,
) -> reqwest::RequestBuilder {
    client
        .request(method, gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
}

/// Parses a JSON error body and checks its shape.
pub async fn error_body(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(body["error"]["status"], status);
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    if let Some(request_id) = request_id {
        assert_eq!(body["error"]["request_id"], request_id.as_str());
    }
    body
}

/// Sends raw bytes on a new TCP connection and returns everything read until the peer closes
/// or two seconds pass.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// Writes a self-signed certificate for `names` into `dir` and returns the file paths.
pub fn write_certificate(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (PathBuf, PathBuf, rcgen::Certificate) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path, certified.cert)
}

/// An upstream for resilience tests. It responds to every request with its name as the body and
/// a settable status, and counts the requests it serves. It can be stopped, which closes every
/// open connection, and started again on the same port. `/health` returns 200 without being
/// counted, and `/slow/{ms}` waits before it responds.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TestUpstream {
    pub async fn start(name: &'static str) -> TestUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TestUpstream {
            addr: listener.local_addr().unwrap(),
            name,
            hits: Default::default(),
            status: std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200)),
            task: std::sync::Mutex::new(None),
        };
        upstream.serve(listener);
        upstream
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let hits = self.hits.clone();
        let status = self.status.clone();
        let name = self.name;
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection task with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                let status = status.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, name, hits.clone(), status.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops accepting and closes every open connection, so the port refuses connections.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the status of every later response except to `/health`.
    pub fn set_status(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    name: &'static str,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let path = request.uri().path().to_string();
    if path == "/health" {
        return Ok(hyper::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"ok"),
        )));
    }
    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Read the body, so a POST gets its response only after the body arrived whole.
    let _ = request.into_body().collect().await;
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(name)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status.load(std::sync::atomic::Ordering::SeqCst))
            .unwrap_or(hyper::StatusCode::OK);
    Ok(response)
}

/// Returns the text that `/metrics` serves.
pub async fn metrics_text(gateway: &Gateway) -> String {
    client()
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Returns the value of the metric sample whose line starts with `prefix`, such as
/// `portcullis_upstream_retries_total{service="api"}`, or 0 when there is none.
pub async fn metric(gateway: &Gateway, prefix: &str) -> f64 {
    metrics_text(gateway)
        .await
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Polls `check` every 20 ms until it returns true, failing after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, condition: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {condition}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compresses `data` as a gzip stream, for `Content-Encoding: gzip` bodies.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Compresses `data` as a zlib stream, for `Content-Encoding: deflate` bodies.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}
