//! `[auth]` and `[[auth.principals]]`: who may call the API and as what. The mode (none, API
//! keys, mTLS client certificates or either), whether reflection needs credentials, and the
//! principals: a name, a tenant, a role, the SHA-256 hashes of their API keys and the names their
//! client certificates carry. Only settings, defaults and accessors live here; the rules (the
//! loopback rule, hash syntax, unique names) are checked in `validate.rs`, and the checking of
//! credentials happens in `api/auth`. Key hashes print as `[REDACTED]`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::limits::LimitsOverride;
use super::redact::Secret;

/// `auth.mode`: how callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No credentials: every caller is the anonymous admin. Allowed on a loopback address, or
    /// elsewhere with `auth.allow_anonymous = true`.
    #[default]
    None,
    /// `authorization: Bearer <key>` or `x-api-key: <key>`.
    ApiKey,
    /// A client certificate signed by `tls.client_ca_file` whose CN or a DNS/URI SAN is one of
    /// a principal's `cert_names`.
    Mtls,
    /// Either of the two; a presented API key is checked first.
    ApiKeyOrMtls,
}

impl AuthMode {
    /// The spelling used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ApiKey => "api_key",
            Self::Mtls => "mtls",
            Self::ApiKeyOrMtls => "api_key_or_mtls",
        }
    }

    /// Whether API keys are accepted.
    pub fn accepts_api_keys(self) -> bool {
        matches!(self, Self::ApiKey | Self::ApiKeyOrMtls)
    }

    /// Whether client certificates are accepted.
    pub fn accepts_certificates(self) -> bool {
        matches!(self, Self::Mtls | Self::ApiKeyOrMtls)
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `auth.reflection`: who may use gRPC reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReflectionAccess {
    /// Anyone, without credentials.
    Open,
    /// Any authenticated principal (any role).
    #[default]
    Authenticated,
    /// Nobody: reflection is not served.
    Off,
}

/// A principal's role. Each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads its tenant's work.
    Viewer,
    /// Reads, runs and cancels its tenant's work.
    Submitter,
    /// Every tenant's work, plus AdminService and audit events.
    Admin,
}

impl Role {
    /// The spelling used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Submitter => "submitter",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[auth]`: how callers authenticate and who they are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How callers prove who they are. Default: `none`. Bound: `none` on a non-loopback
    /// `service.listen` needs `allow_anonymous = true`; `api_key` needs a principal with a key;
    /// `mtls` needs `tls.client_ca_file` and a principal with `cert_names`.
    pub mode: AuthMode,
    /// With `mode = "none"`, serve a non-loopback address without credentials anyway (a
    /// warning is logged at start). Default: false.
    pub allow_anonymous: bool,
    /// Who may use gRPC reflection. Default: `authenticated`.
    pub reflection: ReflectionAccess,
    /// `[[auth.principals]]`: the callers. Bound: names unique, every key hash and certificate
    /// name belongs to one principal only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<PrincipalConfig>,
}

/// One `[[auth.principals]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The principal's name, shown in audit events and as the owner of its work. Bound: 1..=128
    /// visible characters, unique.
    pub name: String,
    /// The team it belongs to; work is shared within a tenant. Default: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of each of its API keys (`comfy-reality keys new` prints one); several allow
    /// rotation. Bound: 64 hex digits each. Printed as `[REDACTED]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_sha256: Vec<Secret>,
    /// Client-certificate identities (the CN, or a DNS or URI subject alternative name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
    /// Overrides of `[limits]` for this principal.
    #[serde(default, skip_serializing_if = "LimitsOverride::is_empty")]
    pub limits: LimitsOverride,
}

impl PrincipalConfig {
    /// The tenant: `tenant`, else the name.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.name)
    }
}

