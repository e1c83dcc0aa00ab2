//! The `portcullis` command: run the gateway, validate a config, migrate a store, sync a store
//! with a declared set of entities, manage API keys in a store, and run the WAF engine on its
//! own.

mod export;
mod keys;
mod serve;
mod sync;
mod token;
mod waf;
mod yaml;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An API gateway that enforces security policy at the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// YAML configuration file; without it the gateway runs on the embedded default
        /// (proxy on 127.0.0.1:8000, admin API on 127.0.0.1:8001, SQLite file portcullis.db).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the bound addresses as JSON to this file once every listener is up, which
        /// helps scripts that bind port 0.
        #[arg(long, value_name = "FILE")]
        addresses_file: Option<PathBuf>,
    },
    /// Check a configuration file and exit 0 when it is valid.
    Validate {
        /// YAML configuration file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply pending store migrations and exit.
    Migrate {
        /// YAML configuration file that names the store; without it, the embedded default
        /// (SQLite file portcullis.db in the working directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print how `apply` would change the store.
    ///
    /// Exits 0 when nothing would change, 1 when something would, and 2 on error.
    Diff {
        #[command(flatten)]
        source: sync::Source,
    },
    /// Make the store match the declared entities and keys exactly.
    ///
    /// Declared services, routes and consumers that differ are written, the ones not declared
    /// are deleted, and every key not declared is revoked, including keys issued through the
    /// admin API. Prints the changes and the new config version.
    Apply {
        #[command(flatten)]
        source: sync::Source,
    },
    /// Write the store's entities as YAML that `apply --entities` accepts.
    ///
    /// API keys are written as hashed records, never as plaintext.
    Export {
        /// Node configuration that names the store.
        #[arg(long, short)]
        config: PathBuf,
        /// File to write; standard output when absent.
        #[arg(long, short, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Run the WAF engine on its own: the CRS regression tests, or a scan of input values.
    Waf {
        #[command(subcommand)]
        command: waf::WafCommand,
    },
    /// List, issue, rotate and revoke API keys directly in the store, printing JSON.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Serve {
            config,
            addresses_file,
        } => run_async(serve::serve(config, addresses_file)),
        Command::Migrate { config } => run_async(serve::migrate(config)),
        // Exit status 1 means "there are changes", so errors exit with 2 as in diff(1).
        Command::Diff { source } => run_to_status(sync::diff(source), ExitCode::from(2)),
        Command::Apply { source } => run_async(sync::apply(source)),
        Command::Export { config, output } => run_async(export::export(config, output)),
        Command::Waf { command } => waf::run(command),
        Command::Keys { command } => run_async(keys::run(command)),
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match portcullis_config::load_file(path) {
        Ok(config) => {
            let entities = &config.entities;
            eprintln!(
                "{}: valid ({} listeners, {} services, {} routes, {} consumers)",
                path.display(),
                config.listeners.len(),
                entities.services.len(),
                entities.routes.len(),
                entities.consumers.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("error: {error}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::from(2)
        }
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_to_status(
        async { future.await.map(|()| ExitCode::SUCCESS) },
        ExitCode::FAILURE,
    )
}

/// Runs `future` on a new runtime and returns its exit status, or prints its error and returns
/// `on_error`.
///
/// With one CPU available (by the process's affinity mask or cgroup quota), the runtime is
/// tokio's current-thread scheduler. A multi-thread runtime would run one worker there too, and
/// it would pay for cross-thread queues, atomics and wake-ups between that worker and the
/// thread in `block_on`.
fn run_to_status(
    future: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
    on_error: ExitCode,
) -> ExitCode {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|cpus| cpus.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().thread_name("portcullis").build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return on_error;
        }
    };
    match runtime.block_on(future) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            on_error
        }
    }
}

/// Joins an error and its causes with `: `, leaving out a cause whose text the message before
/// it already contains, because many error types repeat their source in their own message.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
