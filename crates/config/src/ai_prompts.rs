//! Prompt endpoints (`ai.prompts`) and prompt guards (`ai.guards`) of the `ai` section.
//!
//! A prompt is a versioned template that a route with `ai: {prompt: NAME}` publishes as a REST
//! endpoint. A guard is a named set of local checks on prompts (deny and allow patterns, a size
//! limit, PII redaction) that a route with `ai: {guard: NAME}` applies before any provider call.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ai::{AiConfig, AiRouteSpec};
use crate::load::KeyError;

/// One prompt endpoint definition with its versions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub name: String,
    /// Summary of the endpoint in the OpenAPI document.
    #[serde(default)]
    pub description: Option<String>,
    /// The version served when the caller pins none.
    pub active: u32,
    pub versions: Vec<PromptVersionSpec>,
}

impl PromptSpec {
    /// Returns the version numbered `version`.
    pub fn version(&self, version: u32) -> Option<&PromptVersionSpec> {
        self.versions.iter().find(|spec| spec.version == version)
    }
}

/// One version of a prompt template.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptVersionSpec {
    pub version: u32,
    /// An alias of `ai.models` or a `provider/model` target.
    pub model: String,
    /// The system message, sent as written.
    #[serde(default)]
    pub system: Option<String>,
    /// The user message, with `{{name}}` slots filled from the request body.
    pub template: String,
    /// JSON Schema of the request body; its root is an object.
    pub input_schema: Value,
    /// JSON Schema of the model's reply. When set, the model is asked for JSON and the
    /// endpoint returns the validated object.
    #[serde(default)]
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
}

/// A named set of checks on prompts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    pub name: String,
    /// Regular expressions (Rust `regex` syntax); a prompt that matches any one is rejected.
    #[serde(default)]
    pub deny_patterns: Vec<String>,
    /// Regular expressions; when set, a prompt must match at least one.
    #[serde(default)]
    pub allow_patterns: Vec<String>,
    /// Maximum prompt size in characters (Unicode scalar values).
    #[serde(default)]
    pub max_prompt_chars: Option<u64>,
    /// Maximum prompt size in tokens, estimated at 4 characters per token.
    #[serde(default)]
    pub max_prompt_tokens: Option<u64>,
    /// Kinds of personal data replaced by placeholders before the prompt leaves the gateway.
    #[serde(default)]
    pub redact: Vec<PiiKind>,
    /// Put the redacted values back where the model's reply repeats their placeholders.
    #[serde(default)]
    pub restore_redacted: bool,
}

/// A kind of personal data that a guard redacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// Email addresses, as `[EMAIL_1]`.
    Email,
    /// Phone numbers of 7 to 15 digits, as `[PHONE_1]`.
    Phone,
    /// Payment card numbers of 13 to 19 digits that pass the Luhn check, as `[CARD_1]`.
    PaymentCard,
}

impl PiiKind {
    /// Returns the placeholder label, such as `EMAIL` in `[EMAIL_1]`.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::PaymentCard => "CARD",
        }
    }
}

/// One `{{name}}` slot of a template, at byte offsets `start..end` of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSlot<'a> {
    pub start: usize,
    pub end: usize,
    pub name: &'a str,
}

/// Finds the `{{name}}` slots of a template. A name is an identifier (`[A-Za-z_][A-Za-z0-9_]*`)
/// and may have spaces around it inside the braces. Any other `{{` is literal text.
pub fn template_slots(template: &str) -> Vec<TemplateSlot<'_>> {
    let mut slots = Vec::new();
    let mut from = 0;
    while let Some(offset) = template[from..].find("{{") {
        let start = from + offset;
        let inner_start = start + 2;
        let Some(close) = template[inner_start..].find("}}") else {
            break;
        };
        let inner_end = inner_start + close;
        let name = template[inner_start..inner_end].trim();
        let is_identifier = name
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_identifier {
            slots.push(TemplateSlot {
                start,
                end: inner_end + 2,
                name,
            });
            from = inner_end + 2;
        } else {
            from = start + 1;
        }
    }
    slots
}

