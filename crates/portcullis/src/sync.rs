//! `portcullis diff` and `portcullis apply`: compare the store with a declared set of
//! entities and keys, and make the store match it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use portcullis_config::{Config, Entities};
use portcullis_store::{ApiKeyRecord, Change, Store, StoreState};

use crate::serve::load_config;

/// Command-line arguments of `diff` and `apply`: the node config and the declared set.
#[derive(clap::Args)]
pub struct Source {
    /// Node configuration: the store, the key-hash secret, and the declared services, routes
    /// and consumers unless --entities is given.
    #[arg(long, short)]
    config: PathBuf,
    /// Read the declared services, routes and consumers from this file instead, such as the
    /// output of `portcullis export`. Its other settings are ignored.
    #[arg(long, value_name = "FILE")]
    entities: Option<PathBuf>,
}

/// The store and the declared set, read for `diff` or `apply`.
struct Prepared {
    store: Arc<dyn Store>,
    entities: Entities,
    keys: Vec<ApiKeyRecord>,
    state: StoreState,
    changes: Vec<Change>,
}

/// Logs warnings and errors as text on standard error, so that standard output carries only
/// the command's result. `RUST_LOG` overrides the level.
pub fn init_command_logging() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(error) = result {
        eprintln!("warning: logging was already initialised: {error}");
    }
}

/// Opens the store that `config` names and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    portcullis_store::open(&config.store)
        .await
        .context("cannot open the store")
}

async fn prepare(source: Source) -> anyhow::Result<Prepared> {
    let config = load_config(Some(source.config))?;
    init_command_logging();
    let entities = match source.entities {
        Some(path) => load_config(Some(path))?.entities,
        None => config.entities.clone(),
    };
    let store = open_store(&config).await?;
    // Plaintext keys are hashed like `serve` hashes them. Without `key_hash_secret` in the
    // config this reads the store's secret, and creates it on first use as `serve` would.
    let hasher = portcullis_control::key_hasher(&config, store.as_ref())
        .await
        .context("cannot read the key-hash secret")?;
    let keys = portcullis_control::declared_key_records(&entities, &hasher);
    let state = store.load().await.context("cannot read the store")?;
    let changes = portcullis_store::diff(&state, &entities, &keys)
        .context("the declared set cannot be applied")?;
    Ok(Prepared {
        store,
        entities,
        keys,
        state,
        changes,
    })
}

/// Tells on standard error that the store's AI prices are outside the declared set, so that
/// an operator who applies an export does not expect them to change.
fn note_stored_prices(state: &StoreState) {
    if state.ai_prices.is_empty() {
        return;
    }
    eprintln!(
        "note: the store holds {} set through the admin API; diff and apply leave them \
         unchanged (list them with GET /ai/prices)",
        counted(state.ai_prices.len(), "AI price")
    );
}

fn print_changes(out: &mut impl Write, changes: &[Change]) -> std::io::Result<()> {
    for change in changes {
        writeln!(out, "{change}")?;
    }
    Ok(())
}

/// Returns `count` and `noun`, in the plural unless `count` is 1: `1 change`, `2 changes`.
pub fn counted(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        count => format!("{count} {noun}s"),
    }
}

/// Prints the changes `apply` would make; exits 0 when there are none and 1 otherwise.
pub async fn diff(source: Source) -> anyhow::Result<ExitCode> {
    let prepared = prepare(source).await?;
    note_stored_prices(&prepared.state);
    let mut out = std::io::stdout().lock();
    print_changes(&mut out, &prepared.changes)?;
    if prepared.changes.is_empty() {
        writeln!(out, "no changes; config version {}", prepared.state.version)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} to apply to config version {}",
        counted(prepared.changes.len(), "change"),
        prepared.state.version
    )?;
    Ok(ExitCode::from(1))
}

/// Makes the store match the declared set and prints the changes and the new version.
pub async fn apply(source: Source) -> anyhow::Result<()> {
    let prepared = prepare(source).await?;
    note_stored_prices(&prepared.state);
    let version = prepared
        .store
        .replace_all(&prepared.entities, &prepared.keys)
        .await
        .context("cannot apply the declared set")?;

    let mut out = std::io::stdout().lock();
    print_changes(&mut out, &prepared.changes)?;
    let expected = if prepared.changes.is_empty() {
        prepared.state.version
    } else {
        prepared.state.version + 1
    };
    if version != expected {
        // The list comes from a read before the write transaction, which computes the changes
        // again against the state it reads.
        eprintln!(
            "warning: the store was written by someone else during apply (version {} before, \
             {version} after), so the changes applied may differ from this list",
            prepared.state.version
        );
    }
    if prepared.changes.is_empty() {
        writeln!(out, "no changes; config version {version}")?;
    } else {
        writeln!(
            out,
            "applied {}; config version {version}",
            counted(prepared.changes.len(), "change")
        )?;
    }
    Ok(())
}
