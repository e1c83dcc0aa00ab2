//! A provider's pool of API keys: calls take the keys in turn, and a key that the provider
//! rate-limits or keeps failing on rests for a cool-down and is skipped meanwhile.
//!
//! A key is written in the file, or is a stored credential whose value the control plane
//! installs with [`KeyPool::set_credentials`] whenever the store changes. Installing a value
//! keeps the pool, its connections and the cool-downs of the other keys.
//!
//! Logs and metrics name a key by its index in the pool or its credential name, never by its
//! value.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use portcullis_config::{ApiKey, KeyCooldown, ProviderKey};
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

/// Minimum time between two log lines about the same unusable stored credential.
const CREDENTIAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A key taken from the pool for one call.
#[derive(Debug, Clone)]
pub struct Lease {
    pub index: usize,
    pub key: Arc<ApiKey>,
}

/// The reason no key of the pool can be taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// Every usable key is cooling down; the earliest is available again after `wait`.
    CoolingDown { wait: Duration },
    /// No key is cooling down, but the pool's stored credentials are missing or cannot be
    /// decrypted; `credential` names the first of them.
    Credential { credential: Arc<str> },
}

#[derive(Debug, Default)]
struct KeyState {
    /// Consecutive failed calls since the last success or cool-down.
    failures: u32,
    cooling_until: Option<Instant>,
}

struct PooledKey {
    source: KeySource,
    state: Arc<Mutex<KeyState>>,
}

enum KeySource {
    /// A key written in the file.
    Fixed(Arc<ApiKey>),
    Stored(StoredKey),
}

/// A key that is a stored credential, with the value the control plane installed last.
struct StoredKey {
    credential: Arc<str>,
    /// The decrypted value, or why there is none. Empty until the first install.
    value: RwLock<Result<Arc<ApiKey>, Arc<str>>>,
    /// Time of the last log line about the missing value, and the calls since then.
    last_logged: Mutex<Option<Instant>>,
    failed_calls: AtomicU64,
}

