//! `portcullis keys`: list, issue, rotate and revoke API keys directly in the store.
//!
//! Each command prints one line of JSON on standard output. Only `issue` and `rotate` print a
//! plaintext key, in that line and nowhere else. Running nodes pick a change up from the store's
//! config version, within their version check interval or at once through a change feed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use portcullis_admin::{IssuedKey, KeyView, RotatedKeyView};
use portcullis_control::rotation;
use serde::Serialize;

use crate::serve::load_config;
use crate::sync::{init_command_logging, open_store};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Print keys as JSON, revoked ones included: every key, or those of one consumer or with
    /// one prefix.
    List {
        #[command(flatten)]
        store: StoreArg,
        /// Only keys of this consumer.
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
        /// Only keys whose public prefix starts with this, such as `pcs_4vQe1kZ8` (at most 12
        /// characters).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
    },
    /// Issue a key and print it with its plaintext, which is shown only this once.
    Issue {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_name = "NAME")]
        consumer: String,
        /// Lifetime of the key, such as `30d` or `12h`; no expiry when absent.
        #[arg(long, value_name = "D")]
        expires_in: Option<String>,
        /// A scope of the key; repeat for several.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// Replace a key with a new one and print the new plaintext, which is shown only this once.
    /// The old key keeps working for the overlap.
    Rotate {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_name = "NAME")]
        consumer: String,
        /// Id of the key to replace.
        #[arg(long, value_name = "ID")]
        id: String,
        /// How long the old key keeps working, such as `24h`; `key_rotation.overlap` from the
        /// config when absent.
        #[arg(long, value_name = "D")]
        overlap: Option<String>,
    },
    /// Revoke a key. Revoking a revoked key changes nothing and succeeds.
    Revoke {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_name = "NAME")]
        consumer: String,
        /// Id of the key to revoke.
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

/// The node configuration that names the store.
#[derive(clap::Args)]
pub struct StoreArg {
    /// Node configuration that names the store and the key-hash secret.
    #[arg(long, short)]
    config: PathBuf,
}

/// Output of `keys revoke`.
#[derive(Serialize)]
struct Revoked<'a> {
    consumer: &'a str,
    id: &'a str,
    revoked: bool,
    config_version: u64,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List {
            store,
            consumer,
            prefix,
        } => list(store, consumer, prefix).await,
        KeysCommand::Issue {
            store,
            consumer,
            expires_in,
            scopes,
        } => issue(store, &consumer, expires_in.as_deref(), scopes).await,
        KeysCommand::Rotate {
            store,
            consumer,
            id,
            overlap,
        } => rotate(store, &consumer, &id, overlap.as_deref()).await,
        KeysCommand::Revoke {
            store,
            consumer,
            id,
        } => revoke(store, &consumer, &id).await,
    }
}

async fn list(
    store: StoreArg,
    consumer: Option<String>,
    prefix: Option<String>,
) -> anyhow::Result<()> {
    let prefix = prefix.unwrap_or_default();
    rotation::check_lookup_prefix(&prefix).map_err(anyhow::Error::msg)?;
    let config = load_config(Some(store.config))?;
    init_command_logging();
    let store = open_store(&config).await?;
    if let Some(consumer) = &consumer {
        // A missing consumer is an error, not an empty list.
        store.list_keys(consumer).await?;
    }
    let keys = store
        .find_keys(&prefix, consumer.as_deref())
        .await
        .context("cannot read the keys")?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    print_json(&serde_json::json!({ "data": views }))
}

async fn issue(
    store: StoreArg,
    consumer: &str,
    expires_in: Option<&str>,
    scopes: Vec<String>,
) -> anyhow::Result<()> {
    let now = rotation::issue_time();
    let expires_at = match expires_in {
        Some(text) => Some(rotation::expiry_after(now, text).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if expires_at.is_some_and(|at| at <= now) {
        bail!("`--expires-in` must be positive");
    }
    let config = load_config(Some(store.config))?;
    init_command_logging();
    let store = open_store(&config).await?;
    let hasher = portcullis_control::key_hasher(&config, store.as_ref()).await?;
    store.list_keys(consumer).await?;
    let issued = rotation::new_key(&hasher, consumer, now, expires_at, scopes);
    store
        .insert_key(&issued.record)
        .await
        .context("cannot store the key")?;
    print_json(&IssuedKey {
        view: KeyView::from(&issued.record),
        key: issued.plaintext,
    })
}

async fn rotate(
    store: StoreArg,
    consumer: &str,
    id: &str,
    overlap: Option<&str>,
) -> anyhow::Result<()> {
    let overlap = overlap
        .map(rotation::parse_overlap)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = load_config(Some(store.config))?;
    init_command_logging();
    let overlap = overlap.unwrap_or(config.key_rotation.overlap);
    let store = open_store(&config).await?;
    let hasher = portcullis_control::key_hasher(&config, store.as_ref()).await?;
    let rotation = rotation::rotate_key(
        store.as_ref(),
        &hasher,
        consumer,
        id,
        overlap,
        rotation::issue_time(),
    )
    .await?;
    let rotated = &rotation.rotated;
    print_json(&RotatedKeyView {
        key: rotation.plaintext,
        view: KeyView::from(&rotated.successor),
        previous: KeyView::from(&rotated.previous),
    })
}

async fn revoke(store: StoreArg, consumer: &str, id: &str) -> anyhow::Result<()> {
    let config = load_config(Some(store.config))?;
    init_command_logging();
    let store = open_store(&config).await?;
    let config_version = store.revoke_key(consumer, id).await?;
    print_json(&Revoked {
        consumer,
        id,
        revoked: true,
        config_version,
    })
}

/// Writes `value` as one line of JSON on standard output.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value).context("cannot encode the output")?;
    line.push('\n');
    std::io::stdout()
        .lock()
        .write_all(line.as_bytes())
        .context("cannot write to standard output")
}
