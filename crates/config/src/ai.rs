//! The `ai` section: LLM providers, model aliases and token prices for routes with `ai: {}`.
//!
//! Providers are node settings read from the file only. Their API keys come from the
//! environment through `${VAR}`, or name a credential that the admin API stored encrypted
//! (`{credential: NAME}`). Providers are never written to the store, and [`ApiKey`] prints as
//! `[redacted]` so that no log line or debug dump shows a key.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::ai_balance::{AliasTarget, KeyCooldown, ProviderRetries};
use crate::duration;
use crate::load::KeyError;

/// The `ai` section of a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiConfig {
    #[serde(default)]
    pub providers: Vec<ProviderSpec>,
    /// Aliases that clients send as `model`, each with fallback targets in order.
    #[serde(default)]
    pub models: Vec<ModelAliasSpec>,
    #[serde(default)]
    pub prices: Vec<PriceSpec>,
    /// Prompt templates that routes publish as REST endpoints.
    #[serde(default)]
    pub prompts: Vec<crate::ai_prompts::PromptSpec>,
    /// Named checks on prompts that routes apply before any provider call.
    #[serde(default)]
    pub guards: Vec<crate::ai_prompts::GuardSpec>,
    /// Settings of the usage report that `GET /ai/usage` reads from the store.
    #[serde(default)]
    pub usage_report: UsageReportSpec,
}

/// Settings of the writer that adds finished calls' usage to the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageReportSpec {
    /// Time between two writes of the aggregated usage.
    #[serde(with = "duration")]
    pub flush_interval: std::time::Duration,
    /// Records that trigger a write before `flush_interval` ends.
    pub batch_size: usize,
    /// Records waiting for the writer; a record that finds the queue full is dropped.
    pub queue_size: usize,
}

impl Default for UsageReportSpec {
    fn default() -> Self {
        UsageReportSpec {
            flush_interval: std::time::Duration::from_secs(1),
            batch_size: 500,
            queue_size: 10_000,
        }
    }
}

/// One LLM provider account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// Base URL of the API; defaults to the provider's public URL for `openai`, `anthropic` and
    /// `mistral`, and is required for `openai-compatible`.
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<ProviderKey>,
    /// A pool of API keys that calls are spread over, in place of `api_key`.
    #[serde(default)]
    pub api_keys: Vec<ProviderKey>,
    #[serde(default)]
    pub key_cooldown: KeyCooldown,
    #[serde(default)]
    pub retries: ProviderRetries,
    /// `max_tokens` sent to Anthropic when the client sets neither `max_tokens` nor
    /// `max_completion_tokens`, because the Messages API requires it.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
    /// The `api-version` query parameter sent to an `azure-openai` provider.
    #[serde(default)]
    pub api_version: Option<String>,
}

impl AiConfig {
    /// Returns true when a request may name `model`: it is an alias of `models` or a
    /// `provider/model` whose provider is in `providers`.
    pub fn has_model(&self, model: &str) -> bool {
        let is_alias = self.models.iter().any(|alias| alias.name == model);
        let is_target = split_target(model)
            .is_some_and(|(provider, _)| self.providers.iter().any(|spec| spec.name == provider));
        is_alias || is_target
    }
}

/// The `api-version` sent to Azure OpenAI when the provider sets none: the generally available
/// release of the data-plane inference API, 2024-10-21.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

impl ProviderSpec {
    /// Returns the `api-version` for an `azure-openai` provider.
    pub fn azure_api_version(&self) -> &str {
        self.api_version
            .as_deref()
            .unwrap_or(DEFAULT_AZURE_API_VERSION)
    }
}

fn default_max_tokens() -> u32 {
    4096
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions and Embeddings.
    Openai,
    /// Anthropic Messages; requests are translated from the OpenAI shape.
    Anthropic,
    /// A server with an OpenAI-compatible API, such as vLLM, Ollama or llama.cpp.
    OpenaiCompatible,
    /// Mistral's OpenAI-compatible API.
    Mistral,
    /// The Google Gemini API (`generateContent`); requests are translated from the OpenAI shape.
    Gemini,
    /// Azure OpenAI: the OpenAI API under deployment URLs, with an `api-version` query.
    AzureOpenai,
}

