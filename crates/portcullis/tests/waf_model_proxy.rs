//! The learned model in the `waf` policy of the real gateway. It is on by default with the
//! built-in rules, so an attack that no built-in rule matches is blocked and a rule's false
//! positive on prose passes. `model: off` restores the rules alone.

mod common;

use common::{Gateway, TestUpstream, client, error_body, node_config};

fn config(upstream: &str) -> String {
    format!(
        r#"{}
services:
  - name: app
    targets: [{upstream}]
routes:
  - name: default
    service: app
    paths: [/default]
    policies:
      - waf: {{}}
  - name: rules-only
    service: app
    paths: [/rules-only]
    policies:
      - waf: {{ model: off }}
"#,
        node_config()
    )
}

fn query(value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("?q={encoded}")
}

/// A server-side include that no built-in rule matches.
const MODEL_ONLY_ATTACK: &str = "<!--#exec cmd=\"ls\" -->";
/// Prose in which libinjection finds SQL.
const RULE_FALSE_POSITIVE: &str = "tr no longer mishandles a second operand with leading \"-\".";

#[tokio::test]
async fn model_on_by_default_with_builtin_rules() {
    let upstream = TestUpstream::start("app").await;
    let gateway = Gateway::start(&config(&upstream.url()));
    let client = client();

    let response = client
        .get(gateway.url(&format!("/default/x{}", query(MODEL_ONLY_ATTACK))))
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
    assert_eq!(line["waf"]["rules"], serde_json::json!([100500, 100900]));

    let response = client
        .get(gateway.url(&format!("/default/x{}", query(RULE_FALSE_POSITIVE))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn model_off_runs_rules_alone() {
    let upstream = TestUpstream::start("app").await;
    let gateway = Gateway::start(&config(&upstream.url()));
    let client = client();

    let response = client
        .get(gateway.url(&format!("/rules-only/x{}", query(MODEL_ONLY_ATTACK))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client
        .get(gateway.url(&format!("/rules-only/x{}", query(RULE_FALSE_POSITIVE))))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 403).await;
    assert_eq!(body["error"]["code"], "request_blocked");
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn invalid_model_threshold_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waf.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: app\n    targets: [http://127.0.0.1:9000]\nroutes:\n  - name: app\n    service: app\n    paths: [/app]\n    policies:\n      - waf:\n          model_threshold: 1.5\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("routes[0].policies[0].waf.model_threshold"),
        "{stderr}"
    );
    assert!(
        stderr.contains("model_threshold is a probability and must be 0 to 1, not 1.5"),
        "{stderr}"
    );
}
