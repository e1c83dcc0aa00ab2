//! A provider's pool of API keys: calls take the keys in turn, and a key that the provider
//! rate-limits or keeps failing on rests for a cool-down and is skipped meanwhile.
//!
//! Logs and metrics name a key by its index in the pool, never by its value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use portcullis_config::{ApiKey, KeyCooldown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

/// Labels of one key's state: `state` is `available` or `cooling_down`, and the gauge is 1 for
/// the key's current state and 0 for the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeyStateLabels {
    pub provider: String,
    /// The key's index in the provider's pool, counted from 0.
    pub key: String,
    pub state: &'static str,
}

/// Labels of the cool-downs of one key, by `reason`: `rate_limited` or `failures`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeyCooldownLabels {
    pub provider: String,
    pub key: String,
    pub reason: &'static str,
}

/// State of every pooled key. Providers are node settings built once at start, so the
/// families are process-wide and [`crate::AiMetrics::register`] registers them.
pub(crate) static KEY_STATE: LazyLock<Family<KeyStateLabels, Gauge>> =
    LazyLock::new(Family::default);
/// Cool-downs started per key.
pub(crate) static KEY_COOLDOWNS: LazyLock<Family<KeyCooldownLabels, Counter>> =
    LazyLock::new(Family::default);

/// Outcome of one call with a key, as far as the key is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// The provider accepted the key.
    Success,
    /// 429, with the provider's requested wait when it sent one.
    RateLimited(Option<Duration>),
    /// 401, 403 or 5xx, counted towards `key_cooldown.failures`.
    Failed,
}

/// A key taken from the pool for one call.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub index: usize,
    pub key: &'a ApiKey,
}

/// Every key of the pool is cooling down; the earliest is available again after `wait`.
#[derive(Debug, Clone, Copy)]
pub struct AllCoolingDown {
    pub wait: Duration,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Consecutive failed calls since the last success or cool-down.
    failures: u32,
    cooling_until: Option<Instant>,
}

struct PooledKey {
    key: ApiKey,
    state: Arc<Mutex<KeyState>>,
}

/// The API keys of one provider.
pub struct KeyPool {
    provider: Arc<str>,
    keys: Vec<PooledKey>,
    next: AtomicUsize,
    /// `None` for a provider with one `api_key`, whose key never cools down, so that every call
    /// tries it as before.
    cooldown: Option<KeyCooldown>,
}

impl KeyPool {
    /// Creates the pool of `provider` with every key available. Keys cool down only with a
    /// `cooldown`.
    pub fn new(provider: Arc<str>, keys: Vec<ApiKey>, cooldown: Option<KeyCooldown>) -> Self {
        let pool = KeyPool {
            provider,
            keys: keys
                .into_iter()
                .map(|key| PooledKey {
                    key,
                    state: Arc::default(),
                })
                .collect(),
            next: AtomicUsize::new(0),
            cooldown,
        };
        if pool.cooldown.is_some() {
            for index in 0..pool.keys.len() {
                set_state_gauge(&pool.provider, index, false);
            }
        }
        pool
    }

