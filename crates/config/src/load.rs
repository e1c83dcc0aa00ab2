//! Loads and validates a configuration file.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::{
    ClientAuthMethod, Config, CounterBackend, DeclaredKey, Entities, HashedKey,
    IntrospectionFormat, IntrospectionSpec, JWT_ALGORITHMS, JwtSpec, LimitAlgorithm, LimitKey,
    OpenIdConnectSpec, PathMatch, PolicySpec, RateLimitSpec, SameSite,
};
use crate::yaml::{self, LineIndex};

/// One problem in a configuration, located by file, line and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// Key path such as `routes[0].service`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// An error at a key path, before the file and line are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks an entity-style name (1 to 128 letters, digits, `-`, `_` or `.`) for other modules.
pub fn check_entity_name(errors: &mut Vec<KeyError>, key: &str, name: &str) {
    check_name(errors, key, name);
}

/// Reads, parses and validates the file at `path`, resolving `${VAR}` from the process
/// environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            key: String::new(),
            message: format!("cannot read the configuration file: {error}"),
        }])
    })?;
    let env = |name: &str| std::env::var(name).ok();
    load_str(&source, Some(path), &env)
}

/// Parses and validates configuration text; `path` names the file in errors and sets the folder
/// that relative paths resolve against.
pub fn load_str(
    source: &str,
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let file = path.map(Path::to_path_buf);
    let (value, index) = yaml::parse(source, env).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|error| ConfigError {
                    file: file.clone(),
                    line: error.line,
                    key: String::new(),
                    message: error.message,
                })
                .collect(),
        )
    })?;

    let locate = |error: KeyError| ConfigError {
        file: file.clone(),
        line: index.line_of(&error.key),
        key: error.key,
        message: error.message,
    };

    let mut config: Config = serde_path_to_error::deserialize(value).map_err(|error| {
        let key = error.path().to_string();
        let key = if key == "." { String::new() } else { key };
        ConfigErrors(vec![locate(KeyError::new(
            key,
            error.into_inner().to_string(),
        ))])
    })?;

    let base_dir = match path.and_then(Path::parent) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    config.entities = Entities {
        services: std::mem::take(&mut config.raw_services),
        routes: std::mem::take(&mut config.raw_routes),
        consumers: std::mem::take(&mut config.raw_consumers),
    };
    config.base_dir = base_dir;
    config.source = file.clone();
    resolve_paths(&mut config);

    let mut errors: Vec<KeyError> = validate_node(&config);
    errors.extend(crate::ai::validate_config(&config));
    errors.extend(validate_entities(&config.entities));
    errors.extend(validate_policies("policies", &config.policies));
    errors.extend(check_secret_variables(&config, env));
    errors.extend(validate_redis_backends(&config));
    errors.extend(validate_limit_model_names(&config));
    errors.extend(check_rotation_webhooks(&config));
    if errors.is_empty() {
        Ok(config)
    } else {
        // The checks run by topic, so their errors are out of file order. Sort them by line.
        let mut located: Vec<ConfigError> = errors.into_iter().map(locate).collect();
        located.sort_by_key(|error| error.line.unwrap_or(usize::MAX));
        Err(ConfigErrors(located))
    }
}

/// Checks that each scheduled rotation the file sets up has a webhook and a signing secret,
/// because the new key reaches its owner only through the webhook.
fn check_rotation_webhooks(config: &Config) -> Vec<KeyError> {
    let global = &config.key_rotation;
    let mut errors = Vec::new();
    let mut needs_secret = global.webhook.is_some();
    if global.every.is_some() && global.webhook.is_none() {
        let every_without_webhook = config.entities.consumers.iter().any(|consumer| {
            consumer
                .key_rotation
                .as_ref()
                .is_none_or(|spec| spec.webhook.is_none())
        });
        if every_without_webhook {
            errors.push(KeyError::new(
                "key_rotation.every",
                "scheduled rotation needs `key_rotation.webhook` (or a webhook on every consumer) \
                 to deliver the new keys",
            ));
        }
    }
    for (i, consumer) in config.entities.consumers.iter().enumerate() {
        let Some(spec) = &consumer.key_rotation else {
            continue;
        };
        needs_secret |= spec.webhook.is_some();
        if spec.every.is_some() && spec.webhook.is_none() && global.webhook.is_none() {
            errors.push(KeyError::new(
                format!("consumers[{i}].key_rotation.every"),
                "scheduled rotation needs a `webhook` here or in the top-level `key_rotation` \
                 to deliver the new keys",
            ));
        }
    }
    if needs_secret && global.webhook_secret.is_none() {
        errors.push(KeyError::new(
            "key_rotation.webhook_secret",
            "a rotation webhook is set, so `key_rotation.webhook_secret` is required to sign its \
             requests",
        ));
    }
    errors
}