impl ProviderKind {
    /// Returns the provider's public base URL, or `None` for `openai-compatible` and
    /// `azure-openai`, whose URL names the operator's own server or Azure resource.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenai => None,
        }
    }

    /// Returns the type name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenaiCompatible => "openai-compatible",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Gemini => "gemini",
            ProviderKind::AzureOpenai => "azure-openai",
        }
    }
}

/// A provider API key. Its `Debug` form is `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key value, such as a decrypted stored credential.
    pub fn new(value: impl Into<String>) -> ApiKey {
        ApiKey(value.into())
    }

    /// Returns the key itself, for the request header that carries it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One API key of a provider as the file writes it: the key itself, usually `${VAR}`, or
/// `{credential: NAME}`, a credential that the admin API stored encrypted. Its `Debug` form
/// shows a credential's name and never a key.
#[derive(Clone, PartialEq, Eq)]
pub enum ProviderKey {
    Value(ApiKey),
    /// The name of a stored credential, decrypted by the control plane.
    Credential(String),
}

impl ProviderKey {
    /// Returns the name of the stored credential, or `None` for a key written in the file.
    pub fn credential(&self) -> Option<&str> {
        match self {
            ProviderKey::Value(_) => None,
            ProviderKey::Credential(name) => Some(name),
        }
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderKey::Value(key) => key.fmt(f),
            ProviderKey::Credential(name) => f.debug_tuple("Credential").field(name).finish(),
        }
    }
}

impl<'de> Deserialize<'de> for ProviderKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = ProviderKey;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an API key string, such as ${OPENAI_API_KEY}, or `{credential: NAME}`")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<ProviderKey, E> {
                Ok(ProviderKey::Value(ApiKey(value.to_string())))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ProviderKey, A::Error> {
                let mut credential = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "credential" => credential = Some(map.next_value::<String>()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["credential"]));
                        }
                    }
                }
                credential
                    .map(ProviderKey::Credential)
                    .ok_or_else(|| serde::de::Error::missing_field("credential"))
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// Timeouts for requests to one provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTimeouts {
    /// Time to open a connection (the next target is tried past it).
    #[serde(with = "duration")]
    pub connect: std::time::Duration,
    /// Time from sending a request to receiving the response headers, and the longest pause
    /// between two chunks of a streamed response.
    #[serde(with = "duration")]
    pub response: std::time::Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        ProviderTimeouts {
            connect: std::time::Duration::from_secs(5),
            response: std::time::Duration::from_secs(120),
        }
    }
}

/// A model alias and the `provider/model` targets that serve it: tried in order, or spread by
/// weight when a target has one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAliasSpec {
    pub name: String,
    pub targets: Vec<AliasTarget>,
}

/// Prices of one `provider/model`, in currency units per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Price of input tokens read from the provider's prompt cache; defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million: Option<f64>,
    /// Price of input tokens written to the prompt cache; defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
    /// Price of reasoning tokens; defaults to the output price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_million: Option<f64>,
}

/// The `ai` kind of a route: it serves the OpenAI-compatible API itself instead of forwarding to
/// a service, or with `prompt` one prompt endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiRouteSpec {
    /// The `ai.prompts` entry that the route serves as a REST endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The `ai.guards` entry applied to the route's prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

/// Splits `provider/model` at the first `/`; model names may contain more slashes.
pub fn split_target(target: &str) -> Option<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(provider, model)| !provider.is_empty() && !model.is_empty())
}

/// Checks the `ai` section, and that the file's `ai` routes have one to use.
pub(crate) fn validate_config(config: &crate::model::Config) -> Vec<KeyError> {
    let mut errors = match &config.ai {
        Some(ai) => validate(ai),
        None => Vec::new(),
    };
    if let Some(ai) = &config.ai {
        errors.extend(crate::ai_prompts::validate(ai));
    }
    errors.extend(crate::ai_prompts::validate_routes(config));
    if config.secrets.master_key.is_none() {
        errors.extend(credentials_without_master_key(config.ai.as_ref()));
    }
    for (i, route) in config.entities.routes.iter().enumerate() {
        if route.ai.is_some() && config.ai.is_none() {
            errors.push(KeyError::new(
                format!("routes[{i}].ai"),
                "an `ai` route needs the top-level `ai` section with its providers",
            ));
        }
    }
    errors
}

