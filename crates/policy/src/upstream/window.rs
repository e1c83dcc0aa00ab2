//! Two counters summed over a sliding window of fixed buckets.

/// Buckets per window. More buckets make the window slide more smoothly at the cost of a
/// longer sum.
const BUCKETS: usize = 10;

/// Counts of two kinds of events (such as requests and failures) over the last `window`
/// nanoseconds, kept in [`BUCKETS`] buckets so that old events expire a tenth of a window at a
/// time.
#[derive(Debug, Clone)]
pub(crate) struct SlidingCounts {
    bucket_ns: u64,
    /// For each bucket: the bucket number it contains (time / `bucket_ns`), then the two counts.
    buckets: [(u64, u64, u64); BUCKETS],
}

impl SlidingCounts {
    pub(crate) fn new(window_ns: u64) -> Self {
        SlidingCounts {
            bucket_ns: (window_ns / BUCKETS as u64).max(1),
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    /// Adds `first` and `second` to the bucket of `now`.
    pub(crate) fn add(&mut self, now: u64, first: u64, second: u64) {
        let number = now / self.bucket_ns;
        let bucket = &mut self.buckets[(number % BUCKETS as u64) as usize];
        if bucket.0 != number {
            *bucket = (number, 0, 0);
        }
        bucket.1 += first;
        bucket.2 += second;
    }

    /// Returns both counts summed over the buckets of the window that ends at `now`.
    pub(crate) fn sum(&self, now: u64) -> (u64, u64) {
        let current = now / self.bucket_ns;
        self.buckets
            .iter()
            .filter(|(number, _, _)| {
                *number != u64::MAX && *number <= current && current - number < BUCKETS as u64
            })
            .fold((0, 0), |(first, second), (_, a, b)| (first + a, second + b))
    }

    pub(crate) fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_expire_after_window() {
        let mut counts = SlidingCounts::new(1_000);
        counts.add(0, 1, 0);
        counts.add(550, 1, 1);
        assert_eq!(counts.sum(600), (2, 1));
        assert_eq!(counts.sum(999), (2, 1));
        assert_eq!(
            counts.sum(1_000),
            (1, 1),
            "the bucket of time 0 has expired"
        );
        assert_eq!(counts.sum(1_600), (0, 0));
    }

    #[test]
    fn reused_bucket_starts_empty() {
        let mut counts = SlidingCounts::new(1_000);
        counts.add(10, 5, 5);
        counts.add(1_010, 1, 0);
        assert_eq!(counts.sum(1_010), (1, 0));
    }
}