/// Checks that every `secret_env` of a `jwt` key or a `csrf` policy names a set variable, so a
/// missing secret stops the start with the file and line instead of failing the snapshot build.
fn check_secret_variables(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<KeyError> {
    let entities = &config.entities;
    let mut levels: Vec<(String, &[PolicySpec])> = vec![("policies".into(), &config.policies)];
    for (i, service) in entities.services.iter().enumerate() {
        levels.push((format!("services[{i}].policies"), &service.policies));
    }
    for (i, route) in entities.routes.iter().enumerate() {
        levels.push((format!("routes[{i}].policies"), &route.policies));
    }
    let mut errors = Vec::new();
    for (at, policies) in levels {
        for (i, policy) in policies.iter().enumerate() {
            if let PolicySpec::Oauth2Introspection(spec) = policy {
                let variables = [
                    (
                        "client_secret_env",
                        &spec.client_secret_env,
                        "client secret",
                    ),
                    ("private_key_env", &spec.private_key_env, "private key"),
                ];
                for (field, variable, what) in variables {
                    if let Some(name) = variable.as_ref().filter(|name| env(name).is_none()) {
                        errors.push(KeyError::new(
                            format!("{at}[{i}].oauth2-introspection.{field}"),
                            format!("environment variable `{name}` with the {what} is not set"),
                        ));
                    }
                }
                continue;
            }
            if let PolicySpec::Csrf(spec) = policy {
                let key = format!("{at}[{i}].csrf.secret_env");
                match env(&spec.secret_env) {
                    None => errors.push(KeyError::new(
                        key,
                        format!(
                            "environment variable `{}` with the CSRF token secret is not set",
                            spec.secret_env
                        ),
                    )),
                    Some(secret) if secret.len() < crate::browser::MIN_CSRF_SECRET_BYTES => {
                        errors.push(KeyError::new(
                            key,
                            format!(
                                "environment variable `{}` must contain at least {} bytes",
                                spec.secret_env,
                                crate::browser::MIN_CSRF_SECRET_BYTES
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                continue;
            }
            if let PolicySpec::OpenidConnect(spec) = policy {
                let variables = [
                    (
                        "client_secret_env",
                        spec.client_secret_env.as_ref(),
                        "client secret",
                    ),
                    (
                        "private_key_env",
                        spec.private_key_env.as_ref(),
                        "private key",
                    ),
                    (
                        "session_secret_env",
                        Some(&spec.session_secret_env),
                        "session secret",
                    ),
                ];
                for (field, variable, what) in variables {
                    let Some(name) = variable else {
                        continue;
                    };
                    match env(name) {
                        None => errors.push(KeyError::new(
                            format!("{at}[{i}].openid-connect.{field}"),
                            format!("environment variable `{name}` with the {what} is not set"),
                        )),
                        Some(value)
                            if field == "session_secret_env"
                                && value.len() < MIN_SESSION_SECRET_BYTES =>
                        {
                            errors.push(KeyError::new(
                                format!("{at}[{i}].openid-connect.{field}"),
                                format!(
                                    "the session secret in `{name}` is {} bytes long; use at least {MIN_SESSION_SECRET_BYTES}, for example `openssl rand -base64 48`",
                                    value.len()
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                continue;
            }
            let PolicySpec::Jwt(spec) = policy else {
                continue;
            };
            for (j, key) in spec.keys.iter().enumerate() {
                let Some(name) = &key.secret_env else {
                    continue;
                };
                if env(name).is_none() {
                    errors.push(KeyError::new(
                        format!("{at}[{i}].jwt.keys[{j}].secret_env"),
                        format!("environment variable `{name}` with the HMAC secret is not set"),
                    ));
                }
            }
        }
    }
    errors
}

/// Returns the configuration used when no file is given.
pub fn embedded_default() -> Config {
    let env = |_: &str| None;
    let mut config = load_str("{}", None, &env).expect("the embedded default is valid");
    config.base_dir = PathBuf::from(".");
    config
}

/// Returns a line index for `source`, for callers that report their own errors by key path.
pub fn line_index(source: &str) -> Option<LineIndex> {
    let env = |_: &str| Some(String::new());
    yaml::parse(source, &env).ok().map(|(_, index)| index)
}

fn resolve_paths(config: &mut Config) {
    let base = config.base_dir.clone();
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    };
    for listener in &mut config.listeners {
        if let Some(tls) = &mut listener.tls {
            for certificate in &mut tls.certificates {
                resolve(&mut certificate.cert_file);
                resolve(&mut certificate.key_file);
            }
            if let Some(client_auth) = &mut tls.client_auth {
                resolve(&mut client_auth.ca_file);
            }
        }
    }
    if let crate::model::StoreConfig::Sqlite(path) = &mut config.store {
        resolve(path);
    }
    if let crate::model::AccessLogTarget::File(path) = &mut config.access_log {
        resolve(path);
    }
    if let Some(path) = &mut config.admin.token_file {
        resolve(path);
    }
    let entities = &mut config.entities;
    let policy_levels = std::iter::once(&mut config.policies)
        .chain(
            entities
                .services
                .iter_mut()
                .map(|service| &mut service.policies),
        )
        .chain(entities.routes.iter_mut().map(|route| &mut route.policies))
        .chain(
            entities
                .consumers
                .iter_mut()
                .map(|consumer| &mut consumer.policies),
        );
    for policies in policy_levels {
        for policy in policies {
            match policy {
                PolicySpec::Oauth2Introspection(spec) => {
                    if let Some(path) = &mut spec.ca_file {
                        resolve(path);
                    }
                }
                PolicySpec::OpenidConnect(spec) => {
                    if let Some(path) = &mut spec.ca_file {
                        resolve(path);
                    }
                }
                PolicySpec::Waf(spec) => {
                    if let Some(path) = &mut spec.rules_dir {
                        resolve(path);
                    }
                }
                _ => {}
            }
        }
    }
}

fn validate_node(config: &Config) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut addresses = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        // Port 0 asks the OS for a free port, so two listeners on port 0 never collide.
        if listener.address.port() != 0 && !addresses.insert(listener.address) {
            errors.push(KeyError::new(
                format!("listeners[{i}].address"),
                format!("address {} is used by another listener", listener.address),
            ));
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                errors.push(KeyError::new(
                    format!("listeners[{i}].tls.certificates"),
                    "a TLS listener needs at least one certificate",
                ));
            }
            for (j, certificate) in tls.certificates.iter().enumerate() {
                for (field, file) in [
                    ("cert_file", &certificate.cert_file),
                    ("key_file", &certificate.key_file),
                ] {
                    if let Err(error) = std::fs::metadata(file) {
                        errors.push(KeyError::new(
                            format!("listeners[{i}].tls.certificates[{j}].{field}"),
                            format!("cannot read `{}`: {error}", file.display()),
                        ));
                    }
                }
            }
            if let Some(client_auth) = &tls.client_auth
                && let Err(error) = std::fs::metadata(&client_auth.ca_file)
            {
                errors.push(KeyError::new(
                    format!("listeners[{i}].tls.client_auth.ca_file"),
                    format!("cannot read `{}`: {error}", client_auth.ca_file.display()),
                ));
            }
        }
    }
    if config.admin.address.port() != 0
        && config
            .listeners
            .iter()
            .any(|listener| listener.address == config.admin.address)
    {
        errors.push(KeyError::new(
            "admin.address",
            format!("address {} is also a proxy listener", config.admin.address),
        ));
    }
    if let Some(token) = &config.admin.token
        && token.len() < 16
    {
        errors.push(KeyError::new(
            "admin.token",
            "the admin token must be at least 16 characters",
        ));
    }
    if let crate::model::StoreConfig::Postgres(url) = &config.store
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        errors.push(KeyError::new(
            "store.postgres",
            "expected a URL that starts with postgres://",
        ));
    }
    if config.version_check_interval < std::time::Duration::from_millis(10) {
        errors.push(KeyError::new(
            "version_check_interval",
            "must be at least 10ms",
        ));
    }
    if let Some(redis) = &config.redis {
        if !(redis.url.starts_with("redis://")
            || redis.url.starts_with("rediss://")
            || redis.url.starts_with("redis+unix://"))
        {
            errors.push(KeyError::new(
                "redis.url",
                "expected a URL that starts with redis:// or rediss://",
            ));
        }
        if redis.channel.is_empty() {
            errors.push(KeyError::new("redis.channel", "must not be empty"));
        }
        if redis.timeout < std::time::Duration::from_millis(1) {
            errors.push(KeyError::new("redis.timeout", "must be at least 1ms"));
        }
    }
    if let Some(secret) = &config.key_hash_secret
        && secret.len() < 32
    {
        errors.push(KeyError::new(
            "key_hash_secret",
            "the key hash secret must be at least 32 characters",
        ));
    }
    errors.extend(validate_key_rotation(&config.key_rotation));
    errors.extend(crate::secrets::validate(&config.secrets));
    let limits = &config.limits;
    for (key, value) in [
        ("limits.max_header_bytes", limits.max_header_bytes as u64),
        ("limits.max_headers", limits.max_headers as u64),
        ("limits.max_uri_bytes", limits.max_uri_bytes as u64),
    ] {
        if value == 0 {
            errors.push(KeyError::new(key, "must be greater than 0"));
        }
    }
    errors.extend(crate::upstream_checks::validate_http2(&config.http2));
    if let Err(error) = config.log.level.parse::<LevelCheck>() {
        errors.push(KeyError::new("log.level", error));
    }
    errors
}

fn validate_key_rotation(rotation: &crate::model::KeyRotationConfig) -> Vec<KeyError> {
    let mut errors = check_rotation_fields(
        "key_rotation",
        rotation.every,
        Some(rotation.overlap),
        rotation.webhook.as_deref(),
    );
    if let Some(secret) = &rotation.webhook_secret
        && secret.len() < 32
    {
        errors.push(KeyError::new(
            "key_rotation.webhook_secret",
            "the webhook secret must be at least 32 characters",
        ));
    }
    if !(1..=20).contains(&rotation.webhook_attempts) {
        errors.push(KeyError::new(
            "key_rotation.webhook_attempts",
            "must be from 1 to 20",
        ));
    }
    if rotation.check_interval < std::time::Duration::from_millis(100) {
        errors.push(KeyError::new(
            "key_rotation.check_interval",
            "must be at least 100ms",
        ));
    }
    errors
}

/// Checks the fields that a consumer's `key_rotation` shares with the top-level one.
fn check_rotation_fields(
    at: &str,
    every: Option<std::time::Duration>,
    overlap: Option<std::time::Duration>,
    webhook: Option<&str>,
) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if every.is_some_and(|every| every < std::time::Duration::from_secs(1)) {
        errors.push(KeyError::new(format!("{at}.every"), "must be at least 1s"));
    }
    // An overlap past year 9999 cannot be stored as an expiry time.
    if overlap.is_some_and(|overlap| overlap > std::time::Duration::from_secs(100 * 365 * 86_400)) {
        errors.push(KeyError::new(
            format!("{at}.overlap"),
            "must be at most 100 years",
        ));
    }
    if let Some(url) = webhook
        && let Err(error) = check_fetch_url(url)
    {
        errors.push(KeyError::new(format!("{at}.webhook"), error));
    }
    errors
}

/// A rough syntax check of a `tracing` filter, so typos fail at load time.
struct LevelCheck;

impl std::str::FromStr for LevelCheck {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let level = directive.rsplit('=').next().unwrap_or(directive);
            if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) && !directive.contains('=') {
                return Err(format!(
                    "invalid log level `{directive}`; expected one of {}",
                    LEVELS.join(", ")
                ));
            }
        }
        Ok(LevelCheck)
    }
}

/// Checks the entities for errors a store write or a snapshot build would hit later: duplicate
/// names, dangling references, malformed paths and targets.
pub fn validate_entities(entities: &Entities) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut service_names = HashSet::new();
    for (i, service) in entities.services.iter().enumerate() {
        let at = format!("services[{i}]");
        check_name(&mut errors, &format!("{at}.name"), &service.name);
        if !service_names.insert(service.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate service name `{}`", service.name),
            ));
        }
        errors.extend(validate_service_fields(&at, service));
    }
    let mut route_names = HashSet::new();
    for (i, route) in entities.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        check_name(&mut errors, &format!("{at}.name"), &route.name);
        if !route_names.insert(route.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        match (&route.service, &route.ai) {
            (Some(_), Some(_)) => errors.push(KeyError::new(
                format!("{at}.service"),
                "an `ai` route serves requests itself and takes no `service`",
            )),
            (Some(name), None) if !service_names.contains(name.as_str()) => {
                errors.push(KeyError::new(
                    format!("{at}.service"),
                    format!("service `{name}` is not defined"),
                ))
            }
            (Some(_), None) | (None, Some(_)) => {}
            (None, None) => errors.push(KeyError::new(
                format!("{at}.service"),
                "a route needs a service, or `ai: {}` to serve the AI gateway",
            )),
        }
        errors.extend(validate_route_fields(&at, route));
    }
    let mut consumer_names = HashSet::new();
    let mut keys = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut key_hashes = HashSet::new();
    for (i, consumer) in entities.consumers.iter().enumerate() {
        let at = format!("consumers[{i}]");
        check_name(&mut errors, &format!("{at}.name"), &consumer.name);
        if !consumer_names.insert(consumer.name.as_str()) {
            errors.push(KeyError::new(
                format!("{at}.name"),
                format!("duplicate consumer name `{}`", consumer.name),
            ));
        }
        errors.extend(validate_consumer_fields(&at, consumer));
        errors.extend(validate_certificate_owners(
            &at,
            consumer,
            &entities.consumers[..i],
        ));
        for (j, key) in consumer.api_keys.iter().enumerate() {
            let key_at = format!("{at}.api_keys[{j}]");
            match key {
                DeclaredKey::Plain(text) => {
                    if !keys.insert(text.as_str()) {
                        errors.push(KeyError::new(key_at, "this API key is already declared"));
                    }
                }
                DeclaredKey::Hashed(record) => {
                    if !key_ids.insert(record.id.as_str()) {
                        errors.push(KeyError::new(
                            format!("{key_at}.id"),
                            format!("key id `{}` is already declared", record.id),
                        ));
                    }
                    if !key_hashes.insert(record.hash.as_str()) {
                        errors.push(KeyError::new(
                            format!("{key_at}.hash"),
                            "this hash is already declared, so it is the same API key",
                        ));
                    }
                }
            }
        }
    }
    errors
}