/// Checks `ai.prompts` and `ai.guards`.
pub(crate) fn validate(ai: &AiConfig) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (i, prompt) in ai.prompts.iter().enumerate() {
        let at = format!("ai.prompts[{i}]");
        crate::load::check_entity_name(&mut errors, &format!("{at}.name"), &prompt.name);
        if !names.insert(prompt.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate prompt name `{}`", prompt.name),
            ));
        }
        if prompt.versions.is_empty() {
            errors.push(KeyError::new(
                format!("{at}.versions"),
                "a prompt needs at least one version",
            ));
        }
        let mut versions = HashSet::new();
        for (j, version) in prompt.versions.iter().enumerate() {
            let at = format!("{at}.versions[{j}]");
            if version.version == 0 || !versions.insert(version.version) {
                errors.push(KeyError::new(
                    format!("{at}.version"),
                    format!(
                        "invalid version {}; versions are distinct integers from 1",
                        version.version
                    ),
                ));
            }
            errors.extend(validate_version(ai, &at, version));
        }
        if !prompt.versions.is_empty() && prompt.version(prompt.active).is_none() {
            errors.push(KeyError::new(
                format!("{at}.active"),
                format!(
                    "version {} is not one of the prompt's versions",
                    prompt.active
                ),
            ));
        }
    }

    let mut guards = HashSet::new();
    for (i, guard) in ai.guards.iter().enumerate() {
        let at = format!("ai.guards[{i}]");
        crate::load::check_entity_name(&mut errors, &format!("{at}.name"), &guard.name);
        if !guards.insert(guard.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate guard name `{}`", guard.name),
            ));
        }
        for (field, patterns) in [
            ("deny_patterns", &guard.deny_patterns),
            ("allow_patterns", &guard.allow_patterns),
        ] {
            for (j, pattern) in patterns.iter().enumerate() {
                if let Err(error) = regex::Regex::new(pattern) {
                    errors.push(KeyError::new(
                        format!("{at}.{field}[{j}]"),
                        format!("invalid regular expression: {error}"),
                    ));
                }
            }
        }
        for (field, value) in [
            ("max_prompt_chars", guard.max_prompt_chars),
            ("max_prompt_tokens", guard.max_prompt_tokens),
        ] {
            if value == Some(0) {
                errors.push(KeyError::new(
                    format!("{at}.{field}"),
                    "must be greater than 0",
                ));
            }
        }
        if guard.restore_redacted && guard.redact.is_empty() {
            errors.push(KeyError::new(
                format!("{at}.restore_redacted"),
                "`restore_redacted` needs `redact` with at least one kind",
            ));
        }
    }
    errors
}

fn validate_version(ai: &AiConfig, at: &str, version: &PromptVersionSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if !ai.has_model(&version.model) {
        errors.push(KeyError::new(
            format!("{at}.model"),
            format!(
                "model `{}` is not an alias in ai.models or a `provider/model` of a configured provider",
                version.model
            ),
        ));
    }
    if version.template.trim().is_empty() {
        errors.push(KeyError::new(
            format!("{at}.template"),
            "the template is empty",
        ));
    }
    match check_schema(&version.input_schema) {
        Err(message) => errors.push(KeyError::new(format!("{at}.input_schema"), message)),
        Ok(()) => {
            let properties = version.input_schema.get("properties");
            for slot in template_slots(&version.template) {
                if properties.and_then(|p| p.get(slot.name)).is_none() {
                    errors.push(KeyError::new(
                        format!("{at}.template"),
                        format!(
                            "slot `{{{{{}}}}}` is not a property of `input_schema`",
                            slot.name
                        ),
                    ));
                }
            }
        }
    }
    if let Some(schema) = &version.output_schema
        && let Err(message) = check_schema(schema)
    {
        errors.push(KeyError::new(format!("{at}.output_schema"), message));
    }
    if version.max_tokens == Some(0) {
        errors.push(KeyError::new(
            format!("{at}.max_tokens"),
            "must be greater than 0",
        ));
    }
    if let Some(temperature) = version.temperature
        && !(0.0..=2.0).contains(&temperature)
    {
        errors.push(KeyError::new(
            format!("{at}.temperature"),
            "must be a number from 0 to 2",
        ));
    }
    errors
}

/// Checks that `schema` is a valid JSON Schema whose root describes an object.
fn check_schema(schema: &Value) -> Result<(), String> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("the schema needs `type: object` at its root".into());
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|error| format!("invalid JSON Schema: {error}"))
}

/// Checks that the `prompt` and `guard` of each `ai` route name entries of the `ai` section.
pub(crate) fn validate_routes(config: &crate::model::Config) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let Some(ai) = &config.ai else {
        return errors;
    };
    for (i, route) in config.entities.routes.iter().enumerate() {
        if let Some(spec) = &route.ai {
            errors.extend(validate_route_settings(
                &format!("routes[{i}]"),
                spec,
                Some(ai),
            ));
        }
    }
    errors
}

