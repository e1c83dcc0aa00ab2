//! The writer that adds finished AI calls to the store's `ai_usage` table.
//!
//! Calls arrive on the queue of [`portcullis_proxy::ai_usage::UsageQueue`] and are summed in
//! memory per row key, so that a batch writes one row per key. A batch is written when
//! `ai.usage_report.flush_interval` has passed or `batch_size` calls are pending, and once more
//! when the writer stops. A failed write is retried [`MAX_ATTEMPTS`] times in all; then the
//! batch is dropped, logged with the error and counted in
//! `portcullis_ai_usage_dropped_total{reason="store_error"}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::UsageReportSpec;
use portcullis_proxy::ai_usage::UsageEvent;
use portcullis_store::ai_usage::bucket_start;
use portcullis_store::{AiUsageKey, AiUsageRow, AiUsageTotals, Store};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Attempts to write one batch, the first included.
pub const MAX_ATTEMPTS: u32 = 3;

/// Wait before the second attempt, doubled before each later one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Calls summed per row key, waiting to be written.
#[derive(Debug, Default)]
pub struct UsageBatch {
    rows: HashMap<AiUsageKey, AiUsageTotals>,
    /// Calls added since the last take.
    calls: u64,
}

impl UsageBatch {
    /// Adds one finished call.
    pub fn add(&mut self, event: &UsageEvent) {
        let summary = &event.summary;
        let key = AiUsageKey {
            bucket_start: bucket_start(event.unix_seconds),
            consumer: event.consumer.clone(),
            credential_id: event.credential_id.clone(),
            route: event.route.clone(),
            model: summary.model.clone(),
            target: summary.target.to_string(),
        };
        let totals = AiUsageTotals {
            calls: 1,
            input_tokens: summary.input_tokens,
            cache_read_tokens: summary.cache_read_tokens,
            cache_write_tokens: summary.cache_write_tokens,
            output_tokens: summary.output_tokens,
            reasoning_tokens: summary.reasoning_tokens,
            cost: summary.cost.unwrap_or(0.0),
            estimated_calls: u64::from(summary.usage_estimated),
        };
        self.rows.entry(key).or_default().add(&totals);
        self.calls += 1;
    }

    /// Returns the number of calls added since the last take.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Takes the summed rows and the number of calls in them, leaving the batch empty.
    pub fn take(&mut self) -> (Vec<AiUsageRow>, u64) {
        let rows = self
            .rows
            .drain()
            .map(|(key, totals)| AiUsageRow { key, totals })
            .collect();
        (rows, std::mem::take(&mut self.calls))
    }
}

/// A running usage writer.
pub struct UsageWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl UsageWriter {
    /// Starts the writer on `events`. `dropped` counts calls whose batch the store rejected.
    pub fn spawn(
        store: Arc<dyn Store>,
        mut events: mpsc::Receiver<UsageEvent>,
        spec: UsageReportSpec,
        dropped: Counter,
    ) -> UsageWriter {
        let (stop, mut stopped) = oneshot::channel();
        let batch_size = u64::try_from(spec.batch_size).unwrap_or(u64::MAX);
        let task = tokio::spawn(async move {
            let mut batch = UsageBatch::default();
            let mut interval = tokio::time::interval(spec.flush_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => {
                            batch.add(&event);
                            if batch.calls() < batch_size {
                                continue;
                            }
                        }
                        None => break,
                    },
                    _ = interval.tick() => {}
                    _ = &mut stopped => break,
                }
                write_batch(store.as_ref(), &mut batch, &dropped).await;
            }
            // Calls that ended before the stop are in the queue still.
            while let Ok(event) = events.try_recv() {
                batch.add(&event);
            }
            write_batch(store.as_ref(), &mut batch, &dropped).await;
        });
        UsageWriter { stop, task }
    }

    /// Writes the calls queued so far and stops the writer. Call it after the listeners have
    /// drained, so that the last calls are in the queue.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the AI usage writer failed");
        }
    }
}