/// Checks one service on its own (names of other entities are not looked at).
pub fn validate_service_fields(at: &str, service: &crate::model::ServiceSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if service.targets.is_empty() {
        errors.push(KeyError::new(
            format!("{at}.targets"),
            "a service needs at least one target",
        ));
    }
    errors.extend(crate::upstream_checks::validate_targets(
        at,
        &service.targets,
    ));
    let timeouts = &service.timeouts;
    for (field, value) in [
        ("connect", timeouts.connect),
        ("response", timeouts.response),
    ] {
        if value.is_zero() {
            errors.push(KeyError::new(
                format!("{at}.timeouts.{field}"),
                "must be greater than 0",
            ));
        }
    }
    errors.extend(crate::upstream_checks::validate_resilience(at, service));
    errors.extend(validate_policies(
        &format!("{at}.policies"),
        &service.policies,
    ));
    errors
}

/// Checks one route on its own (its service reference is not looked up).
pub fn validate_route_fields(at: &str, route: &crate::model::RouteSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    if route.paths.is_empty() {
        errors.push(KeyError::new(
            format!("{at}.paths"),
            "a route needs at least one path",
        ));
    }
    for (j, path) in route.paths.iter().enumerate() {
        let key = match path {
            PathMatch::Prefix(_) => format!("{at}.paths[{j}]"),
            PathMatch::Exact { .. } => format!("{at}.paths[{j}].exact"),
        };
        if let Err(message) = check_route_path(path.path()) {
            errors.push(KeyError::new(key, message));
        }
    }
    for (j, method) in route.methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err()
            || method.chars().any(|c| c.is_ascii_lowercase())
        {
            errors.push(KeyError::new(
                format!("{at}.methods[{j}]"),
                format!("invalid method `{method}`; write it in upper case, like GET"),
            ));
        }
    }
    for (j, host) in route.hosts.iter().enumerate() {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        let valid = !bare.is_empty()
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !bare.starts_with('.')
            && !bare.ends_with('.');
        if !valid {
            errors.push(KeyError::new(
                format!("{at}.hosts[{j}]"),
                format!(
                    "invalid host `{host}`; expected a name like api.example.com or *.example.com"
                ),
            ));
        }
    }
    errors.extend(validate_policies(
        &format!("{at}.policies"),
        &route.policies,
    ));
    errors
}

