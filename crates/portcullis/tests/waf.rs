//! `portcullis waf test` and `portcullis waf scan` on small rule sets written by the tests, so
//! they run without the OWASP CRS.

use std::io::Write;
use std::process::{Command, Stdio};

const RULES: &str = r#"
SecAction "id:900001,phase:1,pass,nolog,setvar:tx.blocking_inbound_anomaly_score=0"
SecRule ARGS "@rx (?i)union\s+select" \
    "id:942999,phase:2,block,t:none,t:urlDecodeUni,msg:'SQL injection',\
    setvar:'tx.blocking_inbound_anomaly_score=+5'"
SecRule TX:blocking_inbound_anomaly_score "@ge 5" "id:949110,phase:2,deny,msg:'Anomaly threshold reached'"
"#;

const TESTS: &str = r#"
rule_id: 942999
tests:
  - test_id: 1
    stages:
      - input:
          method: GET
          uri: "/?q=1%20union%20select%202"
          headers:
            Host: localhost
        output:
          log:
            expect_ids: [942999]
  - test_id: 2
    stages:
      - input:
          method: POST
          uri: "/"
          data: "q=hello"
        output:
          log:
            expect_ids: [942999]
  - test_id: 3
    stages:
      - input:
          uri: "/"
        output:
          status: 403
"#;

fn write_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("rules/rules.conf"), RULES).unwrap();
    std::fs::write(dir.path().join("tests/942999.yaml"), TESTS).unwrap();
    dir
}

#[test]
fn waf_test_prints_stage_lines_and_summary() {
    let dir = write_fixture();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["waf", "test", "--paranoia", "1", "--rules"])
        .arg(dir.path().join("rules"))
        .arg("--tests")
        .arg(dir.path().join("tests"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();

    assert_eq!(
        output.status.code(),
        Some(1),
        "a failing stage must exit 1: {stdout}"
    );
    assert_eq!(lines[0], r#"{"test":"942999-1","result":"pass"}"#);
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["test"], "942999-2");
    assert_eq!(second["result"], "fail");
    assert!(second["reason"].as_str().unwrap().contains("942999"));
    let third: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(third["result"], "skip");
    let family: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(family["family"], "tests");
    assert_eq!(family["pass_rate"], 0.5);
    assert_eq!(lines.last().copied(), Some("1 passed, 1 failed, 1 skipped"));
}

#[test]
fn waf_scan_scores_each_line() {
    let dir = write_fixture();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["waf", "scan", "--rules"])
        .arg(dir.path().join("rules"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"1 UNION SELECT password\nhello world\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();

    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["blocked"], true);
    assert_eq!(results[0]["score"], 5);
    assert_eq!(results[0]["rules"], serde_json::json!([942999, 949110]));
    assert!(results[0]["probability"].as_f64().unwrap() > 0.9);
    assert_eq!(results[1]["blocked"], false);
    assert_eq!(results[1]["score"], 0);
    assert_eq!(results[1]["rules"], serde_json::json!([]));
    assert!(results[1]["probability"].as_f64().unwrap() < 0.1);
}

#[test]
fn waf_rejects_unsupported_rule_with_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.conf"),
        "\n\nSecRule ARGS \"@rx a\" \"id:1,exec:/bin/sh\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["waf", "scan", "--rules"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("a.conf:3: unsupported action `exec`"),
        "{stderr}"
    );
}
