//! Layered loading with figment: built-in defaults, then the TOML file, then
//! `COMFY_REALITY__SECTION__KEY` environment variables, then command-line flags, each layer
//! winning over the ones before. Every error names the key and the source that set it (file,
//! variable or flag). This file only reads and merges sources; the rules are in `validate.rs`.
//! It must not log, nor quote a line of the file in an error (a line may hold a secret).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::error::{Kind, OneOf};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::redact::redact_url;
use super::{Config, ConfigError, ConfigViolation};

/// Prefix of the environment variables read by [`load`]; `__` separates section and key, as in
/// `COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS=4`. Matched case-insensitively.
pub const ENV_PREFIX: &str = "COMFY_REALITY__";

/// Separator between the section and key parts of an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// How environment variables name themselves as a source.
const ENV_SOURCE_NAME: &str = "environment variable";

/// Where [`load`] reads configuration from, beyond the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// TOML file given with `--config`; it must exist. `None` reads no file.
    pub file: Option<PathBuf>,
    /// Whether `COMFY_REALITY__SECTION__KEY` environment variables are read. Default: false.
    pub env: bool,
    /// Values given as command-line flags; they win over everything else.
    pub overrides: CliOverrides,
}

/// Configuration given as command-line flags. `None` (or an empty `comfyui`) leaves the value
/// from the lower layers alone. Errors name the flag (`--listen`, `--metrics-listen`,
/// `--comfyui`, `--data-dir`, `--log-level`, `--log-format`).
#[derive(Clone, Default)]
pub struct CliOverrides {
    /// `--listen`: `service.listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen`: `service.metrics_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--comfyui`: when non-empty, replaces `servers` with one server per URL, each with default
    /// settings.
    pub comfyui: Vec<String>,
    /// `--data-dir`: `service.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level`: `runtime.log_level`, spelled as in the file.
    pub log_level: Option<String>,
    /// `--log-format`: `runtime.log_format`, spelled as in the file.
    pub log_format: Option<String>,
}

// Written by hand so that a password inside a `--comfyui` URL is never printed.
impl fmt::Debug for CliOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comfyui: Vec<Cow<'_, str>> = self.comfyui.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("CliOverrides")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("comfyui", &comfyui)
            .field("data_dir", &self.data_dir)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// Loads and validates the configuration: defaults, then `sources.file`, then (when
/// `sources.env`) the process's `COMFY_REALITY__*` environment variables, then
/// `sources.overrides`. Each layer wins over the ones before it; a `[[servers]]` list replaces
/// the lower layer's list as a whole.
pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
    let env = if sources.env {
        process_env()?
    } else {
        Vec::new()
    };
    load_from(sources.file.as_deref(), env, &sources.overrides)
}

/// [`load`] with the environment given as `(name, value)` pairs instead of read from the
/// process, so that tests do not share process state. Pairs whose name does not start with
/// [`ENV_PREFIX`] (case-insensitively) are ignored.
pub fn load_from<I, K, V>(
    file: Option<&Path>,
    env: I,
    overrides: &CliOverrides,
) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut figment = Figment::new();
    if let Some(path) = file {
        figment = figment.merge(file_provider(path)?);
    }
    let vars = env
        .into_iter()
        .filter(|(name, _)| env_key(name.as_ref()).is_some())
        .map(|(name, value)| (name.as_ref().to_owned(), value.as_ref().to_owned()))
        .collect();
    figment = figment
        .merge(EnvProvider { vars })
        .merge(CliProvider::new(overrides)?);

    let mut config: Config = figment.extract().map_err(|error| ConfigError::Parse {
        violations: figment_violations(&error),
        error: Box::new(error),
    })?;
    if let Some(dir) = file.and_then(Path::parent) {
        resolve_tls_paths(&mut config, dir);
    }

    let violations: Vec<ConfigViolation> = config
        .violations()
        .into_iter()
        .map(|pending| {
            let source = pending
                .lookups
                .iter()
                .find_map(|key| source_of(&figment, key));
            ConfigViolation {
                source,
                ..pending.violation
            }
        })
        .collect();
    if violations.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { violations })
    }
}