/// Checks one consumer on its own.
pub fn validate_consumer_fields(at: &str, consumer: &crate::model::ConsumerSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (j, key) in consumer.api_keys.iter().enumerate() {
        let key_at = format!("{at}.api_keys[{j}]");
        match key {
            DeclaredKey::Plain(text) => {
                if !is_key_text(text, 16) {
                    errors.push(KeyError::new(
                        key_at,
                        "an API key must be 16 to 256 printable ASCII characters without spaces",
                    ));
                } else if text.starts_with("pcs_") {
                    // Keys with this prefix must carry the checksum of issued keys, and a
                    // hand-written one would be rejected on every request.
                    errors.push(KeyError::new(
                        key_at,
                        "the `pcs_` prefix is reserved for keys that portcullis issues; declare a key \
                         without it, or declare an issued key in its hashed form",
                    ));
                }
            }
            DeclaredKey::Hashed(record) => errors.extend(validate_hashed_key(&key_at, record)),
        }
    }
    for (j, role) in consumer.roles.iter().enumerate() {
        check_name(&mut errors, &format!("{at}.roles[{j}]"), role);
    }
    let mut names = HashSet::new();
    for (j, certificate) in consumer.certificates.iter().enumerate() {
        let certificate_at = format!("{at}.certificates[{j}]");
        match certificate.name() {
            Ok(name) if !names.insert(name.clone()) => errors.push(KeyError::new(
                certificate_at,
                format!("`{name}` is listed twice"),
            )),
            Ok(_) => {}
            Err(message) => errors.push(KeyError::new(certificate_at, message)),
        }
    }
    if let Some(rotation) = &consumer.key_rotation {
        errors.extend(check_rotation_fields(
            &format!("{at}.key_rotation"),
            rotation.every,
            rotation.overlap,
            rotation.webhook.as_deref(),
        ));
    }
    errors.extend(validate_policies(
        &format!("{at}.policies"),
        &consumer.policies,
    ));
    for (j, policy) in consumer.policies.iter().enumerate() {
        if policy.runs_before_authentication() {
            errors.push(KeyError::new(
                format!("{at}.policies[{j}].{}", policy.kind()),
                format!(
                    "`{}` runs before the caller is authenticated, so it cannot be attached to \
                     a consumer; attach it globally, to a service or to a route",
                    policy.kind()
                ),
            ));
        }
    }
    errors
}

/// Checks that no certificate name of `consumer` already identifies one of `others`, because
/// `mtls-auth` must map each name to one consumer. Consumers named like `consumer` are skipped,
/// so that an admin update can be checked against the stored version of itself.
pub fn validate_certificate_owners(
    at: &str,
    consumer: &crate::model::ConsumerSpec,
    others: &[crate::model::ConsumerSpec],
) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (j, certificate) in consumer.certificates.iter().enumerate() {
        let Ok(name) = certificate.name() else {
            continue;
        };
        let owner = others.iter().find(|other| {
            other.name != consumer.name
                && other
                    .certificates
                    .iter()
                    .any(|entry| entry.name().as_ref() == Ok(&name))
        });
        if let Some(owner) = owner {
            errors.push(KeyError::new(
                format!("{at}.certificates[{j}]"),
                format!("`{name}` already identifies the consumer `{}`", owner.name),
            ));
        }
    }
    errors
}

/// Returns whether `text` has the form of an API key: `min_len` to 256 printable ASCII
/// characters without spaces.
fn is_key_text(text: &str, min_len: usize) -> bool {
    (min_len..=256).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks the fields of a hashed key record.
fn validate_hashed_key(at: &str, record: &HashedKey) -> Vec<KeyError> {
    let mut errors = Vec::new();
    for (field, id) in [
        ("id", Some(&record.id)),
        ("rotated_from", record.rotated_from.as_ref()),
    ] {
        let Some(id) = id else {
            continue;
        };
        let valid = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            errors.push(KeyError::new(
                format!("{at}.{field}"),
                format!("invalid key id `{id}`; use 1 to 128 letters, digits, `-`, `_` or `.`"),
            ));
        }
    }
    let hash_valid = record.hash.len() == 64
        && record
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hash_valid {
        errors.push(KeyError::new(
            format!("{at}.hash"),
            "a key hash must be 64 lowercase hex digits (HMAC-SHA-256)",
        ));
    }
    if !is_key_text(&record.prefix, 1) {
        errors.push(KeyError::new(
            format!("{at}.prefix"),
            "a key prefix must be 1 to 256 printable ASCII characters without spaces",
        ));
    }
    errors
}

/// Checks a list of policies attached at one level.
pub fn validate_policies(at: &str, policies: &[PolicySpec]) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, policy) in policies.iter().enumerate() {
        let key = format!("{at}[{i}].{}", policy.kind());
        if !seen.insert(policy.override_key()) {
            errors.push(KeyError::new(
                key.clone(),
                format!(
                    "`{}` is attached twice at this level; give each instance a distinct `name`",
                    policy.kind()
                ),
            ));
        }
        match policy {
            PolicySpec::KeyAuth(spec) => {
                if spec.header_names.is_empty() && !spec.bearer && spec.query_param.is_none() {
                    errors.push(KeyError::new(
                        key,
                        "key-auth needs a header, bearer or query_param source",
                    ));
                } else {
                    for (j, name) in spec.header_names.iter().enumerate() {
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            errors.push(KeyError::new(
                                format!("{key}.header_names[{j}]"),
                                format!("invalid header name `{name}`"),
                            ));
                        }
                    }
                }
            }
            PolicySpec::RateLimit(spec) => errors.extend(validate_rate_limit(&key, spec)),
            PolicySpec::Jwt(spec) => errors.extend(validate_jwt(&key, spec)),
            PolicySpec::Oauth2Introspection(spec) => {
                errors.extend(validate_introspection(&key, spec));
            }
            PolicySpec::OpenidConnect(spec) => {
                errors.extend(validate_openid_connect(&key, spec));
            }
            PolicySpec::Acl(spec) => {
                let empty = spec.roles.is_empty()
                    && spec.deny_roles.is_empty()
                    && spec.allow_consumers.is_empty()
                    && spec.deny_consumers.is_empty()
                    && spec.scopes.is_empty()
                    && spec.all_roles.is_empty()
                    && spec.any_scopes.is_empty();
                if empty {
                    errors.push(KeyError::new(key, "acl needs at least one of roles, all_roles, deny_roles, allow_consumers, deny_consumers, scopes, any_scopes"));
                }
            }
            PolicySpec::Cors(spec) => errors.extend(crate::browser::validate_cors(&key, spec)),
            PolicySpec::Csrf(spec) => errors.extend(crate::browser::validate_csrf(&key, spec)),
            PolicySpec::SecurityHeaders(spec) => {
                errors.extend(crate::browser::validate_security_headers(&key, spec));
            }
            PolicySpec::MtlsAuth(_) => {}
            PolicySpec::IpRestriction(spec) => {
                if spec.allow.is_empty() && spec.deny.is_empty() {
                    errors.push(KeyError::new(
                        key,
                        "ip-restriction needs `allow` or `deny` networks",
                    ));
                }
            }
            PolicySpec::Waf(spec) => errors.extend(crate::waf::validate_waf(&key, spec)),
            PolicySpec::AiLimits(spec) => errors.extend(crate::ai_limits::validate(&key, spec)),
        }
    }
    errors
}

