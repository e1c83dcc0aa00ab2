//! `portcullis export`: writes the store's entities as a YAML file that `apply` accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::{Config, DeclaredKey, Entities, HashedKey, PriceSpec};
use portcullis_store::{ApiKeyRecord, StoreState};

use crate::serve::load_config;
use crate::sync::{counted, init_command_logging, open_store};

/// Writes the store's entities as YAML to `output`, or to standard output.
pub async fn export(config_path: PathBuf, output: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(Some(config_path))?;
    init_command_logging();
    let store = open_store(&config).await?;
    let state = store.load().await.context("cannot read the store")?;
    let (entities, orphans) = exported_entities(&state);
    for key in &orphans {
        eprintln!(
            "warning: key `{}` names consumer `{}`, which does not exist, so it is left out",
            key.id, key.consumer
        );
    }
    let mut text = render(&config, store.backend(), state.version, &entities)?;
    text.push_str(&stored_prices_comment(&state.ai_prices)?);
    match &output {
        Some(path) => write_file(path, &text)?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("cannot write to standard output")?,
    }

    let key_count: usize = entities
        .consumers
        .iter()
        .map(|consumer| consumer.api_keys.len())
        .sum();
    if !state.ai_prices.is_empty() {
        eprintln!(
            "note: {} set through the admin API are listed as comments only, because apply \
             does not manage them",
            counted(state.ai_prices.len(), "stored AI price")
        );
    }
    eprintln!(
        "exported {}, {}, {} and {} at config version {}{}",
        counted(entities.services.len(), "service"),
        counted(entities.routes.len(), "route"),
        counted(entities.consumers.len(), "consumer"),
        counted(key_count, "key"),
        state.version,
        output
            .as_ref()
            .map(|path| format!(" to {}", path.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// Returns the store's entities with every key that is not revoked listed as a hashed record
/// under its consumer, and the keys whose consumer does not exist.
///
/// NOTE: a key whose revocation is scheduled for a later time is exported without that time,
/// because a declared key has no revocation field. The store API sets revocation times only to
/// the current time, so only a direct database edit makes such a key.
fn exported_entities(state: &StoreState) -> (Entities, Vec<&ApiKeyRecord>) {
    let mut entities = state.entities.clone();
    let mut orphans = Vec::new();
    for key in &state.keys {
        let consumer = entities
            .consumers
            .iter_mut()
            .find(|consumer| consumer.name == key.consumer);
        let Some(consumer) = consumer else {
            orphans.push(key);
            continue;
        };
        consumer.api_keys.push(DeclaredKey::Hashed(HashedKey {
            id: key.id.clone(),
            hash: key.hash.clone(),
            prefix: key.prefix.clone(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            scopes: key.scopes.clone(),
            rotated_from: key.rotated_from.clone(),
        }));
    }
    (entities, orphans)
}

/// Returns the export file: a header comment, then `services`, `routes` and `consumers`.
fn render(
    config: &Config,
    backend: &str,
    version: u64,
    entities: &Entities,
) -> anyhow::Result<String> {
    let secret_source = if config.key_hash_secret.is_some() {
        "# key-hash secret of that store: here the `key_hash_secret` set in the node config.\n"
    } else {
        "# key-hash secret of that store: here the secret generated and kept in the store,\n\
         # because the node config sets no `key_hash_secret`.\n"
    };
    let mut text = format!(
        "# Services, routes and consumers exported by `portcullis export` from a {backend} store\n\
         # at config version {version}.\n\
         #\n\
         # API keys are hashed records, never plaintext. Each hash is HMAC-SHA-256 under the\n\
         {secret_source}\
         # Another store accepts the records, but its nodes authenticate requests with them only\n\
         # if they use the same secret. Setting the same `key_hash_secret` in the config of the\n\
         # nodes of both stores makes the hashes portable.\n\
         #\n\
         # Apply it with: portcullis apply --config NODE_CONFIG --entities THIS_FILE\n"
    );
    let services = serde_json::to_value(&entities.services)?;
    let routes = serde_json::to_value(&entities.routes)?;
    let consumers = serde_json::to_value(&entities.consumers)?;
    text.push_str(&crate::yaml::document(&[
        ("services", &services),
        ("routes", &routes),
        ("consumers", &consumers),
    ]));
    Ok(text)
}

/// Returns a comment block that lists the AI prices stored through the admin API, or nothing
/// when there are none. They are comments because `apply` reads entities only, and stored
/// prices override the nodes' `ai.prices` instead of being entities.
fn stored_prices_comment(prices: &[PriceSpec]) -> anyhow::Result<String> {
    if prices.is_empty() {
        return Ok(String::new());
    }
    let mut text = String::from(
        "\n# AI prices stored through the admin API. `apply` leaves stored prices unchanged, so\n\
         # this list is for reference. Store one again with PUT /ai/prices/{model} and the JSON.\n",
    );
    for price in prices {
        // JSON escapes any line break, so each price stays on its comment line.
        text.push_str(&format!("#   {}\n", serde_json::to_string(price)?));
    }
    Ok(text)
}

/// Writes `text` to a temporary file beside `path` and renames it, so that readers never see
/// half a file.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let result = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
