//! Rate limits, quotas and concurrency limits through real gateway processes: exact admission
//! under concurrent load on one node and on three nodes sharing Redis, steady overload, headers
//! of several limits, throttling, and Redis failures.
//!
//! Shared counters use the Redis server at `PORTCULLIS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), each test under a key prefix of its own. Tests that stop Redis
//! start a private `redis-server` on a free port instead.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{ADMIN_TOKEN, ALICE_KEY, Gateway, client, error_body, upstream};

/// Held for writing by the overload test, which measures timing, and for reading by every other
/// test of this file, so that no other gateway of this file competes for the CPU meanwhile.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Returns the URL of the Redis server that tests share.
fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Returns a key prefix that no other test run uses.
fn unique_prefix() -> String {
    format!("portcullis:test:{:016x}:", rand::random::<u64>())
}

/// Writes a gateway config with one `echo` service, the routes and policies given as YAML, and
/// optionally a `redis` key.
fn config(upstream: SocketAddr, redis: Option<(&str, &str)>, entities: &str) -> String {
    let mut config = format!(
        r#"
listeners: [{{ address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, token: {ADMIN_TOKEN} }}
store: {{ sqlite: portcullis.db }}
access_log: off
"#
    );
    if let Some((url, prefix)) = redis {
        config.push_str(&format!(
            "redis: {{ url: \"{url}\", key_prefix: \"{prefix}\", timeout: 2s }}\n"
        ));
    }
    config.push_str(&entities.replace("UPSTREAM", &upstream.to_string()));
    config
}

/// Builds a client for one protocol: HTTP/1.1, or HTTP/2 with prior knowledge on plain TCP.
fn protocol_client(http2: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256);
    let builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}

