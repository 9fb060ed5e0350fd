//! Validation of `[auth]`, `[limits]` and `[tls]`: the loopback rule for anonymous access, what
//! each auth mode needs, principals (unique names, key hashes of 64 hex digits owned by one
//! principal, certificate names), the bounds of the limits and which TLS files go together.
//! Checks only; messages never quote a key hash.

use std::collections::BTreeMap;

use super::validate::{Collector, check_paths_given, check_seconds, seconds_message, seconds_ok};
use super::{AuthMode, Config, LimitsOverride, REDACTED, parse_sha256_hex};

/// Longest principal or tenant name.
const MAX_NAME_LEN: usize = 128;

impl Config {
    pub(super) fn check_auth(&self, out: &mut Collector) {
        let auth = &self.auth;
        let listen = self.service.listen;
        if auth.mode == AuthMode::None && !listen.ip().is_loopback() && !auth.allow_anonymous {
            out.push_blaming(
                "auth.mode",
                format!(
                    "is none, but service.listen {listen} is not a loopback address: configure \
                     principals and a mode, or set auth.allow_anonymous = true to serve \
                     without credentials"
                ),
                &["auth.mode", "service.listen"],
            );
        }
        let has_keys = auth.principals.iter().any(|p| !p.api_key_sha256.is_empty());
        let has_certs = auth.principals.iter().any(|p| !p.cert_names.is_empty());
        let lack = match auth.mode {
            AuthMode::None => None,
            AuthMode::ApiKey if !has_keys => Some("at least one principal with api_key_sha256"),
            AuthMode::Mtls if !has_certs => Some("at least one principal with cert_names"),
            AuthMode::ApiKeyOrMtls if !has_keys && !has_certs => {
                Some("at least one principal with api_key_sha256 or cert_names")
            }
            AuthMode::ApiKey | AuthMode::Mtls | AuthMode::ApiKeyOrMtls => None,
        };
        if let Some(lack) = lack {
            out.push_blaming(
                "auth.principals",
                format!("auth.mode {} needs {lack}", auth.mode),
                &["auth.principals", "auth.mode"],
            );
        }
        if auth.mode.accepts_certificates() && self.tls.client_ca_file.is_none() {
            out.push_blaming(
                "tls.client_ca_file",
                format!(
                    "is required when auth.mode is {}: client certificates are checked against it",
                    auth.mode
                ),
                &["tls.client_ca_file", "auth.mode"],
            );
        }

        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut hashes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        let mut cert_names: BTreeMap<&str, usize> = BTreeMap::new();
        let blame = &["auth.principals"];
        for (i, principal) in auth.principals.iter().enumerate() {
            let key = |field: &str| format!("auth.principals[{i}].{field}");
            if let Some(problem) = name_problem(&principal.name) {
                out.push_blaming(key("name"), problem, blame);
            } else if let Some(first) = names.insert(&principal.name, i) {
                out.push_blaming(
                    key("name"),
                    format!("duplicates auth.principals[{first}].name"),
                    blame,
                );
            }
            if let Some(tenant) = &principal.tenant
                && let Some(problem) = name_problem(tenant)
            {
                out.push_blaming(key("tenant"), problem, blame);
            }
            for (j, hash) in principal.api_key_sha256.iter().enumerate() {
                let field = key(&format!("api_key_sha256[{j}]"));
                if hash.expose() == REDACTED {
                    out.push_blaming(
                        field,
                        "holds the [REDACTED] placeholder of a printed configuration; set the real hash",
                        blame,
                    );
                    continue;
                }
                match parse_sha256_hex(hash.expose()) {
                    None => out.push_blaming(
                        field,
                        "must be 64 hex digits, the sha-256 of the key (comfy-reality keys new prints one)",
                        blame,
                    ),
                    Some(bytes) => {
                        if let Some(first) = hashes.insert(bytes, i) {
                            out.push_blaming(
                                field,
                                format!("is also a key of auth.principals[{first}]"),
                                blame,
                            );
                        }
                    }
                }
            }
            for (j, name) in principal.cert_names.iter().enumerate() {
                let field = key(&format!("cert_names[{j}]"));
                if let Some(problem) = name_problem(name) {
                    out.push_blaming(field, problem, blame);
                } else if let Some(first) = cert_names.insert(name, i)
                    && first != i
                {
                    out.push_blaming(
                        field,
                        format!("is also a name of auth.principals[{first}]"),
                        blame,
                    );
                }
            }
            check_override(out, &key("limits"), &principal.limits);
        }
    }

