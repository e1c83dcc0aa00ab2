//! The `ai-limits` Lua script against a real Redis server: it reserves and settles as the Rust
//! model in memory does. Uses the server at `PORTCULLIS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) under a key prefix of its own.

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::ai_limits::{
    Amount, Budget, LimitKind, Limits, MemoryUsage, Outcome, RedisUsage, Settlement, UsageStore,
};
use portcullis_policy::rate_limit::{Period, RedisCounters, RedisSettings};

fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_usage() -> Arc<RedisUsage> {
    let counters = RedisCounters::connect(RedisSettings {
        url: redis_url(),
        key_prefix: format!("portcullis:test:{:016x}:", rand::random::<u64>()),
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("a valid Redis URL");
    RedisUsage::new(counters)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const LIMITS: Limits = Limits {
    tokens_per_minute: Some(1_000),
    tokens_per_day: Some(5_000),
    budget: Some(Budget {
        micros: 10_000,
        period: Period::Month,
    }),
};

fn amount(tokens: u64, cost_micros: u64) -> Amount {
    Amount {
        tokens,
        cost_micros,
    }
}

/// Runs one sequence of reservations and settlements and returns what each step reports, with
/// the bucket's remaining tokens rounded to tens because the two clocks differ slightly.
async fn run_sequence(store: &dyn UsageStore) -> Vec<String> {
    let mut steps = Vec::new();
    let reserved = amount(600, 4_000);
    let Outcome::Admitted { periods, levels } = store
        .reserve("alice", &LIMITS, reserved, now_nanos())
        .await
        .unwrap()
    else {
        panic!("the first reservation was rejected");
    };
    steps.push(format!(
        "admitted minute={} day={} budget={}",
        levels.tokens_per_minute.unwrap().remaining / 10 * 10,
        levels.tokens_per_day.unwrap().remaining,
        levels.budget.unwrap().remaining
    ));
    let outcome = store
        .reserve("alice", &LIMITS, amount(600, 1_000), now_nanos())
        .await
        .unwrap();
    match outcome {
        Outcome::Rejected {
            kind, retry_after, ..
        } => steps.push(format!(
            "rejected {} retry_about_12s={}",
            kind.name(),
            retry_after.is_some_and(
                |retry| retry > Duration::from_secs(11) && retry <= Duration::from_secs(12)
            )
        )),
        Outcome::Admitted { .. } => steps.push("admitted twice".into()),
    }
    let levels = store
        .settle(
            "alice",
            &LIMITS,
            Settlement {
                reserved,
                actual: amount(150, 1_200),
                periods: Some(periods),
            },
            now_nanos(),
        )
        .await
        .unwrap();
    steps.push(format!(
        "settled minute={} day={} budget={}",
        levels.tokens_per_minute.unwrap().remaining / 10 * 10,
        levels.tokens_per_day.unwrap().remaining,
        levels.budget.unwrap().remaining
    ));
    let levels = store
        .settle(
            "alice",
            &LIMITS,
            Settlement {
                reserved: Amount::default(),
                actual: amount(50, 8_000),
                periods: None,
            },
            now_nanos(),
        )
        .await
        .unwrap();
    steps.push(format!(
        "charged day={} budget={}",
        levels.tokens_per_day.unwrap().remaining,
        levels.budget.unwrap().remaining
    ));
    let outcome = store
        .reserve("alice", &LIMITS, amount(10, 900), now_nanos())
        .await
        .unwrap();
    if let Outcome::Rejected { kind, .. } = outcome {
        steps.push(format!("rejected {}", kind.name()));
    }
    let outcome = store
        .reserve("alice", &LIMITS, amount(10, 20_000), now_nanos())
        .await
        .unwrap();
    if let Outcome::Rejected {
        kind: LimitKind::Budget,
        retry_after,
        ..
    } = outcome
    {
        steps.push(format!("too large retry={retry_after:?}"));
    }
    steps
}

#[tokio::test]
async fn script_matches_memory_model() {
    let memory = run_sequence(MemoryUsage::new().as_ref()).await;
    let redis = run_sequence(redis_usage().await.as_ref()).await;
    assert_eq!(
        memory,
        [
            "admitted minute=400 day=4400 budget=6000",
            "rejected tokens_per_minute retry_about_12s=true",
            "settled minute=850 day=4850 budget=8800",
            "charged day=4800 budget=800",
            "rejected budget",
            "too large retry=None",
        ]
    );
    assert_eq!(redis, memory);
}
