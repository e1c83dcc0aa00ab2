//! Client certificates through the real gateway binary. The tests cover verification against
//! the listener's CA bundle in required and optional mode, and `mtls-auth` mapping certificates
//! to consumers by subject CN and by DNS, email and URI alternative names. They also cover
//! HTTP/2, reloads of the CA bundle and of the consumers, and curl and `openssl s_client` as
//! clients next to a rustls client.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{Gateway, admin, client};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use reqwest::Method;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Log message of the gateway when it has read a changed client CA bundle.
const CA_RELOADED: &str = "reloaded the client CA bundle";
/// Log message of the gateway when a changed client CA bundle cannot be used.
const CA_RELOAD_FAILED: &str = "client CA bundle reload failed";

/// A certificate authority that issues client certificates.
struct Authority {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Authority { certificate, key }
    }

    /// Issues a client certificate with subject `cn` (when given) and `alternative_names`,
    /// valid from a day ago until `not_after`.
    fn issue(
        &self,
        cn: Option<&str>,
        alternative_names: Vec<SanType>,
        not_after: time::OffsetDateTime,
    ) -> Identity {
        let mut params = CertificateParams::default();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = alternative_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        Identity { certificate, key }
    }

    /// Issues a client certificate valid for a year.
    fn issue_valid(&self, cn: Option<&str>, alternative_names: Vec<SanType>) -> Identity {
        let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        self.issue(cn, alternative_names, not_after)
    }
}

/// A client certificate and its private key.
struct Identity {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Identity {
    /// Writes `{stem}.crt` and `{stem}.key` into `dir` and returns their paths.
    fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, self.certificate.pem()).unwrap();
        std::fs::write(&key_path, self.key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn email(address: &str) -> SanType {
    SanType::Rfc822Name(address.try_into().unwrap())
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

/// The test PKI: the CA that the gateway trusts for clients, the gateway's own certificate, and
/// one client certificate per consumer of [`config`].
struct Pki {
    clients_ca: Authority,
    server: rcgen::Certificate,
    alice: Identity,
    bob: Identity,
    carol: Identity,
    dave: Identity,
}

impl Pki {
    /// Generates the PKI and writes `clients-ca.crt`, `server.crt` and `server.key` into `dir`.
    fn create(dir: &Path) -> Pki {
        let clients_ca = Authority::new("portcullis test clients CA");
        std::fs::write(dir.join("clients-ca.crt"), clients_ca.certificate.pem()).unwrap();
        let (_, _, server) = common::write_certificate(dir, "server", &["localhost"]);
        Pki {
            alice: clients_ca.issue_valid(Some("alice"), Vec::new()),
            bob: clients_ca.issue_valid(Some("bob-laptop"), vec![dns("bob.clients.test")]),
            carol: clients_ca.issue_valid(None, vec![email("carol@example.com")]),
            dave: clients_ca.issue_valid(Some("dave"), vec![uri("spiffe://example.test/dave")]),
            clients_ca,
            server,
        }
    }
}

/// Builds a config with three listeners, in this order: TLS requiring a client certificate,
/// TLS accepting one, and plain HTTP. `/mtls` needs `mtls-auth`, `/gold` also the role `gold`,
/// and `/open` no credential.
fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: server.crt, key_file: server.key }}]
      client_auth: {{ ca_file: clients-ca.crt }}
  - address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: server.crt, key_file: server.key }}]
      client_auth: {{ ca_file: clients-ca.crt, mode: optional }}
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
  token: {admin_token}
store:
  sqlite: portcullis.db
access_log: access.log
services:
  - name: echo
    targets: [http://{upstream}]
routes:
  - name: mtls
    service: echo
    paths: [/mtls]
    strip_prefix: true
    policies:
      - mtls-auth: {{}}
  - name: gold
    service: echo
    paths: [/gold]
    strip_prefix: true
    policies:
      - mtls-auth: {{}}
      - acl: {{ roles: [gold] }}
  - name: open
    service: echo
    paths: [/open]
    strip_prefix: true
consumers:
  - name: alice
    roles: [gold]
    certificates: [{{ subject_cn: alice }}]
  - name: bob
    certificates: [{{ san: "DNS:bob.clients.test" }}]
  - name: carol
    certificates: [{{ san: "email:carol@example.com" }}]
  - name: dave
    certificates: [{{ san: "URI:spiffe://example.test/dave" }}]
"#,
        admin_token = common::ADMIN_TOKEN,
    )
}

