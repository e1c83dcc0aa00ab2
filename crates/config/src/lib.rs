//! The declarative configuration of portcullis.
//!
//! [`load_file`] reads one YAML file into a [`Config`], resolving `${VAR}` from the environment
//! and relative paths against the file's folder. Every error names the file, the line and the
//! key path, so `portcullis validate` can point at the exact spot.

pub mod ai;
mod ai_balance;
pub mod ai_limits;
pub mod ai_prompts;
pub mod browser;
mod duration;
mod load;
pub mod model;
pub mod secrets;
pub mod upstream;
mod upstream_checks;
mod waf;
mod yaml;

pub use ai::{
    AiConfig, AiRouteSpec, AliasTarget, ApiKey, KeyCooldown, ModelAliasSpec, PriceSpec,
    ProviderKey, ProviderKind, ProviderRetries, ProviderSpec, UsageReportSpec, split_target,
    validate_stored_price,
};
pub use ai_limits::{AiLimitKey, AiLimitsSpec, BudgetSpec, validate_ai_limit_models};
pub use ai_prompts::{
    GuardSpec, PiiKind, PromptSpec, PromptVersionSpec, template_slots, validate_route_settings,
};
pub use browser::{CorsSpec, CsrfSpec, SecurityHeadersSpec};
pub use load::{
    ConfigError, ConfigErrors, KeyError, MIN_SESSION_SECRET_BYTES, check_entity_name,
    embedded_default, line_index, load_file, load_str, validate_certificate_owners,
    validate_consumer_fields, validate_entities, validate_policies, validate_route_fields,
    validate_service_fields,
};
pub use model::*;
pub use secrets::{MASTER_KEY_BYTES, MasterKey, SecretsConfig};
pub use upstream::*;
pub use waf::waf_setup;
pub use yaml::LineIndex;