/// The 32 bytes of a hex SHA-256 (either case), or `None` when it is not 64 hex digits.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{REDACTED, Secret};

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_issue_example_loads() {
        let (result, _, _dir) = load_toml(&format!(
            r#"
            [auth]
            mode = "api_key"
            reflection = "open"
            [[auth.principals]]
            name = "alice"
            tenant = "studio-a"
            role = "submitter"
            api_key_sha256 = ["{HASH}"]
            limits = {{ submits_per_second = 5.0 }}
            [[auth.principals]]
            name = "ops"
            role = "admin"
            api_key_sha256 = ["{}"]
            cert_names = ["ops.internal"]
            "#,
            HASH.replace('9', "A")
        ));
        let c = result.unwrap();
        assert_eq!(c.auth.mode, AuthMode::ApiKey);
        assert_eq!(c.auth.reflection, ReflectionAccess::Open);
        let alice = &c.auth.principals[0];
        assert_eq!(alice.tenant(), "studio-a");
        assert_eq!(alice.role, Role::Submitter);
        assert_eq!(alice.limits.submits_per_second, Some(5.0));
        assert_eq!(c.auth.principals[1].tenant(), "ops");
        assert_eq!(
            parse_sha256_hex(HASH),
            parse_sha256_hex(&HASH.to_uppercase())
        );
        assert_ne!(HASH.replace('9', "A"), HASH);
        assert!(parse_sha256_hex(HASH).is_some());
        assert!(parse_sha256_hex("zz").is_none());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn key_hashes_print_redacted() {
        let mut c = crate::config::Config::default();
        c.auth.mode = AuthMode::ApiKey;
        c.auth.principals.push(PrincipalConfig {
            name: "alice".into(),
            tenant: None,
            role: Role::Viewer,
            api_key_sha256: vec![Secret::new(HASH)],
            cert_names: vec![],
            limits: LimitsOverride::default(),
        });
        c.validate().unwrap();
        let printed = c.to_redacted_toml();
        assert!(!printed.contains(HASH), "{printed}");
        assert!(printed.contains(REDACTED), "{printed}");
        let (result, _, _dir) = load_toml(&printed);
        let error = result.unwrap_err();
        assert_eq!(
            only_violation(&error).key,
            "auth.principals[0].api_key_sha256[0]"
        );
    }

    #[test]
    fn the_rules_name_their_keys() {
        let cases = [
            // Anonymous on a non-loopback address.
            (
                "[service]\nlisten = \"0.0.0.0:50051\"\n".to_owned(),
                "auth.mode",
            ),
            // api_key without any key.
            ("[auth]\nmode = \"api_key\"\n".to_owned(), "auth.principals"),
            // mtls without a client CA.
            (
                "[auth]\nmode = \"mtls\"\n[[auth.principals]]\nname = \"a\"\nrole = \"viewer\"\ncert_names = [\"a\"]\n"
                    .to_owned(),
                "tls.client_ca_file",
            ),
            (
                "[auth]\nmode = \"api_key\"\n[[auth.principals]]\nname = \"a\"\nrole = \"viewer\"\napi_key_sha256 = [\"abc\"]\n"
                    .to_owned(),
                "auth.principals[0].api_key_sha256[0]",
            ),
            (
                format!(
                    "[auth]\nmode = \"api_key\"\n[[auth.principals]]\nname = \"a\"\nrole = \"viewer\"\napi_key_sha256 = [\"{HASH}\"]\n\
                     [[auth.principals]]\nname = \"a\"\nrole = \"admin\"\n"
                ),
                "auth.principals[1].name",
            ),
            (
                format!(
                    "[auth]\nmode = \"api_key\"\n[[auth.principals]]\nname = \"a\"\nrole = \"viewer\"\napi_key_sha256 = [\"{HASH}\"]\n\
                     [[auth.principals]]\nname = \"b\"\nrole = \"admin\"\napi_key_sha256 = [\"{HASH}\"]\n"
                ),
                "auth.principals[1].api_key_sha256[0]",
            ),
            (
                "[auth]\nmode = \"api_key\"\n[[auth.principals]]\nname = \"a\"\nrole = \"boss\"\n".to_owned(),
                "auth.principals[0].role",
            ),
        ];
        for (text, key) in cases {
            let (result, _, _dir) = load_toml(&text);
            let error = result.unwrap_err();
            let keys: Vec<&str> = error.violations().iter().map(|v| v.key.as_str()).collect();
            assert!(keys.contains(&key), "{text}\n-> {error}");
            assert!(!error.to_string().contains(HASH), "{error}");
        }
        // Explicitly anonymous on a non-loopback address is allowed.
        let (result, _, _dir) =
            load_toml("[service]\nlisten = \"0.0.0.0:50051\"\n[auth]\nallow_anonymous = true\n");
        result.unwrap();
    }

    #[test]
    fn principals_from_the_environment() {
        let c = load_env(&[
            ("COMFY_REALITY__AUTH__MODE", "api_key"),
            (
                "COMFY_REALITY__AUTH__PRINCIPALS",
                &format!(r#"[{{name = "ci", role = "submitter", api_key_sha256 = ["{HASH}"]}}]"#),
            ),
        ])
        .unwrap();
        assert_eq!(c.auth.principals[0].name, "ci");
    }
}