/// Returns an error for each provider key that names a stored credential, for a node without
/// `secrets.master_key`, which could not decrypt it.
fn credentials_without_master_key(ai: Option<&AiConfig>) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (i, provider) in ai
        .into_iter()
        .flat_map(|ai| ai.providers.iter())
        .enumerate()
    {
        let keys = provider
            .api_key
            .iter()
            .map(|key| (format!("ai.providers[{i}].api_key"), key))
            .chain(
                provider
                    .api_keys
                    .iter()
                    .enumerate()
                    .map(|(j, key)| (format!("ai.providers[{i}].api_keys[{j}]"), key)),
            );
        for (at, key) in keys {
            if let Some(name) = key.credential() {
                errors.push(KeyError::new(
                    format!("{at}.credential"),
                    format!(
                        "credential `{name}` is stored encrypted, and this node has no \
                         `secrets.master_key` to decrypt it; set `secrets.master_key`"
                    ),
                ));
            }
        }
    }
    errors
}

/// Checks the `ai` section.
fn validate(ai: &AiConfig) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let report = &ai.usage_report;
    if report.flush_interval.is_zero() {
        errors.push(KeyError::new(
            "ai.usage_report.flush_interval",
            "must be greater than 0, such as 1s",
        ));
    }
    for (key, value) in [
        ("batch_size", report.batch_size),
        ("queue_size", report.queue_size),
    ] {
        if value == 0 {
            errors.push(KeyError::new(
                format!("ai.usage_report.{key}"),
                "must be at least 1",
            ));
        }
    }
    let mut providers = HashSet::new();
    for (i, provider) in ai.providers.iter().enumerate() {
        let at = format!("ai.providers[{i}]");
        crate::load::check_entity_name(&mut errors, &format!("{at}.name"), &provider.name);
        if !providers.insert(provider.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate provider name `{}`", provider.name),
            ));
        }
        match &provider.base_url {
            Some(url) => {
                if let Err(message) = check_base_url(url) {
                    errors.push(KeyError::new(format!("{at}.base_url"), message));
                }
            }
            None if provider.kind == ProviderKind::AzureOpenai => errors.push(KeyError::new(
                format!("{at}.base_url"),
                "an `azure-openai` provider needs `base_url`, the resource endpoint such as \
                 https://my-resource.openai.azure.com",
            )),
            None if provider.kind.default_base_url().is_none() => errors.push(KeyError::new(
                format!("{at}.base_url"),
                "an `openai-compatible` provider needs `base_url`, such as http://127.0.0.1:8000/v1",
            )),
            None => {}
        }
        if let Some(key) = &provider.api_key {
            check_provider_key(&mut errors, &format!("{at}.api_key"), key);
        }
        crate::ai_balance::validate_provider(&mut errors, &at, provider);
        match (&provider.api_version, provider.kind) {
            (Some(version), ProviderKind::AzureOpenai) => {
                let valid = !version.is_empty()
                    && version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !valid {
                    errors.push(KeyError::new(
                        format!("{at}.api_version"),
                        format!(
                            "invalid api_version `{version}`; write an Azure OpenAI API version \
                             such as 2024-10-21"
                        ),
                    ));
                }
            }
            (Some(_), kind) => errors.push(KeyError::new(
                format!("{at}.api_version"),
                format!(
                    "`api_version` applies to `azure-openai` providers only, not to `{}`",
                    kind.name()
                ),
            )),
            (None, _) => {}
        }
        if provider.default_max_tokens == 0 {
            errors.push(KeyError::new(
                format!("{at}.default_max_tokens"),
                "must be greater than 0",
            ));
        }
        for (field, value) in [
            ("connect", provider.timeouts.connect),
            ("response", provider.timeouts.response),
        ] {
            if value.is_zero() {
                errors.push(KeyError::new(
                    format!("{at}.timeouts.{field}"),
                    "must be greater than 0",
                ));
            }
        }
    }

    let mut aliases = HashSet::new();
    for (i, alias) in ai.models.iter().enumerate() {
        let at = format!("ai.models[{i}]");
        if alias.name.is_empty() || alias.name.contains('/') {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!(
                    "invalid alias `{}`; an alias is a non-empty name without `/`",
                    alias.name
                ),
            ));
        }
        if !aliases.insert(alias.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate model alias `{}`", alias.name),
            ));
        }
        if alias.targets.is_empty() {
            errors.push(KeyError::new(
                format!("{at}.targets"),
                "a model alias needs at least one `provider/model` target",
            ));
        }
        for (j, target) in alias.targets.iter().enumerate() {
            if let Err(message) = check_model_target(&target.target, &providers) {
                errors.push(KeyError::new(format!("{at}.targets[{j}]"), message));
            }
            crate::ai_balance::validate_weight(&mut errors, &format!("{at}.targets[{j}]"), target);
        }
    }

    let mut priced = HashSet::new();
    for (i, price) in ai.prices.iter().enumerate() {
        let at = format!("ai.prices[{i}]");
        if let Err(message) = check_model_target(&price.model, &providers) {
            errors.push(KeyError::new(format!("{at}.model"), message));
        }
        if !priced.insert(price.model.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.model"),
                format!("`{}` already has a price", price.model),
            ));
        }
        errors.extend(validate_price_amounts(&at, price));
    }
    errors
}

