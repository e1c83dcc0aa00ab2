//! The `ai-limits` policy: token limits and money budgets for the calls of `ai` routes.

use serde::{Deserialize, Serialize};

use crate::ai::AiConfig;
use crate::load::KeyError;
use crate::model::{BackendErrorAction, CounterBackend, PolicySpec, QuotaPeriod};

/// Token limits and a money budget per consumer or team, checked before each AI call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiLimitsSpec {
    /// Instance name; limits with different names apply together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tokens of every kind per minute, refilled continuously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tokens of every kind per calendar day in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Cost per calendar day or month, priced with `ai.prices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// Whose calls share the counters.
    #[serde(default)]
    pub by: AiLimitKey,
    /// Teams (consumer roles) the limit applies to; empty means every consumer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// Requested models (aliases or `provider/model`) the limit applies to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Keep separate counters for each requested model.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_model: bool,
    /// Output tokens reserved, and sent as the provider's maximum, for a request that sets no
    /// `max_tokens` or `max_completion_tokens`.
    #[serde(default = "default_output_tokens")]
    pub default_output_tokens: u64,
    /// The store of the counters.
    #[serde(default, skip_serializing_if = "is_local")]
    pub backend: CounterBackend,
    /// The action on a call when the counter backend fails.
    #[serde(default, skip_serializing_if = "is_allow")]
    pub on_backend_error: BackendErrorAction,
}

/// A money budget per calendar period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Spend allowed per period, in the currency unit of `ai.prices`.
    pub amount: f64,
    pub period: QuotaPeriod,
}

/// The subject whose calls share the counters of an `ai-limits` policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AiLimitKey {
    /// The authenticated consumer; calls without one are counted by client IP.
    #[default]
    Consumer,
    /// The consumer's team, one of its roles: every consumer of the team shares the counters.
    Team,
}

/// Default of `default_output_tokens`, equal to the default `max_tokens` that the gateway sends
/// to Anthropic.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// Largest token limit, so that the counters stay exact in Redis, whose Lua numbers are doubles.
pub const MAX_TOKEN_LIMIT: u64 = 1_000_000_000_000;

/// Largest budget amount: counters keep money in millionths of the unit, and 10^9 units of them
/// still fit exactly in a Lua double.
pub const MAX_BUDGET_AMOUNT: f64 = 1_000_000_000.0;