    /// Returns the number of keys; 0 for a provider called without a key.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Takes the next key that is not cooling down, in turn from the key after the last one
    /// taken. Returns `Ok(None)` for a pool without keys.
    pub fn acquire(&self) -> Result<Option<Lease<'_>>, AllCoolingDown> {
        let count = self.keys.len();
        if count == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut wait = Duration::MAX;
        for offset in 0..count {
            let index = (start + offset) % count;
            let mut state = self.keys[index].state.lock().unwrap();
            match state.cooling_until {
                Some(until) if until > now => wait = wait.min(until - now),
                Some(_) => {
                    end_cooldown(&mut state, &self.provider, index);
                    return Ok(Some(self.lease(index)));
                }
                None => return Ok(Some(self.lease(index))),
            }
        }
        Err(AllCoolingDown { wait })
    }

    /// Returns whether a key other than `index` is available now.
    pub fn has_other_available(&self, index: usize) -> bool {
        let now = Instant::now();
        self.keys.iter().enumerate().any(|(other, key)| {
            other != index
                && key
                    .state
                    .lock()
                    .unwrap()
                    .cooling_until
                    .is_none_or(|until| until <= now)
        })
    }

    /// Records the outcome of a call with key `index`, and starts its cool-down after a 429 or
    /// after `key_cooldown.failures` consecutive failures.
    pub fn report(&self, index: usize, outcome: KeyOutcome) {
        let (Some(pooled), Some(cooldown)) = (self.keys.get(index), &self.cooldown) else {
            return;
        };
        let mut state = pooled.state.lock().unwrap();
        let (period, reason) = match outcome {
            KeyOutcome::Success => {
                state.failures = 0;
                return;
            }
            KeyOutcome::RateLimited(retry_after) => (
                retry_after
                    .unwrap_or(cooldown.duration)
                    .min(cooldown.max_retry_after),
                "rate_limited",
            ),
            KeyOutcome::Failed => {
                state.failures += 1;
                if state.failures < cooldown.failures {
                    return;
                }
                (cooldown.duration, "failures")
            }
        };
        let until = Instant::now() + period;
        // A key that is already cooling keeps the later of the two ends.
        if state.cooling_until.is_some_and(|current| current >= until) {
            return;
        }
        let started = state.cooling_until.is_none();
        state.cooling_until = Some(until);
        state.failures = 0;
        drop(state);
        self.announce_cooldown(index, until, period, reason, started);
    }

    /// Logs and counts a cool-down of key `index`, and sets its state gauge until `until`.
    fn announce_cooldown(
        &self,
        index: usize,
        until: Instant,
        period: Duration,
        reason: &'static str,
        started: bool,
    ) {
        tracing::warn!(
            ai.provider = %self.provider,
            ai.key_index = index,
            reason,
            cooldown_ms = period.as_millis() as u64,
            "provider key cooling down"
        );
        KEY_COOLDOWNS
            .get_or_create(&KeyCooldownLabels {
                provider: self.provider.to_string(),
                key: index.to_string(),
                reason,
            })
            .inc();
        if started {
            set_state_gauge(&self.provider, index, true);
        }
        self.schedule_gauge_reset(index, until);
    }

    fn lease(&self, index: usize) -> Lease<'_> {
        Lease {
            index,
            key: &self.keys[index].key,
        }
    }

    /// Sets the key's state gauge back to available when its cool-down ends, so that the metric
    /// is right even when no call takes the key afterwards.
    fn schedule_gauge_reset(&self, index: usize, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.keys[index].state.clone();
        let provider = self.provider.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            let mut state = state.lock().unwrap();
            if state.cooling_until.is_some_and(|end| end <= Instant::now()) {
                end_cooldown(&mut state, &provider, index);
            }
        });
    }
}

fn end_cooldown(state: &mut KeyState, provider: &str, index: usize) {
    state.cooling_until = None;
    state.failures = 0;
    set_state_gauge(provider, index, false);
    tracing::info!(
        ai.provider = provider,
        ai.key_index = index,
        "provider key available again"
    );
}

fn set_state_gauge(provider: &str, index: usize, cooling: bool) {
    for (state, value) in [("available", !cooling), ("cooling_down", cooling)] {
        KEY_STATE
            .get_or_create(&KeyStateLabels {
                provider: provider.to_string(),
                key: index.to_string(),
                state,
            })
            .set(i64::from(value));
    }
}