/// Starts the echo upstream and a gateway on [`config`] with a new PKI.
async fn start() -> (Gateway, Pki) {
    let upstream = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let gateway = Gateway::start_in(dir, &config(upstream));
    assert_eq!(gateway.proxy.len(), 3, "expected three proxy listeners");
    (gateway, pki)
}

/// Returns the address of the listener that requires a client certificate.
fn required(gateway: &Gateway) -> SocketAddr {
    gateway.proxy[0]
}

/// Returns the address of the listener that accepts a client certificate.
fn optional(gateway: &Gateway) -> SocketAddr {
    gateway.proxy[1]
}

/// Returns the address of the plain HTTP listener.
fn plain(gateway: &Gateway) -> SocketAddr {
    gateway.proxy[2]
}

/// A response as the tests look at it.
struct Reply {
    status: http::StatusCode,
    version: http::Version,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

impl Reply {
    /// Returns a request header that the echo upstream received.
    fn upstream_header(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }

    fn request_id(&self) -> &str {
        self.headers["x-request-id"].to_str().unwrap()
    }
}

/// Formats an error with its chain of sources, where rustls puts the TLS alert.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Builds a rustls client config that trusts `server` and presents `identity` when given.
fn client_config(
    server: &rcgen::Certificate,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(server.der().clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain: Vec<CertificateDer<'static>> = vec![identity.certificate.der().clone()];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.serialize_der()));
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

/// Sends `GET path` on a new TLS connection to `addr` that presents `identity`, over HTTP/2
/// when `http2` is set, and returns the reply, or the error chain when the handshake or the
/// request fails.
async fn fetch(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<&Identity>,
    http2: bool,
    paths: &[&str],
) -> Result<Vec<Reply>, String> {
    let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = TlsConnector::from(Arc::new(client_config(&pki.server, identity, alpn)));
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|error| error_chain(&error))?;
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|error| error_chain(&error))?;
        let io = TokioIo::new(stream);
        let mut replies = Vec::new();
        // The TLS alert that ends a rejected connection reaches the connection task, and the
        // request may see only that the connection closed, so a failure reports both.
        if http2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|error| error_chain(&error))?;
            let connection = tokio::spawn(connection);
            for path in paths {
                let request = http::Request::get(format!("https://localhost{path}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match sender.send_request(request).await {
                    Ok(response) => replies.push(read_reply(response).await?),
                    Err(error) => return Err(failure(&error, connection).await),
                }
            }
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|error| error_chain(&error))?;
            let connection = tokio::spawn(connection);
            for path in paths {
                let request = http::Request::get(*path)
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match sender.send_request(request).await {
                    Ok(response) => replies.push(read_reply(response).await?),
                    Err(error) => return Err(failure(&error, connection).await),
                }
            }
        }
        Ok(replies)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("request to {addr} timed out after 10 s"))
}

/// Describes a failed request together with the error that ended its connection.
async fn failure(
    error: &hyper::Error,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
) -> String {
    let ended = match tokio::time::timeout(Duration::from_secs(5), connection).await {
        Ok(Ok(Err(connection_error))) => error_chain(&connection_error),
        Ok(Ok(Ok(()))) => "the connection closed cleanly".to_string(),
        Ok(Err(join_error)) => join_error.to_string(),
        Err(_) => "the connection is still open".to_string(),
    };
    format!("{}; connection: {ended}", error_chain(error))
}

