//! Load balancing, health checks, retries and circuit breakers, against real gateway processes
//! and real upstream servers on ephemeral ports.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Gateway, TestUpstream, admin, client, error_body, metric, metrics_text, node_config, wait_until,
};
use reqwest::Method;
use serde_json::Value;

/// Returns a gateway config with one route `/` to the service `api`. `service` is the YAML of
/// the service after its `name: api` line.
fn config(service: &str) -> String {
    format!(
        r#"{}
services:
  - name: api
{service}
routes:
  - name: api
    service: api
    paths: [/]
"#,
        node_config()
    )
}

/// Sends `count` GET requests to `path` one after another and returns the body of each.
async fn bodies(gateway: &Gateway, path: &str, count: usize) -> Vec<String> {
    let client = client();
    let mut bodies = Vec::new();
    for _ in 0..count {
        let response = client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "request to {path} failed");
        bodies.push(response.text().await.unwrap());
    }
    bodies
}

fn count(bodies: &[String], name: &str) -> usize {
    bodies.iter().filter(|body| body.as_str() == name).count()
}

async fn service_health(gateway: &Gateway) -> Value {
    let response = admin(&client(), Method::GET, gateway, "/services/api/health")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Returns the health report of the target with this URL.
async fn target_health(gateway: &Gateway, url: &str) -> Value {
    let health = service_health(gateway).await;
    health["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["target"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("no target {url} in {health}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_evenly() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let gateway = Gateway::start(&config(&format!(
        "    targets: [{}, {}, {}]",
        a.url(),
        b.url(),
        c.url()
    )));
    let bodies = bodies(&gateway, "/x", 30).await;
    assert_eq!(count(&bodies, "a"), 10);
    assert_eq!(count(&bodies, "b"), 10);
    assert_eq!(count(&bodies, "c"), 10);
    // Strict rotation: no target twice in a row.
    for pair in bodies.windows(2) {
        assert_ne!(pair[0], pair[1], "{bodies:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_round_robin_follows_weights() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gateway = Gateway::start(&config(&format!(
        "    targets:\n      - {{ url: \"{}\", weight: 3 }}\n      - {}",
        a.url(),
        b.url()
    )));
    let bodies = bodies(&gateway, "/x", 40).await;
    assert_eq!(count(&bodies, "a"), 30);
    assert_eq!(count(&bodies, "b"), 10);
    // Smooth: the light target comes once in every four requests, never in a burst.
    for chunk in bodies.chunks(4) {
        assert_eq!(count(chunk, "b"), 1, "{bodies:?}");
    }
    let health = service_health(&gateway).await;
    assert_eq!(health["algorithm"], "round-robin");
    assert_eq!(health["targets"][0]["weight"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn least_connections_avoids_busy_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gateway = Gateway::start(&config(&format!(
        "    targets: [{}, {}]\n    load_balancing: {{ algorithm: least-connections }}",
        a.url(),
        b.url()
    )));
    let slow_url = gateway.url("/slow/3000");
    let slow = tokio::spawn(async move { client().get(slow_url).send().await.unwrap() });
    wait_until(
        Duration::from_secs(5),
        "the slow request to reach a target",
        || async { a.hits() + b.hits() == 1 },
    )
    .await;
    let (busy, idle) = if a.hits() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let bodies = bodies(&gateway, "/fast", 10).await;
    assert_eq!(
        count(&bodies, idle),
        10,
        "every request while {busy} is busy goes to {idle}: {bodies:?}"
    );

    let report = service_health(&gateway).await;
    let in_flight: u64 = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["in_flight"].as_u64().unwrap())
        .sum();
    assert_eq!(in_flight, 1, "{report}");

    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.text().await.unwrap(), busy);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_key_on_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let gateway = Gateway::start(&config(&format!(
        "    targets: [{}, {}, {}]\n    load_balancing: {{ algorithm: consistent-hash, hash_on: header, hash_header: x-user }}",
        a.url(),
        b.url(),
        c.url()
    )));
    let client = client();
    let mut homes = std::collections::HashMap::new();
    for user in 0..30 {
        for _ in 0..4 {
            let response = client
                .get(gateway.url("/x"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.text().await.unwrap();
            let home = homes.entry(user).or_insert_with(|| body.clone());
            assert_eq!(*home, body, "user-{user} moved between targets");
        }
    }
    for name in ["a", "b", "c"] {
        assert!(
            homes.values().any(|home| home == name),
            "no key landed on {name}: {homes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_target_is_taken_out_and_returns() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gateway = Gateway::start(&config(&format!(
        r#"    targets: [{}, {}]
    health_checks:
      active: {{ path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
      passive: {{ unhealthy_threshold: 2 }}"#,
        a.url(),
        b.url()
    )));
    let client = client();
    let mut sent = 0;
    let mut send = async |method: Method| {
        sent += 1;
        let response = client
            .request(method.clone(), gateway.url("/x"))
            .body(if method == Method::POST {
                "payload"
            } else {
                ""
            })
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "request {sent} ({method}) failed while a target was down"
        );
    };
    // Background load from four concurrent clients runs through the whole test, so b stops and
    // restarts with requests in flight.
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let url = gateway.url("/load");
        let stop_load = stop_load.clone();
        load.push(tokio::spawn(async move {
            let client = common::client();
            let (mut served, mut failed) = (0u64, Vec::new());
            while !stop_load.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => served += 1,
                    Ok(response) => failed.push(response.status().to_string()),
                    Err(error) => failed.push(error.to_string()),
                }
            }
            (served, failed)
        }));
    }

    for _ in 0..10 {
        send(Method::GET).await;
    }
    assert!(b.hits() > 0);

    b.stop().await;
    let stopped_at = b.hits();
    for i in 0..40 {
        // POST bodies are not sent to a refused connection, so they can be retried too.
        send(if i % 3 == 1 {
            Method::POST
        } else {
            Method::GET
        })
        .await;
    }
    assert_eq!(b.hits(), stopped_at);
    let report = target_health(&gateway, &b.url()).await;
    assert_eq!(report["health"], "unhealthy", "{report}");
    assert_eq!(
        metric(
            &gateway,
            &format!(
                "portcullis_upstream_target_healthy{{service=\"api\",target=\"{}\"}}",
                b.url()
            )
        )
        .await,
        0.0
    );
    assert!(
        metric(
            &gateway,
            "portcullis_upstream_retries_total{service=\"api\"}"
        )
        .await
            >= 1.0
    );

    b.restart().await;
    wait_until(
        Duration::from_secs(10),
        "the active check to put b back",
        || async { target_health(&gateway, &b.url()).await["health"] == "healthy" },
    )
    .await;
    for _ in 0..10 {
        send(Method::GET).await;
    }
    assert!(b.hits() > stopped_at, "b got no traffic after it came back");

    stop_load.store(true, Ordering::Relaxed);
    let mut served = 0;
    for task in load {
        let (task_served, failed) = task.await.unwrap();
        assert!(failed.is_empty(), "background requests failed: {failed:?}");
        served += task_served;
    }
    assert!(served > 0, "the background load sent nothing");
    eprintln!(
        "stopped target: {served} background requests served, b got {} requests",
        b.hits()
    );
    let log = gateway.stderr();
    assert!(
        log.contains("upstream target taken out of service"),
        "{log}"
    );
    assert!(log.contains("upstream target back in service"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_budget_bounds_retries() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set_status(503);
    b.set_status(503);
    let gateway = Gateway::start(&config(&format!(
        r#"    targets: [{}, {}]
    retries:
      attempts: 2
      on_statuses: [503]
      budget: {{ ratio: 0.2, min_per_second: 1, window: 10s }}"#,
        a.url(),
        b.url()
    )));

    let requests = 60;
    let client = client();
    for _ in 0..requests {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "the last upstream answer passes through"
        );
    }

    let attempts = a.hits() + b.hits();
    let retries = attempts - requests;
    // 20% of 60 requests plus 1 per second over the 10 s window; without a budget each
    // request would make two retries, 120 in all.
    let budget = (0.2 * requests as f64) as u64 + 10;
    assert!(
        retries <= budget,
        "{retries} retries exceed the budget of {budget}"
    );
    assert!(
        retries >= budget - 1,
        "only {retries} retries; the budget allows {budget}"
    );

    let counted = metric(
        &gateway,
        "portcullis_upstream_retries_total{service=\"api\"}",
    )
    .await;
    assert_eq!(counted, retries as f64);
    let denied = metric(
        &gateway,
        "portcullis_upstream_retries_denied_total{service=\"api\"}",
    )
    .await;
    assert!(denied > 0.0, "no retry was denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_circuit_skips_target_until_cooldown() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    b.set_status(500);
    let gateway = Gateway::start(&config(&format!(
        r#"    targets: [{}, {}]
    retries: {{ attempts: 0 }}
    circuit_breaker: {{ consecutive_failures: 3, cooldown: 1s, half_open_requests: 1 }}"#,
        a.url(),
        b.url()
    )));
    let client = client();
    // Round robin sends every second request to b, which fails it.
    let mut statuses = Vec::new();
    while b.hits() < 3 {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        statuses.push(response.status().as_u16());
        assert!(statuses.len() <= 6, "b got {} of 6 requests", b.hits());
    }
    let opened = Instant::now();
    assert_eq!(target_health(&gateway, &b.url()).await["circuit"], "open");

    b.set_status(200);
    let mut skipped = 0;
    while opened.elapsed() < Duration::from_millis(800) {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "a");
        skipped += 1;
    }
    assert!(skipped > 0);
    assert_eq!(b.hits(), 3, "b got traffic while its circuit was open");

    wait_until(Duration::from_secs(5), "a trial request to b", || async {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        response.text().await.unwrap() == "b"
    })
    .await;
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "b was tried before the cooldown ended"
    );
    assert_eq!(target_health(&gateway, &b.url()).await["circuit"], "closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_targets_down_is_503_with_reason() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.stop().await;
    b.stop().await;
    let gateway = Gateway::start(&config(&format!(
        r#"    targets: [{}, {}]
    health_checks:
      passive: {{ unhealthy_threshold: 1, ejection_time: 1h }}"#,
        a.url(),
        b.url()
    )));
    let client = client();
    // The first request tries both targets, fails on each, and takes both out.
    let response = client.get(gateway.url("/x")).send().await.unwrap();
    let body = error_body(response, 502).await;
    assert_eq!(body["error"]["code"], "upstream_unavailable");

    let response = client
        .get(gateway.url("/x"))
        .header("x-request-id", "all-down-1")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "upstream_unhealthy");
    let line = gateway.access_log_line("all-down-1");
    assert_eq!(line["error"], "upstream_unhealthy");
    assert_eq!(line["status"], 503);
    assert_eq!(
        metric(
            &gateway,
            "portcullis_upstream_unavailable_total{service=\"api\",reason=\"unhealthy\"}"
        )
        .await,
        1.0
    );
    assert_eq!(service_health(&gateway).await["healthy_targets"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_circuits_open_is_503_circuit_open() {
    let a = TestUpstream::start("a").await;
    a.set_status(502);
    let gateway = Gateway::start(&config(&format!(
        r#"    targets: [{}]
    retries: {{ attempts: 0 }}
    circuit_breaker: {{ consecutive_failures: 2, cooldown: 1h }}"#,
        a.url()
    )));
    let client = client();
    for _ in 0..2 {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 502);
    }

    let response = client
        .get(gateway.url("/x"))
        .header("x-request-id", "circuit-open-1")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "circuit_open");
    assert_eq!(
        gateway.access_log_line("circuit-open-1")["error"],
        "circuit_open"
    );
    assert_eq!(a.hits(), 2);

    assert_eq!(
        metric(
            &gateway,
            &format!(
                "portcullis_upstream_circuit_state{{service=\"api\",target=\"{}\"}}",
                a.url()
            )
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_survives_config_reload() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    b.stop().await;
    let service = format!(
        r#"    targets: [{}, {}]
    health_checks:
      passive: {{ unhealthy_threshold: 1, ejection_time: 1h }}"#,
        a.url(),
        b.url()
    );
    let gateway = Gateway::start(&config(&service));
    bodies(&gateway, "/x", 4).await;
    assert_eq!(
        target_health(&gateway, &b.url()).await["health"],
        "unhealthy"
    );

    // A reload that changes the route but keeps both targets keeps their state.
    let changed = config(&service).replace("paths: [/]", "paths: [/x]");
    std::fs::write(&gateway.config_path, changed).unwrap();
    let response = admin(&client(), Method::POST, &gateway, "/config/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        target_health(&gateway, &b.url()).await["health"],
        "unhealthy"
    );
    assert_eq!(target_health(&gateway, &a.url()).await["health"], "healthy");
    let bodies = bodies(&gateway, "/x", 4).await;
    assert_eq!(count(&bodies, "a"), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_health_of_unknown_service_is_404() {
    let a = TestUpstream::start("a").await;
    let gateway = Gateway::start(&config(&format!("    targets: [{}]", a.url())));
    let response = admin(&client(), Method::GET, &gateway, "/services/nope/health")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 404).await;
    assert_eq!(body["error"]["code"], "not_found");
    let response = client()
        .get(gateway.admin_url("/services/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the endpoint needs the admin token");
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_target_leaves_health_and_metrics() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let two = config(&format!("    targets: [{}, {}]", a.url(), b.url()));
    let gateway = Gateway::start(&two);
    let series = |target: &TestUpstream| {
        format!(
            "portcullis_upstream_target_healthy{{service=\"api\",target=\"{}\"}}",
            target.url()
        )
    };
    let text = || metrics_text(&gateway);
    assert!(text().await.contains(&series(&b)));

    let one = config(&format!("    targets: [{}]", a.url()));
    std::fs::write(&gateway.config_path, one).unwrap();
    let response = admin(&client(), Method::POST, &gateway, "/config/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let health = service_health(&gateway).await;
    assert_eq!(health["targets"].as_array().unwrap().len(), 1, "{health}");
    wait_until(
        Duration::from_secs(5),
        "b's metric series to go",
        || async { !text().await.contains(&series(&b)) },
    )
    .await;
    assert!(text().await.contains(&series(&a)));
    assert_eq!(count(&bodies(&gateway, "/x", 4).await, "a"), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_post_is_retried_with_body() {
    let echo = common::upstream().await;
    let closed = common::closed_port();
    let gateway = Gateway::start(&config(&format!(
        "    targets: [http://{closed}, http://{echo}]"
    )));
    // Round robin starts with the first target, whose port refuses the connection.
    let response = client()
        .post(gateway.url("/x"))
        .header("x-request-id", "post-retry-1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], "payload", "the retry lost the body");

    let line = gateway.access_log_line("post-retry-1");
    assert_eq!(line["retries"], 1);
    assert_eq!(line["upstream_addr"], echo.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn response_timeout_is_not_retried() {
    let slow = TestUpstream::start("slow").await;
    let other = TestUpstream::start("other").await;
    let gateway = Gateway::start(&config(&format!(
        "    targets: [{}, {}]\n    timeouts: {{ response: 300ms }}",
        slow.url(),
        other.url()
    )));
    let response = client()
        .get(gateway.url("/slow/2000"))
        .header("x-request-id", "timeout-1")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 504).await;
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(slow.hits(), 1);
    assert_eq!(other.hits(), 0, "the timed-out request was sent again");
    let line = gateway.access_log_line("timeout-1");
    assert!(line.get("retries").is_none(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_round_trips_upstream_settings() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gateway = Gateway::start(&config(&format!("    targets: [{}]", a.url())));
    let client = client();
    let service = serde_json::json!({
        "name": "api",
        "targets": [a.url(), { "url": b.url(), "weight": 3 }],
        "load_balancing": { "algorithm": "least-connections", "hash_on": "ip" },
        "health_checks": { "passive": { "unhealthy_threshold": 2, "failure_statuses": [502], "ejection_time": "10s" } },
        "retries": { "attempts": 1, "on_statuses": [503], "budget": { "ratio": 0.1, "min_per_second": 5, "window": "5s" } },
        "circuit_breaker": { "consecutive_failures": 4, "min_requests": 20, "window": "10s", "cooldown": "30s", "half_open_requests": 1, "failure_statuses": [500, 502, 503, 504] }
    });
    let response = admin(&client, Method::PUT, &gateway, "/services/api")
        .json(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stored: Value = admin(&client, Method::GET, &gateway, "/services/api")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in [
        "targets",
        "load_balancing",
        "health_checks",
        "retries",
        "circuit_breaker",
    ] {
        assert_eq!(stored[key], service[key], "{key} changed: {stored}");
    }
    let health = service_health(&gateway).await;
    assert_eq!(health["algorithm"], "least-connections");
    assert_eq!(health["targets"][1]["weight"], 3);
    assert_eq!(health["targets"][1]["circuit"], "closed");

    let response = admin(&client, Method::PATCH, &gateway, "/services/api")
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"targets": [{"url": "http://127.0.0.1:1", "weight": 5000}]}"#)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(
        body["error"]["details"][0]["key"], "targets[0].weight",
        "{body}"
    );
}
