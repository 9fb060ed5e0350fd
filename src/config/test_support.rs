//! Helpers shared by the configuration's unit tests: loading from a TOML text or from given
//! environment variables, and picking the single violation out of an error. Test-only; no test
//! lives here.

use std::path::PathBuf;

use super::{CliOverrides, Config, ConfigError, ConfigViolation, load_from};

pub(super) const NO_ENV: [(&str, &str); 0] = [];

pub(super) fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("comfy-reality.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(super) fn load_toml(text: &str) -> (Result<Config, ConfigError>, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, text);
    (
        load_from(Some(&path), NO_ENV, &CliOverrides::default()),
        path,
        dir,
    )
}

pub(super) fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_from(None, vars.iter().copied(), &CliOverrides::default())
}

pub(super) fn only_violation(error: &ConfigError) -> &ConfigViolation {
    let violations = error.violations();
    assert_eq!(violations.len(), 1, "{error}");
    &violations[0]
}
