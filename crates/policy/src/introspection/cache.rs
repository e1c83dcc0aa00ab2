//! A bounded cache of introspection results, keyed by the SHA-256 of the token.
//!
//! Each entry is fresh until `fresh_until` and may be served stale until `keep_until`, which
//! covers the `stale_if_error` window. When the cache is full, an insert first drops entries past
//! `keep_until` and then the entry that expires soonest. That scan is linear in the number of
//! entries, and it runs only on inserts into a full cache, which each follow an introspection
//! call that costs far more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The SHA-256 digest of a token.
pub type CacheKey = [u8; 32];

/// The result of a cache lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<V> {
    Fresh(V),
    /// Past its cache lifetime but within the stale window.
    Stale(V),
    Missing,
}

struct Entry<V> {
    value: V,
    fresh_until: Instant,
    keep_until: Instant,
}

/// Introspection results by token hash.
pub struct ResultCache<V> {
    entries: HashMap<CacheKey, Entry<V>>,
    max_entries: usize,
}

impl<V: Clone> ResultCache<V> {
    /// Creates an empty cache that stores at most `max_entries` results (at least one).
    pub fn new(max_entries: usize) -> Self {
        ResultCache {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up `key` at `now`.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Lookup<V> {
        match self.entries.get(key) {
            Some(entry) if now < entry.fresh_until => Lookup::Fresh(entry.value.clone()),
            Some(entry) if now < entry.keep_until => Lookup::Stale(entry.value.clone()),
            _ => Lookup::Missing,
        }
    }

    /// Stores `value` as fresh for `fresh_for` and then usable stale for `stale_for`. A zero
    /// total removes any entry for `key` instead.
    pub fn insert(
        &mut self,
        key: CacheKey,
        value: V,
        now: Instant,
        fresh_for: Duration,
        stale_for: Duration,
    ) {
        if fresh_for.is_zero() && stale_for.is_zero() {
            self.entries.remove(&key);
            return;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            self.evict(now);
        }
        let fresh_until = now + fresh_for;
        self.entries.insert(
            key,
            Entry {
                value,
                fresh_until,
                keep_until: fresh_until + stale_for,
            },
        );
    }

    /// Removes the entry for `key`.
    pub fn remove(&mut self, key: &CacheKey) {
        self.entries.remove(key);
    }

    /// Makes room for one entry: drops every entry past its stale window, and if none was, the
    /// one that leaves the stale window soonest.
    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, entry| now < entry.keep_until);
        if self.entries.len() < self.max_entries {
            return;
        }
        let soonest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.keep_until)
            .map(|(key, _)| *key);
        if let Some(key) = soonest {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn key(n: u8) -> CacheKey {
        [n; 32]
    }

    #[test]
    fn entry_fresh_then_stale_then_missing() {
        let mut cache = ResultCache::new(4);
        let start = Instant::now();
        cache.insert(key(1), "a", start, 10 * SECOND, 5 * SECOND);
        assert_eq!(cache.get(&key(1), start), Lookup::Fresh("a"));
        assert_eq!(cache.get(&key(1), start + 10 * SECOND), Lookup::Stale("a"));
        assert_eq!(cache.get(&key(1), start + 15 * SECOND), Lookup::Missing);
    }

    #[test]
    fn zero_lifetime_removes_entry() {
        let mut cache = ResultCache::new(4);
        let start = Instant::now();
        cache.insert(key(1), "a", start, 10 * SECOND, Duration::ZERO);
        cache.insert(key(1), "b", start, Duration::ZERO, Duration::ZERO);
        assert_eq!(cache.get(&key(1), start), Lookup::Missing);
        assert!(cache.is_empty());
    }

    #[test]
    fn full_cache_drops_expired_first() {
        let mut cache = ResultCache::new(2);
        let start = Instant::now();
        cache.insert(key(1), 1, start, SECOND, Duration::ZERO);
        cache.insert(key(2), 2, start, 100 * SECOND, Duration::ZERO);
        cache.insert(key(3), 3, start + 2 * SECOND, 100 * SECOND, Duration::ZERO);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(1), start), Lookup::Missing);
        assert_eq!(cache.get(&key(2), start), Lookup::Fresh(2));
        assert_eq!(cache.get(&key(3), start), Lookup::Fresh(3));
    }

    #[test]
    fn full_cache_drops_soonest_expiry() {
        let mut cache = ResultCache::new(2);
        let start = Instant::now();
        cache.insert(key(1), 1, start, 50 * SECOND, Duration::ZERO);
        cache.insert(key(2), 2, start, 20 * SECOND, Duration::ZERO);
        cache.insert(key(3), 3, start, 30 * SECOND, Duration::ZERO);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(2), start), Lookup::Missing);
        assert_eq!(cache.get(&key(1), start), Lookup::Fresh(1));
        assert_eq!(cache.get(&key(3), start), Lookup::Fresh(3));
    }

    #[test]
    fn bound_holds_under_many_inserts() {
        let mut cache = ResultCache::new(8);
        let start = Instant::now();
        for n in 0..=255u8 {
            cache.insert(key(n), n, start, SECOND * u32::from(n), Duration::ZERO);
            assert!(cache.len() <= 8);
        }
    }
}