/// Sends `count` requests at once, spread round robin over `urls`, and returns the statuses.
async fn send_concurrently(client: &reqwest::Client, urls: &[String], count: usize) -> Vec<u16> {
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = Vec::new();
    for i in 0..count {
        let request = client.get(&urls[i % urls.len()]);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = request.send().await.expect("request failed");
            response.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Returns entities with one service and one route, `/echo` with its prefix stripped, that has
/// the `rate-limit` given as a YAML flow mapping.
fn limited_route(limit: &str) -> String {
    format!(
        r#"
services:
  - name: echo
    targets: ["http://UPSTREAM"]
routes:
  - name: echo
    service: echo
    paths: [/echo]
    strip_prefix: true
    policies:
      - rate-limit: {limit}
"#
    )
}

/// A limit of 10 requests per minute for all callers of the route together.
const TEN_PER_MINUTE: &str = "{ limit: 10, window: 1m, by: route, backend: BACKEND }";

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_burst_admits_exactly_limit() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    for http2 in [false, true] {
        let entities = limited_route(&TEN_PER_MINUTE.replace("BACKEND", "local"));
        let gateway = Gateway::start(&config(upstream, None, &entities));
        let urls = vec![gateway.url("/echo/x")];
        let statuses = send_concurrently(&protocol_client(http2), &urls, 200).await;
        assert_eq!(count(&statuses, 200), 10, "admitted, http2 = {http2}");
        assert_eq!(count(&statuses, 429), 190, "rejected, http2 = {http2}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_redis_limit() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let redis = redis_url();
    for http2 in [false, true] {
        let prefix = unique_prefix();
        let entities = limited_route(&TEN_PER_MINUTE.replace("BACKEND", "redis"));
        let nodes: Vec<Gateway> = (0..3)
            .map(|_| Gateway::start(&config(upstream, Some((&redis, &prefix)), &entities)))
            .collect();
        let urls: Vec<String> = nodes.iter().map(|node| node.url("/echo/x")).collect();
        let statuses = send_concurrently(&protocol_client(http2), &urls, 200).await;
        assert_eq!(count(&statuses, 200), 10, "admitted, http2 = {http2}");
        assert_eq!(count(&statuses, 429), 190, "rejected, http2 = {http2}");
    }
}

/// Sends requests from `workers` loops over `urls` until `duration` passes. Returns the
/// admitted count, the time from the first request sent to the last one sent (the span in which
/// the gateway saw requests), and the number of requests sent.
async fn overload(urls: &[String], workers: usize, duration: Duration) -> (u64, Duration, u64) {
    let client = protocol_client(false);
    let admitted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let last_sent_nanos = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = client.clone();
        let url = urls[worker % urls.len()].clone();
        let (admitted, sent, last_sent_nanos) =
            (admitted.clone(), sent.clone(), last_sent_nanos.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                let at = u64::try_from(started.elapsed().as_nanos()).unwrap();
                last_sent_nanos.fetch_max(at, Ordering::Relaxed);
                let status = client.get(&url).send().await.unwrap().status();
                match status.as_u16() {
                    200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {}
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        Duration::from_nanos(last_sent_nanos.load(Ordering::Relaxed)),
        sent.load(Ordering::Relaxed),
    )
}

/// A limit of 50 requests per second with a burst of 50 for all callers of the route. The
/// burst of one second lets the limit bank what a stall of the loaded test machine leaves
/// unused, so the overload drains it again and the count stays exact. The rate is low enough
/// that a test client on two busy cores still sends twice what the limit admits.
const FIFTY_PER_SECOND: &str = "{ limit: 50, window: 1s, burst: 50, by: route, backend: BACKEND }";

/// Checks that `admitted` is within 1 percent of what GCRA admits over `elapsed`: the burst of
/// 50 plus one request per emission interval of 20 ms.
fn assert_within_one_percent(admitted: u64, elapsed: Duration, sent: u64, what: &str) {
    let expected = 50.0 + 50.0 * elapsed.as_secs_f64();
    assert!(
        sent as f64 > 2.0 * expected,
        "{what}: {sent} requests in {elapsed:?} do not overload a limit that admits {expected:.0}"
    );
    let error = (admitted as f64 - expected).abs() / expected;
    eprintln!("{what}: admitted {admitted} of {sent}, expected {expected:.1} over {elapsed:?}");
    assert!(
        error <= 0.01,
        "{what}: admitted {admitted}, expected {expected:.1} over {elapsed:?} (off by {:.2}%)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_overload_admits_the_rate() {
    let _exclusive = EXCLUSIVE.write().await;
    let upstream = upstream().await;
    let entities = limited_route(&FIFTY_PER_SECOND.replace("BACKEND", "local"));
    let gateway = Gateway::start(&config(upstream, None, &entities));
    let urls = vec![gateway.url("/echo/x")];
    let (admitted, elapsed, sent) = overload(&urls, 8, Duration::from_secs(3)).await;
    assert_within_one_percent(admitted, elapsed, sent, "local");

    let redis = redis_url();
    let prefix = unique_prefix();
    let entities = limited_route(&FIFTY_PER_SECOND.replace("BACKEND", "redis"));
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&config(upstream, Some((&redis, &prefix)), &entities)))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|node| node.url("/echo/x")).collect();
    let (admitted, elapsed, sent) = overload(&urls, 9, Duration::from_secs(3)).await;
    assert_within_one_percent(admitted, elapsed, sent, "three nodes on Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_share_stays_under_the_limit() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let redis = redis_url();
    let prefix = unique_prefix();
    let entities = limited_route(
        "{ algorithm: sliding-window, limit: 100, window: 1m, by: route, backend: redis, batch: 10 }",
    );
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&config(upstream, Some((&redis, &prefix)), &entities)))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|node| node.url("/echo/x")).collect();
    let statuses = send_concurrently(&protocol_client(false), &urls, 200).await;
    let admitted = count(&statuses, 200);
    // Three nodes with a batch of 10 leave at most 3 * 9 granted requests unused.
    assert!(admitted <= 100, "admitted {admitted}");
    assert!(admitted >= 100 - 27, "admitted {admitted}");
    assert_eq!(count(&statuses, 429), 200 - admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_report_every_limit() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let entities = format!(
        r#"
services:
  - name: echo
    targets: ["http://UPSTREAM"]
    policies:
      - key-auth: {{}}
      - rate-limit: {{ name: burst, limit: 3, window: 1m, by: consumer, legacy_headers: true }}
      - rate-limit: {{ name: daily, algorithm: quota, period: day, limit: 1000, by: consumer }}
      - rate-limit: {{ name: minute, algorithm: sliding-window, limit: 50, window: 1m, by: consumer }}
      - rate-limit: {{ name: parallel, algorithm: concurrency, limit: 20, by: consumer }}
routes:
  - {{ name: echo, service: echo, paths: [/echo] }}
consumers:
  - {{ name: alice, api_keys: [{ALICE_KEY}] }}
"#
    );
    let gateway = Gateway::start(&config(upstream, None, &entities));
    let client = client();
    let send = || {
        client
            .get(gateway.url("/echo/x"))
            .header("apikey", ALICE_KEY)
            .send()
    };

    let response = send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    let policies: Vec<&str> = headers
        .get_all("ratelimit-policy")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(policies.len(), 4, "{policies:?}");
    assert_eq!(policies[0], "\"burst\";q=3;w=60");
    assert!(
        policies[1].starts_with("\"daily\";q=1000;w=86400"),
        "{policies:?}"
    );
    assert_eq!(policies[2], "\"minute\";q=50;w=60");
    assert_eq!(policies[3], "\"parallel\";q=20");
    let states: Vec<&str> = headers
        .get_all("ratelimit")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(states.len(), 4, "{states:?}");
    assert!(states[0].starts_with("\"burst\";r=2;t="), "{states:?}");
    assert!(states[1].starts_with("\"daily\";r=999;t="), "{states:?}");
    assert!(states[2].starts_with("\"minute\";r=49;t="), "{states:?}");
    assert_eq!(states[3], "\"parallel\";r=19");
    // The single-valued fields describe the most restrictive limit: two left of three.
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "2");
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "2");

    send().await.unwrap();
    send().await.unwrap();
    let response = send().await.unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "retry-after {retry_after}");
    let policies = headers.get_all("ratelimit-policy").iter().count();
    assert_eq!(
        policies, 1,
        "the first limit rejected, so later limits did not run"
    );
    let body = error_body(response, 429).await;
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_requests_wait_within_bound() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    // One request every 100 ms with no burst beyond one; a request may wait up to 500 ms.
    let entities =
        limited_route("{ limit: 10, window: 1s, burst: 1, by: route, delay: { max: 500ms } }");
    let gateway = Gateway::start(&config(upstream, None, &entities));
    let client = protocol_client(false);
    let url = gateway.url("/echo/x");

    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let request = client.get(&url);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let status = request.send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }

    results.sort_by_key(|(_, elapsed)| *elapsed);
    let admitted: Vec<Duration> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, elapsed)| *elapsed)
        .collect();
    let rejected = results.iter().filter(|(status, _)| *status == 429).count();
    // One at once and one per 100 ms for 500 ms: six, or five when scheduling on a busy
    // machine eats into the bound.
    assert!(
        (5..=6).contains(&admitted.len()),
        "admitted {} of 10: {results:?}",
        admitted.len()
    );
    assert_eq!(admitted.len() + rejected, 10, "{results:?}");
    let slowest = *admitted.last().unwrap();
    assert!(
        slowest >= Duration::from_millis(350),
        "the last admitted request waited only {slowest:?}, so nothing was delayed"
    );
    // 500 ms of delay plus the time to proxy one request on a loaded test machine.
    assert!(
        slowest <= Duration::from_millis(800),
        "a throttled request waited {slowest:?}, past the 500 ms bound"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_slot_returns_after_response() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let entities = limited_route("{ algorithm: concurrency, limit: 2, by: route }");
    let gateway = Gateway::start(&config(upstream, None, &entities));
    let client = protocol_client(false);
    let probe = gateway.url("/echo/x");

    // Two streams of ten seconds hold both slots while their bodies stream.
    let long = gateway.url("/echo/stream/100/100");
    let first = client.get(&long).send().await.unwrap();
    let second = client.get(&long).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let response = client.get(&probe).send().await.unwrap();
    assert_eq!(response.status(), 429, "both slots are taken");
    assert_eq!(response.headers()["ratelimit-policy"], "\"default\";q=2");

    // A client that goes away mid-body returns its slot long before the stream would end.
    drop(first);
    assert_eq!(poll_status(&client, &probe, 200).await, 200);

    // A body that ends returns its slot. A short stream takes the free slot, and reading it to
    // the end frees that slot again, while the second long stream keeps the other.
    let short = client
        .get(gateway.url("/echo/stream/3/50"))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 200);
    let response = client.get(&probe).send().await.unwrap();
    assert_eq!(
        response.status(),
        429,
        "the short stream holds the second slot"
    );
    short.bytes().await.unwrap();
    assert_eq!(poll_status(&client, &probe, 200).await, 200);
    drop(second);
}