/// Largest `limit` and `burst`: larger counts do not fit the 15-digit integers of the
/// structured `RateLimit` header fields (RFC 8941 section 3.3.1).
pub const MAX_RATE_LIMIT_COUNT: u64 = 999_999_999_999;
/// Longest rate-limit window; longer windows are quotas, not rate limits.
pub const MAX_RATE_LIMIT_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(366 * 24 * 3600);

/// Maximum `delay.max`, because a throttled request keeps its connection open while it waits.
pub const MAX_RATE_LIMIT_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

fn validate_rate_limit(key: &str, spec: &RateLimitSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut reject = |field: &str, message: String| {
        errors.push(KeyError::new(format!("{key}.{field}"), message));
    };
    let algorithm = match spec.algorithm {
        LimitAlgorithm::Gcra => "gcra",
        LimitAlgorithm::SlidingWindow => "sliding-window",
        LimitAlgorithm::Quota => "quota",
        LimitAlgorithm::Concurrency => "concurrency",
    };
    let counts = [("limit", Some(spec.limit)), ("burst", spec.burst)];
    for (field, value) in counts {
        match value {
            Some(0) => reject(field, "must be greater than 0".into()),
            Some(value) if value > MAX_RATE_LIMIT_COUNT => {
                reject(field, format!("must be at most {MAX_RATE_LIMIT_COUNT}"))
            }
            _ => {}
        }
    }

    // Which of window, period and burst the algorithm reads.
    let uses_window = matches!(
        spec.algorithm,
        LimitAlgorithm::Gcra | LimitAlgorithm::SlidingWindow
    );
    match (uses_window, spec.window) {
        (true, None) => reject(
            "window",
            format!("`algorithm: {algorithm}` needs a `window`, such as `1s`"),
        ),
        (true, Some(window)) if window < std::time::Duration::from_millis(1) => {
            reject("window", "must be at least 1ms".into())
        }
        (true, Some(window)) if window > MAX_RATE_LIMIT_WINDOW => reject(
            "window",
            "must be at most 366 days; use `algorithm: quota` with `period: month` for longer \
             quotas"
                .into(),
        ),
        (false, Some(_)) => reject(
            "window",
            format!("`window` is not read by `algorithm: {algorithm}`"),
        ),
        _ => {}
    }
    match (spec.algorithm, spec.period) {
        (LimitAlgorithm::Quota, None) => reject(
            "period",
            "`algorithm: quota` needs a `period`: day or month".into(),
        ),
        (LimitAlgorithm::Quota, Some(_)) | (_, None) => {}
        (_, Some(_)) => reject(
            "period",
            "`period` is only read with `algorithm: quota`".into(),
        ),
    }
    if spec.burst.is_some() && spec.algorithm != LimitAlgorithm::Gcra {
        reject(
            "burst",
            "`burst` is only read with `algorithm: gcra`".into(),
        );
    }
    match (spec.algorithm, spec.lease_ttl) {
        (LimitAlgorithm::Concurrency, Some(ttl)) if ttl < std::time::Duration::from_secs(1) => {
            reject("lease_ttl", "must be at least 1s".into())
        }
        (LimitAlgorithm::Concurrency, _) | (_, None) => {}
        (_, Some(_)) => reject(
            "lease_ttl",
            "`lease_ttl` is only read with `algorithm: concurrency`".into(),
        ),
    }

    // What the limit is keyed by.
    match (spec.by, &spec.header) {
        (LimitKey::Header, None) => reject(
            "header",
            "`by: header` needs the header name in `header`".into(),
        ),
        (LimitKey::Header, Some(name))
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() =>
        {
            reject("header", format!("invalid header name `{name}`"))
        }
        (LimitKey::Header, Some(_)) | (_, None) => {}
        (_, Some(_)) => reject("header", "`header` is only read with `by: header`".into()),
    }
    match (spec.by, &spec.claim) {
        (LimitKey::Claim, None) => reject(
            "claim",
            "`by: claim` needs the claim name in `claim`, such as `sub`".into(),
        ),
        (LimitKey::Claim, Some(claim)) if claim.is_empty() => {
            reject("claim", "must not be empty".into())
        }
        (LimitKey::Claim, Some(_)) | (_, None) => {}
        (_, Some(_)) => reject("claim", "`claim` is only read with `by: claim`".into()),
    }
    for (j, role) in spec.roles.iter().enumerate() {
        check_name(&mut errors, &format!("{key}.roles[{j}]"), role);
    }
    // The name is written into the `RateLimit-Policy` and `RateLimit` structured fields.
    if let Some(name) = &spec.name {
        check_name(&mut errors, &format!("{key}.name"), name);
    }

    // Throttling and the counter backend.
    if let Some(delay) = &spec.delay {
        if delay.max.is_zero() {
            errors.push(KeyError::new(
                format!("{key}.delay.max"),
                "must be greater than 0; remove `delay` to reject at once",
            ));
        } else if delay.max > MAX_RATE_LIMIT_DELAY {
            errors.push(KeyError::new(
                format!("{key}.delay.max"),
                "must be at most 60s, because a delayed request holds its connection",
            ));
        }
    }
    match spec.batch {
        Some(0) => errors.push(KeyError::new(
            format!("{key}.batch"),
            "must be greater than 0",
        )),
        Some(batch) if batch > 1 && spec.backend != CounterBackend::Redis => {
            errors.push(KeyError::new(
                format!("{key}.batch"),
                "`batch` applies to `backend: redis` only",
            ))
        }
        Some(batch) if batch > 1 && spec.algorithm == LimitAlgorithm::Concurrency => {
            errors.push(KeyError::new(
                format!("{key}.batch"),
                "`batch` does not apply to `algorithm: concurrency`, whose slots are returned one by one",
            ))
        }
        Some(batch) if batch > spec.limit => errors.push(KeyError::new(
            format!("{key}.batch"),
            format!("must be at most `limit` ({})", spec.limit),
        )),
        _ => {}
    }
    errors
}

