//! What a failed load or validation reports: [`ConfigViolation`] (one problem, with its dotted
//! key and source) and [`ConfigError`]. Messages are lowercase and never carry a value that could
//! be a secret; this file only describes errors, it finds none.

use std::fmt;
use std::path::PathBuf;

/// The seed's error class for every configuration error (`ErrorInfo.reason`).
pub const ERROR_CODE: &str = "ConfigurationError";

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// Dotted key of the offending value, e.g. `runtime.max_concurrent_tasks` or
    /// `servers[1].url`; empty when the problem is not tied to a key.
    pub key: String,
    /// What is wrong, lowercase, without the key; never contains a secret.
    pub message: String,
    /// Where the value came from, e.g. `TOML file /etc/comfy-reality.toml`,
    /// `environment variable COMFY_REALITY__RUNTIME__METRICS_PORT` or
    /// `command-line flag --log-level`; `None` for defaults and for [`Config::validate`].
    ///
    /// [`Config::validate`]: super::Config::validate
    pub source: Option<String>,
}

impl fmt::Display for ConfigViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded. Every variant has the code `ConfigurationError`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("configuration file {} not found", path.display())]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("configuration file {} could not be read", path.display())]
    FileUnreadable {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML. The message names no value, so no secret can leak from it.
    #[error("configuration file {} is not valid toml at line {line}, column {column}: {message}", path.display())]
    FileSyntax {
        /// The path as given.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the TOML parser expected.
        message: String,
    },
    /// A value has the wrong type, an enum value is unknown, or a key is unknown.
    #[error("configuration is malformed: {}", join(violations))]
    Parse {
        /// Each problem with its key and source.
        violations: Vec<ConfigViolation>,
        /// The underlying figment error, for callers that want its details.
        error: Box<figment::Error>,
    },
    /// Values parsed but break a bound or rule; lists every violation.
    #[error("configuration is invalid: {}", join(violations))]
    Invalid {
        /// Each violation with its key and, when loaded, its source.
        violations: Vec<ConfigViolation>,
    },
}

impl ConfigError {
    /// The seed's error code, `ConfigurationError`, for `google.rpc.ErrorInfo` and exit reports.
    pub fn code(&self) -> &'static str {
        ERROR_CODE
    }

    /// The per-key problems, for `BadRequest` field violations; empty for file errors.
    pub fn violations(&self) -> &[ConfigViolation] {
        match self {
            Self::Parse { violations, .. } | Self::Invalid { violations } => violations,
            Self::FileNotFound { .. } | Self::FileUnreadable { .. } | Self::FileSyntax { .. } => {
                &[]
            }
        }
    }
}

fn join(violations: &[ConfigViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
