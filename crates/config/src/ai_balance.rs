//! Provider key pools, retries and weighted alias targets of the `ai` section.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::ai::{ProviderKey, ProviderSpec};
use crate::duration;
use crate::load::KeyError;

/// Maximum number of keys in one provider's pool.
pub const MAX_POOL_KEYS: usize = 64;
/// Maximum retries of one target before the next target is tried.
pub const MAX_PROVIDER_RETRIES: u32 = 10;

/// Cool-down rules of a provider's pooled API keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyCooldown {
    /// Time a key is skipped after a 429 without `Retry-After`, or after `failures` errors.
    #[serde(with = "duration")]
    pub duration: Duration,
    /// Consecutive 401, 403 or 5xx responses on one key that start its cool-down.
    pub failures: u32,
    /// Maximum `Retry-After` honoured. A longer wait is cut to this.
    #[serde(with = "duration")]
    pub max_retry_after: Duration,
}

impl Default for KeyCooldown {
    fn default() -> Self {
        KeyCooldown {
            duration: Duration::from_secs(30),
            failures: 3,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Retries of one provider target on 429 and 5xx, before the next target is tried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderRetries {
    /// Retries after the first attempt; 0 turns retries off.
    pub attempts: u32,
    /// Wait before the first retry, doubled before each further retry.
    #[serde(with = "duration")]
    pub backoff: Duration,
}

impl Default for ProviderRetries {
    fn default() -> Self {
        ProviderRetries {
            attempts: 0,
            backoff: Duration::from_millis(200),
        }
    }
}

/// One target of a model alias: `provider/model`, with a weight when the alias balances load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AliasTarget {
    pub target: String,
    /// Share of the alias's requests that start at this target. `None` in the plain list form.
    pub weight: Option<u32>,
}

impl AliasTarget {
    /// Creates a target without a weight, as in the plain list form.
    pub fn new(target: impl Into<String>) -> Self {
        AliasTarget {
            target: target.into(),
            weight: None,
        }
    }
}

impl<'de> Deserialize<'de> for AliasTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;

        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = AliasTarget;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a `provider/model` string or a map with `target` and `weight`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<AliasTarget, E> {
                Ok(AliasTarget::new(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AliasTarget, A::Error> {
                let mut target = None;
                let mut weight = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "target" => target = Some(map.next_value::<String>()?),
                        "weight" => weight = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["target", "weight"]));
                        }
                    }
                }
                Ok(AliasTarget {
                    target: target.ok_or_else(|| de::Error::missing_field("target"))?,
                    weight,
                })
            }
        }

        deserializer.deserialize_any(TargetVisitor)
    }
}

impl ProviderSpec {
    /// Returns the provider's keys in pool order: `api_key`, or the `api_keys` list.
    pub fn pool_keys(&self) -> Vec<ProviderKey> {
        match &self.api_key {
            Some(key) => vec![key.clone()],
            None => self.api_keys.clone(),
        }
    }
}

/// Checks the key pool, cool-down and retry settings of the provider at `at`.
pub(crate) fn validate_provider(errors: &mut Vec<KeyError>, at: &str, provider: &ProviderSpec) {
    if provider.api_key.is_some() && !provider.api_keys.is_empty() {
        errors.push(KeyError::new(
            format!("{at}.api_keys"),
            "set either `api_key` or `api_keys`, not both",
        ));
    }
    if provider.api_keys.len() > MAX_POOL_KEYS {
        errors.push(KeyError::new(
            format!("{at}.api_keys"),
            format!("a provider takes at most {MAX_POOL_KEYS} keys"),
        ));
    }
    let mut seen_values = HashSet::new();
    let mut seen_credentials = HashSet::new();
    for (j, key) in provider.api_keys.iter().enumerate() {
        let key_at = format!("{at}.api_keys[{j}]");
        let before = errors.len();
        crate::ai::check_provider_key(errors, &key_at, key);
        if errors.len() > before {
            continue;
        }
        let duplicate = match key {
            ProviderKey::Value(value) => !seen_values.insert(value.expose()),
            ProviderKey::Credential(name) => !seen_credentials.insert(name.as_str()),
        };
        if duplicate {
            errors.push(KeyError::new(
                key_at,
                "the same key is listed twice; check the environment variables and credential \
                 names of the list",
            ));
        }
    }
    if provider.api_keys.is_empty() && provider.key_cooldown != KeyCooldown::default() {
        errors.push(KeyError::new(
            format!("{at}.key_cooldown"),
            "`key_cooldown` applies to a pool of `api_keys`; a single `api_key` never cools down",
        ));
    }
    let cooldown = &provider.key_cooldown;
    for (field, value) in [
        ("duration", cooldown.duration),
        ("max_retry_after", cooldown.max_retry_after),
    ] {
        if value.is_zero() {
            errors.push(KeyError::new(
                format!("{at}.key_cooldown.{field}"),
                "must be greater than 0",
            ));
        }
    }
    if cooldown.failures == 0 {
        errors.push(KeyError::new(
            format!("{at}.key_cooldown.failures"),
            "must be 1 or more",
        ));
    }
    if provider.retries.attempts > MAX_PROVIDER_RETRIES {
        errors.push(KeyError::new(
            format!("{at}.retries.attempts"),
            format!("must be 0 to {MAX_PROVIDER_RETRIES}"),
        ));
    }
    if provider.retries.attempts > 0 && provider.retries.backoff > Duration::from_secs(60) {
        errors.push(KeyError::new(
            format!("{at}.retries.backoff"),
            "must be at most 60s, because the client waits through every backoff",
        ));
    }
}

