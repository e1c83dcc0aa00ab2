//! TLS and HTTP/2 through the real gateway binary: protocol versions, certificate choice by
//! SNI, ALPN, certificate reload, HTTP/2 with prior knowledge on a plain listener, and the
//! request path with key auth over TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{ALICE_KEY, Gateway};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme,
    SupportedProtocolVersion,
};

const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Log message of the gateway when a certificate reload fails.
const RELOAD_FAILED: &str = "TLS certificate reload failed";
/// Log message of the gateway when a certificate reload succeeds.
const RELOADED: &str = "reloaded TLS certificates";

/// Builds a config in the shape of `common::example_config`, with `listeners` in place of its
/// plain listener and a rate limit that no test here reaches.
fn config(upstream: SocketAddr, listeners: &str) -> String {
    format!(
        r#"
listeners:
{listeners}
admin:
  address: 127.0.0.1:0
  token: {admin_token}
store:
  sqlite: portcullis.db
access_log: access.log
services:
  - name: echo
    targets: [http://{upstream}]
    policies:
      - key-auth: {{}}
      - rate-limit: {{ limit: 100000, window: 1s, by: consumer }}
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
        admin_token = common::ADMIN_TOKEN,
    )
}

/// Builds the YAML of a TLS listener on an ephemeral port with the certificate files
/// `{stem}.crt` and `{stem}.key` of each stem, relative to the config folder.
fn tls_listener(stems: &[&str], options: &str) -> String {
    let mut yaml = String::from("  - address: 127.0.0.1:0\n    tls:\n      certificates:\n");
    for stem in stems {
        yaml.push_str(&format!(
            "        - {{ cert_file: {stem}.crt, key_file: {stem}.key }}\n"
        ));
    }
    for option in options.lines().filter(|line| !line.trim().is_empty()) {
        yaml.push_str(&format!("      {}\n", option.trim()));
    }
    yaml
}

const PLAIN_LISTENER: &str = "  - address: 127.0.0.1:0\n";

/// Accepts every server certificate but still checks the handshake signatures, so that tests
/// can look at whichever certificate the gateway presents, for any server name.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds a client config limited to `versions` that offers `alpn` and accepts any server
/// certificate.
fn client_config(versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("the ring provider supports these TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

/// Connects to `addr` and completes a TLS handshake with `server_name` as SNI, unless the
/// config has SNI turned off.
async fn connect_tls(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(server_name.to_string())
        .unwrap_or_else(|error| panic!("invalid server name {server_name:?}: {error}"));
    let connector = TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(server_name, tcp).await
    };
    tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} timed out after 10 s"))
}

/// Returns the DER of the end-entity certificate that the gateway presented.
fn peer_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("the server presented a certificate");
    certificates[0].to_vec()
}

/// Completes a handshake with SNI `server_name` and returns the presented certificate's DER.
async fn presented_certificate(addr: SocketAddr, server_name: &str) -> Vec<u8> {
    let stream = connect_tls(addr, client_config(ALL_VERSIONS, &[]), server_name)
        .await
        .unwrap_or_else(|error| panic!("TLS handshake with SNI {server_name} failed: {error}"));
    peer_certificate(&stream)
}

