//! The admin API against the real gateway: authentication, entity CRUD, key lifecycle, and
//! changes applied to live traffic without a restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    ADMIN_TOKEN, ALICE_KEY, Gateway, admin, client, error_body, example_config, upstream,
};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_need_the_token() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();

    let response = client
        .get(gateway.admin_url("/services"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    let body = error_body(response, 401).await;
    assert_eq!(body["error"]["code"], "missing_admin_token");

    let response = client
        .get(gateway.admin_url("/services"))
        .bearer_auth("wrong-token-but-long-enough")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 401).await["error"]["code"],
        "invalid_admin_token"
    );

    let response = admin(&client, Method::GET, &gateway, "/services")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["name"], "echo");

    for open in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        let response = client.get(gateway.admin_url(open)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{open} answers without a token");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn created_route_serves_at_once() {
    let upstream = upstream().await;
    let gateway = Gateway::start(&example_config(upstream));
    let client = client();

    let response = admin(&client, Method::POST, &gateway, "/services")
        .json(&json!({ "name": "open", "targets": [format!("http://{upstream}")] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/services/open");

    let response = admin(&client, Method::POST, &gateway, "/routes")
        .json(&json!({ "name": "open", "service": "open", "paths": ["/open"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let response = client.get(gateway.url("/open/x")).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the new route serves the next request"
    );
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/open/x", "no strip_prefix on this route");

    let response = admin(&client, Method::PATCH, &gateway, "/routes/open")
        .json(&json!({ "strip_prefix": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = client
        .get(gateway.url("/open/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/x", "the patch applies to the next request");

    let response = admin(&client, Method::DELETE, &gateway, "/routes/open")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        client
            .get(gateway.url("/open/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let response = admin(&client, Method::DELETE, &gateway, "/services/open")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = admin(&client, Method::GET, &gateway, "/services/open")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 404).await["error"]["code"],
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_writes_are_rejected_whole() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();

    let response = admin(&client, Method::POST, &gateway, "/services")
        .json(&json!({ "name": "bad", "targets": ["ftp://example"], "timeouts": { "connect": "soon" } }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(body["error"]["code"], "invalid_entity");
    assert_eq!(
        body["error"]["details"][0]["key"], "timeouts.connect",
        "{body}"
    );

    let response = admin(&client, Method::POST, &gateway, "/services")
        .json(&json!({ "name": "bad", "targets": ["ftp://example"] }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(body["error"]["details"][0]["key"], "targets[0]", "{body}");

    let response = admin(&client, Method::POST, &gateway, "/routes")
        .json(&json!({ "name": "r", "service": "missing", "paths": ["/r"] }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(body["error"]["details"][0]["key"], "service", "{body}");

    let response = admin(&client, Method::POST, &gateway, "/services")
        .json(&json!({ "name": "echo", "targets": ["http://127.0.0.1:1"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(response, 409).await["error"]["code"], "conflict");

    let response = admin(&client, Method::DELETE, &gateway, "/services/echo")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 409).await["error"]["code"],
        "conflict",
        "a route still uses it"
    );

    let response = admin(&client, Method::PUT, &gateway, "/services/echo")
        .json(&json!({ "name": "other", "targets": ["http://127.0.0.1:1"] }))
        .send()
        .await
        .unwrap();
    error_body(response, 400).await;

    let response = admin(&client, Method::POST, &gateway, "/services")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 400).await["error"]["code"],
        "invalid_request"
    );

    // serde reads an array into a struct field by field, so each of these would otherwise
    // create an entity or issue a key.
    for (path, body) in [
        ("/services", r#"["array-service", ["http://127.0.0.1:1"]]"#),
        ("/routes", r#"["array-route", "echo", ["/array-route"]]"#),
        ("/consumers", r#"["array-consumer"]"#),
        ("/consumers/alice/keys", r#"["2030-01-01T00:00:00Z"]"#),
        ("/services", "[]"),
        ("/services", "42"),
        ("/services", "null"),
        ("/services", r#""a string""#),
    ] {
        let response = admin(&client, Method::POST, &gateway, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let error = error_body(response, 400).await;
        assert_eq!(error["error"]["code"], "invalid_request", "{path} {body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be a JSON object"),
            "{path} {body}: {error}"
        );
    }
    for path in [
        "/services/array-service",
        "/routes/array-route",
        "/consumers/array-consumer",
    ] {
        let response = admin(&client, Method::GET, &gateway, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} was created from an array");
    }

    let response = admin(&client, Method::GET, &gateway, "/no/such/endpoint")
        .send()
        .await
        .unwrap();
    error_body(response, 404).await;

    // Nothing above changed the gateway.
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_key_works_until_revoked() {
    let gateway =
        Gateway::start(&example_config(upstream().await).replace("limit: 5,", "limit: 1000,"));
    let client = client();

    let response = admin(&client, Method::POST, &gateway, "/consumers")
        .json(&json!({ "name": "bob", "roles": ["silver"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = admin(&client, Method::POST, &gateway, "/consumers/bob/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let issued: serde_json::Value = response.json().await.unwrap();
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("pcs_"), "{key}");
    assert_eq!(issued["prefix"], &key[..12]);
    assert_eq!(issued["status"], "active");

    let echo: serde_json::Value = client
        .get(gateway.url("/echo/x"))
        .header("apikey", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-consumer-name"], "bob");

    let listed: serde_json::Value = admin(&client, Method::GET, &gateway, "/consumers/bob/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed_text = listed.to_string();
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert!(
        !listed_text.contains(&key),
        "the plaintext is shown only once"
    );
    assert!(
        listed["data"][0].get("hash").is_none(),
        "the hash is not shown"
    );

    // A mistyped key fails its checksum.
    let mut mistyped = key.clone().into_bytes();
    mistyped[10] = if mistyped[10] == b'A' { b'B' } else { b'A' };
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", String::from_utf8(mistyped).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let revoked_at = Instant::now();
    let response = admin(
        &client,
        Method::DELETE,
        &gateway,
        &format!("/consumers/bob/keys/{id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "the revoked key fails on the next request"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    let key_view: serde_json::Value = admin(
        &client,
        Method::GET,
        &gateway,
        &format!("/consumers/bob/keys/{id}"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(key_view["status"], "revoked");

    let response = admin(
        &client,
        Method::DELETE,
        &gateway,
        "/consumers/bob/keys/key_missing",
    )
    .send()
    .await
    .unwrap();
    error_body(response, 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_key_is_rejected() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();
    let response = admin(&client, Method::POST, &gateway, "/consumers/alice/keys")
        .json(&json!({ "expires_in": "1s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let issued: serde_json::Value = response.json().await.unwrap();
    let key = issued["key"].as_str().unwrap();
    assert_eq!(
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Expiry is checked against the wall clock on each request; wait for it to pass.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = client
            .get(gateway.url("/echo/x"))
            .header("apikey", key)
            .send()
            .await
            .unwrap();
        if response.status() == 401 {
            assert_eq!(
                error_body(response, 401).await["error"]["code"],
                "expired_api_key"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the key did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = admin(&client, Method::POST, &gateway, "/consumers/alice/keys")
        .json(&json!({ "expires_in": "soon" }))
        .send()
        .await
        .unwrap();
    error_body(response, 400).await;
    let response = admin(&client, Method::POST, &gateway, "/consumers/nobody/keys")
        .send()
        .await
        .unwrap();
    error_body(response, 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_under_load_fails_no_request() {
    let upstream = upstream().await;
    let config = example_config(upstream).replace("limit: 5,", "limit: 1000000,");
    let gateway = Arc::new(Gateway::start(&config));
    let client = client();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gateway, client, stop, sent) =
            (gateway.clone(), client.clone(), stop.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client
                    .get(gateway.url("/echo/load"))
                    .header("apikey", ALICE_KEY)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.bytes().await;
                    }
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(error.to_string()),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    // Rewrite the service, add and remove routes, reload the file, while traffic flows.
    for round in 0..15 {
        let limit = 1_000_000 + round;
        let response = admin(&client, Method::PUT, &gateway, "/services/echo")
            .json(&json!({
                "targets": [format!("http://{upstream}")],
                "policies": [{ "key-auth": {} }, { "rate-limit": { "limit": limit, "window": "1s" } }]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let name = format!("extra-{round}");
        let response = admin(&client, Method::POST, &gateway, "/routes")
            .json(&json!({ "name": name, "service": "echo", "paths": [format!("/{name}")] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        if round % 5 == 0 {
            let response = admin(&client, Method::POST, &gateway, "/config/reload")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            gateway.signal("HUP");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 100, "too little traffic to mean anything: {sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ready: serde_json::Value = client
        .get(gateway.admin_url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert!(ready["config_version"].as_u64().unwrap() >= 31, "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_matches_the_endpoints() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();
    let document: serde_json::Value = client
        .get(gateway.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 13);
    for (path, operations) in paths {
        let concrete = path.replace("{name}", "alice").replace("{id}", "key_none");
        for method in operations
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| *key != "parameters")
        {
            let method: Method = method.to_uppercase().parse().unwrap();
            if method == Method::DELETE || method == Method::POST && concrete == "/config/reload" {
                continue;
            }
            let response = client
                .request(method.clone(), gateway.admin_url(&concrete))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(
                !text.contains("no admin endpoint at this path") && status != 405,
                "{method} {path} is documented but not served: {status} {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_report_state() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();
    let _ = client.get(gateway.url("/echo/x")).send().await.unwrap();
    let _ = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();

    let metrics = client
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "portcullis_requests_total{route=\"echo\",status=\"401\"} 1",
        "portcullis_requests_total{route=\"echo\",status=\"200\"} 1",
        "portcullis_rejections_total{policy=\"key-auth\",code=\"missing_api_key\"} 1",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_open_connections",
        "portcullis_config_version 1",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    let ready: serde_json::Value = client
        .get(gateway.admin_url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["config_version"], 1);
    assert_eq!(ready["store"], "sqlite");
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_values_are_400() {
    let gateway = Gateway::start(&example_config(upstream().await));
    let client = client();

    let response = admin(&client, Method::POST, &gateway, "/consumers/alice/keys")
        .json(&json!({ "expires_in": "999999999999d" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 400).await["error"]["code"],
        "invalid_request"
    );

    let response = admin(&client, Method::POST, &gateway, "/services")
        .json(&json!({ "name": "far", "targets": ["http://127.0.0.1:99999"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 400).await["error"]["details"][0]["key"],
        "targets[0]"
    );

    let response = admin(&client, Method::PUT, &gateway, "/services/echo")
        .json(&json!({
            "targets": ["http://127.0.0.1:1"],
            "policies": [{ "rate-limit": { "limit": 5, "window": "1s", "burst": u64::MAX } }]
        }))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(
        body["error"]["details"][0]["key"], "policies[0].rate-limit.burst",
        "{body}"
    );

    let response = admin(&client, Method::GET, &gateway, "/services/%ff")
        .send()
        .await
        .unwrap();
    error_body(response, 400).await;
    let response = admin(&client, Method::PATCH, &gateway, "/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(response, 405).await["error"]["code"],
        "method_not_allowed"
    );

    // The gateway still serves after all of it.
    let response = client
        .get(gateway.url("/echo/x"))
        .header("apikey", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !gateway.stderr().contains("panicked"),
        "{}",
        gateway.stderr()
    );
}