/// `[tls]` paths relative to the configuration file's directory, so that a file and its
/// certificates can move together.
fn resolve_tls_paths(config: &mut Config, dir: &Path) {
    let tls = &mut config.tls;
    for path in [
        &mut tls.cert_file,
        &mut tls.key_file,
        &mut tls.client_ca_file,
    ]
    .into_iter()
    .flatten()
    {
        if path.is_relative() && !path.as_os_str().is_empty() {
            *path = dir.join(&*path);
        }
    }
}

/// The process's `COMFY_REALITY__*` variables. A value that is not UTF-8 is an error: it cannot
/// be represented, and skipping it would silently change the configuration.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    let mut violations = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(key) = env_key(name) else { continue };
        match value.into_string() {
            Ok(value) => vars.push((name.to_owned(), value)),
            Err(_) => violations.push(ConfigViolation {
                key,
                message: "value is not valid utf-8".into(),
                source: Some(format!("environment variable {name}")),
            }),
        }
    }
    if violations.is_empty() {
        Ok(vars)
    } else {
        Err(ConfigError::Invalid { violations })
    }
}

/// The dotted key an environment variable names (`COMFY_REALITY__RUNTIME__LOG_LEVEL` ->
/// `runtime.log_level`), or `None` when it lacks the prefix.
fn env_key(name: &str) -> Option<String> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    Some(
        name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .split(ENV_SEPARATOR)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The environment variable that sets `keys`. Arrays cannot be indexed from the environment,
/// so the name stops before the first index (`servers.0.url` -> `COMFY_REALITY__SERVERS`).
fn env_var_name(_: &Profile, keys: &[&str]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .take_while(|k| !k.bytes().all(|b| b.is_ascii_digit()))
        .map(|k| k.to_ascii_uppercase())
        .collect();
    format!("{ENV_PREFIX}{}", parts.join(ENV_SEPARATOR))
}

/// The flag that sets `keys`.
fn cli_flag_name(_: &Profile, keys: &[&str]) -> String {
    match keys {
        ["service", "listen", ..] => "--listen".into(),
        ["service", "metrics_listen", ..] => "--metrics-listen".into(),
        ["service", "data_dir", ..] => "--data-dir".into(),
        ["runtime", "log_level", ..] => "--log-level".into(),
        ["runtime", "log_format", ..] => "--log-format".into(),
        ["servers", ..] => "--comfyui".into(),
        _ => keys.join("."),
    }
}

/// Reads and parses the file here rather than through figment, to tell a missing file from an
/// unreadable one and to report syntax errors without the offending line (which may hold a
/// secret).
fn file_provider(path: &Path) -> Result<impl Provider, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::FileNotFound { path: path.into() },
        _ => ConfigError::FileUnreadable {
            path: path.into(),
            source,
        },
    })?;
    if let Err(error) = toml::from_str::<toml::Table>(&text) {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = line_column(&text, offset);
        return Err(ConfigError::FileSyntax {
            path: path.into(),
            line,
            column,
            message: error.message().trim().to_lowercase().replace('\n', "; "),
        });
    }
    Ok(Described {
        inner: Toml::string(&text),
        metadata: Metadata::from("TOML file", path),
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A provider with metadata of our choosing, so that every source names itself the same way.
struct Described<P> {
    inner: P,
    metadata: Metadata,
}

impl<P: Provider> Provider for Described<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

/// `COMFY_REALITY__SECTION__KEY` variables, parsed like figment's `Env` (values are read as
/// TOML-like literals: `4` is a number, `true` a boolean, `[{url = "..."}]` an array).
struct EnvProvider {
    vars: Vec<(String, String)>,
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE_NAME).interpolater(env_var_name)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut vars = self.vars.clone();
        // Sorted so that the result does not depend on the environment's order.
        vars.sort();
        let mut dict = Dict::new();
        for (name, value) in &vars {
            let Some(key) = env_key(name) else { continue };
            let path: Vec<&str> = key.split('.').collect();
            if path.iter().any(|part| part.is_empty()) {
                return Err(format!(
                    "environment variable {name} does not name a configuration key; expected {ENV_PREFIX}SECTION__KEY"
                )
                .into());
            }
            let Ok(value) = value.parse::<Value>();
            insert(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Command-line flags as a figment layer, so that their errors name the flag.
struct CliProvider {
    dict: Dict,
}

impl CliProvider {
    fn new(overrides: &CliOverrides) -> Result<Self, ConfigError> {
        let mut dict = Dict::new();
        if let Some(listen) = overrides.listen {
            insert(&mut dict, &["service", "listen"], listen.to_string().into());
        }
        if let Some(addr) = overrides.metrics_listen {
            insert(
                &mut dict,
                &["service", "metrics_listen"],
                addr.to_string().into(),
            );
        }
        if let Some(dir) = &overrides.data_dir {
            // Configuration values are UTF-8 (TOML and figment have no other strings).
            let Some(dir) = dir.to_str() else {
                return Err(ConfigError::Invalid {
                    violations: vec![ConfigViolation {
                        key: "service.data_dir".into(),
                        message: "path is not valid utf-8".into(),
                        source: Some("command-line flag --data-dir".into()),
                    }],
                });
            };
            insert(&mut dict, &["service", "data_dir"], dir.into());
        }
        if let Some(level) = &overrides.log_level {
            insert(&mut dict, &["runtime", "log_level"], level.as_str().into());
        }
        if let Some(format) = &overrides.log_format {
            insert(
                &mut dict,
                &["runtime", "log_format"],
                format.as_str().into(),
            );
        }
        if !overrides.comfyui.is_empty() {
            let servers: Vec<Value> = overrides
                .comfyui
                .iter()
                .map(|url| {
                    let mut server = Dict::new();
                    server.insert("url".into(), url.as_str().into());
                    Value::from(server)
                })
                .collect();
            dict.insert("servers".into(), servers.into());
        }
        Ok(Self { dict })
    }
}

impl Provider for CliProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag").interpolater(cli_flag_name)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Sets `path` in `dict` to `value`, creating (or replacing non-table values with) the tables
/// on the way.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Dict::new().into());
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert(&mut inner, rest, value);
                *entry = inner.into();
            }
        }
    }
}