/// Returns every policy list of the file with its key path: the global `policies` and those
/// of each service, route and consumer.
fn policy_levels(config: &Config) -> Vec<(String, &[PolicySpec])> {
    let mut levels: Vec<(String, &[PolicySpec])> = vec![("policies".into(), &config.policies)];
    for (i, service) in config.entities.services.iter().enumerate() {
        levels.push((format!("services[{i}].policies"), &service.policies));
    }
    for (i, route) in config.entities.routes.iter().enumerate() {
        levels.push((format!("routes[{i}].policies"), &route.policies));
    }
    for (i, consumer) in config.entities.consumers.iter().enumerate() {
        levels.push((format!("consumers[{i}].policies"), &consumer.policies));
    }
    levels
}

/// Checks that the `models` of every `ai-limits` policy name models of the `ai` section.
fn validate_limit_model_names(config: &Config) -> Vec<KeyError> {
    policy_levels(config)
        .into_iter()
        .flat_map(|(at, policies)| {
            crate::ai_limits::validate_ai_limit_models(&at, policies, config.ai.as_ref())
        })
        .collect()
}

/// Checks that every limit with `backend: redis` has a Redis server to use.
fn validate_redis_backends(config: &Config) -> Vec<KeyError> {
    if config.redis.is_some() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for (at, policies) in policy_levels(config) {
        for (i, policy) in policies.iter().enumerate() {
            let backend = match policy {
                PolicySpec::RateLimit(spec) => spec.backend,
                PolicySpec::AiLimits(spec) => spec.backend,
                _ => CounterBackend::Local,
            };
            if backend == CounterBackend::Redis {
                errors.push(KeyError::new(
                    format!("{at}[{i}].{}.backend", policy.kind()),
                    "`backend: redis` needs the top-level `redis` key with the server URL",
                ));
            }
        }
    }
    errors
}

/// Largest `max_token_bytes`: the whole header block is limited to 32 KiB by default.
pub const MAX_JWT_TOKEN_BYTES: usize = 64 * 1024;

fn validate_jwt(key: &str, spec: &JwtSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut push = |field: &str, message: String| {
        let at = if field.is_empty() {
            key.to_string()
        } else {
            format!("{key}.{field}")
        };
        errors.push(KeyError::new(at, message));
    };

    if spec.algorithms.is_empty() {
        push(
            "algorithms",
            "list at least one algorithm, such as `RS256`".into(),
        );
    }
    for (i, name) in spec.algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&name.as_str()) {
            push(
                &format!("algorithms[{i}]"),
                format!(
                    "unsupported algorithm `{name}`; use one of {}",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    let hmac_listed = spec.algorithms.iter().any(|name| name.starts_with("HS"));
    let has_secret = spec.keys.iter().any(|k| k.secret_env.is_some());
    if hmac_listed && !has_secret {
        push(
            "algorithms",
            "HS256, HS384 and HS512 need a key with `secret_env` in `keys`".into(),
        );
    }
    if has_secret && !hmac_listed {
        push(
            "keys",
            "a `secret_env` key needs HS256, HS384 or HS512 in `algorithms`".into(),
        );
    }

    if spec.jwks_uri.is_none() && !spec.discovery && spec.keys.is_empty() {
        push(
            "",
            "jwt needs a key source: `jwks_uri`, `discovery: true` or `keys`".into(),
        );
    }
    if spec.jwks_uri.is_some() && spec.discovery {
        push(
            "discovery",
            "set either `jwks_uri` or `discovery: true`, not both".into(),
        );
    }
    if let Some(uri) = &spec.jwks_uri
        && let Err(message) = check_fetch_url(uri)
    {
        push("jwks_uri", message);
    }
    match (&spec.issuer, spec.discovery) {
        (None, true) => push("issuer", "`discovery: true` needs `issuer`".into()),
        (Some(issuer), true) => {
            if let Err(message) = check_fetch_url(issuer) {
                push("issuer", message);
            }
        }
        (Some(issuer), false) if issuer.is_empty() => {
            push("issuer", "must not be empty".into());
        }
        _ => {}
    }
    for (i, audience) in spec.audiences.iter().enumerate() {
        if audience.is_empty() {
            push(&format!("audiences[{i}]"), "must not be empty".into());
        }
    }

    for (i, entry) in spec.keys.iter().enumerate() {
        let sources = [
            entry.pem.is_some(),
            entry.jwk.is_some(),
            entry.secret_env.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            push(
                &format!("keys[{i}]"),
                "set exactly one of `pem`, `jwk` and `secret_env`".into(),
            );
        }
        if let Some(alg) = &entry.alg
            && !JWT_ALGORITHMS.contains(&alg.as_str())
        {
            push(
                &format!("keys[{i}].alg"),
                format!("unsupported algorithm `{alg}`"),
            );
        }
        if let Some(name) = &entry.secret_env {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                push(
                    &format!("keys[{i}].secret_env"),
                    format!(
                        "`{name}` is not an environment variable name; write the name, not `${{{name}}}`"
                    ),
                );
            }
        }
    }

    for (field, name) in [
        ("consumer_claim", Some(&spec.consumer_claim)),
        ("scopes_claim", Some(&spec.scopes_claim)),
        ("roles_claim", spec.roles_claim.as_ref()),
    ] {
        if name.is_some_and(|name| name.is_empty()) {
            push(field, "must not be empty".into());
        }
    }
    for (i, claim) in spec.required_claims.iter().enumerate() {
        if claim.is_empty() {
            push(&format!("required_claims[{i}]"), "must not be empty".into());
        }
    }
    for (claim, header) in &spec.forward_claims {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            push(
                &format!("forward_claims.{claim}"),
                format!("invalid header name `{header}`"),
            );
        }
    }
    if spec.max_token_bytes == 0 || spec.max_token_bytes > MAX_JWT_TOKEN_BYTES {
        push(
            "max_token_bytes",
            format!("must be between 1 and {MAX_JWT_TOKEN_BYTES}"),
        );
    }
    if spec.leeway > std::time::Duration::from_secs(600) {
        push("leeway", "must be at most 10m".into());
    }
    if spec.jwks_refresh_interval < std::time::Duration::from_secs(1) {
        push("jwks_refresh_interval", "must be at least 1s".into());
    }
    if spec.jwks_min_refresh_interval < std::time::Duration::from_millis(100) {
        push("jwks_min_refresh_interval", "must be at least 100ms".into());
    }
    if spec.jwks_timeout < std::time::Duration::from_millis(100)
        || spec.jwks_timeout > std::time::Duration::from_secs(60)
    {
        push("jwks_timeout", "must be between 100ms and 60s".into());
    }
    errors
}