async fn read_reply(response: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|error| error_chain(&error))?
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!(
            "response body is not JSON ({error}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends one `GET path` over HTTP/1.1 and returns the reply; panics when the request fails.
async fn get(addr: SocketAddr, pki: &Pki, identity: Option<&Identity>, path: &str) -> Reply {
    let mut replies = fetch(addr, pki, identity, false, &[path])
        .await
        .unwrap_or_else(|error| panic!("GET {path} on {addr} failed: {error}"));
    replies.remove(0)
}

/// Checks that `reply` is the JSON error of `status` with `code`.
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "status of {}", reply.body);
    assert_eq!(
        reply.headers["content-type"], "application/json",
        "content type of {}",
        reply.body
    );
    assert_eq!(reply.body["error"]["status"], status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    assert_eq!(
        reply.body["error"]["request_id"],
        reply.request_id(),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn certificate_names_map_to_consumers() {
    let (gateway, pki) = start().await;
    let cases = [
        (&pki.alice, "alice", "CN=alice"),
        (&pki.bob, "bob", "DNS:bob.clients.test"),
        (&pki.carol, "carol", "email:carol@example.com"),
        (&pki.dave, "dave", "URI:spiffe://example.test/dave"),
    ];
    for (identity, consumer, credential) in cases {
        let reply = get(required(&gateway), &pki, Some(identity), "/mtls/hello").await;
        assert_eq!(reply.status, 200, "{consumer}: {}", reply.body);
        assert_eq!(reply.body["path"], "/hello", "{consumer}");
        assert_eq!(
            reply.upstream_header("x-consumer-name"),
            Some(consumer),
            "consumer sent upstream"
        );
        assert_eq!(
            reply.upstream_header("x-credential-id"),
            Some(credential),
            "credential of {consumer} sent upstream"
        );
        let line = gateway.access_log_line(reply.request_id());
        assert_eq!(line["consumer"], consumer, "{line}");
        assert_eq!(line["credential_id"], credential, "{line}");
    }
    // The log names the identity, never the certificate.
    let log = std::fs::read_to_string(gateway.path("access.log")).unwrap();
    assert!(!log.contains("BEGIN CERTIFICATE"), "{log}");
    assert!(!gateway.stderr().contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn unknown_certificate_gets_401() {
    let (gateway, pki) = start().await;
    let mallory = pki.clients_ca.issue_valid(
        Some("mallory"),
        vec![dns("mallory.clients.test"), email("mallory@example.com")],
    );
    let reply = get(required(&gateway), &pki, Some(&mallory), "/mtls/x").await;
    assert_error(&reply, 401, "unknown_client_certificate");
    let line = gateway.access_log_line(reply.request_id());
    assert_eq!(line["rejected_by"], "mtls-auth", "{line}");
    assert!(line["consumer"].is_null(), "{line}");

    // A certificate whose names belong to two consumers identifies neither.
    let both = pki
        .clients_ca
        .issue_valid(Some("alice"), vec![dns("bob.clients.test")]);
    let reply = get(required(&gateway), &pki, Some(&both), "/mtls/x").await;
    assert_error(&reply, 401, "unknown_client_certificate");

    // Case matters in a CN but not in a DNS name.
    let upper_cn = pki.clients_ca.issue_valid(Some("ALICE"), Vec::new());
    let reply = get(required(&gateway), &pki, Some(&upper_cn), "/mtls/x").await;
    assert_error(&reply, 401, "unknown_client_certificate");
    let upper_dns = pki
        .clients_ca
        .issue_valid(None, vec![dns("BOB.Clients.Test")]);
    let reply = get(required(&gateway), &pki, Some(&upper_dns), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-consumer-name"), Some("bob"));
}

#[tokio::test]
async fn required_mode_rejects_missing_certificate() {
    let (gateway, pki) = start().await;
    let error = fetch(required(&gateway), &pki, None, false, &["/open/x"])
        .await
        .err()
        .expect("a request without a client certificate succeeded on a required listener");
    assert!(error.contains("CertificateRequired"), "{error}");
    let failures = common::metric(&gateway, "portcullis_tls_handshake_failures_total").await;
    assert!(failures >= 1.0, "handshake failures: {failures}");
}

#[tokio::test]
async fn optional_mode_serves_anonymous_clients() {
    let (gateway, pki) = start().await;
    let reply = get(optional(&gateway), &pki, None, "/open/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-consumer-name"), None);

    let reply = get(optional(&gateway), &pki, None, "/mtls/x").await;
    assert_error(&reply, 401, "missing_client_certificate");
    assert!(reply.headers.get("www-authenticate").is_none());

    let reply = get(optional(&gateway), &pki, Some(&pki.alice), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-consumer-name"), Some("alice"));

    // A plain listener never has a client certificate.
    let response = client()
        .get(format!("http://{}/mtls/x", plain(&gateway)))
        .send()
        .await
        .unwrap();
    let body = common::error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_client_certificate");

    // A client may not pass an identity header of its own to the upstream.
    let response = client()
        .get(format!("http://{}/open/x", plain(&gateway)))
        .header("x-credential-id", "CN=alice")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["headers"]["x-credential-id"].is_null(), "{body}");
}

#[tokio::test]
async fn untrusted_certificates_fail_handshake() {
    let (gateway, pki) = start().await;
    let other_ca = Authority::new("another CA");
    let foreign = other_ca.issue_valid(Some("alice"), Vec::new());
    let expired = pki.clients_ca.issue(
        Some("alice"),
        Vec::new(),
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    );

    // A certificate without the client-authentication usage cannot be a client credential.
    let mut server_only = CertificateParams::default();
    server_only
        .distinguished_name
        .push(DnType::CommonName, "alice");
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_only_key = KeyPair::generate().unwrap();
    let server_only = Identity {
        certificate: server_only
            .signed_by(
                &server_only_key,
                &pki.clients_ca.certificate,
                &pki.clients_ca.key,
            )
            .unwrap(),
        key: server_only_key,
    };

    let cases = [
        ("signed by another CA", &foreign, "UnknownCA"),
        ("expired", &expired, "CertificateExpired"),
        ("server-only usage", &server_only, "UnsupportedCertificate"),
    ];
    for (listener, addr) in [
        ("required", required(&gateway)),
        ("optional", optional(&gateway)),
    ] {
        for (case, identity, alert) in &cases {
            let result = fetch(addr, &pki, Some(identity), false, &["/open/x"]).await;
            let error = result
                .err()
                .unwrap_or_else(|| panic!("{listener} listener accepted a certificate {case}"));
            assert!(
                error.contains(alert),
                "{listener} listener, certificate {case}: {error}"
            );
        }
    }
    let failures = common::metric(&gateway, "portcullis_tls_handshake_failures_total").await;
    assert!(failures >= 6.0, "handshake failures: {failures}");
}

#[tokio::test]
async fn http2_carries_client_identity() {
    let (gateway, pki) = start().await;
    let replies = fetch(
        required(&gateway),
        &pki,
        Some(&pki.bob),
        true,
        &["/mtls/a", "/mtls/b", "/gold/c"],
    )
    .await
    .unwrap();
    for reply in &replies[..2] {
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.upstream_header("x-consumer-name"), Some("bob"));
    }
    // bob has no role `gold`, so the acl after mtls-auth denies him.
    assert_error(&replies[2], 403, "access_denied");

    let replies = fetch(
        optional(&gateway),
        &pki,
        Some(&pki.alice),
        true,
        &["/gold/x"],
    )
    .await
    .unwrap();
    assert_eq!(replies[0].version, http::Version::HTTP_2);
    assert_eq!(replies[0].status, 200, "{}", replies[0].body);
    assert_eq!(replies[0].upstream_header("x-consumer-name"), Some("alice"));
}

/// Runs `program` with `args` and `stdin` on a blocking thread, so that the echo upstream keeps
/// running on the test's runtime, and returns its output, or `None` when it is not installed.
async fn run_tool(
    program: &'static str,
    args: &[&str],
    stdin: &[u8],
) -> Option<std::process::Output> {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || run_tool_blocking(program, &args, &stdin))
        .await
        .unwrap()
}

fn run_tool_blocking(program: &str, args: &[String], stdin: &[u8]) -> Option<std::process::Output> {
    use std::io::Write;
    let spawned = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("start {program}: {error}"),
    };
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not exit in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// Runs curl against `url` on `addr` with `args` and returns its stdout (the body followed by
/// the `-w` line) and whether it exited with 0.
async fn curl(dir: &Path, addr: SocketAddr, path: &str, args: &[&str]) -> Option<(bool, String)> {
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let url = format!("https://localhost:{}{path}", addr.port());
    let server_ca = dir.join("server.crt");
    let mut all_args = vec![
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        "--cacert",
        server_ca.to_str().unwrap(),
        "--write-out",
        "\n%{http_code} %{http_version}",
    ];
    all_args.extend_from_slice(args);
    all_args.push(&url);
    let output = run_tool("curl", &all_args, b"").await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

#[tokio::test]
async fn curl_presents_certificate() {
    let (gateway, pki) = start().await;
    let dir = gateway.dir.path();
    let (cert, key) = pki.alice.write(dir, "alice");
    let cert_args = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut http1_args = cert_args.to_vec();
    http1_args.push("--http1.1");
    let Some((ok, output)) = curl(dir, required(&gateway), "/mtls/x", &http1_args).await else {
        eprintln!("skipping the curl checks: the curl binary is not installed");
        return;
    };
    assert!(ok, "curl with a client certificate failed: {output}");
    assert!(output.ends_with("\n200 1.1"), "{output}");
    assert!(output.contains(r#""x-consumer-name":"alice""#), "{output}");

    let mut http2_args = cert_args.to_vec();
    http2_args.push("--http2");
    let (ok, output) = curl(dir, required(&gateway), "/gold/x", &http2_args)
        .await
        .unwrap();
    assert!(ok, "curl --http2 failed: {output}");
    assert!(output.ends_with("\n200 2"), "{output}");

    // Without a certificate the required listener ends the handshake.
    let (ok, output) = curl(dir, required(&gateway), "/open/x", &[]).await.unwrap();
    assert!(!ok, "curl without a certificate succeeded: {output}");
    assert!(!output.contains("\n200 "), "{output}");

    // The optional listener serves the request, and mtls-auth rejects it.
    let (ok, output) = curl(dir, optional(&gateway), "/mtls/x", &["--http1.1"])
        .await
        .unwrap();
    assert!(ok, "{output}");
    assert!(output.ends_with("\n401 1.1"), "{output}");
    assert!(output.contains("missing_client_certificate"), "{output}");
}

#[tokio::test]
async fn openssl_s_client_presents_certificate() {
    let (gateway, pki) = start().await;
    let dir = gateway.dir.path();
    let (cert, key) = pki.dave.write(dir, "dave");
    let server_ca = dir.join("server.crt");
    let connect = required(&gateway).to_string();
    let request = b"GET /mtls/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let base = [
        "s_client",
        "-connect",
        connect.as_str(),
        "-servername",
        "localhost",
        "-CAfile",
        server_ca.to_str().unwrap(),
        "-verify_return_error",
        "-quiet",
    ];
    let mut with_certificate = base.to_vec();
    with_certificate.extend([
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ]);
    let Some(output) = run_tool("openssl", &with_certificate, request).await else {
        eprintln!("skipping the openssl s_client checks: the openssl binary is not installed");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("HTTP/1.1 200 OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""x-consumer-name":"dave""#), "{stdout}");

    let output = run_tool("openssl", &base, request).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains("HTTP/1.1"), "{stdout}");
    assert!(stderr.contains("certificate required"), "{stderr}");
}

/// Replaces the contents of `path` and moves its modification time forward, so that the
/// gateway's poll detects a change even within the file system's time resolution.
fn replace_file(path: &Path, contents: &[u8]) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, contents).unwrap();
    let later = before.max(SystemTime::now()) + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(later))
        .unwrap();
}

/// Waits until the gateway log contains `message` `count` times.
fn wait_for_log(gateway: &Gateway, message: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while gateway.stderr().matches(message).count() < count {
        assert!(
            Instant::now() < deadline,
            "the log did not show `{message}` {count} times in 15 s:\n{}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn client_ca_bundle_is_reloaded() {
    let (gateway, pki) = start().await;
    let ca_file = gateway.path("clients-ca.crt");
    let new_ca = Authority::new("replacement clients CA");
    let alice_new = new_ca.issue_valid(Some("alice"), Vec::new());

    // A broken bundle is logged and the bundle in use stays.
    replace_file(&ca_file, b"not a certificate\n");
    wait_for_log(&gateway, CA_RELOAD_FAILED, 1);
    let reply = get(required(&gateway), &pki, Some(&pki.alice), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    replace_file(&ca_file, new_ca.certificate.pem().as_bytes());
    wait_for_log(&gateway, CA_RELOADED, 1);
    let reply = get(required(&gateway), &pki, Some(&alice_new), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-consumer-name"), Some("alice"));
    let error = fetch(
        required(&gateway),
        &pki,
        Some(&pki.alice),
        false,
        &["/mtls/x"],
    )
    .await
    .err()
    .expect("a certificate of the replaced CA is still accepted");
    assert!(error.contains("UnknownCA"), "{error}");

    // SIGHUP re-reads the bundle even when its time did not change.
    gateway.signal("HUP");
    wait_for_log(&gateway, CA_RELOADED, 2);
    let reply = get(optional(&gateway), &pki, Some(&alice_new), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn sighup_reloads_certificate_names() {
    let (gateway, pki) = start().await;
    let reply = get(required(&gateway), &pki, Some(&pki.alice), "/mtls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // alice is now known by a DNS name that her certificate lacks, and erin by alice's CN.
    let config = std::fs::read_to_string(&gateway.config_path)
        .unwrap()
        .replace(
            "certificates: [{ subject_cn: alice }]",
            "certificates: [{ san: \"DNS:alice.clients.test\" }]",
        )
        .replace(
            "  - name: bob\n",
            "  - name: erin\n    certificates: [{ subject_cn: alice }]\n  - name: bob\n",
        );
    std::fs::write(&gateway.config_path, config).unwrap();
    gateway.signal("HUP");
    common::wait_until(Duration::from_secs(10), "erin to own CN=alice", || async {
        let reply = get(required(&gateway), &pki, Some(&pki.alice), "/mtls/x").await;
        reply.upstream_header("x-consumer-name") == Some("erin")
    })
    .await;
}

/// Sets the certificate names of the consumer `frank` through `PATCH /consumers/frank`.
async fn patch_certificates(
    gateway: &Gateway,
    certificates: serde_json::Value,
) -> reqwest::Response {
    admin(&client(), Method::PATCH, gateway, "/consumers/frank")
        .json(&serde_json::json!({ "certificates": certificates }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_api_sets_certificate_names() {
    let (gateway, pki) = start().await;
    let http = client();
    let frank = pki
        .clients_ca
        .issue_valid(Some("frank"), vec![uri("spiffe://example.test/frank")]);
    let reply = get(required(&gateway), &pki, Some(&frank), "/mtls/x").await;
    assert_error(&reply, 401, "unknown_client_certificate");

    let response = admin(&http, Method::POST, &gateway, "/consumers")
        .json(&serde_json::json!({
            "name": "frank",
            "certificates": [{ "san": "URI:spiffe://example.test/frank" }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    common::wait_until(Duration::from_secs(10), "frank to be known", || async {
        get(required(&gateway), &pki, Some(&frank), "/mtls/x")
            .await
            .status
            == 200
    })
    .await;

    let response = admin(&http, Method::GET, &gateway, "/consumers/frank")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["certificates"],
        serde_json::json!([{ "san": "URI:spiffe://example.test/frank" }])
    );

    // A name that already identifies another consumer is rejected.
    let certificates = serde_json::json!([{ "san": "dns:BOB.clients.test" }]);
    let response = patch_certificates(&gateway, certificates).await;
    let body = common::error_body(response, 400).await;
    assert_eq!(body["error"]["code"], "invalid_entity", "{body}");
    assert_eq!(
        body["error"]["details"][0]["key"], "certificates[0]",
        "{body}"
    );
    let message = body["error"]["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("consumer `bob`"), "{message}");

    let certificates = serde_json::json!([{ "san": "IP:127.0.0.1" }]);
    let response = patch_certificates(&gateway, certificates).await;
    let body = common::error_body(response, 400).await;
    let message = body["error"]["details"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("invalid subject alternative name"),
        "{message}"
    );

    let response = patch_certificates(&gateway, serde_json::json!([])).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    common::wait_until(Duration::from_secs(10), "frank to be forgotten", || async {
        get(required(&gateway), &pki, Some(&frank), "/mtls/x")
            .await
            .status
            == 401
    })
    .await;
}

/// Runs `portcullis validate` on `path`, checks that it fails with status 2, and returns its
/// standard error.
fn validate_errors(path: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn validate_reports_certificate_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        r#"listeners:
  - address: 127.0.0.1:0
    tls:
      certificates: []
      client_auth: { ca_file: missing-ca.crt, mode: sometimes }
"#,
    )
    .unwrap();
    let stderr = validate_errors(&path);
    assert!(
        stderr.contains(":5: key `listeners[0].tls.client_auth.mode`"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        r#"listeners:
  - address: 127.0.0.1:0
    tls:
      certificates: [{ cert_file: gateway.yaml, key_file: gateway.yaml }]
      client_auth: { ca_file: missing-ca.crt }
consumers:
  - name: alice
    certificates:
      - { subject_cn: alice }
      - { san: "IP:127.0.0.1" }
      - { subject_cn: alice2, san: "DNS:a.test" }
      - {}
  - name: bob
    certificates: [{ subject_cn: alice }, { san: "DNS:" }]
"#,
    )
    .unwrap();
    let stderr = validate_errors(&path);
    for expected in [
        ":5: key `listeners[0].tls.client_auth.ca_file`: cannot read",
        ":10: key `consumers[0].certificates[1]`: invalid subject alternative name `IP:127.0.0.1`",
        ":11: key `consumers[0].certificates[2]`: set either `subject_cn` or `san`, not both",
        ":12: key `consumers[0].certificates[3]`: set `subject_cn` or `san`",
        "key `consumers[1].certificates[0]`: `CN=alice` already identifies the consumer `alice`",
        "key `consumers[1].certificates[1]`: invalid subject alternative name `DNS:`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}
