//! Runs the Python scripts in this folder, which call the gateway with the official SDKs.

#![allow(dead_code)]

use crate::common::ALICE_KEY;
use serde_json::Value;

/// Returns the Python interpreter with the `openai` and `anthropic` SDKs:
/// `PORTCULLIS_TEST_PYTHON`, or the `.venv` that `scripts/python-env.sh` creates.
fn venv_python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        return std::path::PathBuf::from(path);
    }
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "no Python with the openai and anthropic SDKs at {}: run scripts/python-env.sh, or set \
         PORTCULLIS_TEST_PYTHON to an interpreter that has them",
        python.display()
    );
    python
}

/// Runs `tests/sdk/{script}` against `base_url` with `cases` and returns its JSON results.
pub async fn run_sdk_script(script: &str, base_url: &str, cases: &Value) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let mut command = std::process::Command::new(venv_python());
    command
        .arg(script)
        .arg(base_url)
        .arg(ALICE_KEY)
        .arg(cases.to_string());
    // On the blocking pool, because the mock providers run on this test's runtime.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