    pub(super) fn check_limits(&self, out: &mut Collector) {
        let limits = &self.limits;
        check_rate(
            out,
            "limits.submits_per_second",
            limits.submits_per_second,
            &[],
        );
        check_rate(out, "limits.calls_per_second", limits.calls_per_second, &[]);
        for (key, value) in [
            ("limits.submit_burst", u64::from(limits.submit_burst)),
            ("limits.call_burst", u64::from(limits.call_burst)),
            ("limits.max_queued", limits.max_queued),
            ("limits.max_streams", u64::from(limits.max_streams)),
        ] {
            if value < 1 {
                out.push(key, "must be at least 1, got 0");
            }
        }
        if !(1..=65_536).contains(&limits.max_concurrent_streams_per_connection) {
            out.push(
                "limits.max_concurrent_streams_per_connection",
                format!(
                    "must be between 1 and 65536, got {}",
                    limits.max_concurrent_streams_per_connection
                ),
            );
        }
        if !(1024..=1024 * 1024).contains(&limits.max_header_list_bytes) {
            out.push(
                "limits.max_header_list_bytes",
                format!(
                    "must be between 1024 and 1048576, got {}",
                    limits.max_header_list_bytes
                ),
            );
        }
        check_seconds(
            out,
            "limits.keepalive_timeout_seconds",
            limits.keepalive_timeout_seconds,
        );
        check_seconds(
            out,
            "limits.tls_handshake_timeout_seconds",
            limits.tls_handshake_timeout_seconds,
        );
    }

    pub(super) fn check_tls(&self, out: &mut Collector) {
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => out.push("tls.key_file", "is required with tls.cert_file"),
            (None, Some(_)) => out.push("tls.cert_file", "is required with tls.key_file"),
            _ => {}
        }
        if tls.client_ca_file.is_some() && tls.cert_file.is_none() {
            out.push_blaming(
                "tls.client_ca_file",
                "needs tls.cert_file and tls.key_file: client certificates are only asked for over tls",
                &["tls.client_ca_file"],
            );
        }
        check_paths_given(
            out,
            [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
                ("tls.client_ca_file", &tls.client_ca_file),
            ],
        );
        if let Some(health) = tls.health_listen
            && health.port() != 0
            && health == self.service.listen
        {
            out.push_blaming(
                "tls.health_listen",
                format!("shares {health} with service.listen; choose another address"),
                &["tls.health_listen", "service.listen"],
            );
        }
    }
}

/// Why `name` is not a usable principal, tenant or certificate name, if it is not.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("must not contain spaces or control characters".into());
    }
    None
}

fn check_rate(out: &mut Collector, key: &str, value: f64, blame: &[&str]) {
    if !seconds_ok(value) {
        let message = seconds_message(value).replace("number of seconds", "rate per second");
        if blame.is_empty() {
            out.push(key, message);
        } else {
            out.push_blaming(key, message, blame);
        }
    }
}

fn check_override(out: &mut Collector, prefix: &str, limits: &LimitsOverride) {
    let blame = &["auth.principals"];
    if let Some(rate) = limits.submits_per_second {
        check_rate(out, &format!("{prefix}.submits_per_second"), rate, blame);
    }
    if let Some(rate) = limits.calls_per_second {
        check_rate(out, &format!("{prefix}.calls_per_second"), rate, blame);
    }
    for (field, value) in [
        ("submit_burst", limits.submit_burst.map(u64::from)),
        ("call_burst", limits.call_burst.map(u64::from)),
        ("max_queued", limits.max_queued),
        ("max_streams", limits.max_streams.map(u64::from)),
    ] {
        if value == Some(0) {
            out.push_blaming(
                format!("{prefix}.{field}"),
                "must be at least 1, got 0",
                blame,
            );
        }
    }
}