/// Sends `GET path` with Alice's key over an HTTP/1.1 connection on `stream` and returns the
/// status and the JSON body.
async fn get_http1<S>(stream: S, host: &str, path: &str) -> (http::StatusCode, serde_json::Value)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header("apikey", ALICE_KEY)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("send the request");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or_else(|error| {
        panic!(
            "response body is not JSON ({error}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

/// Builds a reqwest client that trusts `roots`, sends `host` to `addr` and opens a new
/// connection, so a new TLS handshake, for every request.
fn https_client(
    roots: &[&rcgen::Certificate],
    host: &str,
    addr: SocketAddr,
) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .resolve(host, addr)
        .pool_max_idle_per_host(0);
    for root in roots {
        let root = reqwest::Certificate::from_der(root.der()).expect("parse the root certificate");
        builder = builder.add_root_certificate(root);
    }
    builder
}

/// Moves `{from}.crt` and `{from}.key` over `{to}.crt` and `{to}.key`, each with one rename, so
/// that the gateway never reads a half-written file.
fn replace_certificate(dir: &Path, from: &str, to: &str) {
    for extension in ["crt", "key"] {
        std::fs::rename(
            dir.join(format!("{from}.{extension}")),
            dir.join(format!("{to}.{extension}")),
        )
        .unwrap_or_else(|error| panic!("rename {from}.{extension} to {to}.{extension}: {error}"));
    }
}

/// Writes `contents` to `path` through a rename.
fn replace_file(path: &Path, contents: &[u8]) {
    let temporary = path.with_extension("replacement");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn set_modified(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(time))
        .unwrap_or_else(|error| panic!("set the modification time of {}: {error}", path.display()));
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Waits up to `timeout` until the gateway log contains `message` at least `count` times.
fn wait_for_log(gateway: &Gateway, message: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = gateway.stderr().matches(message).count();
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway logged {message:?} {seen} times in {timeout:?}, expected {count}:\n{}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the `portcullis_tls_handshake_failures` counter from the admin metrics.
async fn handshake_failures(gateway: &Gateway) -> u64 {
    let response = common::admin(&common::client(), reqwest::Method::GET, gateway, "/metrics")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET /metrics");
    let text = response.text().await.unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("portcullis_tls_handshake_failures_total "))
        .unwrap_or_else(|| panic!("no portcullis_tls_handshake_failures_total in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Exit status and output of an `openssl s_client` run.
struct OpensslRun {
    status: ExitStatus,
    output: String,
}

/// Runs `openssl s_client` against `addr` with `version_flag` (`-tls1_2` or `-tls1_3`) and an
/// empty stdin, so it exits after the handshake. Returns `None` when `openssl` is not installed.
fn openssl_s_client(dir: &Path, addr: SocketAddr, version_flag: &str) -> Option<OpensslRun> {
    let output_path = dir.join(format!("openssl{version_flag}.out"));
    let output = std::fs::File::create(&output_path).unwrap();
    let spawned = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "a.test", version_flag])
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("start openssl: {error}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_client {version_flag} did not exit in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&output_path).unwrap();
    Some(OpensslRun { status, output })
}

/// Starts a gateway with one TLS listener that uses a new certificate for `a.test`.
async fn start_with_certificate(options: &str) -> (Gateway, rcgen::Certificate) {
    let upstream = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, certificate) = common::write_certificate(dir.path(), "a", &["a.test"]);
    let gateway = Gateway::start_in(dir, &config(upstream, &tls_listener(&["a"], options)));
    (gateway, certificate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_is_rejected() {
    let (gateway, _) = start_with_certificate("min_version: \"1.3\"").await;
    let addr = gateway.proxy[0];
    let failures_before = handshake_failures(&gateway).await;

    let stream = connect_tls(addr, client_config(TLS13_ONLY, &[]), "a.test")
        .await
        .expect("a TLS 1.3 handshake succeeds");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let (status, _) = get_http1(stream, "a.test", "/echo/tls13").await;
    assert_eq!(status, 200, "request over TLS 1.3");

    let error = connect_tls(addr, client_config(TLS12_ONLY, &[]), "a.test")
        .await
        .expect_err("a TLS 1.2 handshake must fail on a listener with min_version 1.3");
    // rustls 0.23 reports the server's `protocol_version` alert as
    // `AlertReceived(ProtocolVersion)`.
    assert!(
        error.to_string().contains("ProtocolVersion"),
        "unexpected handshake error: {error}"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    while handshake_failures(&gateway).await <= failures_before {
        assert!(
            Instant::now() < deadline,
            "portcullis_tls_handshake_failures did not increase in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let Some(tls12) = openssl_s_client(gateway.dir.path(), addr, "-tls1_2") else {
        eprintln!("skipping the openssl s_client checks: the openssl binary is not installed");
        return;
    };
    assert!(
        !tls12.status.success(),
        "openssl s_client -tls1_2 connected to a listener with min_version 1.3:\n{}",
        tls12.output
    );
    // OpenSSL 3.0 prints the received alert 70 as `tlsv1 alert protocol version`.
    assert!(
        tls12.output.contains("alert protocol version"),
        "openssl s_client -tls1_2 failed for another reason than the protocol version:\n{}",
        tls12.output
    );
    let tls13 = openssl_s_client(gateway.dir.path(), addr, "-tls1_3").unwrap();
    assert!(
        tls13.status.success(),
        "openssl s_client -tls1_3 failed with {}:\n{}",
        tls13.status,
        tls13.output
    );
    assert!(
        tls13.output.contains("New, TLSv1.3"),
        "openssl s_client -tls1_3 did not report TLSv1.3:\n{}",
        tls13.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_is_accepted() {
    let (gateway, certificate) = start_with_certificate("min_version: \"1.2\"").await;
    let addr = gateway.proxy[0];

    let stream = connect_tls(addr, client_config(TLS12_ONLY, &[]), "a.test")
        .await
        .expect("a TLS 1.2 handshake succeeds on a listener with min_version 1.2");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(peer_certificate(&stream), certificate.der().to_vec());
    let (status, echo) = get_http1(stream, "a.test", "/echo/tls12").await;
    assert_eq!(status, 200, "request over TLS 1.2: {echo}");
    assert_eq!(echo["path"], "/tls12");

    let stream = connect_tls(addr, client_config(TLS13_ONLY, &[]), "a.test")
        .await
        .expect("a TLS 1.3 handshake succeeds on a listener with min_version 1.2");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );

    if let Some(tls12) = openssl_s_client(gateway.dir.path(), addr, "-tls1_2") {
        assert!(
            tls12.status.success(),
            "openssl s_client -tls1_2 failed with {}:\n{}",
            tls12.status,
            tls12.output
        );
    } else {
        eprintln!("skipping the openssl s_client check: the openssl binary is not installed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_certificate() {
    let upstream = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, exact) = common::write_certificate(dir.path(), "a", &["a.test"]);
    let (_, _, wildcard) = common::write_certificate(dir.path(), "b", &["*.b.test"]);
    let gateway = Gateway::start_in(dir, &config(upstream, &tls_listener(&["a", "b"], "")));
    let addr = gateway.proxy[0];
    let exact = exact.der().to_vec();
    let wildcard = wildcard.der().to_vec();

    let cases: [(&str, &Vec<u8>, &str); 7] = [
        ("a.test", &exact, "exact name"),
        ("x.b.test", &wildcard, "wildcard name"),
        ("X.B.Test", &wildcard, "wildcard name in other case"),
        ("A.TEST", &exact, "exact name in other case"),
        (
            "unknown.test",
            &exact,
            "unknown name falls back to the first",
        ),
        ("b.test", &exact, "a wildcard does not cover its parent"),
        ("y.x.b.test", &exact, "a wildcard covers one label only"),
    ];
    for (server_name, expected, case) in cases {
        let presented = presented_certificate(addr, server_name).await;
        assert!(
            presented == *expected,
            "SNI {server_name} ({case}) got the wrong certificate"
        );
    }

    let mut no_sni = client_config(ALL_VERSIONS, &[]);
    no_sni.enable_sni = false;
    let stream = connect_tls(addr, no_sni, "x.b.test")
        .await
        .expect("TLS handshake without SNI");
    assert!(
        peer_certificate(&stream) == exact,
        "a client without SNI must get the first certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_http2() {
    let (gateway, certificate) = start_with_certificate("").await;
    let addr = gateway.proxy[0];

    let stream = connect_tls(
        addr,
        client_config(ALL_VERSIONS, &[b"h2", b"http/1.1"]),
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let stream = connect_tls(addr, client_config(ALL_VERSIONS, &[b"http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let url = format!("https://a.test:{}/echo/alpn", addr.port());
    let http2 = https_client(&[&certificate], "a.test", addr)
        .build()
        .unwrap();
    let response = http2
        .get(&url)
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = response.json().await.expect("echo body is JSON");
    assert_eq!(echo["path"], "/alpn");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["version"], "HTTP/1.1", "the upstream request: {echo}");

    let http1 = https_client(&[&certificate], "a.test", addr)
        .http1_only()
        .build()
        .unwrap();
    let response = http1
        .get(&url)
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let echo: serde_json::Value = response.json().await.expect("echo body is JSON");
    assert_eq!(echo["path"], "/alpn");
    assert_eq!(echo["version"], "HTTP/1.1", "the upstream request: {echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_off_offers_only_http11() {
    let (gateway, certificate) = start_with_certificate("http2: false").await;
    let addr = gateway.proxy[0];

    let stream = connect_tls(
        addr,
        client_config(ALL_VERSIONS, &[b"h2", b"http/1.1"]),
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let client = https_client(&[&certificate], "a.test", addr)
        .build()
        .unwrap();
    let response = client
        .get(format!("https://a.test:{}/echo/alpn", addr.port()))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

/// Polls new handshakes until the gateway presents `new`, for up to 10 s. Every handshake
/// before that must present `old`, and an HTTPS request on a new connection must succeed on
/// every round.
async fn wait_for_certificate(gateway: &Gateway, client: &reqwest::Client, old: &[u8], new: &[u8]) {
    let addr = gateway.proxy[0];
    let url = format!("https://a.test:{}/echo/reload", addr.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    for round in 0.. {
        let presented = presented_certificate(addr, "a.test").await;
        if presented == new {
            return;
        }
        assert!(
            presented == old,
            "round {round}: the gateway presented neither the old nor the new certificate"
        );
        let response = client
            .get(&url)
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap_or_else(|error| {
                panic!("round {round}: request during the reload failed: {error}")
            });
        assert_eq!(
            response.status(),
            200,
            "round {round}: request during the reload"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not in use after 10 s:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_change_is_reloaded() {
    let (gateway, first) = start_with_certificate("").await;
    let dir = gateway.dir.path().to_path_buf();
    let (_, _, second) = common::write_certificate(&dir, "next", &["a.test"]);
    let client = https_client(&[&first, &second], "a.test", gateway.proxy[0])
        .build()
        .unwrap();
    assert!(presented_certificate(gateway.proxy[0], "a.test").await == first.der().to_vec());

    replace_certificate(&dir, "next", "a");
    wait_for_certificate(&gateway, &client, first.der(), second.der()).await;

    let response = client
        .get(format!(
            "https://a.test:{}/echo/after",
            gateway.proxy[0].port()
        ))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("request after the reload");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_keeps_old() {
    let (gateway, first) = start_with_certificate("").await;
    let dir = gateway.dir.path().to_path_buf();
    let (cert_path, key_path) = (dir.join("a.crt"), dir.join("a.key"));
    let (other_cert, _, _) = common::write_certificate(&dir, "other", &["a.test"]);
    let client = https_client(&[&first], "a.test", gateway.proxy[0])
        .build()
        .unwrap();
    let url = format!("https://a.test:{}/echo/broken", gateway.proxy[0].port());
    let good_cert = std::fs::read(&cert_path).unwrap();

    // Each case changes one file, where no contents means that the file is removed. The
    // gateway must log one failed reload per case and keep presenting the first certificate.
    let broken: [(&str, PathBuf, Option<Vec<u8>>); 5] = [
        (
            "certificate that is not PEM",
            cert_path.clone(),
            Some(b"not a certificate\n".to_vec()),
        ),
        (
            "empty certificate file",
            cert_path.clone(),
            Some(Vec::new()),
        ),
        (
            "certificate that does not match the key",
            cert_path.clone(),
            Some(std::fs::read(&other_cert).unwrap()),
        ),
        (
            "key that is not PEM",
            key_path.clone(),
            Some(b"not a key\n".to_vec()),
        ),
        ("removed key file", key_path.clone(), None),
    ];
    let key = std::fs::read(&key_path).unwrap();
    for (index, (case, path, contents)) in broken.iter().enumerate() {
        match contents {
            Some(contents) => replace_file(path, contents),
            None => std::fs::remove_file(path).unwrap(),
        }
        wait_for_log(&gateway, RELOAD_FAILED, index + 1, Duration::from_secs(10));
        assert!(
            presented_certificate(gateway.proxy[0], "a.test").await == first.der().to_vec(),
            "after a {case} the gateway must keep the certificate in use"
        );
        let response = client
            .get(&url)
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap_or_else(|error| panic!("request after a {case} failed: {error}"));
        assert_eq!(response.status(), 200, "request after a {case}");
        // Restore the file so that the next case breaks only its own file.
        if path == &key_path {
            replace_file(&key_path, &key);
        } else {
            replace_file(&cert_path, &good_cert);
        }
    }

    // The gateway loads a valid certificate after the failures.
    let (_, _, second) = common::write_certificate(&dir, "next", &["a.test"]);
    let client = https_client(&[&first, &second], "a.test", gateway.proxy[0])
        .build()
        .unwrap();
    replace_certificate(&dir, "next", "a");
    wait_for_certificate(&gateway, &client, first.der(), second.der()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificate() {
    let (gateway, first) = start_with_certificate("").await;
    let dir = gateway.dir.path().to_path_buf();
    let (cert_path, key_path) = (dir.join("a.crt"), dir.join("a.key"));
    let cert_modified = modified(&cert_path);
    let key_modified = modified(&key_path);
    let (_, _, second) = common::write_certificate(&dir, "next", &["a.test"]);
    let client = https_client(&[&first, &second], "a.test", gateway.proxy[0])
        .build()
        .unwrap();

    // The new files carry the old modification times, which a rename keeps, so the poll detects
    // no change and only SIGHUP reloads them.
    set_modified(&dir.join("next.crt"), cert_modified);
    set_modified(&dir.join("next.key"), key_modified);
    replace_certificate(&dir, "next", "a");
    assert_eq!(modified(&cert_path), cert_modified);
    assert_eq!(modified(&key_path), key_modified);
    assert_eq!(gateway.stderr().matches(RELOADED).count(), 0);

    gateway.signal("HUP");
    wait_for_log(&gateway, RELOADED, 1, Duration::from_secs(10));
    wait_for_certificate(&gateway, &client, first.der(), second.der()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_on_plain() {
    let upstream = common::upstream().await;
    let gateway = Gateway::start(&config(upstream, PLAIN_LISTENER));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let response = client
        .get(gateway.url("/echo/h2c"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("h2c request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = response.json().await.expect("echo body is JSON");
    assert_eq!(echo["path"], "/h2c");
    assert_eq!(echo["version"], "HTTP/1.1", "the upstream request: {echo}");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");

    let response = client
        .get(gateway.url("/echo/h2c"))
        .send()
        .await
        .expect("h2c request without a key");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body = common::error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_share_connection() {
    const STREAMS: usize = 100;
    const DELAY_MS: u64 = 300;
    let upstream = common::upstream().await;
    let gateway = Gateway::start(&config(upstream, PLAIN_LISTENER));

    let tcp = TcpStream::connect(gateway.proxy[0]).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake with prior knowledge");
    tokio::spawn(connection);

    let started = Instant::now();
    let mut requests = Vec::with_capacity(STREAMS);
    for index in 0..STREAMS {
        let mut sender = sender.clone();
        let uri = gateway.url(&format!("/echo/delay/{DELAY_MS}?stream={index}"));
        requests.push(tokio::spawn(async move {
            let request = http::Request::get(uri)
                .header("apikey", ALICE_KEY)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }));
    }
    for (index, request) in requests.into_iter().enumerate() {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .unwrap_or_else(|_| panic!("stream {index} timed out after 30 s"))
            .unwrap()
            .unwrap_or_else(|error| panic!("stream {index} failed: {error}"));
        assert_eq!(
            status,
            200,
            "stream {index}: {}",
            String::from_utf8_lossy(&body)
        );
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["query"], format!("stream={index}"), "stream {index}");
    }
    // One at a time the streams would take STREAMS * DELAY_MS = 30 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "{STREAMS} streams of {DELAY_MS} ms took {elapsed:?}, so they did not run concurrently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_over_tls() {
    let upstream = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, certificate) = common::write_certificate(dir.path(), "a", &["a.test"]);
    let listeners = format!("{}{PLAIN_LISTENER}", tls_listener(&["a"], ""));
    let gateway = Gateway::start_in(dir, &config(upstream, &listeners));
    let (tls_addr, plain_addr) = (gateway.proxy[0], gateway.proxy[1]);
    let client = https_client(&[&certificate], "a.test", tls_addr)
        .build()
        .unwrap();
    let url = format!("https://a.test:{}/echo/secure", tls_addr.port());

    let response = client
        .get(&url)
        .send()
        .await
        .expect("request without a key");
    let body = common::error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");

    let response = client
        .get(&url)
        .header("apikey", "not-a-key")
        .send()
        .await
        .expect("request with an unknown key");
    let body = common::error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");

    let response = client
        .get(&url)
        .header("apikey", ALICE_KEY)
        // A client that is not a trusted proxy cannot set the scheme sent to the upstream.
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("request with Alice's key");
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.expect("echo body is JSON");
    assert_eq!(echo["path"], "/secure");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert!(
        echo["headers"].get("apikey").is_none(),
        "the API key must not reach the upstream: {echo}"
    );

    let plain = common::client()
        .get(format!("http://{plain_addr}/echo/secure"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .expect("request on the plain listener");
    assert_eq!(plain.status(), 200);
    let echo: serde_json::Value = plain.json().await.expect("echo body is JSON");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http", "{echo}");
}
