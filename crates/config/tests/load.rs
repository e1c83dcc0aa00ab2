//! Loads configurations through the public API, as `portcullis validate` does.

use std::path::Path;

use portcullis_config::{
    BackendErrorAction, CertificateMatch, CertificateName, ClientAuthMode, CounterBackend,
    DeclaredKey, HashedKey, LimitAlgorithm, LimitKey, PolicySpec, StoreConfig, TlsVersion,
    load_str,
};

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
            assert_eq!(limit.window, Some(std::time::Duration::from_secs(1)));
            assert_eq!(limit.by, LimitKey::Consumer);
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    assert!(config.entities.routes[0].strip_prefix);
    assert_eq!(
        config.entities.consumers[0].api_keys,
        [DeclaredKey::Plain("alice-demo-key-0001".into())]
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

const HASH_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const HASH_B: &str = "f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8";

/// Returns a config with one consumer whose `api_keys` list is `keys`, written as YAML.
fn consumer_with_keys(keys: &str) -> String {
    format!("consumers:\n  - name: alice\n    api_keys:\n{keys}")
}

#[test]
fn hashed_and_plain_keys_load() {
    let source = consumer_with_keys(&format!(
        "      - alice-demo-key-0001\n      - id: key_abc\n        hash: \"{HASH_A}\"\n        prefix: pcs_abcdefgh\n        created_at: 2024-05-01T12:00:00.5+02:00\n        expires_at: 2030-01-01T00:00:00Z\n        scopes: [read]\n        rotated_from: key_old\n      - {{ id: cfg_0011, hash: \"{HASH_B}\", prefix: bob-key-0001, created_at: \"2024-01-01T00:00:00Z\" }}\n"
    ));
    let config = load_str(&source, None, &env).unwrap();
    let keys = &config.entities.consumers[0].api_keys;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0], DeclaredKey::Plain("alice-demo-key-0001".into()));
    let expected = HashedKey {
        id: "key_abc".into(),
        hash: HASH_A.into(),
        prefix: "pcs_abcdefgh".into(),
        created_at: time::macros::datetime!(2024-05-01 10:00:00.5 UTC),
        expires_at: Some(time::macros::datetime!(2030-01-01 00:00:00 UTC)),
        scopes: vec!["read".into()],
        rotated_from: Some("key_old".into()),
    };
    assert_eq!(keys[1], DeclaredKey::Hashed(expected));
    match &keys[2] {
        DeclaredKey::Hashed(record) => {
            assert_eq!(record.id, "cfg_0011");
            assert_eq!(record.expires_at, None);
            assert!(record.scopes.is_empty());
        }
        other => panic!("expected a hashed key, got {other:?}"),
    }
}

#[test]
fn hashed_key_serializes_to_what_it_reads() {
    let source = consumer_with_keys(&format!(
        "      - plain-key-000000001\n      - {{ id: key_abc, hash: \"{HASH_A}\", prefix: pcs_abc, created_at: \"2024-05-01T12:00:00.123456Z\", scopes: [read, write] }}\n"
    ));
    let config = load_str(&source, None, &env).unwrap();
    let consumer = &config.entities.consumers[0];
    let json = serde_json::to_value(consumer).unwrap();
    assert_eq!(json["api_keys"][0], "plain-key-000000001");
    assert_eq!(
        json["api_keys"][1]["created_at"],
        "2024-05-01T12:00:00.123456Z"
    );
    assert!(json["api_keys"][1].get("expires_at").is_none(), "{json}");
    let read_back: portcullis_config::ConsumerSpec = serde_json::from_value(json).unwrap();
    assert_eq!(&read_back, consumer);
}

#[test]
fn hashed_key_errors_name_the_field() {
    let cases = [
        (
            format!("      - {{ id: key_abc, hash: \"{HASH_A}\", prefix: pcs_abc }}\n"),
            "consumers[0].api_keys[0]",
            "created_at",
        ),
        (
            format!("      - {{ id: key_abc, hash: \"{HASH_A}\", prefix: pcs_abc, created_at: yesterday }}\n"),
            "consumers[0].api_keys[0].created_at",
            "",
        ),
        (
            "      - { id: key_abc, hash: ABCDEF, prefix: pcs_abc, created_at: \"2024-01-01T00:00:00Z\" }\n".to_string(),
            "consumers[0].api_keys[0].hash",
            "64 lowercase hex",
        ),
        (
            format!("      - {{ id: \"key abc\", hash: \"{HASH_A}\", prefix: pcs_abc, created_at: \"2024-01-01T00:00:00Z\" }}\n"),
            "consumers[0].api_keys[0].id",
            "invalid key id",
        ),
        (
            format!("      - {{ id: key_abc, hash: \"{HASH_A}\", prefix: \"\", created_at: \"2024-01-01T00:00:00Z\" }}\n"),
            "consumers[0].api_keys[0].prefix",
            "prefix",
        ),
        (
            format!("      - {{ id: key_abc, hash: \"{HASH_A}\", prefix: pcs_abc, created_at: \"2024-01-01T00:00:00Z\", source: admin }}\n"),
            "consumers[0].api_keys[0]",
            "source",
        ),
        (
            "      - 12345678901234567890\n".to_string(),
            "consumers[0].api_keys[0]",
            "plaintext API key",
        ),
    ];
    for (keys, key_path, text) in cases {
        let message = first_error(&consumer_with_keys(&keys));
        assert!(
            message.contains(&format!("key `{key_path}")),
            "{keys}: {message}"
        );
        assert!(message.contains(text), "{keys}: {message}");
    }
}