/// Writes the batch, retrying a failed write up to [`MAX_ATTEMPTS`] attempts in all.
async fn write_batch(store: &dyn Store, batch: &mut UsageBatch, dropped: &Counter) {
    let (rows, calls) = batch.take();
    if rows.is_empty() {
        return;
    }
    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1..=MAX_ATTEMPTS {
        match store.add_ai_usage(&rows).await {
            Ok(()) => return,
            Err(error) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(%error, attempt, rows = rows.len(), calls, "cannot write AI usage to the store; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                tracing::error!(%error, attempts = MAX_ATTEMPTS, rows = rows.len(), calls, "cannot write AI usage to the store; dropping these calls from the usage report");
                dropped.inc_by(calls);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_ai::CallSummary;

    use super::*;

    fn event(consumer: &str, unix_seconds: i64, estimated: bool) -> UsageEvent {
        UsageEvent {
            unix_seconds,
            consumer: consumer.into(),
            credential_id: format!("key-{consumer}"),
            route: "llm".into(),
            summary: CallSummary {
                model: "smart".into(),
                provider: "p".into(),
                provider_model: "m".into(),
                target: "p/m".into(),
                attempts: 1,
                stream: true,
                input_tokens: 10,
                cache_read_tokens: 1,
                cache_write_tokens: 2,
                output_tokens: 3,
                reasoning_tokens: 4,
                cost: Some(0.5),
                usage_estimated: estimated,
                stream_error: false,
                prompt: None,
                prompt_version: None,
                redactions: None,
            },
        }
    }

    #[test]
    fn batch_sums_calls_with_one_key() {
        let mut batch = UsageBatch::default();
        batch.add(&event("alice", 3600, false));
        batch.add(&event("alice", 7199, true));
        assert_eq!(batch.calls(), 2);
        let (rows, calls) = batch.take();
        assert_eq!(calls, 2);
        assert_eq!(rows.len(), 1);
        let totals = rows[0].totals;
        assert_eq!(rows[0].key.bucket_start, 3600);
        assert_eq!(totals.calls, 2);
        assert_eq!(totals.input_tokens, 20);
        assert_eq!(totals.cache_read_tokens, 2);
        assert_eq!(totals.cache_write_tokens, 4);
        assert_eq!(totals.output_tokens, 6);
        assert_eq!(totals.reasoning_tokens, 8);
        assert_eq!(totals.cost, 1.0);
        assert_eq!(totals.estimated_calls, 1);
    }

    #[test]
    fn batch_keeps_hours_and_consumers_apart() {
        let mut batch = UsageBatch::default();
        batch.add(&event("alice", 0, false));
        batch.add(&event("alice", 3600, false));
        batch.add(&event("bob", 0, false));
        let (rows, _) = batch.take();
        assert_eq!(rows.len(), 3);
        assert_eq!(batch.calls(), 0);
        assert!(batch.take().0.is_empty());
    }

    #[tokio::test]
    async fn writer_flushes_on_stop() {
        let folder = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            portcullis_store::SqliteStore::open(&folder.path().join("usage.db"))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let (sender, receiver) = mpsc::channel(16);
        let spec = UsageReportSpec {
            flush_interval: Duration::from_secs(3600),
            ..UsageReportSpec::default()
        };
        let writer = UsageWriter::spawn(store.clone(), receiver, spec, Counter::default());
        for _ in 0..3 {
            sender.send(event("alice", 100, false)).await.unwrap();
        }
        writer.stop().await;
        let filter = portcullis_store::AiUsageFilter {
            from: 0,
            to: 3600,
            ..Default::default()
        };
        let rows = store.ai_usage(&filter).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].totals.calls, 3);
    }

    #[tokio::test]
    async fn writer_flushes_full_batch_at_once() {
        let folder = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            portcullis_store::SqliteStore::open(&folder.path().join("usage.db"))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let (sender, receiver) = mpsc::channel(16);
        let spec = UsageReportSpec {
            flush_interval: Duration::from_secs(3600),
            batch_size: 2,
            queue_size: 16,
        };
        let writer = UsageWriter::spawn(store.clone(), receiver, spec, Counter::default());
        sender.send(event("alice", 100, false)).await.unwrap();
        sender.send(event("bob", 100, false)).await.unwrap();
        let filter = portcullis_store::AiUsageFilter {
            from: 0,
            to: 3600,
            ..Default::default()
        };
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = store.ai_usage(&filter).await.unwrap();
            if rows.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rows.len(), 2);
        writer.stop().await;
    }

    #[tokio::test]
    async fn failed_writes_are_retried_then_counted() {
        let folder = tempfile::tempdir().unwrap();
        // Without migrations the `ai_usage` table is missing, so every write fails.
        let store = portcullis_store::SqliteStore::open(&folder.path().join("usage.db"))
            .await
            .unwrap();
        let mut batch = UsageBatch::default();
        batch.add(&event("alice", 0, false));
        batch.add(&event("bob", 0, false));
        let dropped = Counter::default();
        let started = std::time::Instant::now();
        write_batch(&store, &mut batch, &dropped).await;
        assert_eq!(dropped.get(), 2);
        assert!(started.elapsed() >= FIRST_RETRY_DELAY * 3);
        assert_eq!(batch.calls(), 0);
    }
}