/// Checks that the `prompt` and `guard` of the `ai` route at `at`, such as `routes[0]`, are
/// defined in the node's `ai` section. A node without an `ai` section defines neither.
pub fn validate_route_settings(
    at: &str,
    route: &AiRouteSpec,
    ai: Option<&AiConfig>,
) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if let Some(prompt) = &route.prompt
        && !ai.is_some_and(|ai| ai.prompts.iter().any(|p| &p.name == prompt))
    {
        errors.push(KeyError::new(
            format!("{at}.ai.prompt"),
            format!("prompt `{prompt}` is not defined in `ai.prompts`"),
        ));
    }
    if let Some(guard) = &route.guard
        && !ai.is_some_and(|ai| ai.guards.iter().any(|g| &g.name == guard))
    {
        errors.push(KeyError::new(
            format!("{at}.ai.guard"),
            format!("guard `{guard}` is not defined in `ai.guards`"),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    const EXAMPLE: &str = "ai:
  providers:
    - name: openai-main
      type: openai
      base_url: http://127.0.0.1:9102/v1
  models:
    - name: smart
      targets: [openai-main/gpt-4.1]
  prompts:
    - name: sentiment
      active: 1
      versions:
        - version: 1
          model: smart
          system: Classify the sentiment of the text.
          template: 'Text: {{text}}'
          input_schema:
            type: object
            required: [text]
            properties:
              text: {type: string, maxLength: 4000}
          output_schema:
            type: object
            required: [sentiment]
            properties:
              sentiment: {enum: [positive, negative, neutral]}
  guards:
    - name: strict
      deny_patterns: ['(?i)ignore (all|previous) instructions']
      max_prompt_chars: 8000
      redact: [email, phone, payment_card]
      restore_redacted: true
routes:
  - name: sentiment
    paths: [/ai/sentiment]
    ai: {prompt: sentiment, guard: strict}
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
    fn example_loads() {
        let config = load_str(EXAMPLE, None, &env).unwrap();
        let ai = config.ai.unwrap();
        assert_eq!(ai.prompts[0].version(1).unwrap().model, "smart");
        assert_eq!(
            ai.guards[0].redact,
            [PiiKind::Email, PiiKind::Phone, PiiKind::PaymentCard]
        );
        let route = config.entities.routes[0].ai.as_ref().unwrap();
        assert_eq!(route.prompt.as_deref(), Some("sentiment"));
        assert_eq!(route.guard.as_deref(), Some("strict"));
    }

    #[test]
    fn slots_are_identifiers_in_braces() {
        let slots = template_slots("a {{ text }} b {{x-y}} {{_n1}}{{ {{c}}");
        let names: Vec<&str> = slots.iter().map(|slot| slot.name).collect();
        assert_eq!(names, ["text", "_n1", "c"]);
        assert_eq!(
            &"a {{ text }} b"[slots[0].start..slots[0].end],
            "{{ text }}"
        );
    }

    #[test]
    fn invalid_prompt_fields_are_named() {
        let cases = [
            ("active: 1", "active: 2", "ai.prompts[0].active"),
            (
                "model: smart",
                "model: fast",
                "ai.prompts[0].versions[0].model",
            ),
            (
                "'Text: {{text}}'",
                "'Text: {{body}}'",
                "ai.prompts[0].versions[0].template",
            ),
            (
                "text: {type: string, maxLength: 4000}",
                "text: {type: strin}",
                "ai.prompts[0].versions[0].input_schema",
            ),
            (
                "          output_schema:\n            type: object",
                "          output_schema:\n            type: array",
                "ai.prompts[0].versions[0].output_schema",
            ),
            (
                "'(?i)ignore (all|previous) instructions'",
                "'(unclosed'",
                "ai.guards[0].deny_patterns[0]",
            ),
            (
                "max_prompt_chars: 8000",
                "max_prompt_chars: 0",
                "ai.guards[0].max_prompt_chars",
            ),
            (
                "redact: [email, phone, payment_card]",
                "redact: [ssn]",
                "ai.guards[0].redact",
            ),
            (
                "prompt: sentiment,",
                "prompt: summary,",
                "routes[0].ai.prompt",
            ),
            ("guard: strict}", "guard: lax}", "routes[0].ai.guard"),
        ];
        for (from, to, key) in cases {
            let source = EXAMPLE.replacen(from, to, 1);
            assert_ne!(source, EXAMPLE, "{from} is not in the example");
            let errors = errors(&source);
            assert!(
                errors
                    .iter()
                    .any(|error| error.contains(&format!("key `{key}"))),
                "{key}: {errors:?}"
            );
        }
    }

    #[test]
    fn duplicate_versions_are_rejected() {
        let second = "        - version: 1\n          model: smart\n          template: again\n          input_schema: {type: object}\n  guards:\n";
        let source = EXAMPLE.replacen("  guards:\n", second, 1);
        let errors = errors(&source);
        assert!(
            errors
                .iter()
                .any(|error| error.contains("key `ai.prompts[0].versions[1].version`")),
            "{errors:?}"
        );
    }
}