#[test]
fn duplicate_hashed_keys_are_rejected() {
    let record = |id: &str, hash: &str| {
        format!(
            "      - {{ id: {id}, hash: \"{hash}\", prefix: pcs_abc, created_at: \"2024-01-01T00:00:00Z\" }}\n"
        )
    };
    let same_id = consumer_with_keys(&(record("key_a", HASH_A) + &record("key_a", HASH_B)));
    let message = first_error(&same_id);
    assert!(
        message.contains("key `consumers[0].api_keys[1].id`"),
        "{message}"
    );
    assert!(message.contains("already declared"), "{message}");

    let same_hash = consumer_with_keys(&(record("key_a", HASH_A) + &record("key_b", HASH_A)));
    let message = first_error(&same_hash);
    assert!(
        message.contains("key `consumers[0].api_keys[1].hash`"),
        "{message}"
    );
    assert!(message.contains("same API key"), "{message}");
}

#[test]
fn reserved_key_prefix_is_rejected() {
    let message =
        first_error("consumers:\n  - name: dave\n    api_keys: [pcs_dave-declared-key-01]\n");
    assert!(
        message.contains(":3: key `consumers[0].api_keys[0]`"),
        "{message}"
    );
    assert!(message.contains("reserved"), "{message}");
}

#[test]
fn rate_limit_values_are_bounded() {
    for (policy, field) in [
        ("{ limit: 1000000000000, window: 1s }", "limit"),
        ("{ limit: 5, window: 1s, burst: 1000000000000 }", "burst"),
        ("{ limit: 5, window: 400d }", "window"),
        ("{ limit: 5, window: 0s }", "window"),
    ] {
        let source = format!("policies:\n  - rate-limit: {policy}\n");
        let message = first_error(&source);
        assert!(
            message.contains(&format!("policies[0].rate-limit.{field}")),
            "{policy}: {message}"
        );
    }
}

#[test]
fn target_port_must_fit() {
    for target in [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
    ] {
        let source = format!("services:\n  - name: a\n    targets: [\"{target}\"]\n");
        let message = first_error(&source);
        assert!(
            message.contains("services[0].targets[0]") && message.contains("port"),
            "{target}: {message}"
        );
    }
}

#[test]
fn tls_version_may_be_unquoted() {
    let dir = tempfile::tempdir().unwrap();
    write_certificates(dir.path());
    let path = dir.path().join("gateway.yaml");
    for (written, expected) in [
        ("\"1.3\"", Some(TlsVersion::Tls13)),
        ("1.3", Some(TlsVersion::Tls13)),
        ("1.2", Some(TlsVersion::Tls12)),
        ("\"1.2\"", Some(TlsVersion::Tls12)),
        ("1.1", None),
        ("\"tls13\"", None),
    ] {
        let source =
            ISSUE_EXAMPLE.replace("min_version: \"1.3\"", &format!("min_version: {written}"));
        match (load_str(&source, Some(&path), &env), expected) {
            (Ok(config), Some(expected)) => {
                let tls = config.listeners[1].tls.as_ref().unwrap();
                assert_eq!(tls.min_version, expected, "min_version: {written}");
            }
            (Err(errors), None) => {
                let text = errors.to_string();
                assert!(
                    text.contains("listeners[1].tls.min_version"),
                    "min_version: {written}: {text}"
                );
                assert!(
                    text.contains("\"1.2\" or \"1.3\""),
                    "min_version: {written}: {text}"
                );
            }
            (Ok(_), None) => panic!("min_version: {written} was accepted"),
            (Err(errors), Some(_)) => panic!("min_version: {written} was rejected: {errors}"),
        }
    }
}

#[test]
fn host_name_address_is_explained() {
    let source =
        ISSUE_EXAMPLE.replace("  - address: 127.0.0.1:8000", "  - address: localhost:8000");
    let errors = load_str(&source, None, &env).unwrap_err().to_string();
    assert!(errors.contains("listeners[0].address"), "{errors}");
    assert!(errors.contains("`localhost:8000`"), "{errors}");
    assert!(errors.contains("host names are not accepted"), "{errors}");
}