impl PooledKey {
    /// Returns the key's current value, or `None` for a stored credential without one.
    fn value(&self) -> Option<Arc<ApiKey>> {
        match &self.source {
            KeySource::Fixed(key) => Some(key.clone()),
            KeySource::Stored(stored) => stored.value.read().unwrap().as_ref().ok().cloned(),
        }
    }
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
    /// `cooldown`, and a stored credential has no value until [`KeyPool::set_credentials`]
    /// installs one.
    pub fn new(provider: Arc<str>, keys: Vec<ProviderKey>, cooldown: Option<KeyCooldown>) -> Self {
        let pool = KeyPool {
            provider,
            keys: keys
                .into_iter()
                .map(|key| PooledKey {
                    source: match key {
                        ProviderKey::Value(key) => KeySource::Fixed(Arc::new(key)),
                        ProviderKey::Credential(name) => KeySource::Stored(StoredKey {
                            credential: Arc::from(name),
                            value: RwLock::new(Err(Arc::from("the store was not read yet"))),
                            last_logged: Mutex::new(None),
                            failed_calls: AtomicU64::new(0),
                        }),
                    },
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

    /// Takes the next key that has a value and is not cooling down, in turn from the key after
    /// the last one taken. Returns `Ok(None)` for a pool without keys.
    pub fn acquire(&self) -> Result<Option<Lease>, Unavailable> {
        let count = self.keys.len();
        if count == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut wait = None;
        let mut missing = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let pooled = &self.keys[index];
            let Some(key) = pooled.value() else {
                if let KeySource::Stored(stored) = &pooled.source {
                    self.log_missing(stored);
                    missing.get_or_insert_with(|| stored.credential.clone());
                }
                continue;
            };
            let mut state = pooled.state.lock().unwrap();
            match state.cooling_until {
                Some(until) if until > now => {
                    wait = Some(wait.unwrap_or(Duration::MAX).min(until - now));
                }
                Some(_) => {
                    end_cooldown(&mut state, &self.provider, index);
                    return Ok(Some(Lease { index, key }));
                }
                None => return Ok(Some(Lease { index, key })),
            }
        }
        match (wait, missing) {
            (Some(wait), _) => Err(Unavailable::CoolingDown { wait }),
            (None, Some(credential)) => Err(Unavailable::Credential { credential }),
            (None, None) => unreachable!("a key without a value is a stored credential"),
        }
    }

    /// Returns whether a key other than `index` has a value and is available now.
    pub fn has_other_available(&self, index: usize) -> bool {
        let now = Instant::now();
        self.keys.iter().enumerate().any(|(other, key)| {
            other != index
                && key.value().is_some()
                && key
                    .state
                    .lock()
                    .unwrap()
                    .cooling_until
                    .is_none_or(|until| until <= now)
        })
    }

    /// Returns the names of the stored credentials in the pool.
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|key| match &key.source {
            KeySource::Stored(stored) => Some(stored.credential.as_ref()),
            KeySource::Fixed(_) => None,
        })
    }

    /// Installs the values of the pool's stored credentials: `lookup` returns a credential's
    /// value, or why it has none. A key whose value changed starts without failures or
    /// cool-down, because a rotated key is a new key. Logs each change of a key's state once,
    /// with the provider and credential names but never the value.
    pub fn set_credentials(&self, lookup: &dyn Fn(&str) -> Result<ApiKey, String>) {
        for (index, pooled) in self.keys.iter().enumerate() {
            let KeySource::Stored(stored) = &pooled.source else {
                continue;
            };
            let next = lookup(&stored.credential)
                .map(Arc::new)
                .map_err(Arc::<str>::from);
            let mut value = stored.value.write().unwrap();
            match (&*value, &next) {
                (Ok(old), Ok(new)) if old == new => continue,
                (Err(old), Err(new)) if old == new => continue,
                (_, Ok(_)) => {
                    tracing::info!(
                        ai.provider = %self.provider,
                        ai.credential = %stored.credential,
                        ai.key_index = index,
                        "installed the provider's stored credential"
                    );
                    let mut state = pooled.state.lock().unwrap();
                    if state.cooling_until.take().is_some() && self.cooldown.is_some() {
                        set_state_gauge(&self.provider, index, false);
                    }
                    state.failures = 0;
                }
                (_, Err(reason)) => tracing::error!(
                    ai.provider = %self.provider,
                    ai.credential = %stored.credential,
                    ai.key_index = index,
                    reason = %reason,
                    "the provider's stored credential is unusable; calls skip this key"
                ),
            }
            *value = next;
            // `log_missing` takes `last_logged` before `value`, so `value` is released first.
            drop(value);
            *stored.last_logged.lock().unwrap() = Some(Instant::now());
        }
    }

    /// Logs a call that found a stored credential without a value, at most once per
    /// [`CREDENTIAL_LOG_INTERVAL`], with the number of such calls since the last line.
    fn log_missing(&self, stored: &StoredKey) {
        let calls = stored.failed_calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last_logged = stored.last_logged.lock().unwrap();
        if last_logged.is_some_and(|at| at.elapsed() < CREDENTIAL_LOG_INTERVAL) {
            return;
        }
        *last_logged = Some(Instant::now());
        stored.failed_calls.store(0, Ordering::Relaxed);
        let reason = match &*stored.value.read().unwrap() {
            Err(reason) => reason.clone(),
            Ok(_) => return,
        };
        tracing::error!(
            ai.provider = %self.provider,
            ai.credential = %stored.credential,
            reason = %reason,
            calls,
            "calls found the provider's stored credential unusable"
        );
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
        let Err(Unavailable::CoolingDown { wait }) = pool.acquire() else {
            panic!("every key is cooling down");
        };
        assert!(wait <= Duration::from_secs(10), "{wait:?}");
        assert!(wait > Duration::from_secs(9), "{wait:?}");
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

    fn cooldown() -> Option<KeyCooldown> {
        Some(KeyCooldown {
            duration: Duration::from_secs(30),
            failures: 1,
            max_retry_after: Duration::from_secs(600),
        })
    }

    fn credential(name: &str) -> ProviderKey {
        ProviderKey::Credential(name.into())
    }

    #[test]
    fn stored_credential_takes_installed_value() {
        let pool = KeyPool::new(Arc::from("stored"), vec![credential("prod")], None);
        assert_eq!(
            pool.acquire().unwrap_err(),
            Unavailable::Credential {
                credential: Arc::from("prod")
            }
        );
        pool.set_credentials(&|name| Ok(ApiKey::new(format!("sk-{name}-1"))));
        assert_eq!(pool.acquire().unwrap().unwrap().key.expose(), "sk-prod-1");
        pool.set_credentials(&|name| Ok(ApiKey::new(format!("sk-{name}-2"))));
        assert_eq!(pool.acquire().unwrap().unwrap().key.expose(), "sk-prod-2");
        pool.set_credentials(&|_| Err("not in the store".into()));
        assert!(matches!(
            pool.acquire(),
            Err(Unavailable::Credential { .. })
        ));
    }

    #[test]
    fn unusable_credential_is_skipped() {
        let file_key = ProviderKey::Value(ApiKey::new("sk-file"));
        let pool = KeyPool::new(
            Arc::from("mixed"),
            vec![credential("gone"), file_key],
            cooldown(),
        );
        pool.set_credentials(&|_| Err("not in the store".into()));
        for _ in 0..3 {
            let lease = pool.acquire().unwrap().unwrap();
            assert_eq!(lease.index, 1);
            assert_eq!(lease.key.expose(), "sk-file");
        }
        assert!(!pool.has_other_available(1));
        assert_eq!(pool.credentials().collect::<Vec<_>>(), ["gone"]);
    }

    #[test]
    fn rotated_credential_ends_cooldown() {
        let pool = KeyPool::new(
            Arc::from("rotated"),
            vec![credential("a"), credential("b")],
            cooldown(),
        );
        pool.set_credentials(&|name| Ok(ApiKey::new(format!("sk-{name}"))));
        pool.report(0, KeyOutcome::RateLimited(Some(Duration::from_secs(600))));
        assert_eq!(taken(&pool), 1);
        assert_eq!(taken(&pool), 1);

        // Only `a` changes, so `b` keeps its state and `a` is available again.
        pool.set_credentials(&|name| {
            Ok(ApiKey::new(if name == "a" { "sk-a-new" } else { "sk-b" }))
        });
        let order: Vec<usize> = (0..4).map(|_| taken(&pool)).collect();
        assert!(order.contains(&0), "{order:?}");
        assert!(order.contains(&1), "{order:?}");
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