/// Checks that every price of `price` is a number from 0 to [`MAX_PRICE_PER_MILLION`]. Keys
/// start with `at`.
pub fn validate_price_amounts(at: &str, price: &PriceSpec) -> Vec<KeyError> {
    let fields = [
        ("input_per_million", Some(price.input_per_million)),
        ("output_per_million", Some(price.output_per_million)),
        ("cache_read_per_million", price.cache_read_per_million),
        ("cache_write_per_million", price.cache_write_per_million),
        ("reasoning_per_million", price.reasoning_per_million),
    ];
    let mut errors = Vec::new();
    for (field, value) in fields {
        if let Some(value) = value
            && (!value.is_finite() || !(0.0..=MAX_PRICE_PER_MILLION).contains(&value))
        {
            errors.push(KeyError::new(
                format!("{at}.{field}"),
                format!("must be a number from 0 to {MAX_PRICE_PER_MILLION}"),
            ));
        }
    }
    errors
}

/// The highest price per million tokens: one currency unit per token. The bound keeps every
/// cost finite, since token counts are at most 2^64.
pub const MAX_PRICE_PER_MILLION: f64 = 1_000_000.0;

/// Checks a price that the admin API stores: the amounts, and that `model` is
/// `provider/model` of a provider in `ai`. Keys have no prefix, such as `input_per_million`.
pub fn validate_stored_price(price: &PriceSpec, ai: Option<&AiConfig>) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let providers: HashSet<&str> = ai
        .map(|ai| ai.providers.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    if price
        .model
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        errors.push(KeyError::new(
            "model",
            format!(
                "invalid model {:?}; a model has no spaces or control characters",
                price.model
            ),
        ));
    } else if let Err(message) = check_model_target(&price.model, &providers) {
        errors.push(KeyError::new("model", message));
    }
    for error in validate_price_amounts("", price) {
        errors.push(KeyError::new(
            error.key.trim_start_matches('.'),
            error.message,
        ));
    }
    errors
}

/// Checks one provider key: a value must fit in a header, and a credential needs a valid name.
pub(crate) fn check_provider_key(errors: &mut Vec<KeyError>, at: &str, key: &ProviderKey) {
    match key {
        ProviderKey::Value(value) => {
            if let Some(message) = invalid_key_message(value) {
                errors.push(KeyError::new(at, message));
            }
        }
        ProviderKey::Credential(name) => {
            crate::load::check_entity_name(errors, &format!("{at}.credential"), name);
        }
    }
}

/// Returns why `key` cannot be sent in a header, or `None` when it can.
pub(crate) fn invalid_key_message(key: &ApiKey) -> Option<&'static str> {
    (key.0.is_empty() || key.0.bytes().any(|b| !b.is_ascii_graphic())).then_some(
        "the API key is empty or has spaces or control characters; check the environment \
         variable it comes from",
    )
}

fn check_model_target(target: &str, providers: &HashSet<&str>) -> Result<(), String> {
    let Some((provider, _)) = split_target(target) else {
        return Err(format!(
            "invalid target `{target}`; write `provider/model`, such as openai-main/gpt-4.1"
        ));
    };
    if !providers.contains(provider) {
        return Err(format!(
            "provider `{provider}` is not defined in `ai.providers`"
        ));
    }
    Ok(())
}