const JWT_AS_DOCUMENTED: &str = r#"
services:
  - name: orders
    targets: [http://127.0.0.1:9000]
    policies:
      - jwt:
          issuer: https://idp.test
          audiences: [orders]
          jwks_uri: http://127.0.0.1:9400/jwks.json
          algorithms: [RS256, ES256, EdDSA]
          consumer_claim: sub
"#;

#[test]
fn jwt_policy_as_documented_loads() {
    let config = load_str(JWT_AS_DOCUMENTED, None, &env).unwrap();
    let PolicySpec::Jwt(spec) = &config.entities.services[0].policies[0] else {
        panic!("not a jwt policy");
    };
    assert_eq!(spec.issuer.as_deref(), Some("https://idp.test"));
    assert_eq!(spec.algorithms, ["RS256", "ES256", "EdDSA"]);
    assert_eq!(spec.consumer_claim, "sub");
    assert!(spec.hide_credentials);
    assert_eq!(spec.leeway, std::time::Duration::from_secs(30));
}

#[test]
fn jwt_errors_name_line_and_key() {
    let cases = [
        (
            "algorithms: [RS256, ES256, EdDSA]",
            "algorithms: [RS256, none]",
            "jwt.algorithms[1]`: unsupported algorithm `none`",
        ),
        (
            "algorithms: [RS256, ES256, EdDSA]",
            "algorithms: [HS256]",
            "jwt.algorithms`: HS256, HS384 and HS512 need a key with `secret_env`",
        ),
        (
            "jwks_uri: http://127.0.0.1:9400/jwks.json",
            "jwks_uri: ftp://idp.test/jwks.json",
            "jwt.jwks_uri`: `ftp://idp.test/jwks.json` must start with https:// or http://",
        ),
        (
            "jwks_uri: http://127.0.0.1:9400/jwks.json",
            "discovery: true\n          jwks_uri: http://127.0.0.1:9400/jwks.json",
            "jwt.discovery`: set either `jwks_uri` or `discovery: true`",
        ),
        (
            "consumer_claim: sub",
            "consumer_claim: sub\n          keys: [{ secret_env: \"${X}\" }]",
            "jwt.keys[0].secret_env`: `${X}` is not an environment variable name",
        ),
        (
            "consumer_claim: sub",
            "consumer_claim: sub\n          forward_claims: { sub: \"bad header\" }",
            "jwt.forward_claims.sub`: invalid header name `bad header`",
        ),
    ];
    for (from, to, expected) in cases {
        // `$${` keeps the loader from reading `${X}` as an environment variable.
        let source = JWT_AS_DOCUMENTED.replace(from, &to.replace("${", "$${"));
        let errors = load_str(
            &source,
            Some(Path::new("/etc/portcullis/gateway.yaml")),
            &env,
        )
        .unwrap_err();
        let message = errors.to_string();
        assert!(
            message.starts_with("/etc/portcullis/gateway.yaml:"),
            "{message}"
        );
        assert!(
            message.contains(&format!("services[0].policies[0].{expected}")),
            "{message}"
        );
    }
}

#[test]
fn rate_limit_by_claim_needs_claim() {
    let source = "policies:\n  - rate-limit: { limit: 1, window: 1s, by: claim }\n";
    let message = first_error(source);
    assert!(
        message.contains(":2: key `policies[0].rate-limit.claim`"),
        "{message}"
    );
    let config = load_str(
        "policies:\n  - rate-limit: { limit: 1, window: 1s, by: claim, claim: tenant }\n",
        None,
        &env,
    )
    .unwrap();
    let PolicySpec::RateLimit(spec) = &config.policies[0] else {
        panic!("not a rate limit");
    };
    assert_eq!(spec.by, LimitKey::Claim);
    assert_eq!(spec.claim.as_deref(), Some("tenant"));
}

#[test]
fn jwt_secret_variable_must_be_set() {
    let source = JWT_AS_DOCUMENTED
        .replace("[RS256, ES256, EdDSA]", "[HS256]")
        .replace(
            "consumer_claim: sub",
            "consumer_claim: sub\n          keys: [{ secret_env: PORTCULLIS_TEST_UNSET_SECRET }]",
        );
    let message = first_error(&source);
    assert!(
        message.contains(":12: key `services[0].policies[0].jwt.keys[0].secret_env`"),
        "{message}"
    );
    assert!(message.contains("is not set"), "{message}");
}

#[test]
fn rate_limit_algorithm_fields_are_checked() {
    for (policy, field, expected) in [
        ("{ limit: 5 }", "window", "needs a `window`"),
        (
            "{ algorithm: quota, limit: 5 }",
            "period",
            "needs a `period`",
        ),
        (
            "{ algorithm: quota, limit: 5, period: day, window: 1s }",
            "window",
            "not read",
        ),
        (
            "{ algorithm: sliding-window, limit: 5, window: 1s, burst: 2 }",
            "burst",
            "only read",
        ),
        (
            "{ algorithm: gcra, limit: 5, window: 1s, period: day }",
            "period",
            "only read",
        ),
        (
            "{ algorithm: concurrency, limit: 5, window: 1s }",
            "window",
            "not read",
        ),
        (
            "{ limit: 5, window: 1s, lease_ttl: 1m }",
            "lease_ttl",
            "only read",
        ),
        (
            "{ algorithm: concurrency, limit: 5, lease_ttl: 10ms }",
            "lease_ttl",
            "at least 1s",
        ),
        (
            "{ limit: 5, window: 1s, by: claim }",
            "claim",
            "needs the claim name",
        ),
        (
            "{ limit: 5, window: 1s, claim: sub }",
            "claim",
            "only read with `by: claim`",
        ),
        (
            "{ limit: 5, window: 1s, roles: [\"a b\"] }",
            "roles[0]",
            "invalid name",
        ),
        (
            "{ limit: 5, window: 1s, delay: { max: 0s } }",
            "delay.max",
            "greater than 0",
        ),
        (
            "{ limit: 5, window: 1s, delay: { max: 2m } }",
            "delay.max",
            "at most 60s",
        ),
        (
            "{ limit: 5, window: 1s, batch: 10 }",
            "batch",
            "`backend: redis` only",
        ),
        (
            "{ limit: 5, window: 1s, backend: redis }",
            "backend",
            "top-level `redis`",
        ),
    ] {
        let source = format!("policies:\n  - rate-limit: {policy}\n");
        let message = first_error(&source);
        assert!(
            message.contains(&format!("key `policies[0].rate-limit.{field}`")),
            "{policy}: {message}"
        );
        assert!(message.contains(expected), "{policy}: {message}");
    }
}

#[test]
fn rate_limit_error_names_line_of_the_key() {
    let source = "redis:\n  url: redis://127.0.0.1:6379\nservices:\n  - name: a\n    targets: [http://127.0.0.1:1]\n    policies:\n      - rate-limit:\n          limit: 10\n          window: 1s\n          backend: redis\n          batch: 20\n";
    let message = first_error(source);
    assert!(
        message.starts_with(
            "/etc/portcullis/gateway.yaml:11: key `services[0].policies[0].rate-limit.batch`"
        ),
        "{message}"
    );
    assert!(message.contains("at most `limit` (10)"), "{message}");
}

#[test]
fn rate_limit_full_spec_loads() {
    let source = r#"
redis: { url: "redis://127.0.0.1:6379", key_prefix: "gw:", timeout: 100ms }
policies:
  - rate-limit: { name: plan, roles: [gold], algorithm: sliding-window, limit: 100, window: 1m, by: role, backend: redis, batch: 10, on_backend_error: deny, delay: { max: 250ms } }
  - rate-limit: { name: monthly, algorithm: quota, period: month, limit: 10000, by: claim, claim: sub }
  - rate-limit: { name: parallel, algorithm: concurrency, limit: 8, lease_ttl: 2m, by: ip }
"#;
    let config = load_str(source, None, &env).unwrap();
    let redis = config.redis.unwrap();
    assert_eq!(redis.key_prefix, "gw:");
    assert_eq!(redis.timeout, std::time::Duration::from_millis(100));
    assert_eq!(config.policies.len(), 3);
    let PolicySpec::RateLimit(plan) = &config.policies[0] else {
        panic!("a rate-limit");
    };
    assert_eq!(plan.algorithm, LimitAlgorithm::SlidingWindow);
    assert_eq!(plan.backend, CounterBackend::Redis);
    assert_eq!(plan.on_backend_error, BackendErrorAction::Deny);
    assert_eq!(plan.batch, Some(10));
    assert_eq!(
        plan.delay.as_ref().map(|delay| delay.max),
        Some(std::time::Duration::from_millis(250))
    );
    // What the store keeps must read back the same.
    let json = serde_json::to_string(&config.policies).unwrap();
    let back: Vec<PolicySpec> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config.policies);
}