/// Returns the wait that a 429 response requests: its `Retry-After` header, in seconds or as
/// an HTTP date, or else the `retryDelay` of a Gemini `RetryInfo` error detail such as `"37s"`.
pub fn retry_after(headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    if let Some(value) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
    {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(
                date.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    let parsed: Value = serde_json::from_slice(body).ok()?;
    parsed
        .pointer("/error/details")?
        .as_array()?
        .iter()
        .filter(|detail| {
            detail.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/google.rpc.RetryInfo")
        })
        .find_map(|detail| detail.get("retryDelay")?.as_str())
        .and_then(parse_protobuf_duration)
}

/// Parses a protobuf JSON duration such as `"37s"` or `"1.5s"`.
fn parse_protobuf_duration(value: &str) -> Option<Duration> {
    let seconds: f64 = value.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, keys: &[&str], failures: u32) -> KeyPool {
        let keys = keys
            .iter()
            .map(|key| serde_json::from_value(Value::from(*key)).unwrap())
            .collect();
        KeyPool::new(
            Arc::from(name),
            keys,
            Some(KeyCooldown {
                duration: Duration::from_secs(30),
                failures,
                max_retry_after: Duration::from_secs(60),
            }),
        )
    }

    fn taken(pool: &KeyPool) -> usize {
        pool.acquire().unwrap().unwrap().index
    }

    #[test]
    fn keys_are_taken_in_turn() {
        let pool = pool("in-turn", &["a", "b", "c"], 3);
        let order: Vec<usize> = (0..6).map(|_| taken(&pool)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn rate_limited_key_is_skipped() {
        let pool = pool("rate-limited", &["a", "b"], 3);
        pool.report(0, KeyOutcome::RateLimited(Some(Duration::from_secs(5))));
        for _ in 0..4 {
            assert_eq!(taken(&pool), 1);
        }
        assert!(pool.has_other_available(0));
        assert!(!pool.has_other_available(1));
    }

    #[test]
    fn failures_cool_down_after_threshold() {
        let pool = pool("failures", &["a", "b"], 2);
        pool.report(0, KeyOutcome::Failed);
        assert!(pool.has_other_available(1), "one failure keeps key 0");
        pool.report(0, KeyOutcome::Success);
        pool.report(0, KeyOutcome::Failed);
        assert!(pool.has_other_available(1), "a success resets the count");
        pool.report(0, KeyOutcome::Failed);
        assert!(!pool.has_other_available(1), "two in a row cool key 0");
    }

    #[test]
    fn all_cooling_reports_earliest_wait() {
        let pool = pool("all-cooling", &["a", "b"], 1);
        pool.report(0, KeyOutcome::RateLimited(Some(Duration::from_secs(10))));
        pool.report(1, KeyOutcome::RateLimited(Some(Duration::from_secs(600))));
        let error = pool.acquire().unwrap_err();
        assert!(error.wait <= Duration::from_secs(10), "{:?}", error.wait);
        assert!(error.wait > Duration::from_secs(9), "{:?}", error.wait);
    }

    #[test]
    fn expired_cooldown_frees_key() {
        let pool = pool("expired", &["a"], 1);
        pool.report(0, KeyOutcome::RateLimited(Some(Duration::ZERO)));
        assert_eq!(taken(&pool), 0);
        let labels = KeyStateLabels {
            provider: "expired".into(),
            key: "0".into(),
            state: "available",
        };
        assert_eq!(KEY_STATE.get_or_create(&labels).get(), 1);
    }

    #[test]
    fn single_api_key_never_cools_down() {
        let key = serde_json::from_value(Value::from("a")).unwrap();
        let pool = KeyPool::new(Arc::from("single"), vec![key], None);
        pool.report(0, KeyOutcome::RateLimited(Some(Duration::from_secs(5))));
        pool.report(0, KeyOutcome::Failed);
        assert_eq!(pool.acquire().unwrap().unwrap().index, 0);
    }

    #[test]
    fn empty_pool_needs_no_key() {
        let pool = pool("empty", &[], 1);
        assert!(pool.acquire().unwrap().is_none());
    }

    #[test]
    fn retry_after_sources() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, b""), Some(Duration::from_secs(7)));

        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&headers, b"").unwrap();
        assert!(wait > Duration::from_secs(110), "{wait:?}");
        assert!(wait <= Duration::from_secs(120), "{wait:?}");

        let gemini = br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}"#;
        assert_eq!(
            retry_after(&HeaderMap::new(), gemini),
            Some(Duration::from_secs(37))
        );
        assert_eq!(retry_after(&HeaderMap::new(), b"{}"), None);
    }
}