fn default_output_tokens() -> u64 {
    DEFAULT_OUTPUT_TOKENS
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_local(backend: &CounterBackend) -> bool {
    *backend == CounterBackend::Local
}

fn is_allow(action: &BackendErrorAction) -> bool {
    *action == BackendErrorAction::Allow
}

/// Checks an `ai-limits` policy at `key`, such as `routes[0].policies[1].ai-limits`.
pub(crate) fn validate(key: &str, spec: &AiLimitsSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if spec.tokens_per_minute.is_none() && spec.tokens_per_day.is_none() && spec.budget.is_none() {
        errors.push(KeyError::new(
            key,
            "ai-limits needs at least one of tokens_per_minute, tokens_per_day and budget",
        ));
    }
    let counts = [
        ("tokens_per_minute", spec.tokens_per_minute),
        ("tokens_per_day", spec.tokens_per_day),
        ("default_output_tokens", Some(spec.default_output_tokens)),
    ];
    for (field, value) in counts {
        match value {
            Some(0) => errors.push(KeyError::new(
                format!("{key}.{field}"),
                "must be greater than 0",
            )),
            Some(value) if value > MAX_TOKEN_LIMIT => errors.push(KeyError::new(
                format!("{key}.{field}"),
                format!("must be at most {MAX_TOKEN_LIMIT}"),
            )),
            _ => {}
        }
    }
    if let Some(budget) = &spec.budget {
        let valid =
            budget.amount.is_finite() && budget.amount > 0.0 && budget.amount <= MAX_BUDGET_AMOUNT;
        if !valid {
            errors.push(KeyError::new(
                format!("{key}.budget.amount"),
                format!(
                    "must be a number greater than 0 and at most {MAX_BUDGET_AMOUNT}, in the currency unit of ai.prices"
                ),
            ));
        }
    }
    if let Some(name) = &spec.name {
        crate::load::check_entity_name(&mut errors, &format!("{key}.name"), name);
    }
    for (j, team) in spec.teams.iter().enumerate() {
        crate::load::check_entity_name(&mut errors, &format!("{key}.teams[{j}]"), team);
    }
    for (j, model) in spec.models.iter().enumerate() {
        if model.is_empty() {
            errors.push(KeyError::new(
                format!("{key}.models[{j}]"),
                "must not be empty; write an alias of ai.models or a `provider/model`",
            ));
        }
    }
    errors
}

/// Checks that each `models` entry of the `ai-limits` policies in `policies`, at `at` such as
/// `routes[0].policies`, names a model of the node's `ai` section: an alias of `ai.models` or a
/// `provider/model` of a provider in `ai.providers`. A node without an `ai` section has no
/// models, so every entry is rejected there.
pub fn validate_ai_limit_models(
    at: &str,
    policies: &[PolicySpec],
    ai: Option<&AiConfig>,
) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let PolicySpec::AiLimits(spec) = policy else {
            continue;
        };
        for (j, model) in spec.models.iter().enumerate() {
            // An empty entry has its own error from `validate`.
            if model.is_empty() || ai.is_some_and(|ai| ai.has_model(model)) {
                continue;
            }
            errors.push(KeyError::new(
                format!("{at}[{i}].ai-limits.models[{j}]"),
                format!(
                    "model `{model}` is not an alias in ai.models or a `provider/model` of a \
                     configured provider, so the limit would never apply"
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use crate::load::load_str;
    use crate::model::PolicySpec;

    const CONFIG: &str = "ai:
  providers:
    - name: openai-main
      type: openai
      base_url: http://127.0.0.1:9102/v1
routes:
  - name: llm
    paths: [/v1]
    ai: {}
    policies:
      - ai-limits:
          tokens_per_minute: 10000
          budget: { amount: 5.00, period: month }
          by: team
";

    fn env(_: &str) -> Option<String> {
        None
    }

    fn errors(source: &str) -> Vec<String> {
        match load_str(source, None, &env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn example_loads_with_defaults() {
        let config = load_str(CONFIG, None, &env).unwrap();
        let PolicySpec::AiLimits(spec) = &config.entities.routes[0].policies[0] else {
            panic!("not ai-limits");
        };
        assert_eq!(spec.tokens_per_minute, Some(10000));
        assert_eq!(spec.tokens_per_day, None);
        assert_eq!(spec.budget.as_ref().unwrap().amount, 5.0);
        assert_eq!(spec.by, super::AiLimitKey::Team);
        assert_eq!(spec.default_output_tokens, super::DEFAULT_OUTPUT_TOKENS);
        assert_eq!(
            config.entities.routes[0].policies[0].override_key(),
            "ai-limits"
        );
    }

    #[test]
    fn spec_round_trips_through_the_store_form() {
        let config = load_str(CONFIG, None, &env).unwrap();
        let policy = &config.entities.routes[0].policies[0];
        let stored = serde_json::to_value(policy).unwrap();
        assert_eq!(stored["ai-limits"]["budget"]["period"], "month");
        assert!(stored["ai-limits"].get("backend").is_none(), "{stored}");
        let read: PolicySpec = serde_json::from_value(stored).unwrap();
        assert_eq!(&read, policy);
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (
                "tokens_per_minute: 10000",
                "tokens_per_minute: 0",
                "tokens_per_minute",
            ),
            ("amount: 5.00", "amount: -1", "budget.amount"),
            (
                "by: team",
                "by: team\n          teams: [\"a b\"]",
                "teams[0]",
            ),
            ("by: team", "by: team\n          name: \"x/y\"", "name"),
        ];
        for (from, to, field) in cases {
            let found = errors(&CONFIG.replace(from, to));
            let key = format!("key `routes[0].policies[0].ai-limits.{field}`");
            assert!(
                found.iter().any(|error| error.contains(&key)),
                "{field}: {found:?}"
            );
        }
    }

    #[test]
    fn limit_needs_a_quantity() {
        let source = CONFIG
            .replace("          tokens_per_minute: 10000\n", "")
            .replace("          budget: { amount: 5.00, period: month }\n", "");
        let found = errors(&source);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("needs at least one of"), "{found:?}");
    }

    #[test]
    fn models_must_be_configured() {
        let source = CONFIG
            .replace(
                "      base_url: http://127.0.0.1:9102/v1\n",
                "      base_url: http://127.0.0.1:9102/v1\n  models:\n    - name: smart\n      targets: [openai-main/gpt-4.1]\n",
            )
            .replace(
                "by: team",
                "by: team\n          models: [smart, openai-main/gpt-4o, gpt-4.1, other/gpt-4.1]",
            );
        let found = errors(&source);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("key `routes[0].policies[0].ai-limits.models[2]`"),
            "{found:?}"
        );
        assert!(
            found[0].contains("model `gpt-4.1` is not an alias"),
            "{found:?}"
        );
        assert!(
            found[1].contains("key `routes[0].policies[0].ai-limits.models[3]`"),
            "{found:?}"
        );

        // A global policy on a node without an `ai` section names no model.
        let global = "policies:\n  - ai-limits: { tokens_per_day: 100, models: [smart] }\n";
        let found = errors(global);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("key `policies[0].ai-limits.models[0]`"),
            "{found:?}"
        );
    }

    #[test]
    fn redis_backend_needs_redis() {
        let source = CONFIG.replace("by: team", "by: team\n          backend: redis");
        let found = errors(&source);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("key `routes[0].policies[0].ai-limits.backend`"),
            "{found:?}"
        );
    }
}