#[test]
fn upstream_settings_load() {
    let source = r#"
http2:
  max_concurrent_streams: 100
  max_header_list_size: 32768
  keep_alive_interval: null
services:
  - name: api
    targets:
      - http://127.0.0.1:9001
      - { url: "http://127.0.0.1:9002", weight: 5 }
    load_balancing: { algorithm: consistent-hash, hash_on: header, hash_header: x-user }
    health_checks:
      active: { path: /healthz, interval: 2s, expected_statuses: [200] }
      passive: { unhealthy_threshold: 3 }
    retries: { attempts: 1, on_statuses: [503], budget: { ratio: 0.1 } }
    circuit_breaker: { failure_ratio: 0.5, cooldown: 10s }
"#;
    let env = |_: &str| None;
    let config = load_str(source, None, &env).unwrap();
    assert_eq!(config.http2.max_concurrent_streams, 100);
    assert_eq!(config.http2.max_header_list_size, Some(32768));
    assert_eq!(config.http2.keep_alive_interval, None);
    let service = &config.entities.services[0];
    assert_eq!(service.targets[0].weight, 1);
    assert_eq!(service.targets[1].weight, 5);
    assert_eq!(
        service.load_balancing.algorithm,
        portcullis_config::Algorithm::ConsistentHash
    );
    let active = service
        .health_checks
        .as_ref()
        .unwrap()
        .active
        .as_ref()
        .unwrap();
    assert_eq!(active.path, "/healthz");
    assert_eq!(
        active.healthy_threshold, 2,
        "unset keys keep their defaults"
    );
    assert_eq!(service.retries.budget.ratio, 0.1);
    assert_eq!(service.retries.budget.min_per_second, 10);
    let breaker = service.circuit_breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_ratio, Some(0.5));
    assert_eq!(breaker.consecutive_failures, 5);

    // Weight 1 serialises as the plain URL, so stored services keep their shape.
    let json = serde_json::to_value(&service.targets).unwrap();
    assert_eq!(
        json,
        serde_json::json!(["http://127.0.0.1:9001", { "url": "http://127.0.0.1:9002", "weight": 5 }])
    );
}