/// Every error in a figment error chain as a violation naming the key and the source.
fn figment_violations(error: &figment::Error) -> Vec<ConfigViolation> {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
            let mut message = match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown key; expected {}", OneOf(expected))
                }
                Kind::UnknownVariant(found, expected) => {
                    format!("unknown value `{found}`; expected {}", OneOf(expected))
                }
                kind => kind.to_string(),
            };
            let from_env = e.metadata.as_ref().is_some_and(|md| md.name == ENV_SOURCE_NAME);
            if from_env && path == ["servers"] {
                // `COMFY_REALITY__SERVERS__0__URL` makes a table, not a list.
                message.push_str(&format!(
                    "; set the whole list in {ENV_PREFIX}SERVERS, e.g. [{{url = \"http://host:8188\"}}]"
                ));
            }
            ConfigViolation {
                key: display_key(&path),
                message,
                source: e.metadata.as_ref().map(|md| describe_source(md, &path)),
            }
        })
        .collect()
}

/// Where the value at dotted `key` came from, if a source (not a default) set it. Arrays are
/// replaced whole, so a key under `servers` is looked up as `servers`.
fn source_of(figment: &Figment, key: &str) -> Option<String> {
    let key = if key.starts_with("servers") {
        "servers"
    } else if key.starts_with("auth.principals") {
        "auth.principals"
    } else {
        key
    };
    let metadata = figment.find_metadata(key)?;
    let path: Vec<&str> = key.split('.').collect();
    Some(describe_source(metadata, &path))
}

fn describe_source(metadata: &Metadata, path: &[&str]) -> String {
    match metadata.source.as_ref().and_then(|s| s.file_path()) {
        Some(file) => format!("{} {}", metadata.name, file.display()),
        None => format!(
            "{} {}",
            metadata.name,
            metadata.interpolate(&Profile::Default, path)
        ),
    }
}

