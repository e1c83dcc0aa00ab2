//! The admin token: taken from the config, or generated once and kept in a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::{Config, StoreConfig};

/// Where the admin token came from, for the start-up log.
pub enum TokenSource {
    Config,
    File { path: PathBuf, created: bool },
}

/// Returns the admin token and its source. Without a configured token, the token file is
/// read, or created with a new random token and mode 0600.
pub fn admin_token(config: &Config) -> anyhow::Result<(String, TokenSource)> {
    if let Some(token) = &config.admin.token {
        return Ok((token.clone(), TokenSource::Config));
    }
    let path = token_path(config);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => {
            return Ok((
                text.trim().to_string(),
                TokenSource::File {
                    path,
                    created: false,
                },
            ));
        }
        Ok(_) => anyhow::bail!(
            "the admin token file {} is empty or too short; delete it to generate a new one",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read the admin token file {}", path.display()));
        }
    }
    let token = format!("pca_{}", portcullis_control::generate_secret());
    write_private(&path, &token)
        .with_context(|| format!("cannot write the admin token file {}", path.display()))?;
    Ok((
        token,
        TokenSource::File {
            path,
            created: true,
        },
    ))
}

fn token_path(config: &Config) -> PathBuf {
    if let Some(path) = &config.admin.token_file {
        return path.clone();
    }
    let folder = match &config.store {
        StoreConfig::Sqlite(path) => path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        StoreConfig::Postgres(_) => config.base_dir.clone(),
    };
    let folder = if folder.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        folder
    };
    folder.join("portcullis-admin.token")
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")
}
