//! Redaction: the [`Secret`] type for credentials, passwords inside URLs replaced when printed,
//! and the configuration printed as TOML with both hidden. Everything that prints configuration
//! goes through here; nothing here may put a clear secret into a `Debug`, `Display`, serialized or
//! error text (only [`Secret::expose`] gives it out).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Config;

/// What a secret prints as, everywhere.
pub const REDACTED: &str = "[REDACTED]";

/// Stands in for a password inside a printed URL. Unlike [`REDACTED`] it needs no
/// percent-encoding in a URL's user-info.
const URL_PASSWORD_PLACEHOLDER: &str = "REDACTED";

/// A credential. `Debug`, `Display` and `Serialize` all write `[REDACTED]`; only
/// [`Secret::expose`] gives the clear value. Deserializing reads the clear value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a clear value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value. Call it only where the credential is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretVisitor)
    }
}

/// Accepts only strings. serde's default rejection of a scalar quotes the value it got, so every
/// scalar is rejected here by hand, without the value.
struct SecretVisitor;

impl SecretVisitor {
    fn reject<E: de::Error>(found: &str) -> E {
        E::custom(format!(
            "invalid type: found {found}, expected a quoted string (the value is a secret and is not shown)"
        ))
    }
}

impl Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::reject("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::reject("a number"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::reject("bytes"))
    }
}

impl Config {
    /// The configuration as TOML for `comfy-reality config print`. Secrets print as
    /// `[REDACTED]` (which validation rejects, so a printed file is never used with a
    /// placeholder credential) and passwords inside URLs as `REDACTED`. Without secrets the
    /// output loads back into an equal configuration.
    pub fn to_redacted_toml(&self) -> String {
        // Cannot fail: every field is a string, number, boolean, array or table, maps have
        // string keys, and `None` fields are skipped.
        toml::to_string(self).expect("a Config is always representable as TOML")
    }
}

/// `raw` with any password replaced by `REDACTED`. A string that does not parse as a URL but
/// looks like it has credentials (`scheme://...@host`) loses everything before the `@`.
pub fn redact_url(raw: &str) -> Cow<'_, str> {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_none() {
                return Cow::Borrowed(raw);
            }
            // Cannot fail: a URL that has a password can have one.
            let _ = url.set_password(Some(URL_PASSWORD_PLACEHOLDER));
            Cow::Owned(url.into())
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                Cow::Owned(format!("{scheme}://{URL_PASSWORD_PLACEHOLDER}@{host}"))
            }
            _ => Cow::Borrowed(raw),
        },
    }
}

/// serde `serialize_with` for a URL field: writes it through [`redact_url`].
pub(super) fn serialize_redacted_url<T: AsRef<str>, S: Serializer>(
    url: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url.as_ref()))
}

/// serde `serialize_with` for an optional URL field: writes it through [`redact_url`].
pub(super) fn serialize_redacted_opt_url<S: Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_some(&*redact_url(url)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::test_support::*;
    use crate::config::{CliOverrides, LogLevel, OptimizationLevel, QueueType, ServerConfig};

    fn config_with_secrets() -> Config {
        let mut c = Config::default();
        c.servers[0].api_key = Some(Secret::new("s3cr3t"));
        c.servers[0].auth_header = Some(Secret::new("Bearer s3cr3t"));
        c.servers
            .push(ServerConfig::with_url("https://user:s3cr3t@comfy.example"));
        c.runtime.queue_type = QueueType::Redis;
        c.runtime.queue_url = Some("redis://:s3cr3t@queue:6379/0".into());
        c
    }

    #[test]
    fn secrets_never_print() {
        let c = config_with_secrets();
        c.validate().unwrap();
        assert_eq!(c.servers[0].api_key.as_ref().unwrap().expose(), "s3cr3t");
        let printed = [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{}", c.servers[0].api_key.as_ref().unwrap()),
            c.to_redacted_toml(),
            serde_json::to_string(&c).unwrap(),
            format!(
                "{:?}",
                CliOverrides {
                    comfyui: vec!["http://u:s3cr3t@h:1".into()],
                    ..CliOverrides::default()
                }
            ),
        ];
        for text in printed {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("REDACTED"), "{text}");
        }
        assert!(c.to_redacted_toml().contains("api_key = \"[REDACTED]\""));
    }

    #[test]
    fn secret_with_wrong_type_is_rejected_without_its_value() {
        let (result, _, _dir) = load_toml("[[servers]]\napi_key = 987654321\n");
        let error = result.unwrap_err();
        assert_eq!(only_violation(&error).key, "servers[0].api_key");
        assert!(!error.to_string().contains("987654321"), "{error}");
        assert!(!format!("{error:?}").contains("987654321"), "{error:?}");
    }

    #[test]
    fn printed_config_with_secrets_does_not_load_silently() {
        let (result, _, _dir) = load_toml(&config_with_secrets().to_redacted_toml());
        let error = result.unwrap_err();
        let keys: Vec<&str> = error.violations().iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["servers[0].api_key", "servers[0].auth_header"]);
        assert!(!error.to_string().contains("s3cr3t"));
    }

    #[test]
    fn redacted_toml_round_trips_without_secrets() {
        let default = Config::default();
        let (loaded, _, _dir) = load_toml(&default.to_redacted_toml());
        assert_eq!(loaded.unwrap(), default);

        let mut c = Config::default();
        c.service.metrics_listen = Some("0.0.0.0:9100".parse().unwrap());
        c.service.shutdown_grace_seconds = 2.5;
        c.runtime.queue_type = QueueType::Redis;
        c.runtime.queue_url = Some("redis://broker:6379/1".into());
        c.redis.key_prefix = "studio-a".into();
        c.runtime.log_file = Some(PathBuf::from("/var/log/cr.log"));
        c.runtime.log_level = LogLevel::Debug;
        c.executor.max_memory_mb = Some(4096);
        c.executor.max_cpu_percent = Some(75.5);
        c.executor.optimization_level = OptimizationLevel::O0;
        c.executor.prefer_gpu_types = vec!["mps".into()];
        c.servers[0].name = Some("primary".into());
        c.servers.push(ServerConfig {
            url: "https://b.example:8443/comfy".into(),
            verify_ssl: false,
            max_retries: 0,
            ..ServerConfig::default()
        });
        let text = c.to_redacted_toml();
        let (loaded, _, _dir) = load_toml(&text);
        assert_eq!(loaded.unwrap(), c, "{text}");
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(redact_url("http://h:1"), "http://h:1");
        assert_eq!(redact_url("http://u:p@h:1/"), "http://u:REDACTED@h:1/");
        assert_eq!(redact_url("x://u:p@[bad"), "x://REDACTED@[bad");
    }
}