#[test]
fn invalid_upstream_settings_name_file_line_and_key() {
    let cases = [
        (
            "    targets: [{ url: \"http://127.0.0.1:1\", weight: 0 }]\n",
            "gateway.yaml:3: key `services[0].targets[0].weight`",
        ),
        (
            "    targets: [{ url: \"ftp://x\", weight: 2 }]\n",
            "gateway.yaml:3: key `services[0].targets[0].url`",
        ),
        (
            "    targets: [http://127.0.0.1:1, http://127.0.0.1:1]\n",
            "key `services[0].targets[1]`: target `http://127.0.0.1:1` is listed twice",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    load_balancing:\n      hash_on: header\n",
            "gateway.yaml:4: key `services[0].load_balancing.hash_header`",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    load_balancing: { algorithm: random }\n",
            "key `services[0].load_balancing.algorithm`: unknown variant `random`",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    health_checks:\n      active:\n        path: health\n",
            "gateway.yaml:6: key `services[0].health_checks.active.path`",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    health_checks:\n      passive:\n        failure_statuses: [700]\n",
            "key `services[0].health_checks.passive.failure_statuses[0]`: invalid status 700",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    retries:\n      budget:\n        ratio: 1.5\n",
            "gateway.yaml:6: key `services[0].retries.budget.ratio`",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    retries: { attempts: 11 }\n",
            "key `services[0].retries.attempts`: must be at most 10",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    circuit_breaker:\n      half_open_requests: 0\n",
            "gateway.yaml:5: key `services[0].circuit_breaker.half_open_requests`",
        ),
        (
            "    targets: [http://127.0.0.1:1]\n    circuit_breaker: { failure_ratio: 0 }\n",
            "key `services[0].circuit_breaker.failure_ratio`",
        ),
    ];
    let env = |_: &str| None;
    for (service, expected) in cases {
        let source = format!("services:\n  - name: a\n{service}");
        let errors = load_str(&source, Some(Path::new("gateway.yaml")), &env)
            .expect_err(&source)
            .to_string();
        assert!(errors.contains(expected), "{source}\n{errors}");
    }

    let source = "http2:\n  max_concurrent_streams: 0\n  max_header_list_size: 10\n";
    let errors = load_str(source, Some(Path::new("gateway.yaml")), &env)
        .expect_err(source)
        .to_string();
    assert!(
        errors
            .contains("gateway.yaml:2: key `http2.max_concurrent_streams`: must be greater than 0"),
        "{errors}"
    );
    assert!(
        errors.contains("gateway.yaml:3: key `http2.max_header_list_size`: must be at least 1024"),
        "{errors}"
    );
}

const INTROSPECTION_AS_DOCUMENTED: &str = r#"
routes:
  - name: orders
    paths: [/orders]
    service: orders
    policies:
      - oauth2-introspection:
          introspection_endpoint: https://as.test/oauth2/introspect
          client_id: gateway
          client_auth: client_secret_basic
          client_secret_env: INTROSPECTION_SECRET
          ca_file: certs/as-ca.pem
