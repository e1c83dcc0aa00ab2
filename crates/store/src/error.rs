//! Store errors.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named entity or key does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The write conflicts with existing data, such as a route that still uses a service.
    #[error("{0}")]
    Conflict(String),
    /// An argument the store cannot use or encode, such as a PostgreSQL schema name that is not
    /// a plain identifier.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be opened or connected to. `target` names it without a
    /// password.
    #[error("failed to open the store at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached or returned an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A schema migration failed or does not match the migrations already applied.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded. `what` names the table and the row.
    #[error("stored {what} is invalid: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Returns true when the error means the database is unavailable rather than the request
    /// being wrong, so a caller can report degraded readiness.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. } | StoreError::Database(_) | StoreError::Migration(_)
        )
    }

    pub(crate) fn corrupt(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }
}