/// Shortest session secret of `openid-connect`, in bytes.
pub const MIN_SESSION_SECRET_BYTES: usize = 32;
/// Largest `max_cookie_bytes` of `openid-connect`: browsers keep cookies of up to 4096 bytes,
/// name and value included (RFC 6265 section 6.1).
pub const MAX_SESSION_COOKIE_BYTES: usize = 4096;
/// Smallest `max_cookie_bytes` of `openid-connect`, which fits a session with short tokens.
pub const MIN_SESSION_COOKIE_BYTES: usize = 1024;

fn validate_openid_connect(key: &str, spec: &OpenIdConnectSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut push = |field: &str, message: String| {
        let at = if field.is_empty() {
            key.to_string()
        } else {
            format!("{key}.{field}")
        };
        errors.push(KeyError::new(at, message));
    };

    if let Err(message) = check_fetch_url(&spec.issuer) {
        push("issuer", message);
    }
    if spec.client_id.is_empty() {
        push("client_id", "must not be empty".into());
    }
    let is_variable_name = |name: &str| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    for (field, variable) in [
        ("client_secret_env", spec.client_secret_env.as_ref()),
        ("private_key_env", spec.private_key_env.as_ref()),
        ("session_secret_env", Some(&spec.session_secret_env)),
    ] {
        if let Some(name) = variable.filter(|name| !is_variable_name(name)) {
            push(
                field,
                format!(
                    "`{name}` is not an environment variable name; write the name, not `${{{name}}}`"
                ),
            );
        }
    }
    match spec.client_auth {
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost => {
            if spec.client_secret_env.is_none() {
                push(
                    "client_secret_env",
                    "`client_secret_basic` and `client_secret_post` need `client_secret_env`"
                        .into(),
                );
            }
        }
        ClientAuthMethod::PrivateKeyJwt => {
            if spec.private_key_env.is_none() {
                push(
                    "private_key_env",
                    "`private_key_jwt` needs the private key in `private_key_env`".into(),
                );
            }
        }
    }

    let redirect_path = match check_fetch_url(&spec.redirect_uri) {
        Ok(()) => spec
            .redirect_uri
            .parse::<http::Uri>()
            .ok()
            .map(|uri| uri.path().to_string()),
        Err(message) => {
            push("redirect_uri", message);
            None
        }
    };
    if let Some(uri) = &spec.post_logout_redirect_uri
        && let Err(message) = check_fetch_url(uri)
    {
        push("post_logout_redirect_uri", message);
    }
    if let Some(path) = &spec.logout_path {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            push(
                "logout_path",
                format!("`{path}` must be a path that starts with `/`, without a query"),
            );
        } else if redirect_path.as_deref() == Some(path.as_str()) {
            push(
                "logout_path",
                "must differ from the path of `redirect_uri`".into(),
            );
        }
    }
    if !spec.scopes.iter().any(|scope| scope == "openid") {
        push("scopes", "must contain `openid`".into());
    }
    for (i, scope) in spec.scopes.iter().enumerate() {
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !valid {
            push(
                &format!("scopes[{i}]"),
                format!("invalid scope `{scope}`; a scope is printable ASCII without spaces"),
            );
        }
    }
    for name in spec.authorization_params.keys() {
        if RESERVED_AUTHORIZATION_PARAMS.contains(&name.as_str()) {
            push(
                &format!("authorization_params.{name}"),
                format!("`{name}` is set by the gateway and cannot be configured"),
            );
        }
    }

    let cookie_token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !cookie_token(&spec.cookie_name) {
        push(
            "cookie_name",
            format!(
                "invalid cookie name `{}`; use letters, digits, `-` and `_`",
                spec.cookie_name
            ),
        );
    }
    if !spec.cookie_path.starts_with('/') || spec.cookie_path.contains([';', ' ']) {
        push(
            "cookie_path",
            format!("`{}` must be a path that starts with `/`", spec.cookie_path),
        );
    }
    if let Some(domain) = &spec.cookie_domain
        && !cookie_token(domain)
    {
        push("cookie_domain", format!("invalid cookie domain `{domain}`"));
    }
    if spec.cookie_same_site == SameSite::None && !spec.cookie_secure {
        push(
            "cookie_same_site",
            "`SameSite=None` needs `cookie_secure: true`; browsers drop it otherwise".into(),
        );
    }
    if !(MIN_SESSION_COOKIE_BYTES..=MAX_SESSION_COOKIE_BYTES).contains(&spec.max_cookie_bytes) {
        push(
            "max_cookie_bytes",
            format!("must be between {MIN_SESSION_COOKIE_BYTES} and {MAX_SESSION_COOKIE_BYTES}"),
        );
    }
    let minute = std::time::Duration::from_secs(60);
    if spec.session_lifetime < minute || spec.session_lifetime > 30 * 24 * 60 * minute {
        push("session_lifetime", "must be between 1m and 30d".into());
    }
    if spec.login_timeout < minute || spec.login_timeout > 60 * minute {
        push("login_timeout", "must be between 1m and 1h".into());
    }
    if spec.refresh_before > 60 * minute {
        push("refresh_before", "must be at most 1h".into());
    }
    if spec.bearer_only && !spec.accept_bearer {
        push(
            "bearer_only",
            "`bearer_only: true` needs `accept_bearer: true`".into(),
        );
    }
    if spec.algorithms.is_empty() {
        push(
            "algorithms",
            "list at least one algorithm, such as `RS256`".into(),
        );
    }
    for (i, name) in spec.algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&name.as_str()) || name.starts_with("HS") {
            push(
                &format!("algorithms[{i}]"),
                format!("unsupported algorithm `{name}`; use an RS, PS, ES or EdDSA algorithm"),
            );
        }
    }
    for (i, audience) in spec.bearer_audiences.iter().enumerate() {
        if audience.is_empty() {
            push(
                &format!("bearer_audiences[{i}]"),
                "must not be empty".into(),
            );
        }
    }
    for (field, name) in [
        ("consumer_claim", Some(&spec.consumer_claim)),
        ("roles_claim", spec.roles_claim.as_ref()),
    ] {
        if name.is_some_and(|name| name.is_empty()) {
            push(field, "must not be empty".into());
        }
    }
    for (claim, header) in &spec.forward_claims {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            push(
                &format!("forward_claims.{claim}"),
                format!("invalid header name `{header}`"),
            );
        }
    }
    if spec.leeway > std::time::Duration::from_secs(600) {
        push("leeway", "must be at most 10m".into());
    }
    if spec.timeout < std::time::Duration::from_millis(100)
        || spec.timeout > std::time::Duration::from_secs(60)
    {
        push("timeout", "must be between 100ms and 60s".into());
    }
    if spec.discovery_refresh_interval < std::time::Duration::from_secs(1) {
        push("discovery_refresh_interval", "must be at least 1s".into());
    }
    errors
}

