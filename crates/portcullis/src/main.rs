//! The `portcullis` command: run the gateway, validate a config, migrate a store.

mod serve;
mod token;

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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply pending store migrations and exit.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("portcullis")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
