//! Loads configurations through the public API, as `portcullis validate` does.

use std::path::Path;

use portcullis_config::{LimitKey, PolicySpec, StoreConfig, TlsVersion, load_str};

const ISSUE_EXAMPLE: &str = r#"
listeners:
  - address: 127.0.0.1:8000
  - address: 127.0.0.1:8443
    tls:
      certificates:
        - cert_file: tls/gateway.crt
          key_file: tls/gateway.key
      min_version: "1.3"
admin:
  address: 127.0.0.1:8001
  token: ${PORTCULLIS_ADMIN_TOKEN}
store:
  sqlite: portcullis.db
access_log: stdout
services:
  - name: echo
    targets: [http://127.0.0.1:9000]
    policies:
      - key-auth: {}
      - rate-limit: { limit: 5, window: 1s, by: consumer }
routes:
  - name: echo
    service: echo
    paths: [/echo]
    strip_prefix: true
consumers:
  - name: alice
    roles: [gold]
    api_keys: [alice-demo-key-0001]
"#;

fn env(name: &str) -> Option<String> {
    (name == "PORTCULLIS_ADMIN_TOKEN").then(|| "admin-token-for-tests-0001".to_string())
}

fn write_certificates(dir: &Path) {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/gateway.crt"), "placeholder").unwrap();
    std::fs::write(dir.join("tls/gateway.key"), "placeholder").unwrap();
}

#[test]
fn documented_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_certificates(dir.path());
    let path = dir.path().join("gateway.yaml");
    let config = load_str(ISSUE_EXAMPLE, Some(&path), &env).unwrap();

    assert_eq!(config.listeners.len(), 2);
    let tls = config.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(
        tls.certificates[0].cert_file,
        dir.path().join("tls/gateway.crt")
    );
    assert_eq!(
        config.admin.token.as_deref(),
        Some("admin-token-for-tests-0001")
    );
    assert_eq!(
        config.store,
        StoreConfig::Sqlite(dir.path().join("portcullis.db"))
    );
    let service = &config.entities.services[0];
    assert_eq!(service.policies.len(), 2);
    match &service.policies[1] {
        PolicySpec::RateLimit(limit) => {
            assert_eq!(limit.limit, 5);
            assert_eq!(limit.window, std::time::Duration::from_secs(1));
            assert_eq!(limit.by, LimitKey::Consumer);
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    assert!(config.entities.routes[0].strip_prefix);
    assert_eq!(
        config.entities.consumers[0].api_keys,
        ["alice-demo-key-0001"]
    );
}

fn first_error(source: &str) -> String {
    let errors = load_str(
        source,
        Some(Path::new("/etc/portcullis/gateway.yaml")),
        &env,
    )
    .unwrap_err();
    errors.0[0].to_string()
}

#[test]
fn type_error_names_file_line_and_key() {
    let source = "services:\n  - name: echo\n    targets: [http://127.0.0.1:9000]\n    policies:\n      - rate-limit: { limit: five, window: 1s }\n";
    let message = first_error(source);
    assert!(
        message.starts_with("/etc/portcullis/gateway.yaml:5: "),
        "{message}"
    );
    assert!(
        message.contains("services[0].policies[0].rate-limit.limit"),
        "{message}"
    );
}

#[test]
fn unknown_key_is_rejected() {
    let message = first_error("routes:\n  - name: r\n    service: s\n    pathz: [/x]\n");
    assert!(message.contains(":4: "), "{message}");
    assert!(message.contains("pathz"), "{message}");
}

#[test]
fn unknown_policy_is_rejected() {
    let message = first_error("policies:\n  - key-authz: {}\n");
    assert!(message.contains(":2: "), "{message}");
    assert!(message.contains("key-authz"), "{message}");
}

#[test]
fn dangling_service_reference_is_located() {
    let source = "services:\n  - name: a\n    targets: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    service: missing\n    paths: [/x]\n";
    let message = first_error(source);
    assert!(message.contains(":6: key `routes[0].service`"), "{message}");
    assert!(message.contains("`missing` is not defined"), "{message}");
}

#[test]
fn bad_duration_is_located() {
    let source = "services:\n  - name: a\n    targets: [http://127.0.0.1:1]\n    timeouts:\n      connect: soon\n";
    let message = first_error(source);
    assert!(message.contains(":5: "), "{message}");
    assert!(
        message.contains("services[0].timeouts.connect"),
        "{message}"
    );
}

#[test]
fn missing_certificate_is_located() {
    let source = "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - cert_file: nope.crt\n          key_file: nope.key\n";
    let message = first_error(source);
    assert!(
        message.contains(":5: key `listeners[0].tls.certificates[0].cert_file`"),
        "{message}"
    );
}

#[test]
fn non_canonical_route_path_is_rejected() {
    for path in ["/a/../b", "/a//b", "/a%2fb", "relative", "/a;b"] {
        let source = format!(
            "services:\n  - name: a\n    targets: [http://127.0.0.1:1]\nroutes:\n  - name: r\n    service: a\n    paths: [\"{path}\"]\n"
        );
        let message = first_error(&source);
        assert!(message.contains("routes[0].paths[0]"), "{path}: {message}");
    }
}

#[test]
fn invalid_trusted_proxy_is_located() {
    let message = first_error("trusted_proxies: [10.0.0.0/8, not-a-net]\n");
    assert!(message.contains(":1: "), "{message}");
    assert!(message.contains("not-a-net"), "{message}");
}

#[test]
fn empty_file_is_the_embedded_default() {
    let config = load_str("", None, &env).unwrap();
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:8000");
    assert_eq!(config.admin.address.to_string(), "127.0.0.1:8001");
    assert!(config.admin.token.is_none());
}