/// Authorization request parameters that the `openid-connect` policy sets itself.
const RESERVED_AUTHORIZATION_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// Longest `cache_ttl`, `negative_cache_ttl` and `stale_if_error` of `oauth2-introspection`.
pub const MAX_INTROSPECTION_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest `cache_max_entries` of `oauth2-introspection`.
pub const MAX_INTROSPECTION_CACHE_ENTRIES: usize = 1_000_000;

fn validate_introspection(key: &str, spec: &IntrospectionSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut push = |field: &str, message: String| {
        let at = if field.is_empty() {
            key.to_string()
        } else {
            format!("{key}.{field}")
        };
        errors.push(KeyError::new(at, message));
    };

    match (&spec.introspection_endpoint, &spec.issuer) {
        (None, None) => push(
            "",
            "oauth2-introspection needs `introspection_endpoint`, or `issuer` for discovery".into(),
        ),
        (Some(endpoint), _) => {
            if let Err(message) = check_fetch_url(endpoint) {
                push("introspection_endpoint", message);
            }
        }
        (None, Some(_)) => {}
    }
    if let Some(issuer) = &spec.issuer
        && let Err(message) = check_fetch_url(issuer)
    {
        push("issuer", message);
    }
    if let Some(uri) = &spec.jwks_uri
        && let Err(message) = check_fetch_url(uri)
    {
        push("jwks_uri", message);
    }
    if spec.client_id.is_empty() {
        push("client_id", "must not be empty".into());
    }

    let is_variable_name = |name: &str| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    for (field, variable) in [
        ("client_secret_env", &spec.client_secret_env),
        ("private_key_env", &spec.private_key_env),
    ] {
        if let Some(name) = variable
            && !is_variable_name(name)
        {
            push(
                field,
                format!(
                    "`{name}` is not an environment variable name; write the name, not `${{{name}}}`"
                ),
            );
        }
    }
    match spec.client_auth {
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost => {
            if spec.client_secret_env.is_none() {
                push(
                    "client_secret_env",
                    "`client_secret_basic` and `client_secret_post` need `client_secret_env`"
                        .into(),
                );
            }
            if spec.private_key_env.is_some() {
                push(
                    "private_key_env",
                    "`private_key_env` is only read with `client_auth: private_key_jwt`".into(),
                );
            }
        }
        ClientAuthMethod::PrivateKeyJwt => {
            if spec.private_key_env.is_none() {
                push(
                    "private_key_env",
                    "`private_key_jwt` needs the private key in `private_key_env`".into(),
                );
            }
            if spec.client_secret_env.is_some() {
                push(
                    "client_secret_env",
                    "`client_secret_env` is not read with `client_auth: private_key_jwt`".into(),
                );
            }
        }
    }

    if spec.response_format == IntrospectionFormat::Jwt {
        if spec.issuer.is_none() {
            push(
                "issuer",
                "`response_format: jwt` needs `issuer`, the expected `iss` of responses".into(),
            );
        }
        if spec.response_algorithms.is_empty() {
            push(
                "response_algorithms",
                "list at least one algorithm, such as `RS256`".into(),
            );
        }
    }
    for (i, name) in spec.response_algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&name.as_str()) || name.starts_with("HS") {
            push(
                &format!("response_algorithms[{i}]"),
                format!("unsupported algorithm `{name}`; use an RS, PS, ES or EdDSA algorithm"),
            );
        }
    }
    for (i, audience) in spec.audiences.iter().enumerate() {
        if audience.is_empty() {
            push(&format!("audiences[{i}]"), "must not be empty".into());
        }
    }
    for (field, name) in [
        ("consumer_claim", Some(&spec.consumer_claim)),
        ("scopes_claim", Some(&spec.scopes_claim)),
        ("roles_claim", spec.roles_claim.as_ref()),
    ] {
        if name.is_some_and(|name| name.is_empty()) {
            push(field, "must not be empty".into());
        }
    }
    for (claim, header) in &spec.forward_claims {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            push(
                &format!("forward_claims.{claim}"),
                format!("invalid header name `{header}`"),
            );
        }
    }
    if spec.max_token_bytes == 0 || spec.max_token_bytes > MAX_JWT_TOKEN_BYTES {
        push(
            "max_token_bytes",
            format!("must be between 1 and {MAX_JWT_TOKEN_BYTES}"),
        );
    }
    if spec.leeway > std::time::Duration::from_secs(600) {
        push("leeway", "must be at most 10m".into());
    }
    if spec.timeout < std::time::Duration::from_millis(100)
        || spec.timeout > std::time::Duration::from_secs(60)
    {
        push("timeout", "must be between 100ms and 60s".into());
    }
    for (field, value) in [
        ("cache_ttl", spec.cache_ttl),
        ("negative_cache_ttl", spec.negative_cache_ttl),
        ("stale_if_error", spec.stale_if_error),
    ] {
        if value > MAX_INTROSPECTION_CACHE_TTL {
            push(field, "must be at most 1h".into());
        }
    }
    if spec.cache_max_entries == 0 || spec.cache_max_entries > MAX_INTROSPECTION_CACHE_ENTRIES {
        push(
            "cache_max_entries",
            format!("must be between 1 and {MAX_INTROSPECTION_CACHE_ENTRIES}"),
        );
    }
    if spec.jwks_refresh_interval < std::time::Duration::from_secs(1) {
        push("jwks_refresh_interval", "must be at least 1s".into());
    }
    errors
}

/// Checks a URL that the gateway fetches keys from.
fn check_fetch_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("invalid URL `{url}`"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` must start with https:// or http://")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

fn check_name(errors: &mut Vec<KeyError>, key: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        errors.push(KeyError::new(
            key,
            format!("invalid name `{name}`; use 1 to 128 letters, digits, `-`, `_` or `.`"),
        ));
    }
}

pub(crate) fn check_target(target: &str) -> Result<(), String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("invalid target URL `{target}`"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "target `{target}`: https upstreams are not supported yet"
            ));
        }
        _ => return Err(format!("target `{target}` must start with http://")),
    }
    if uri.host().is_none() {
        return Err(format!("target `{target}` has no host"));
    }
    // `Uri::port` is `None` for a port that does not fit in 16 bits, so read the text.
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(port) if port != 0 => {}
            _ => {
                return Err(format!(
                    "target `{target}` has an invalid port; use 1 to 65535"
                ));
            }
        }
    }
    if uri.query().is_some() {
        return Err(format!("target `{target}` must not have a query string"));
    }
    Ok(())
}

fn check_route_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` must start with `/`"));
    }
    let valid = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b));
    if !valid {
        return Err(format!(
            "path `{path}` has characters that are not allowed; write it decoded, without `%`, `;`, `?` or `#`"
        ));
    }
    let has_dot_segment = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if path.contains("//") || has_dot_segment {
        return Err(format!(
            "path `{path}` is not in canonical form (no `//`, `.` or `..` segments)"
        ));
    }
    Ok(())
}
