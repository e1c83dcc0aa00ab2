//! The Redis counters against a real server: the Lua scripts admit what the Rust algorithms
//! admit, keys expire on their own, and a flushed script cache is reloaded.
//!
//! Most tests use the server at `PORTCULLIS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`)
//! under a key prefix of their own. The script-cache test flushes the cache, so it starts a
//! private `redis-server` on a free port.

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::rate_limit::{
    Algorithm, Concurrency, Counters, Gcra, Period, Quota, RedisCounters, RedisSettings,
    SlidingWindow,
};

fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix() -> String {
    format!("portcullis:test:{:016x}:", rand::random::<u64>())
}

async fn counters_at(url: &str, prefix: &str) -> Arc<RedisCounters> {
    RedisCounters::connect(RedisSettings {
        url: url.to_string(),
        key_prefix: prefix.to_string(),
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("a valid Redis URL")
}

/// Returns the TTL of a key in milliseconds, as Redis reports it (-2 missing, -1 no expiry).
async fn pttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// Runs `count` acquisitions of `key` at once and returns how many were admitted.
async fn admit_concurrently(
    counters: &Arc<RedisCounters>,
    algorithm: Algorithm,
    key: &str,
    count: usize,
) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let counters = counters.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            counters.acquire(&key, &algorithm, 0).await.unwrap().allowed
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    admitted
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_admits_exactly_its_limit() {
    let url = redis_url();
    let prefix = unique_prefix();
    let counters = counters_at(&url, &prefix).await;
    let cases = [
        (
            "gcra",
            Algorithm::Gcra(Gcra::new(10, Duration::from_secs(60), 10)),
        ),
        (
            "window",
            Algorithm::SlidingWindow(SlidingWindow::new(10, Duration::from_secs(60))),
        ),
        ("quota", Algorithm::Quota(Quota::new(10, Period::Day))),
    ];
    for (key, algorithm) in cases {
        let admitted = admit_concurrently(&counters, algorithm, key, 200).await;
        assert_eq!(admitted, 10, "{key}");
        let ttl = pttl(&url, &format!("{prefix}{key}")).await;
        assert!(ttl > 0, "{key} has no expiry: {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejection_reports_retry_and_remaining() {
    let url = redis_url();
    let counters = counters_at(&url, &unique_prefix()).await;
    let gcra = Algorithm::Gcra(Gcra::new(2, Duration::from_secs(10), 2));
    let first = counters.acquire("k", &gcra, 0).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.remaining, 1);
    let second = counters.acquire("k", &gcra, 0).await.unwrap();
    assert_eq!(second.remaining, 0);
    let third = counters.acquire("k", &gcra, 0).await.unwrap();
    assert!(!third.allowed);
    let retry = third.retry_after.expect("a retry time");
    // One emission interval of 5 s, less the few milliseconds since the first request.
    assert!(
        retry > Duration::from_millis(4_500) && retry <= Duration::from_secs(5),
        "{retry:?}"
    );

    let quota = Algorithm::Quota(Quota::new(1, Period::Month));
    let granted = counters.acquire("q", &quota, 0).await.unwrap();
    assert!(granted.allowed);
    let rejected = counters.acquire("q", &quota, 0).await.unwrap();
    assert!(!rejected.allowed);
    assert_eq!(rejected.retry_after, Some(rejected.reset_after));
    assert!(rejected.reset_after <= Duration::from_secs(31 * 86_400));
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_grant_what_fits() {
    let url = redis_url();
    let counters = counters_at(&url, &unique_prefix()).await;
    for algorithm in [
        Algorithm::Gcra(Gcra::new(25, Duration::from_secs(60), 25)),
        Algorithm::SlidingWindow(SlidingWindow::new(25, Duration::from_secs(60))),
        Algorithm::Quota(Quota::new(25, Period::Day)),
    ] {
        let key = format!("{algorithm:?}");
        let mut grants = Vec::new();
        for _ in 0..4 {
            let grant = counters
                .acquire_batch(&key, &algorithm, 10, 0)
                .await
                .unwrap();
            grants.push(grant.granted);
            if grant.granted > 0 {
                assert!(grant.valid_for > Duration::ZERO, "{key}");
            }
        }
        assert_eq!(grants, [10, 10, 5, 0], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_slots_are_shared_and_released() {
    let url = redis_url();
    let prefix = unique_prefix();
    let node_a = counters_at(&url, &prefix).await;
    let node_b = counters_at(&url, &prefix).await;
    let limit = Concurrency {
        limit: 2,
        lease_ttl: Duration::from_secs(60),
    };
    let (first, lease_a) = node_a.acquire_slot("c", &limit, 0).await.unwrap();
    let (second, _lease_b) = node_b.acquire_slot("c", &limit, 0).await.unwrap();
    let (third, none) = node_a.acquire_slot("c", &limit, 0).await.unwrap();
    assert!(first.allowed);
    assert!(second.allowed);
    assert!(!third.allowed);
    assert_eq!(none, None);

    node_a.release_slot("c", lease_a.unwrap());
    // The release runs in a task of its own.
    assert!(
        slot_frees_within(&node_b, &limit, Duration::from_secs(5)).await,
        "the slot never came back"
    );
}

/// Polls for a slot of key `c` until one is admitted or `timeout` passes.
async fn slot_frees_within(
    counters: &RedisCounters,
    limit: &Concurrency,
    timeout: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let (decision, lease) = counters.acquire_slot("c", limit, 0).await.unwrap();
        if decision.allowed {
            assert!(lease.is_some(), "an admitted slot has a lease id");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_concurrency_lease_frees_slot() {
    let url = redis_url();
    let counters = counters_at(&url, &unique_prefix()).await;
    let limit = Concurrency {
        limit: 1,
        lease_ttl: Duration::from_millis(200),
    };
    let (held, _lease) = counters.acquire_slot("c", &limit, 0).await.unwrap();
    assert!(held.allowed);
    let (blocked, _) = counters.acquire_slot("c", &limit, 0).await.unwrap();
    assert!(!blocked.allowed);
    // Never released: the lease runs out after its TTL.
    assert!(
        slot_frees_within(&counters, &limit, Duration::from_secs(5)).await,
        "the lease never expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flushed_script_cache_is_reloaded() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let counters = counters_at(&url, "t:").await;
    let gcra = Algorithm::Gcra(Gcra::new(5, Duration::from_secs(60), 5));
    assert!(counters.acquire("k", &gcra, 0).await.unwrap().allowed);

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    let decision = counters.acquire("k", &gcra, 0).await.unwrap();
    assert!(decision.allowed, "EVALSHA fell back to loading the script");
    assert_eq!(decision.remaining, 3);

    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn skewed_node_clocks_share_one_limit() {
    let url = redis_url();
    let prefix = unique_prefix();
    let node_a = counters_at(&url, &prefix).await;
    let node_b = counters_at(&url, &prefix).await;
    let gcra = Algorithm::Gcra(Gcra::new(10, Duration::from_secs(60), 10));
    // Node B's clock runs an hour ahead of node A's; the scripts use the Redis clock instead.
    let hour = 3_600_000_000_000;
    let mut admitted = 0;
    for i in 0..40u64 {
        let (node, now) = if i % 2 == 0 {
            (&node_a, 1_000)
        } else {
            (&node_b, 1_000 + hour)
        };
        admitted += usize::from(node.acquire("k", &gcra, now).await.unwrap().allowed);
    }
    assert_eq!(admitted, 10);
}