/// `["servers", "1", "url"]` -> `servers[1].url`.
fn display_key(path: &[&str]) -> String {
    let mut key = String::new();
    for part in path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{LogFormat, LogLevel, ServerConfig};

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            r#"
            [service]
            listen = "0.0.0.0:6000"
            [auth]
            allow_anonymous = true
            [runtime]
            max_concurrent_tasks = 2
            task_timeout_seconds = 60
            log_level = "debug"
            [[servers]]
            url = "http://file-a:8188"
            [[servers]]
            url = "http://file-b:8188"
            max_retries = 7
            "#,
        );
        let env = [
            ("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "4"),
            ("COMFY_REALITY__RUNTIME__LOG_LEVEL", "warning"),
            ("comfy_reality__executor__enable_gpu", "false"),
            ("OTHER_APP__RUNTIME__BOGUS", "ignored"),
        ];
        let flags = CliOverrides {
            log_level: Some("error".into()),
            ..CliOverrides::default()
        };

        // File over defaults.
        let from_file = load_from(Some(&path), NO_ENV, &CliOverrides::default()).unwrap();
        assert_eq!(from_file.service.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(from_file.runtime.max_concurrent_tasks, 2);
        assert_eq!(from_file.runtime.task_timeout_seconds, 60.0);
        assert_eq!(from_file.runtime.log_level, LogLevel::Debug);
        assert_eq!(from_file.runtime.task_retry_delay_seconds, 5.0);
        let urls: Vec<&str> = from_file.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://file-a:8188", "http://file-b:8188"]);
        assert_eq!(from_file.servers[0].max_retries, 3);
        assert_eq!(from_file.servers[1].max_retries, 7);

        // Env over file.
        let from_env = load_from(Some(&path), env, &CliOverrides::default()).unwrap();
        assert_eq!(from_env.runtime.max_concurrent_tasks, 4);
        assert_eq!(from_env.runtime.log_level, LogLevel::Warning);
        assert!(!from_env.executor.enable_gpu);
        assert_eq!(from_env.service.listen, "0.0.0.0:6000".parse().unwrap());

        // Flags over env.
        let from_flags = load_from(Some(&path), env, &flags).unwrap();
        assert_eq!(from_flags.runtime.log_level, LogLevel::Error);
        assert_eq!(from_flags.runtime.max_concurrent_tasks, 4);

        // Flags replace the server list and set addresses and paths.
        let flags = CliOverrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            metrics_listen: Some("127.0.0.1:9999".parse().unwrap()),
            comfyui: vec!["http://flag:1".into()],
            data_dir: Some(PathBuf::from("/var/lib/cr")),
            log_format: Some("text".into()),
            ..CliOverrides::default()
        };
        let c = load_from(Some(&path), env, &flags).unwrap();
        assert_eq!(c.servers, [ServerConfig::with_url("http://flag:1")]);
        assert_eq!(c.service.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.metrics_addr(), "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.service.data_dir, PathBuf::from("/var/lib/cr"));
        assert_eq!(c.runtime.log_format, LogFormat::Text);
    }

    #[test]
    fn servers_can_be_set_from_the_environment_as_a_whole() {
        let c = load_env(&[(
            "COMFY_REALITY__SERVERS",
            r#"[{url = "http://env-a:8188"}, {url = "https://env-b", api_key = "k"}]"#,
        )])
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[1].url, "https://env-b");
        assert_eq!(c.servers[1].api_key.as_ref().unwrap().expose(), "k");

        // Arrays cannot be indexed from the environment; the error says how to set them.
        let error = load_env(&[("COMFY_REALITY__SERVERS__0__URL", "http://x:1")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers");
        assert!(
            violation.message.contains("COMFY_REALITY__SERVERS"),
            "{error}"
        );

        let c = load_env(&[
            ("COMFY_REALITY__SERVICE__LISTEN", "0.0.0.0:7000"),
            ("COMFY_REALITY__AUTH__ALLOW_ANONYMOUS", "true"),
        ])
        .unwrap();
        assert_eq!(c.service.listen, "0.0.0.0:7000".parse().unwrap());
    }

    #[test]
    fn unknown_key_in_file_names_the_key_and_the_file() {
        let (result, path, _dir) = load_toml("[runtime]\nmax_concurent_tasks = 3\n");
        let error = result.unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.max_concurent_tasks");
        assert!(violation.message.starts_with("unknown key"), "{error}");
        let text = error.to_string();
        assert!(text.contains("runtime.max_concurent_tasks"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");

        let (result, _, _dir) = load_toml("[[servers]]\nurl = \"http://a:1\"\napi_kye = \"x\"\n");
        let error = result.unwrap_err();
        assert_eq!(only_violation(&error).key, "servers[0].api_kye", "{error}");

        let (result, _, _dir) = load_toml("[telemetry]\nx = 1\n");
        assert_eq!(only_violation(&result.unwrap_err()).key, "telemetry");
    }

    #[test]
    fn unknown_env_key_names_the_variable() {
        let error = load_env(&[("COMFY_REALITY__RUNTIME__BOGUS", "1")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.bogus");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__BOGUS")
        );
        assert!(
            error.to_string().contains("COMFY_REALITY__RUNTIME__BOGUS"),
            "{error}"
        );

        let error = load_env(&[("COMFY_REALITY__RUNTIME____X", "1")]).unwrap_err();
        assert!(
            error.to_string().contains("COMFY_REALITY__RUNTIME____X"),
            "{error}"
        );
    }

    #[test]
    fn bad_env_value_names_the_variable_as_source() {
        // Out of range: a validation error.
        let error = load_env(&[("COMFY_REALITY__RUNTIME__METRICS_PORT", "70000")]).unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.metrics_port");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__METRICS_PORT")
        );

        // Wrong type: a parse error.
        let error =
            load_env(&[("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "many")]).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.max_concurrent_tasks");
        assert_eq!(
            violation.source.as_deref(),
            Some("environment variable COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS")
        );

        // Unknown enum value.
        let error = load_env(&[("COMFY_REALITY__RUNTIME__QUEUE_TYPE", "kafka")]).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.queue_type", "{error}");
        assert!(
            violation
                .message
                .starts_with("unknown value `kafka`; expected one of `sqlite`, `memory`"),
            "{error}"
        );
    }

    #[test]
    fn negative_counts_are_rejected_naming_the_key() {
        for (text, key) in [
            ("[executor]\ncache_size_mb = -1\n", "executor.cache_size_mb"),
            (
                "[executor]\ncache_ttl_seconds = -1\n",
                "executor.cache_ttl_seconds",
            ),
            (
                "[runtime]\nmax_concurrent_tasks = -1\n",
                "runtime.max_concurrent_tasks",
            ),
            ("[[servers]]\nmax_retries = -1\n", "servers[0].max_retries"),
        ] {
            let (result, path, _dir) = load_toml(text);
            let error = result.unwrap_err();
            let violation = only_violation(&error);
            assert_eq!(violation.key, key, "{error}");
            assert_eq!(
                violation.source.as_deref(),
                Some(format!("TOML file {}", path.display()).as_str())
            );
        }
        // Zero is the boundary and is accepted.
        let (result, _, _dir) = load_toml("[executor]\ncache_size_mb = 0\ncache_ttl_seconds = 0\n");
        result.unwrap();
    }

    #[test]
    fn bad_flag_names_the_flag() {
        let flags = CliOverrides {
            log_level: Some("loud".into()),
            ..CliOverrides::default()
        };
        let error = load_from(None, NO_ENV, &flags).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "runtime.log_level");
        assert_eq!(
            violation.source.as_deref(),
            Some("command-line flag --log-level")
        );

        let flags = CliOverrides {
            comfyui: vec!["ftp://x".into()],
            ..CliOverrides::default()
        };
        let error = load_from(None, NO_ENV, &flags).unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers[0].url");
        assert_eq!(
            violation.source.as_deref(),
            Some("command-line flag --comfyui")
        );
    }

    #[test]
    fn missing_config_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let sources = ConfigSources {
            file: Some(path.clone()),
            ..ConfigSources::default()
        };
        let error = load(&sources).unwrap_err();
        assert!(matches!(error, ConfigError::FileNotFound { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()));
        assert_eq!(error.code(), "ConfigurationError");
    }

    #[test]
    fn syntax_error_gives_position_but_not_the_line() {
        let (result, path, _dir) = load_toml("[[servers]]\napi_key = s3cr3t\n");
        let error = result.unwrap_err();
        let ConfigError::FileSyntax { line, .. } = &error else {
            panic!("expected a syntax error, got {error}");
        };
        assert_eq!(*line, 2);
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn helpers() {
        assert_eq!(display_key(&["servers", "1", "url"]), "servers[1].url");
        assert_eq!(display_key(&["runtime"]), "runtime");
        assert_eq!(
            env_key("COMFY_REALITY__RUNTIME__LOG_LEVEL").as_deref(),
            Some("runtime.log_level")
        );
        assert_eq!(env_key("COMFY_REALITY_X"), None);
        assert_eq!(line_column("a\nbc\nd", 4), (2, 3));
    }
}
