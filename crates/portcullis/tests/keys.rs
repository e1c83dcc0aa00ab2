//! The API-key lifecycle against the real gateway on SQLite: rotation with an overlap,
//! scheduled rotation delivered through a signed webhook, lookup by prefix, and the
//! `portcullis keys` commands. The PostgreSQL cluster cases live in `cluster.rs`.

mod common;

use std::time::{Duration, Instant};

use common::webhook::{Receiver, expected_signature};
use common::{ALICE_KEY, Gateway, admin, client, error_body, example_config, upstream};
use reqwest::Method;
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "webhook-secret-for-tests-0000000000000001";

async fn issue(client: &reqwest::Client, gateway: &Gateway, consumer: &str, body: Value) -> Value {
    let response = admin(
        client,
        Method::POST,
        gateway,
        &format!("/consumers/{consumer}/keys"),
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn rotate(
    client: &reqwest::Client,
    gateway: &Gateway,
    consumer: &str,
    id: &str,
    body: Value,
) -> reqwest::Response {
    admin(
        client,
        Method::POST,
        gateway,
        &format!("/consumers/{consumer}/keys/{id}/rotate"),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

async fn read_key(client: &reqwest::Client, gateway: &Gateway, consumer: &str, id: &str) -> Value {
    let response = admin(
        client,
        Method::GET,
        gateway,
        &format!("/consumers/{consumer}/keys/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn status_with_key(client: &reqwest::Client, gateway: &Gateway, key: &str) -> u16 {
    client
        .get(gateway.url("/echo/x"))
        .header("apikey", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls the proxy with `key` until it returns `status`, and returns how long that took.
async fn wait_for_status(gateway: &Gateway, key: &str, status: u16, limit: Duration) -> Duration {
    let client = client();
    let started = Instant::now();
    loop {
        if status_with_key(&client, gateway, key).await == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the key did not get status {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the example config without its rate limit, with consumer bob and `extra` YAML
/// appended.
fn config_with(upstream: std::net::SocketAddr, extra: &str) -> String {
    let config = example_config(upstream).replace(
        "      - rate-limit: { limit: 5, window: 1s, by: consumer }\n",
        "",
    );
    format!("{config}  - name: bob\n{extra}")
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_overlap_keeps_both_keys() {
    let gateway = Gateway::start(&config_with(upstream().await, ""));
    let client = client();
    let old = issue(&client, &gateway, "alice", json!({ "scopes": ["read"] })).await;
    let old_key = old["key"].as_str().unwrap();
    let old_id = old["id"].as_str().unwrap();
    assert_eq!(status_with_key(&client, &gateway, old_key).await, 200);

    let response = rotate(
        &client,
        &gateway,
        "alice",
        old_id,
        json!({ "overlap": "2s" }),
    )
    .await;
    let rotated_at = Instant::now();
    assert_eq!(response.status(), 201);
    let rotated: Value = response.json().await.unwrap();
    let new_key = rotated["key"].as_str().unwrap();
    let new_id = rotated["id"].as_str().unwrap();
    assert!(new_key.starts_with("pcs_"), "{rotated}");
    assert_ne!(new_key, old_key);
    assert_eq!(rotated["rotated_from"], old_id);
    assert_eq!(rotated["scopes"], json!(["read"]));
    assert_eq!(rotated["expires_at"], Value::Null);
    assert_eq!(rotated["previous"]["id"], old_id);
    assert_eq!(rotated["previous"]["rotated_to"], new_id);
    assert!(rotated["previous"]["key"].is_null());

    // Both keys work during the overlap.
    assert_eq!(status_with_key(&client, &gateway, old_key).await, 200);
    assert_eq!(status_with_key(&client, &gateway, new_key).await, 200);

    let stored_old = read_key(&client, &gateway, "alice", old_id).await;
    assert_eq!(stored_old["rotated_to"], new_id);
    assert!(stored_old["expires_at"].is_string(), "{stored_old}");
    assert!(stored_old.get("key").is_none());
    let stored_new = read_key(&client, &gateway, "alice", new_id).await;
    assert_eq!(stored_new["rotated_from"], old_id);
    assert!(
        stored_new.get("key").is_none(),
        "the plaintext is shown once"
    );

    // Expiry times are whole seconds, so a 2s overlap lasts between 1s and 2s.
    wait_for_status(&gateway, old_key, 401, Duration::from_secs(5)).await;
    let overlap = rotated_at.elapsed();
    assert!(
        overlap >= Duration::from_millis(900),
        "the old key failed after {overlap:?}, before its overlap ended"
    );
    assert_eq!(status_with_key(&client, &gateway, new_key).await, 200);
    let stored_old = read_key(&client, &gateway, "alice", old_id).await;
    assert_eq!(stored_old["status"], "expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_earlier_expiry() {
    let gateway = Gateway::start(&config_with(upstream().await, ""));
    let client = client();
    let old = issue(&client, &gateway, "alice", json!({ "expires_in": "1h" })).await;
    let old_id = old["id"].as_str().unwrap();

    let response = rotate(
        &client,
        &gateway,
        "alice",
        old_id,
        json!({ "overlap": "24h" }),
    )
    .await;
    assert_eq!(response.status(), 201);
    let rotated: Value = response.json().await.unwrap();
    assert_eq!(
        rotated["previous"]["expires_at"], old["expires_at"],
        "an overlap never extends an earlier expiry"
    );
    let lifetime = |key: &Value| {
        let parse = |field: &str| {
            time::OffsetDateTime::parse(
                key[field].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        parse("expires_at") - parse("created_at")
    };
    assert_eq!(
        lifetime(&rotated),
        lifetime(&old),
        "the new key keeps the lifetime"
    );

    // Both keys expire within 7 days, and revoking one twice counts once.
    let id = rotated["id"].as_str().unwrap();
    for _ in 0..2 {
        let response = admin(
            &client,
            Method::DELETE,
            &gateway,
            &format!("/consumers/alice/keys/{id}"),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 204);
    }
    let metrics = client
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert!(
        lines.contains(&"portcullis_api_keys_issued_total 1"),
        "{metrics}"
    );
    assert!(
        lines.contains(&"portcullis_api_keys_rotated_total{trigger=\"admin\"} 1"),
        "{metrics}"
    );
    assert!(
        lines.contains(&"portcullis_api_keys_revoked_total 1"),
        "{metrics}"
    );
    assert!(
        lines.contains(&"portcullis_api_keys_expiring_soon 1"),
        "only the old key is active and expiring: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_of_unusable_key_conflicts() {
    let gateway = Gateway::start(&config_with(upstream().await, ""));
    let client = client();

    let revoked = issue(&client, &gateway, "alice", json!({})).await;
    let revoked_id = revoked["id"].as_str().unwrap();
    let response = admin(
        &client,
        Method::DELETE,
        &gateway,
        &format!("/consumers/alice/keys/{revoked_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = rotate(&client, &gateway, "alice", revoked_id, json!({})).await;
    let body = error_body(response, 409).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let keys: Value = admin(&client, Method::GET, &gateway, "/consumers/alice/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["rotated_from"] != revoked_id),
        "a failed rotation issues no key: {keys}"
    );

    let rotated_once = issue(&client, &gateway, "alice", json!({})).await;
    let once_id = rotated_once["id"].as_str().unwrap();
    let response = rotate(&client, &gateway, "alice", once_id, json!({})).await;
    assert_eq!(response.status(), 201);
    let response = rotate(&client, &gateway, "alice", once_id, json!({})).await;
    let body = error_body(response, 409).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rotated already"),
        "{body}"
    );

    let expiring = issue(&client, &gateway, "alice", json!({ "expires_in": "1s" })).await;
    let expiring_id = expiring["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_key(&client, &gateway, "alice", expiring_id).await["status"] != "expired" {
        assert!(Instant::now() < deadline, "the key did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = rotate(&client, &gateway, "alice", expiring_id, json!({})).await;
    let body = error_body(response, 409).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let response = rotate(&client, &gateway, "alice", "key_missing", json!({})).await;
    error_body(response, 404).await;
    let response = rotate(&client, &gateway, "bob", once_id, json!({})).await;
    error_body(response, 404).await;
    let response = rotate(
        &client,
        &gateway,
        "alice",
        once_id,
        json!({ "overlap": "soon" }),
    )
    .await;
    let body = error_body(response, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overlap")
    );
    let response = rotate(
        &client,
        &gateway,
        "alice",
        once_id,
        json!({ "overlaps": "1h" }),
    )
    .await;
    error_body(response, 400).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_rotation_signs_webhook() {
    // The first delivery fails, so the event arrives on the second attempt.
    let receiver = Receiver::start(&[500]).await;
    // Bob's own overlap overrides the top-level one, and alice's only key is declared in the
    // file, so the top-level schedule leaves it alone.
    let extra = format!(
        "    key_rotation: {{ every: 2s, overlap: 1h }}\n\
         key_rotation:\n  every: 2s\n  overlap: 5m\n  webhook: \"{url}\"\n  \
         webhook_secret: {WEBHOOK_SECRET}\n  check_interval: 200ms\n",
        url = receiver.url()
    );
    let config = config_with(upstream().await, &extra);
    let gateway = Gateway::start(&config);
    let client = client();
    let issued = issue(&client, &gateway, "bob", json!({ "scopes": ["write"] })).await;
    let old_id = issued["id"].as_str().unwrap().to_owned();
    let old_key = issued["key"].as_str().unwrap().to_owned();

    let delivery = receiver
        .wait_for(Duration::from_secs(15), |event| {
            event["old_key_id"] == old_id
        })
        .await;
    assert_eq!(
        delivery.signature.as_deref(),
        Some(expected_signature(WEBHOOK_SECRET, &delivery.body).as_str()),
        "the signature is HMAC-SHA-256 of the body"
    );
    let event = delivery.json();
    assert_eq!(event["event"], "key.rotated");
    assert_eq!(event["consumer"], "bob");
    assert_eq!(event["scopes"], json!(["write"]));
    let parse = |field: &str| {
        time::OffsetDateTime::parse(
            event[field].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        parse("old_key_expires_at") - parse("rotated_at"),
        time::Duration::hours(1),
        "the consumer's overlap applies"
    );
    let new_key = event["key"].as_str().unwrap().to_owned();
    let new_id = event["key_id"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("pcs_"));
    assert_eq!(event["prefix"], new_key[..12]);

    let attempts_for_key = || -> Vec<_> {
        receiver
            .deliveries()
            .into_iter()
            .filter(|delivery| delivery.json()["old_key_id"] == old_id)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts_for_key().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the failed delivery was not retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = attempts_for_key();
    assert_eq!(attempts.len(), 2, "one failed attempt, then one retry");
    assert_eq!(attempts[0].body, attempts[1].body);

    // The node applied the rotation before it sent the event, and the old key is in its overlap.
    assert_eq!(status_with_key(&client, &gateway, &new_key).await, 200);
    assert_eq!(status_with_key(&client, &gateway, &old_key).await, 200);
    let stored_old = read_key(&client, &gateway, "bob", &old_id).await;
    assert_eq!(stored_old["rotated_to"], new_id.as_str());
    assert_eq!(stored_old["expires_at"], event["old_key_expires_at"]);

    // Keys declared in the file are not rotated by the schedule, and no plaintext reaches the
    // admin API or the log.
    assert!(
        receiver
            .deliveries()
            .iter()
            .all(|delivery| delivery.json()["consumer"] == "bob"),
        "keys declared in the file are not rotated"
    );
    let listed = admin(&client, Method::GET, &gateway, "/consumers/bob/keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains(&new_key),
        "the admin API never shows the plaintext"
    );
    let log = gateway.stderr();
    assert!(!log.contains(&new_key), "the log never contains the key");
    assert!(
        log.contains(&receiver.url()),
        "failures name the webhook URL"
    );
    assert_eq!(status_with_key(&client, &gateway, ALICE_KEY).await, 200);

    let metrics = client
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("portcullis_api_keys_rotated_total{trigger=\"schedule\"}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_api_keys_issued_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schedule_without_webhook_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "consumers:\n  - name: bob\n    key_rotation: { every: 30d }\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("consumers[0].key_rotation.every"),
        "{stderr}"
    );
    assert!(stderr.contains(":3:"), "the error names the line: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_found_by_prefix() {
    let gateway = Gateway::start(&config_with(upstream().await, ""));
    let client = client();
    let alice = issue(&client, &gateway, "alice", json!({})).await;
    let bob = issue(&client, &gateway, "bob", json!({})).await;
    let find = |query: String| {
        let request = admin(&client, Method::GET, &gateway, &format!("/keys?{query}"));
        async move { request.send().await.unwrap() }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let alice_prefix = alice["prefix"].as_str().unwrap();
    assert_eq!(alice_prefix.len(), 12);
    let body: Value = find(format!("prefix={alice_prefix}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body), vec![alice["id"].as_str().unwrap()]);
    assert!(!body.to_string().contains(alice["key"].as_str().unwrap()));

    let body: Value = find("prefix=pcs_".into()).await.json().await.unwrap();
    let found = ids(&body);
    assert_eq!(found.len(), 2, "issued keys of both consumers: {body}");
    assert!(found.contains(&bob["id"].as_str().unwrap().to_owned()));

    let body: Value = find("prefix=pcs_&consumer=bob".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body), vec![bob["id"].as_str().unwrap()]);

    // `_` and `%` are plain characters, not patterns.
    let body: Value = find("prefix=pcs%25".into()).await.json().await.unwrap();
    assert_eq!(ids(&body), Vec::<String>::new());
    let body: Value = find("prefix=alice_demo".into()).await.json().await.unwrap();
    assert_eq!(ids(&body), Vec::<String>::new());
    let body: Value = find("prefix=alice-demo".into()).await.json().await.unwrap();
    assert_eq!(body["data"][0]["source"], "config");

    // The secret part of a key is never a search term.
    let full_key = alice["key"].as_str().unwrap();
    let body = error_body(find(format!("prefix={full_key}")).await, 400).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("12"));
    error_body(find("prefx=pcs_".into()).await, 400).await;

    let response = client.get(gateway.admin_url("/keys")).send().await.unwrap();
    error_body(response, 401).await;
}

/// Runs `portcullis keys ...` and returns its exit status, standard output and standard error.
fn keys_command(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("keys")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_commands_change_the_store() {
    let gateway = Gateway::start(&config_with(upstream().await, ""));
    let config = gateway.config_path.to_str().unwrap().to_owned();
    let client = client();

    let (status, stdout, stderr) = keys_command(&[
        "issue",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--expires-in",
        "30d",
        "--scope",
        "read",
    ]);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    let issued: Value = serde_json::from_str(&stdout).unwrap();
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pcs_"));
    assert_eq!(issued["consumer"], "bob");
    assert_eq!(issued["scopes"], json!(["read"]));
    assert!(issued["expires_at"].is_string());
    assert!(!stderr.contains(&key));
    // The running gateway picks the key up from the store's version.
    wait_for_status(&gateway, &key, 200, Duration::from_secs(5)).await;

    let (status, stdout, stderr) =
        keys_command(&["list", "--config", &config, "--consumer", "bob"]);
    assert_eq!(status, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert!(!stdout.contains(&key), "list never prints a plaintext");

    let prefix = &key[..12];
    let (status, stdout, _) = keys_command(&["list", "--config", &config, "--prefix", prefix]);
    assert_eq!(status, 0);
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let (status, _, stderr) = keys_command(&["list", "--config", &config, "--prefix", &key]);
    assert_ne!(status, 0);
    assert!(stderr.contains("12 characters"), "{stderr}");
    let (status, _, stderr) = keys_command(&["list", "--config", &config, "--consumer", "nobody"]);
    assert_ne!(status, 0);
    assert!(stderr.contains("consumer `nobody` not found"), "{stderr}");
    let (status, stdout, _) = keys_command(&["list", "--config", &config]);
    assert_eq!(status, 0);
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        2,
        "alice's and bob's"
    );

    let (status, stdout, stderr) = keys_command(&[
        "rotate",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--id",
        &id,
        "--overlap",
        "1h",
    ]);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    let rotated: Value = serde_json::from_str(&stdout).unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["rotated_from"], id.as_str());
    assert_eq!(rotated["previous"]["rotated_to"], new_id.as_str());
    wait_for_status(&gateway, &new_key, 200, Duration::from_secs(5)).await;
    assert_eq!(
        status_with_key(&client, &gateway, &key).await,
        200,
        "in its overlap"
    );

    let (status, stdout, stderr) = keys_command(&[
        "revoke",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--id",
        &id,
    ]);
    assert_eq!(status, 0, "{stderr}");
    let revoked: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["id"], id.as_str());
    wait_for_status(&gateway, &key, 401, Duration::from_secs(5)).await;

    let (status, stdout, stderr) = keys_command(&[
        "rotate",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--id",
        &id,
    ]);
    assert_ne!(status, 0);
    assert!(stdout.is_empty());
    assert!(stderr.contains("revoked"), "{stderr}");
    let (status, _, stderr) = keys_command(&[
        "issue",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--expires-in",
        "later",
    ]);
    assert_ne!(status, 0);
    assert!(stderr.contains("expires_in"), "{stderr}");
    let (status, _, stderr) = keys_command(&[
        "revoke",
        "--config",
        &config,
        "--consumer",
        "bob",
        "--id",
        "key_missing",
    ]);
    assert_ne!(status, 0);
    assert!(stderr.contains("not found"), "{stderr}");
}