fn check_base_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("invalid base URL `{url}`"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "base URL `{url}` must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none() {
        return Err(format!("base URL `{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("base URL `{url}` must not have a query string"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::load::load_str;

    const EXAMPLE: &str = "ai:
  providers:
    - name: claude-main
      type: anthropic
      base_url: http://127.0.0.1:9101
      api_key: ${ANTHROPIC_API_KEY}
    - name: openai-main
      type: openai
      base_url: http://127.0.0.1:9102/v1
      api_key: ${OPENAI_API_KEY}
  models:
    - name: smart
      targets: [claude-main/claude-sonnet-4-5, openai-main/gpt-4.1]
  prices:
    - model: claude-main/claude-sonnet-4-5
      input_per_million: 3.00
      output_per_million: 15.00
routes:
  - name: llm
    paths: [/v1]
    ai: {}
    policies:
      - key-auth: {}
";

    pub(crate) fn env(name: &str) -> Option<String> {
        Some(format!("key-for-{name}"))
    }

    /// Returns the errors of `source` as `line: key: message` strings.
    pub(crate) fn errors(source: &str) -> Vec<String> {
        match load_str(source, None, &env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn example_loads() {
        let config = load_str(EXAMPLE, None, &env).unwrap();
        let ai = config.ai.unwrap();
        assert_eq!(ai.providers.len(), 2);
        assert_eq!(ai.providers[0].default_max_tokens, 4096);
        let Some(super::ProviderKey::Value(key)) = &ai.providers[0].api_key else {
            panic!("{:?}", ai.providers[0].api_key);
        };
        assert_eq!(key.expose(), "key-for-ANTHROPIC_API_KEY");
        assert_eq!(
            format!("{:?}", ai.providers[0])
                .matches("[redacted]")
                .count(),
            1
        );
        assert!(!format!("{:?}", ai.providers[0]).contains("key-for"));
        assert!(config.entities.routes[0].ai.is_some());
        assert!(config.entities.routes[0].service.is_none());
    }

    /// `EXAMPLE` with `openai-main` on stored credentials and a master key.
    fn with_credentials(keys: &str) -> String {
        let source = EXAMPLE.replace("      api_key: ${OPENAI_API_KEY}\n", keys);
        format!("secrets:\n  master_key: ${{MASTER_KEY}}\n{source}")
    }

    /// Returns a master key of 32 bytes for `${MASTER_KEY}` and `key-for-NAME` otherwise.
    fn env_with_master_key(name: &str) -> Option<String> {
        match name {
            "MASTER_KEY" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            _ => env(name),
        }
    }

    fn credential_errors(source: &str) -> Vec<String> {
        match load_str(source, None, &env_with_master_key) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn credential_keys_load() {
        use super::ProviderKey;

        let single = with_credentials("      api_key: { credential: openai-prod }\n");
        let config = load_str(&single, None, &env_with_master_key).unwrap();
        let provider = &config.ai.unwrap().providers[1];
        assert_eq!(
            provider.api_key,
            Some(ProviderKey::Credential("openai-prod".into()))
        );
        assert_eq!(
            format!("{:?}", provider.api_key),
            "Some(Credential(\"openai-prod\"))"
        );

        let pool =
            with_credentials("      api_keys: [{ credential: openai-a }, \"${OPENAI_B}\"]\n");
        let config = load_str(&pool, None, &env_with_master_key).unwrap();
        let keys = config.ai.unwrap().providers[1].pool_keys();
        assert_eq!(keys[0].credential(), Some("openai-a"));
        assert_eq!(keys[1].credential(), None);
        assert!(!format!("{keys:?}").contains("key-for"), "{keys:?}");
    }

    #[test]
    fn credential_key_errors() {
        let cases = [
            (
                "      api_key: { credential: \"bad name\" }\n",
                "line 12: key `ai.providers[1].api_key.credential`",
                "invalid name",
            ),
            (
                "      api_keys: [{ credential: a }, { credential: a }]\n",
                "line 12: key `ai.providers[1].api_keys[1]`",
                "listed twice",
            ),
            (
                "      api_key: { secret: a }\n",
                "line 12: key `ai.providers[1].api_key`",
                "unknown field `secret`",
            ),
        ];
        for (keys, location, message) in cases {
            let found = credential_errors(&with_credentials(keys));
            assert_eq!(found.len(), 1, "{keys}: {found:?}");
            assert!(found[0].starts_with(location), "{keys}: {found:?}");
            assert!(found[0].contains(message), "{keys}: {found:?}");
        }
    }

    #[test]
    fn credential_needs_master_key() {
        let source = with_credentials("      api_key: { credential: openai-prod }\n");
        let source = source.replace("secrets:\n  master_key: ${MASTER_KEY}\n", "");
        let found = errors(&source);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("line 10: key `ai.providers[1].api_key.credential`"),
            "{found:?}"
        );
        assert!(found[0].contains("secrets.master_key"), "{found:?}");
    }

    #[test]
    fn unknown_provider_in_target() {
        let source = EXAMPLE.replace("openai-main/gpt-4.1", "openai-other/gpt-4.1");
        let errors = errors(&source);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("line 13: key `ai.models[0].targets[1]`"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("`openai-other` is not defined"),
            "{errors:?}"
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("type: openai\n", "type: palm\n", "ai.providers[1].type"),
            (
                "base_url: http://127.0.0.1:9102/v1",
                "base_url: ftp://x",
                "ai.providers[1].base_url",
            ),
            (
                "input_per_million: 3.00",
                "input_per_million: -1",
                "ai.prices[0].input_per_million",
            ),
            (
                "model: claude-main/claude-sonnet-4-5",
                "model: sonnet",
                "ai.prices[0].model",
            ),
            ("- name: smart", "- name: a/b", "ai.models[0].name"),
        ];
        for (from, to, key) in cases {
            let source = EXAMPLE.replacen(from, to, 1);
            let errors = errors(&source);
            assert!(
                errors
                    .iter()
                    .any(|error| error.contains(&format!("key `{key}`"))),
                "{key}: {errors:?}"
            );
        }
    }

    #[test]
    fn openai_compatible_needs_base_url() {
        let source = EXAMPLE.replace(
            "      type: openai\n      base_url: http://127.0.0.1:9102/v1\n",
            "      type: openai-compatible\n",
        );
        let errors = errors(&source);
        assert!(
            errors[0].contains("key `ai.providers[1].base_url`"),
            "{errors:?}"
        );
    }

    #[test]
    fn gemini_and_azure_providers() {
        let providers = "    - name: gemini-main
      type: gemini
      api_key: ${GEMINI_API_KEY}
    - name: azure-main
      type: azure-openai
      base_url: https://my-resource.openai.azure.com
      api_key: ${AZURE_OPENAI_API_KEY}
      api_version: 2025-01-01-preview
    - name: azure-default
      type: azure-openai
      base_url: https://other.openai.azure.com
";
        let source = EXAMPLE.replacen("  models:\n", &format!("{providers}  models:\n"), 1);
        let config = load_str(&source, None, &env).unwrap();
        let ai = config.ai.unwrap();
        assert_eq!(ai.providers[2].kind, super::ProviderKind::Gemini);
        assert_eq!(ai.providers[2].base_url, None);
        assert_eq!(
            ai.providers[2].kind.default_base_url(),
            Some("https://generativelanguage.googleapis.com/v1beta")
        );
        assert_eq!(ai.providers[3].azure_api_version(), "2025-01-01-preview");
        assert_eq!(
            ai.providers[4].azure_api_version(),
            super::DEFAULT_AZURE_API_VERSION
        );

        let without_url = source.replace("      base_url: https://other.openai.azure.com\n", "");
        let found = self::errors(&without_url);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("key `ai.providers[4].base_url`"),
            "{found:?}"
        );
        assert!(found[0].contains("azure-openai"), "{found:?}");

        let version_on_gemini = source.replace(
            "      api_key: ${GEMINI_API_KEY}\n",
            "      api_key: ${GEMINI_API_KEY}\n      api_version: 2024-10-21\n",
        );
        let found = self::errors(&version_on_gemini);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("key `ai.providers[2].api_version`"),
            "{found:?}"
        );
        assert!(found[0].contains("not to `gemini`"), "{found:?}");

        let bad_version = source.replace("2025-01-01-preview", "\"2025 01\"");
        let found = self::errors(&bad_version);
        assert!(
            found[0].contains("key `ai.providers[3].api_version`"),
            "{found:?}"
        );
    }

    #[test]
    fn ai_route_rules() {
        let with_service = EXAMPLE.replace("    ai: {}\n", "    ai: {}\n    service: echo\n");
        let errors = errors(&with_service);
        assert!(errors[0].contains("key `routes[0].service`"), "{errors:?}");
        assert!(errors[0].contains("takes no `service`"), "{errors:?}");

        let without_section = &EXAMPLE[EXAMPLE.find("routes:").unwrap()..];
        let errors = self::errors(without_section);
        assert!(errors[0].contains("key `routes[0].ai`"), "{errors:?}");
    }
}