/// Polls `url` until it returns `expected` or 5 seconds pass; returns the last status.
async fn poll_status(client: &reqwest::Client, url: &str, expected: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.get(url).send().await.unwrap().status().as_u16();
        if status == expected || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn role_limits_and_route_override() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let entities = r#"
policies:
  - rate-limit: { name: plan-free, roles: [free], limit: 1, window: 1m, by: consumer }
  - rate-limit: { name: plan-gold, roles: [gold], limit: 3, window: 1m, by: consumer }
services:
  - name: echo
    targets: ["http://UPSTREAM"]
    policies:
      - key-auth: {}
routes:
  - { name: echo, service: echo, paths: [/echo] }
  - name: bulk
    service: echo
    paths: [/bulk]
    policies:
      - rate-limit: { name: plan-gold, roles: [gold], limit: 5, window: 1m, by: consumer }
  - name: shared
    service: echo
    paths: [/shared]
    policies:
      - rate-limit: { name: plan-gold, roles: [gold], limit: 2, window: 1m, by: role }
consumers:
  - { name: alice, roles: [gold], api_keys: [alice-demo-key-0001] }
  - { name: carol, roles: [gold], api_keys: [carol-demo-key-0001] }
  - { name: bob, roles: [free], api_keys: [bob-demo-key-00001] }
"#;
    let gateway = Gateway::start(&config(upstream, None, entities));
    let client = client();
    let statuses = |path: &'static str, key: &'static str, n: usize| {
        let client = client.clone();
        let url = gateway.url(path);
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                let response = client.get(&url).header("apikey", key).send().await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }
    };
    assert_eq!(statuses("/echo", "bob-demo-key-00001", 2).await, [200, 429]);
    assert_eq!(
        statuses("/echo", "alice-demo-key-0001", 4).await,
        [200, 200, 200, 429]
    );
    // The route's limit of the same name replaces the gold plan's global one.
    assert_eq!(
        statuses("/bulk", "alice-demo-key-0001", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // `by: role` counts all gold consumers together.
    assert_eq!(statuses("/shared", "alice-demo-key-0001", 1).await, [200]);
    assert_eq!(
        statuses("/shared", "carol-demo-key-0001", 2).await,
        [200, 429]
    );
    // The route replaces only the gold plan's limit, so the free plan's global counter, which
    // bob used up on /echo, still applies on /bulk.
    assert_eq!(statuses("/bulk", "bob-demo-key-00001", 1).await, [429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_open_or_closed() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let mut redis = RedisServer::start();
    let entities = r#"
services:
  - name: echo
    targets: ["http://UPSTREAM"]
routes:
  - name: open
    service: echo
    paths: [/open]
    policies:
      - rate-limit: { name: open, limit: 100000, window: 1s, by: route, backend: redis, on_backend_error: allow }
  - name: closed
    service: echo
    paths: [/closed]
    policies:
      - rate-limit: { name: closed, limit: 100000, window: 1s, by: route, backend: redis, on_backend_error: deny }
  - name: tight
    service: echo
    paths: [/tight]
    policies:
      - rate-limit: { name: tight, limit: 2, window: 1m, by: route, backend: redis, on_backend_error: deny }
"#;
    let url = redis.url();
    let prefix = unique_prefix();
    let gateway = Gateway::start(&config(upstream, Some((&url, &prefix)), entities));
    let client = client();
    let status = |path: &'static str| {
        let request = client.get(gateway.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/open").await, 200);
    assert_eq!(status("/closed").await, 200);

    // Steady traffic on the fail-open route for the whole outage: it must never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let background = {
        let client = client.clone();
        let url = gateway.url("/open");
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let status = client.get(&url).send().await.unwrap().status();
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    redis.kill();
    // Keep Redis down across several retry pauses of the counters (500 ms each).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        status("/open").await,
        200,
        "fail-open admits during the outage"
    );
    let response = client.get(gateway.url("/closed")).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = error_body(response, 503).await;
    assert_eq!(body["error"]["code"], "rate_limit_unavailable");

    let metrics = client
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric_line = |name: &str, action: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("portcullis_rate_limit_backend_errors_total{")
                    && line.contains(&format!("policy=\"{name}\""))
                    && line.contains(&format!("action=\"{action}\""))
            })
            .map(str::to_string)
    };
    assert!(
        metric_line("open", "allow").is_some(),
        "no backend-error count for the open limit:\n{metrics}"
    );
    assert!(
        metric_line("closed", "deny").is_some(),
        "no backend-error count for the closed limit:\n{metrics}"
    );
    let log = gateway.stderr();
    let address = format!("127.0.0.1:{}", redis.port);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Redis rate-limit counter operations failed"))
        .collect();
    assert!(!warnings.is_empty(), "no warning in the log:\n{log}");
    assert!(
        warnings.iter().all(|line| line.contains(&address)),
        "the warning does not name {address}: {warnings:?}"
    );
    // Warnings are rate-limited, so a stream of failed checks logs few lines.
    assert!(
        warnings.len() <= 2,
        "{} warnings: {warnings:?}",
        warnings.len()
    );

    redis.resume();
    let recovered = poll_status(&client, &gateway.url("/closed"), 200).await;
    assert_eq!(
        recovered, 200,
        "the fail-closed limit recovers without a restart"
    );
    // The restarted server lost its keys, and the limit counts again from there.
    assert_eq!(status("/tight").await, 200);
    assert_eq!(status("/tight").await, 200);
    assert_eq!(status("/tight").await, 429);

    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 10, "too little background traffic: {sent} requests");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the fail-open route failed requests during the outage"
    );
    assert!(
        gateway
            .stderr()
            .contains("Redis rate-limit counters recovered"),
        "no recovery line in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_with_redis_down_then_connects() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let mut redis = RedisServer::start();
    redis.kill();
    let entities = limited_route(
        "{ limit: 1, window: 1m, by: route, backend: redis, on_backend_error: deny }",
    );
    let url = redis.url();
    let prefix = unique_prefix();
    let gateway = Gateway::start(&config(upstream, Some((&url, &prefix)), &entities));
    let client = client();
    let response = client.get(gateway.url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 503);

    redis.resume();
    assert_eq!(poll_status(&client, &gateway.url("/echo"), 200).await, 200);
    let response = client.get(gateway.url("/echo")).send().await.unwrap();
    assert_eq!(
        response.status(),
        429,
        "the limit of one applies once connected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_headers_follow_binding_limit() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    // Only the loose limit sets `legacy_headers`, but the tight one binds.
    let entities = r#"
services:
  - name: echo
    targets: ["http://UPSTREAM"]
routes:
  - name: echo
    service: echo
    paths: [/echo]
    policies:
      - rate-limit: { name: tight, limit: 2, window: 1m, by: route }
      - rate-limit: { name: loose, limit: 100, window: 1m, by: route, legacy_headers: true }
"#;
    let gateway = Gateway::start(&config(upstream, None, entities));
    let response = client().get(gateway.url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["ratelimit-remaining"], "1");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "1");
    assert_eq!(headers["x-ratelimit-reset"], headers["ratelimit-reset"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_concurrency_slots_across_nodes() {
    let _shared = EXCLUSIVE.read().await;
    let upstream = upstream().await;
    let redis = redis_url();
    let prefix = unique_prefix();
    let entities = limited_route("{ algorithm: concurrency, limit: 2, by: route, backend: redis }");
    let a = Gateway::start(&config(upstream, Some((&redis, &prefix)), &entities));
    let b = Gateway::start(&config(upstream, Some((&redis, &prefix)), &entities));
    let client = protocol_client(false);

    // One ten-second stream on each node takes both slots of the shared limit.
    let on_a = client
        .get(a.url("/echo/stream/100/100"))
        .send()
        .await
        .unwrap();
    let on_b = client
        .get(b.url("/echo/stream/100/100"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_a.status(), 200);
    assert_eq!(on_b.status(), 200);
    for node in [&a, &b] {
        let response = client.get(node.url("/echo/x")).send().await.unwrap();
        assert_eq!(response.status(), 429, "both shared slots are taken");
    }

    // Node A returns its slot in Redis when its client goes away, and node B can use it.
    drop(on_a);
    assert_eq!(poll_status(&client, &b.url("/echo/x"), 200).await, 200);
    drop(on_b);
}
