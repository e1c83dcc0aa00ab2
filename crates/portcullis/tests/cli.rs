//! The `portcullis` command line and process lifecycle: validation, the generated admin token,
//! graceful shutdown, and file reloads.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ALICE_KEY, Gateway, client, example_config, upstream};

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

#[test]
fn validate_accepts_the_examples() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .flat_map(|entry| std::fs::read_dir(entry.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    paths.sort();
    for path in paths {
        let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["validate", "--config"])
            .arg(&path)
            .env("PORTCULLIS_ADMIN_TOKEN", "example-admin-token-0000000001")
            .env(
                "PORTCULLIS_KEY_HASH_SECRET",
                "example-key-hash-secret-00000000001",
            )
            .env(
                "PORTCULLIS_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/portcullis",
            )
            .env("OIDC_CLIENT_SECRET", "example-oidc-client-secret-0001")
            .env(
                "OIDC_SESSION_SECRET",
                "example-oidc-session-secret-of-48-bytes-000000001",
            )
            .output()
            .unwrap();
        // TLS examples reference certificates that their run script generates.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let only_missing_certificates = stderr
            .lines()
            .filter(|line| line.starts_with("error:"))
            .all(|line| line.contains("tls.certificates"));
        assert!(
            output.status.success() || only_missing_certificates,
            "{}: {stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "no example config found under {}",
        examples.display()
    );
}

#[test]
fn validate_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: echo\n    targets: [http://127.0.0.1:9000]\nroutes:\n  - name: echo\n    service: ecko\n    paths: [/echo]\n",
    )
    .unwrap();
    let output = portcullis(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:6: key `routes[0].service`", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`ecko` is not defined"), "{stderr}");

    std::fs::write(&path, "listeners:\n  - address: 127.0.0.1:8000\n    tls: {certificates: [], min_version: \"1.1\"}\n").unwrap();
    let output = portcullis(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":3: key `listeners[0].tls.min_version`"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        "admin:\n  token: ${PORTCULLIS_TEST_UNSET_VARIABLE}\n",
    )
    .unwrap();
    let output = portcullis(&["validate", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":2: ") && stderr.contains("PORTCULLIS_TEST_UNSET_VARIABLE"),
        "{stderr}"
    );

    let output = portcullis(&[
        "validate",
        "--config",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

#[test]
fn validate_rejects_unknown_limit_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    let config = "ai:
  providers:
    - name: openai-main
      type: openai
      api_key: sk-test-0001
  models:
    - name: smart
      targets: [openai-main/gpt-4.1]
routes:
  - name: llm
    paths: [/v1]
    ai: {}
    policies:
      - ai-limits:
          tokens_per_day: 1000
          models:
            - smart
            - openai-main/gpt-4o
            - gpt-4o
";
    std::fs::write(&path, config).unwrap();
    let output = portcullis(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "error: {}:19: key `routes[0].policies[0].ai-limits.models[2]`: model `gpt-4o` is not an alias",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let errors = stderr.lines().filter(|line| line.starts_with("error:"));
    assert_eq!(errors.count(), 1, "{stderr}");

    std::fs::write(&path, config.replace("            - gpt-4o\n", "")).unwrap();
    let output = portcullis(&["validate", "--config", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn serve_rejects_invalid_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, "routes:\n  - name: r\n    paths: [/x]\n").unwrap();
    let output = portcullis(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("routes[0].service"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_admin_token_is_generated_once() {
    let upstream = upstream().await;
    let config =
        example_config(upstream).replace(&format!("  token: {}\n", common::ADMIN_TOKEN), "");
    let gateway = Gateway::start(&config);
    let token_path = gateway.path("portcullis-admin.token");
    let token = std::fs::read_to_string(&token_path)
        .expect("the token file exists")
        .trim()
        .to_string();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("portcullis-admin.token"),
        "the log says where the token is"
    );
    assert!(!stderr.contains(&token), "the log never shows the token");

    let client = client();
    assert_eq!(
        client
            .get(gateway.admin_url("/services"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .get(gateway.admin_url("/services"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A restart reuses the same token.
    let dir = {
        let mut gateway = gateway;
        gateway.signal("TERM");
        assert!(gateway.wait_exit(Duration::from_secs(10)));
        std::mem::replace(&mut gateway.dir, tempfile::tempdir().unwrap())
    };
    let restarted = Gateway::start_in(dir, &config);
    assert_eq!(
        std::fs::read_to_string(restarted.path("portcullis-admin.token"))
            .unwrap()
            .trim(),
        token
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_redis_does_not_block_start() {
    // A port that was free a moment ago: nothing listens there, so every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = example_config(upstream().await).replace(
        "access_log: access.log",
        &format!(
            "access_log: access.log\nredis: {{ url: \"redis://127.0.0.1:{port}\", channel: portcullis-test-unreachable }}"
        ),
    );
    let mut gateway = Gateway::start(&config);
    let url = gateway.url("/echo/delay/1500");
    let slow =
        tokio::spawn(async move { client().get(url).header("apikey", ALICE_KEY).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");

    let response = slow
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(response.status(), 200);
    assert!(
        gateway.wait_exit(Duration::from_secs(10)),
        "exit status 0 after draining"
    );
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("cannot subscribe to Redis change messages yet"),
        "{stderr}"
    );
    assert!(stderr.contains("draining connections"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight() {
    let mut gateway = Gateway::start(&example_config(upstream().await));
    let url = gateway.url("/echo/delay/1500");
    let slow =
        tokio::spawn(async move { client().get(url).header("apikey", ALICE_KEY).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");

    let response = slow
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(response.status(), 200);
    assert!(
        gateway.wait_exit(Duration::from_secs(10)),
        "exit status 0 after draining"
    );
    assert!(
        std::net::TcpStream::connect(gateway.proxy[0]).is_err(),
        "the listener is closed"
    );
    let stderr = gateway.stderr();
    assert!(stderr.contains("draining connections"), "{stderr}");
    assert!(stderr.contains("portcullis stopped"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_file() {
    let upstream = upstream().await;
    let config = example_config(upstream);
    let gateway = Gateway::start(&config);
    let client = client();
    assert_eq!(
        client
            .get(gateway.url("/open/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Add a second route after the first one in the file.
    let extended = config.replacen(
        "    strip_prefix: true\n",
        "    strip_prefix: true\n  - name: open\n    service: echo\n    paths: [/open]\n",
        1,
    );
    std::fs::write(&gateway.config_path, &extended).unwrap();
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client
            .get(gateway.url("/open/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded route never served (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file leaves the running configuration in place.
    std::fs::write(&gateway.config_path, "routes: [[[\n").unwrap();
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway.stderr().contains("configuration reload failed") {
        assert!(Instant::now() < deadline, "no reload error was logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client
            .get(gateway.url("/open/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_config_key_stops_working() {
    let upstream = upstream().await;
    let config = example_config(upstream).replace("limit: 5,", "limit: 1000,");
    let gateway = Gateway::start(&config);
    let client = client();
    assert_eq!(
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let rotated = config.replace(ALICE_KEY, "alice-demo-key-0002");
    std::fs::write(&gateway.config_path, &rotated).unwrap();
    let response = common::admin(&client, reqwest::Method::POST, &gateway, "/config/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", "alice-demo-key-0002")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_last_use_is_saved_on_shutdown() {
    let upstream = upstream().await;
    let config = example_config(upstream);
    let mut gateway = Gateway::start(&config);
    let client = client();
    assert_eq!(
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", ALICE_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(10)));

    let dir = std::mem::replace(&mut gateway.dir, tempfile::tempdir().unwrap());
    let restarted = Gateway::start_in(dir, &config);
    let keys: serde_json::Value = common::admin(
        &client,
        reqwest::Method::GET,
        &restarted,
        "/consumers/alice/keys",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(keys["data"][0]["last_used_at"].is_string(), "{keys}");
    assert_eq!(keys["data"][0]["source"], "config");
}
