//! The queue that carries finished AI calls from the data plane to the writer that adds their
//! usage to the store, so that no request waits on the store.
//!
//! The queue is bounded. A call that finds it full is dropped from the report (the access log
//! and the `portcullis_ai_*` metrics still count it), counted in
//! `portcullis_ai_usage_dropped_total{reason="queue_full"}`, and logged at most once per
//! [`WARNING_INTERVAL`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_ai::CallSummary;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Minimum time between two warnings about a full queue.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// One finished AI call, as the usage report needs it.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// Time the response ended, in seconds since the Unix epoch.
    pub unix_seconds: i64,
    /// Empty when the route authenticates no consumer.
    pub consumer: String,
    /// Empty when the route authenticates no credential.
    pub credential_id: String,
    pub route: String,
    pub summary: CallSummary,
}

/// The sending side of the usage queue, shared by every request.
#[derive(Debug)]
pub struct UsageQueue {
    sender: mpsc::Sender<UsageEvent>,
    dropped: Counter,
    /// When the last warning about a full queue was logged, and the drops since.
    warning: Mutex<(Option<Instant>, u64)>,
}

impl UsageQueue {
    /// Creates a queue of `capacity` events. `dropped` counts the events that found it full.
    pub fn new(capacity: usize, dropped: Counter) -> (UsageQueue, mpsc::Receiver<UsageEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let queue = UsageQueue {
            sender,
            dropped,
            warning: Mutex::new((None, 0)),
        };
        (queue, receiver)
    }

    /// Queues `event` without waiting. Drops it when the queue is full or the writer stopped.
    pub fn push(&self, event: UsageEvent) {
        let Err(error) = self.sender.try_send(event) else {
            return;
        };
        self.dropped.inc();
        let mut warning = self
            .warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        warning.1 += 1;
        let due = warning
            .0
            .is_none_or(|last| last.elapsed() >= WARNING_INTERVAL);
        if due {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "the queue is full",
                mpsc::error::TrySendError::Closed(_) => "the writer has stopped",
            };
            tracing::warn!(
                dropped = warning.1,
                capacity = self.sender.max_capacity(),
                "AI calls dropped from the usage report because {reason}; raise ai.usage_report.queue_size if this repeats"
            );
            *warning = (Some(Instant::now()), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> UsageEvent {
        UsageEvent {
            unix_seconds: 0,
            consumer: String::new(),
            credential_id: String::new(),
            route: "llm".into(),
            summary: CallSummary {
                model: "m".into(),
                provider: "p".into(),
                provider_model: "m".into(),
                target: "p/m".into(),
                attempts: 1,
                stream: false,
                input_tokens: 1,
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 1,
                reasoning_tokens: 0,
                cost: None,
                usage_estimated: false,
                stream_error: false,
                prompt: None,
                prompt_version: None,
                redactions: None,
            },
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let dropped = Counter::default();
        let (queue, mut receiver) = UsageQueue::new(2, dropped.clone());
        for _ in 0..5 {
            queue.push(event());
        }
        assert_eq!(dropped.get(), 3);
        assert!(receiver.recv().await.is_some());
        assert!(receiver.recv().await.is_some());
        assert!(receiver.try_recv().is_err());
    }

    #[tokio::test]
    async fn closed_queue_counts_drops() {
        let dropped = Counter::default();
        let (queue, receiver) = UsageQueue::new(2, dropped.clone());
        drop(receiver);
        queue.push(event());
        assert_eq!(dropped.get(), 1);
    }
}