services:
  - name: orders
    targets: [http://127.0.0.1:9000]
"#;

fn env_with_secret(name: &str) -> Option<String> {
    (name == "INTROSPECTION_SECRET").then(|| "secret".to_string())
}

#[test]
fn introspection_policy_as_documented_loads() {
    let config = load_str(
        INTROSPECTION_AS_DOCUMENTED,
        Some(Path::new("/etc/portcullis/gateway.yaml")),
        &env_with_secret,
    )
    .unwrap();
    let PolicySpec::Oauth2Introspection(spec) = &config.entities.routes[0].policies[0] else {
        panic!("not an oauth2-introspection policy");
    };
    assert_eq!(spec.client_id, "gateway");
    assert_eq!(spec.cache_ttl, std::time::Duration::from_secs(300));
    assert_eq!(spec.negative_cache_ttl, std::time::Duration::from_secs(10));
    assert_eq!(spec.stale_if_error, std::time::Duration::ZERO);
    assert_eq!(
        spec.ca_file.as_deref(),
        Some(Path::new("/etc/portcullis/certs/as-ca.pem"))
    );
}

#[test]
fn introspection_errors_name_line_and_key() {
    let cases = [
        (
            "introspection_endpoint: https://as.test/oauth2/introspect",
            "introspection_endpoint: ftp://as.test/introspect",
            "oauth2-introspection.introspection_endpoint`: `ftp://as.test/introspect` must start",
        ),
        (
            "introspection_endpoint: https://as.test/oauth2/introspect",
            "leeway: 5s",
            "oauth2-introspection`: oauth2-introspection needs `introspection_endpoint`, or `issuer`",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: private_key_jwt",
            "oauth2-introspection.private_key_env`: `private_key_jwt` needs the private key",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: client_secret_basic\n          response_format: jwt",
            "oauth2-introspection.issuer`: `response_format: jwt` needs `issuer`",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: client_secret_basic\n          response_algorithms: [HS256]",
            "oauth2-introspection.response_algorithms[0]`: unsupported algorithm `HS256`",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: client_secret_basic\n          negative_cache_ttl: 2h",
            "oauth2-introspection.negative_cache_ttl`: must be at most 1h",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: client_secret_basic\n          cache_max_entries: 0",
            "oauth2-introspection.cache_max_entries`: must be between 1 and",
        ),
        (
            "client_auth: client_secret_basic",
            "client_auth: client_secret_basic\n          timeout: 10ms",
            "oauth2-introspection.timeout`: must be between 100ms and 60s",
        ),
        (
            "client_secret_env: INTROSPECTION_SECRET",
            "client_secret_env: UNSET_INTROSPECTION_SECRET",
            "oauth2-introspection.client_secret_env`: environment variable `UNSET_INTROSPECTION_SECRET` with the client secret is not set",
        ),
    ];
    for (from, to, expected) in cases {
        let source = INTROSPECTION_AS_DOCUMENTED.replace(from, to);
        let errors = load_str(
            &source,
            Some(Path::new("/etc/portcullis/gateway.yaml")),
            &env_with_secret,
        )
        .unwrap_err();
        let message = errors.to_string();
        assert!(
            message.starts_with("/etc/portcullis/gateway.yaml:"),
            "{message}"
        );
        assert!(
            message.contains(&format!("routes[0].policies[0].{expected}")),
            "{to}: {message}"
        );
    }
}

#[test]
fn rate_limit_name_must_be_a_plain_name() {
    for name in ["'a\"b'", "\"é\"", "\"\""] {
        let source =
            format!("policies:\n  - rate-limit: {{ name: {name}, limit: 1, window: 1s }}\n");
        let message = first_error(&source);
        assert!(
            message.contains(":2: key `policies[0].rate-limit.name`"),
            "{name}: {message}"
        );
    }
    load_str(
        "policies:\n  - rate-limit: { name: per-second_1.x, limit: 1, window: 1s }\n",
        None,
        &env,
    )
    .unwrap();
}

/// Returns every error of `source` as text.
fn all_errors(source: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    load_str(source, Some(Path::new("/etc/portcullis/gateway.yaml")), env)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn browser_policies_load() {
    let source = r#"
policies:
  - security-headers:
      x_frame_options: SAMEORIGIN
      permissions_policy: false
      override: [x-frame-options]
routes:
  - name: app
    paths: [/app]
    service: app
    policies:
      - cors:
          allowed_origins: [https://app.example.com, http://localhost:3000]
          allowed_origin_patterns: ["https://*.example.org"]
          allow_credentials: true
          max_age: 10m
      - csrf: { secret_env: CSRF_SECRET, exempt_headers: [authorization] }
services:
  - name: app
    targets: [http://127.0.0.1:9000]
"#;
    let env = |name: &str| (name == "CSRF_SECRET").then(|| "s".repeat(32));
    let config = load_str(source, None, &env).unwrap();
    let PolicySpec::SecurityHeaders(headers) = &config.policies[0] else {
        panic!("{:?}", config.policies[0]);
    };
    let resolved = headers.resolved();
    assert!(resolved.contains(&("x-frame-options", "SAMEORIGIN".to_string())));
    assert!(
        resolved
            .iter()
            .all(|(name, _)| *name != "permissions-policy")
    );
    let PolicySpec::Cors(cors) = &config.entities.routes[0].policies[0] else {
        panic!("{:?}", config.entities.routes[0].policies[0]);
    };
    assert_eq!(cors.max_age, Some(std::time::Duration::from_secs(600)));
    assert_eq!(cors.allowed_methods, ["GET", "HEAD", "POST"]);
}

#[test]
fn invalid_browser_policies_are_located() {
    let source = r#"
routes:
  - name: app
    paths: [/app]
    service: app
    policies:
      - cors:
          allowed_origins: ["*", https://App.example.com/]
          allowed_origin_patterns: ["https://*"]
          allow_credentials: true
      - csrf: { secret_env: CSRF_SECRET, cookie_name: "bad name" }
      - security-headers: { override: [server] }
services:
  - name: app
    targets: [http://127.0.0.1:9000]
consumers:
  - name: alice
    policies:
      - security-headers: {}
"#;
    let env = |name: &str| (name == "CSRF_SECRET").then(|| "short".to_string());
    let errors = all_errors(source, &env);
    let expected = [
        ":8: key `routes[0].policies[0].cors.allowed_origins[0]`: `*` allows every origin",
        ":8: key `routes[0].policies[0].cors.allowed_origins[1]`: invalid origin",
        ":9: key `routes[0].policies[0].cors.allowed_origin_patterns[0]`: invalid origin pattern",
        ":10: key `routes[0].policies[0].cors.allow_credentials`: `allow_credentials: true` cannot be combined",
        ":11: key `routes[0].policies[1].csrf.cookie_name`: invalid cookie name",
        ":11: key `routes[0].policies[1].csrf.secret_env`: environment variable `CSRF_SECRET` must contain at least 32 bytes",
        ":12: key `routes[0].policies[2].security-headers.override[0]`: `server` is not a header of this policy",
        ":19: key `consumers[0].policies[0].security-headers`: `security-headers` runs before the caller is authenticated",
    ];
    for fragment in expected {
        assert!(
            errors.iter().any(|error| error.contains(fragment)),
            "no error contains {fragment:?}:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));
}

const OIDC_EXAMPLE: &str = include_str!("../../../examples/policies/openid-connect.yaml");

fn oidc_env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_ADMIN_TOKEN" => Some("admin-token-for-tests-0001".into()),
        "OIDC_CLIENT_SECRET" => Some("client-secret".into()),
        "OIDC_SESSION_SECRET" => Some("s".repeat(48)),
        _ => None,
    }
}

#[test]
fn openid_connect_example_loads() {
    let config = load_str(
        OIDC_EXAMPLE,
        Some(Path::new("/etc/portcullis/gateway.yaml")),
        &oidc_env,
    )
    .unwrap();
    let PolicySpec::OpenidConnect(spec) = &config.entities.routes[0].policies[0] else {
        panic!("not an openid-connect policy");
    };
    assert_eq!(spec.client_id, "portcullis");
    assert_eq!(spec.scopes, ["openid", "email"]);
    assert_eq!(spec.cookie_name, "portcullis_session");
    assert_eq!(spec.cookie_same_site, portcullis_config::SameSite::Lax);
    assert!(spec.cookie_secure);
    assert_eq!(spec.max_cookie_bytes, 4096);
    assert_eq!(
        spec.session_lifetime,
        std::time::Duration::from_secs(8 * 3600)
    );
    assert_eq!(spec.refresh_before, std::time::Duration::from_secs(60));
    assert!(spec.accept_bearer);
    assert!(!spec.bearer_only);
}

#[test]
fn openid_connect_errors_name_line_and_key() {
    let cases = [
        (
            "issuer: https://idp.example.com/realms/main\n          client_id: portcullis\n          client_secret_env: OIDC_CLIENT_SECRET",
            "issuer: idp.example.com\n          client_id: portcullis\n          client_secret_env: OIDC_CLIENT_SECRET",
            "openid-connect.issuer`: `idp.example.com` must start with https:// or http://",
        ),
        (
            "scopes: [openid, email]\n          logout_path",
            "scopes: [email]\n          logout_path",
            "openid-connect.scopes`: must contain `openid`",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/callback",
            "openid-connect.logout_path`: must differ from the path of `redirect_uri`",
        ),
        (
            "session_secret_env: OIDC_SESSION_SECRET\n          redirect_uri: https://app.example.com/app/callback\n          scopes: [openid, email]\n          logout_path",
            "session_secret_env: SHORT_SECRET\n          redirect_uri: https://app.example.com/app/callback\n          scopes: [openid, email]\n          logout_path",
            "openid-connect.session_secret_env`: environment variable `SHORT_SECRET` with the session secret is not set",
        ),
        (
            "accept_bearer: true",
            "accept_bearer: false\n          bearer_only: true",
            "openid-connect.bearer_only`: `bearer_only: true` needs `accept_bearer: true`",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/logout\n          cookie_same_site: none\n          cookie_secure: false",
            "openid-connect.cookie_same_site`: `SameSite=None` needs `cookie_secure: true`",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/logout\n          max_cookie_bytes: 9000",
            "openid-connect.max_cookie_bytes`: must be between 1024 and 4096",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/logout\n          authorization_params: { state: fixed }",
            "openid-connect.authorization_params.state`: `state` is set by the gateway",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/logout\n          algorithms: [HS256]",
            "openid-connect.algorithms[0]`: unsupported algorithm `HS256`",
        ),
        (
            "logout_path: /app/logout",
            "logout_path: /app/logout\n          cookie_name: 'my session'",
            "openid-connect.cookie_name`: invalid cookie name `my session`",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(OIDC_EXAMPLE.contains(from), "{from}");
        let source = OIDC_EXAMPLE.replacen(from, to, 1);
        let errors = load_str(
            &source,
            Some(Path::new("/etc/portcullis/gateway.yaml")),
            &oidc_env,
        )
        .unwrap_err();
        let message = errors.to_string();
        assert!(
            message.starts_with("/etc/portcullis/gateway.yaml:"),
            "{message}"
        );
        assert!(
            message.contains(&format!("routes[0].policies[0].{expected}")),
            "{to}: {message}"
        );
    }
}

#[test]
fn openid_connect_short_session_secret_fails() {
    let env = |name: &str| match name {
        "OIDC_SESSION_SECRET" => Some("too-short".to_string()),
        other => oidc_env(other),
    };
    let message = load_str(OIDC_EXAMPLE, None, &env).unwrap_err().to_string();
    assert!(
        message.contains(
            "routes[0].policies[0].openid-connect.session_secret_env`: the session secret in `OIDC_SESSION_SECRET` is 9 bytes long; use at least 32"
        ),
        "{message}"
    );
}

#[test]
fn client_auth_loads_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write_certificates(dir.path());
    std::fs::write(dir.path().join("tls/clients.pem"), "placeholder").unwrap();
    let source = "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - { cert_file: tls/gateway.crt, key_file: tls/gateway.key }\n      client_auth: { ca_file: tls/clients.pem }\n";
    let config = load_str(source, Some(&dir.path().join("gateway.yaml")), &env).unwrap();
    let client_auth = config.listeners[0]
        .tls
        .as_ref()
        .unwrap()
        .client_auth
        .as_ref()
        .unwrap();
    assert_eq!(client_auth.ca_file, dir.path().join("tls/clients.pem"));
    assert_eq!(client_auth.mode, ClientAuthMode::Required);
}

#[test]
fn certificate_names_parse() {
    let cases = [
        ("DNS:Client.Example.COM", "DNS:client.example.com"),
        ("dns:a.test", "DNS:a.test"),
        ("email:Ops.Team@Example.COM", "email:Ops.Team@example.com"),
        ("EMAIL:ops@example.com", "email:ops@example.com"),
        (
            "URI:spiffe://example.com/Billing",
            "URI:spiffe://example.com/Billing",
        ),
        ("uri:urn:example:a:b", "URI:urn:example:a:b"),
    ];
    for (written, normalised) in cases {
        let name = CertificateName::parse_san(written)
            .unwrap_or_else(|message| panic!("{written}: {message}"));
        assert_eq!(name.to_string(), normalised, "{written}");
    }
    for invalid in ["client.example.com", "DNS:", "IP:127.0.0.1", ":x", ""] {
        let message = CertificateName::parse_san(invalid).unwrap_err();
        assert!(
            message.contains("invalid subject alternative name"),
            "{invalid}: {message}"
        );
    }
    let subject = CertificateMatch {
        subject_cn: Some("Alice".into()),
        san: None,
    };
    assert_eq!(subject.name().unwrap().to_string(), "CN=Alice");
}

#[test]
fn errors_listed_in_file_order() {
    // The service check runs after the listener check, but the service comes first in the file.
    let source = "services:\n  - name: echo\n    targets: [ftp://127.0.0.1:9000]\nlimits:\n  max_header_bytes: 0\n";
    let errors = load_str(source, None, &|_: &str| None).unwrap_err().0;
    let lines: Vec<Option<usize>> = errors.iter().map(|error| error.line).collect();
    assert!(errors.len() >= 2, "{errors:?}");
    let mut sorted = lines.clone();
    sorted.sort_by_key(|line| line.unwrap_or(usize::MAX));
    assert_eq!(lines, sorted, "{errors:?}");
    assert_eq!(lines[0], Some(3), "{errors:?}");
}
