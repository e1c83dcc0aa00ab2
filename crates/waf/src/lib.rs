//! Web application firewall engine that runs the OWASP Core Rule Set (CRS) 4.
//!
//! [`RuleSet::load`] parses SecLang rule files into a compiled rule set once, and
//! [`RuleSet::evaluate`] runs the request phases (1 and 2) of that set against one [`Request`].
//! Response phases are parsed but not evaluated. The crate has no HTTP server: callers build a
//! [`Request`] from whatever they received. [`ftw`] runs the CRS regression tests (go-ftw YAML)
//! through the engine. [`Model`] is the learned model behind the `@detectModel` operator, and
//! [`model_eval`] measures it and the built-in rules on a labelled corpus.

pub mod content_encoding;
pub mod engine;
pub mod ftw;
pub mod model;
pub mod model_eval;
pub mod operator;
pub mod regex_repair;
pub mod request;
pub mod ruleset;
pub mod seclang;
pub mod shared;
pub mod transform;
pub mod variable;

pub use engine::{Evaluation, Exclusions, MatchedRule};
pub use model::Model;
pub use request::Request;
pub use ruleset::{RuleSet, Setup};
pub use shared::load_shared;

use seclang::Location;

/// Errors raised while loading a rule set or a test suite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule file uses syntax the engine does not support or that is malformed.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("failed to read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid test file {path}: {message}")]
    Test {
        path: std::path::PathBuf,
        message: String,
    },
}

impl Error {
    pub(crate) fn syntax(location: &Location, message: impl Into<String>) -> Self {
        Self::Syntax {
            file: location.file.to_string(),
            line: location.line,
            message: message.into(),
        }
    }
}
