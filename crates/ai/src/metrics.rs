//! Prometheus metrics of AI calls: tokens and cost by consumer, route and model.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::record::CallSummary;

/// Labels of one call. `model` is the `provider/model` target that served it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    pub consumer: String,
    pub route: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    pub consumer: String,
    pub route: String,
    pub model: String,
    /// `input`, `cache_read`, `cache_write`, `output` or `reasoning`.
    pub kind: &'static str,
}

/// Labels of a call made by a prompt endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PromptLabels {
    pub consumer: String,
    pub route: String,
    pub prompt: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OverheadLabels {
    pub route: String,
}

/// Overhead buckets in seconds, from 100 microseconds to 1 second.
const OVERHEAD_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

fn overhead_histogram() -> Histogram {
    Histogram::new(OVERHEAD_BUCKETS)
}

/// All AI metrics.
pub struct AiMetrics {
    pub calls: Family<CallLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost: Family<CallLabels, Counter<f64, AtomicU64>>,
    pub overhead: Family<OverheadLabels, Histogram, fn() -> Histogram>,
    pub prompt_calls: Family<PromptLabels, Counter>,
    pub prompt_cost: Family<PromptLabels, Counter<f64, AtomicU64>>,
}

impl AiMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = AiMetrics {
            calls: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            overhead: Family::new_with_constructor(overhead_histogram as fn() -> Histogram),
            prompt_calls: Family::default(),
            prompt_cost: Family::default(),
        };
        registry.register(
            "portcullis_ai_calls",
            "AI calls served, by consumer, route and provider/model",
            metrics.calls.clone(),
        );
        registry.register(
            "portcullis_ai_tokens",
            "Tokens of AI calls by consumer, route, provider/model and kind",
            metrics.tokens.clone(),
        );
        registry.register(
            "portcullis_ai_cost",
            "Cost of AI calls from the price table, by consumer, route and provider/model",
            metrics.cost.clone(),
        );
        registry.register(
            "portcullis_ai_overhead_seconds",
            "Time the gateway added to an AI call before the response headers, by route",
            metrics.overhead.clone(),
        );
        registry.register(
            "portcullis_ai_prompt_calls",
            "AI calls made by prompt endpoints, by consumer, route, prompt and version",
            metrics.prompt_calls.clone(),
        );
        registry.register(
            "portcullis_ai_prompt_cost",
            "Cost of the calls of prompt endpoints, by consumer, route, prompt and version",
            metrics.prompt_cost.clone(),
        );
        registry.register(
            "portcullis_ai_provider_key_state",
            "State of each API key of a provider's pool, by provider, key index and state: 1 for the current state",
            crate::pool::KEY_STATE.clone(),
        );
        registry.register(
            "portcullis_ai_provider_key_cooldowns",
            "Cool-downs of provider API keys, by provider, key index and reason",
            crate::pool::KEY_COOLDOWNS.clone(),
        );
        metrics
    }

    /// Adds one finished call.
    pub fn record(&self, summary: &CallSummary, consumer: &str, route: &str) {
        let labels = CallLabels {
            consumer: consumer.to_string(),
            route: route.to_string(),
            model: summary.target.to_string(),
        };
        self.calls.get_or_create(&labels).inc();
        if let (Some(prompt), Some(version)) = (&summary.prompt, summary.prompt_version) {
            let prompt_labels = PromptLabels {
                consumer: labels.consumer.clone(),
                route: labels.route.clone(),
                prompt: prompt.to_string(),
                version: version.to_string(),
            };
            self.prompt_calls.get_or_create(&prompt_labels).inc();
            if let Some(cost) = summary.cost {
                self.prompt_cost.get_or_create(&prompt_labels).inc_by(cost);
            }
        }
        if let Some(cost) = summary.cost {
            self.cost.get_or_create(&labels).inc_by(cost);
        }
        for (kind, count) in [
            ("input", summary.input_tokens),
            ("cache_read", summary.cache_read_tokens),
            ("cache_write", summary.cache_write_tokens),
            ("output", summary.output_tokens),
            ("reasoning", summary.reasoning_tokens),
        ] {
            if count > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        consumer: labels.consumer.clone(),
                        route: labels.route.clone(),
                        model: labels.model.clone(),
                        kind,
                    })
                    .inc_by(count);
            }
        }
    }
}