/// Checks the weight of the alias target at `at`.
pub(crate) fn validate_weight(errors: &mut Vec<KeyError>, at: &str, target: &AliasTarget) {
    if target.weight == Some(0) {
        errors.push(KeyError::new(
            format!("{at}.weight"),
            "must be 1 or more; remove the target to stop sending it requests",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::ai::tests::{env, errors};
    use crate::load::load_str;

    const POOL: &str = r#"ai:
  providers:
    - name: openai-main
      type: openai
      base_url: http://127.0.0.1:9102/v1
      api_keys: ["${K1}", "${K2}"]
      key_cooldown: { duration: 10s, failures: 2 }
      retries: { attempts: 2, backoff: 50ms }
  models:
    - name: spread
      targets:
        - { target: openai-main/a, weight: 3 }
        - { target: openai-main/b, weight: 1 }
    - name: chain
      targets: [openai-main/a, openai-main/b]
routes:
  - name: llm
    paths: [/v1]
    ai: {}
"#;

    #[test]
    fn pool_and_weights_load() {
        let config = load_str(POOL, None, &env).unwrap();
        let ai = config.ai.unwrap();
        let provider = &ai.providers[0];
        let keys: Vec<String> = provider
            .pool_keys()
            .iter()
            .map(|key| match key {
                crate::ProviderKey::Value(value) => value.expose().to_string(),
                crate::ProviderKey::Credential(name) => panic!("credential {name}"),
            })
            .collect();
        assert_eq!(keys, ["key-for-K1", "key-for-K2"]);
        assert_eq!(provider.key_cooldown.failures, 2);
        assert_eq!(provider.key_cooldown.duration.as_secs(), 10);
        assert_eq!(provider.key_cooldown.max_retry_after.as_secs(), 300);
        assert_eq!(provider.retries.attempts, 2);
        assert_eq!(provider.retries.backoff.as_millis(), 50);
        assert_eq!(ai.models[0].targets[0].weight, Some(3));
        assert_eq!(ai.models[0].targets[1].target, "openai-main/b");
        assert_eq!(ai.models[1].targets[0].weight, None);
        assert!(!format!("{provider:?}").contains("key-for"));
    }

    #[test]
    fn pool_errors_are_named() {
        let cases = [
            (
                r#"api_keys: ["${K1}", "${K2}"]"#,
                "api_keys: [\"${K1}\", \"${K1}\"]",
                "ai.providers[0].api_keys[1]",
            ),
            (
                r#"api_keys: ["${K1}", "${K2}"]"#,
                "api_keys: [\"${K1}\"]\n      api_key: ${K2}",
                "ai.providers[0].api_keys",
            ),
            (
                "failures: 2",
                "failures: 0",
                "ai.providers[0].key_cooldown.failures",
            ),
            (
                "attempts: 2",
                "attempts: 11",
                "ai.providers[0].retries.attempts",
            ),
            ("weight: 3", "weight: 0", "ai.models[0].targets[0].weight"),
            (
                "target: openai-main/a, weight: 3",
                "target: other/a, weight: 3",
                "ai.models[0].targets[0]",
            ),
            (
                "weight: 3",
                "weight: 3, priority: 1",
                "ai.models[0].targets[0]",
            ),
            (
                r#"api_keys: ["${K1}", "${K2}"]"#,
                "api_key: ${K1}",
                "ai.providers[0].key_cooldown",
            ),
        ];
        for (from, to, key) in cases {
            let source = POOL.replacen(from, to, 1);
            let errors = errors(&source);
            assert!(
                errors
                    .iter()
                    .any(|error| error.contains(&format!("key `{key}`"))),
                "{key}: {errors:?}"
            );
        }
    }
}
