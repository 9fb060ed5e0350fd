//! What a ComfyUI server can do, detected from `GET /system_stats` (its `comfyui_version`),
//! `GET /features` and a probe of the jobs API, following the table in
//! `shared/comfyui-protocol/VERSIONS.md`.
//!
//! The version is only a hint (forks write odd versions, master checkouts report the previous
//! tag): where a probe exists its answer wins. Unknown means "assume not", so the client never
//! sends something that an older server would misread (a targeted interrupt turning global).
//! Pure logic; the probes themselves are in `client`.

use std::fmt;

use crate::comfy::wire::Features;

/// A ComfyUI version as `(major, minor, patch)`, read leniently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComfyVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
}

impl ComfyVersion {
    /// A version from its parts.
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Reads `0.33.0`, `v0.3.45`, `0.3.29.Diana`, `1.0.0-rc1`, `0.3` (patch 0). Needs at least
    /// `major.minor`; anything after the third number is ignored. `None` for anything else
    /// (such as the `git describe` output of servers before 2025-01).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let mut parts = text.split('.');
        let number = |part: Option<&str>| -> Option<u64> {
            let part = part?;
            let digits: &str = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            digits.parse().ok()
        };
        let major = number(parts.next())?;
        let minor_text = parts.next()?;
        let minor = number(Some(minor_text))?;
        // `1.0-rc1` ends the version at the minor number.
        let patch = if minor_text.bytes().all(|b| b.is_ascii_digit()) {
            number(parts.next()).unwrap_or(0)
        } else {
            0
        };
        Some(Self::new(major, minor, patch))
    }
}

impl fmt::Display for ComfyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// First release with client-chosen `prompt_id`, `/features`, `progress_state` and binary event 4.
pub const V_CLIENT_PROMPT_ID: ComfyVersion = ComfyVersion::new(0, 3, 45);
/// First release whose `POST /interrupt` honours `{"prompt_id"}`.
pub const V_TARGETED_INTERRUPT: ComfyVersion = ComfyVersion::new(0, 3, 57);
/// First release with `GET /api/jobs` and `GET /api/jobs/{id}`.
pub const V_JOBS_API: ComfyVersion = ComfyVersion::new(0, 6, 0);
/// First release with `POST /api/jobs/{id}/cancel`.
pub const V_JOBS_CANCEL: ComfyVersion = ComfyVersion::new(0, 26, 0);

/// What the server supports, as far as this client cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The server's version, when it could be read.
    pub version: Option<ComfyVersion>,
    /// `POST /interrupt {"prompt_id"}` interrupts only that prompt. Without it every interrupt is
    /// global, so the client refuses to interrupt.
    pub targeted_interrupt: bool,
    /// `GET /api/jobs/{id}` answers.
    pub jobs_api: bool,
    /// `POST /api/jobs/{id}/cancel` exists.
    pub jobs_cancel: bool,
    /// The server uses a client-chosen `prompt_id`. Without it the id in the `POST /prompt`
    /// response is the one to follow.
    pub client_prompt_id: bool,
    /// The server sends binary event 4 to clients that negotiate `feature_flags`.
    pub preview_metadata: bool,
    /// The server sends `progress_state`.
    pub progress_state: bool,
}

impl Capabilities {
    /// Combines the version from `/system_stats`, the `/features` body (`None` when the route
    /// answered 404), and the jobs probe (`Some(true)` when `GET /api/jobs?limit=1` answered
    /// 200, `Some(false)` on 404, `None` when the probe was inconclusive).
    pub fn detect(
        version: Option<ComfyVersion>,
        features: Option<&Features>,
        jobs_probe: Option<bool>,
    ) -> Self {
        let at_least = |min: ComfyVersion| version.is_some_and(|v| v >= min);
        // `/features` appeared in the same release as client prompt ids and progress_state, so
        // it vouches for them when the version cannot be read.
        let modern = at_least(V_CLIENT_PROMPT_ID) || (version.is_none() && features.is_some());
        let jobs_api = jobs_probe.unwrap_or_else(|| at_least(V_JOBS_API));
        Self {
            version,
            targeted_interrupt: at_least(V_TARGETED_INTERRUPT),
            jobs_api,
            jobs_cancel: jobs_api && at_least(V_JOBS_CANCEL),
            client_prompt_id: modern,
            preview_metadata: features.is_some_and(|f| f.supports_preview_metadata),
            progress_state: modern,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_leniently() {
        for (text, expected) in [
            ("0.33.0", Some((0, 33, 0))),
            ("v0.3.45", Some((0, 3, 45))),
            ("0.3.29.Diana", Some((0, 3, 29))),
            ("1.0.0", Some((1, 0, 0))),
            ("1.2.3-rc1", Some((1, 2, 3))),
            ("0.3", Some((0, 3, 0))),
            ("1.0-rc1", Some((1, 0, 0))),
            (" 0.38.1 ", Some((0, 38, 1))),
            ("v0.2.2-22-g0ab1c2d", Some((0, 2, 2))),
            ("", None),
            ("abc", None),
            ("7", None),
            ("x.1.2", None),
            ("99999999999999999999999.1", None),
        ] {
            let parsed = ComfyVersion::parse(text).map(|v| (v.major, v.minor, v.patch));
            assert_eq!(parsed, expected, "{text:?}");
        }
        assert!(ComfyVersion::new(0, 3, 57) > ComfyVersion::new(0, 3, 45));
        assert!(ComfyVersion::new(0, 10, 0) > ComfyVersion::new(0, 9, 2));
        assert_eq!(ComfyVersion::new(0, 33, 0).to_string(), "0.33.0");
    }

    fn features(preview: bool) -> Features {
        Features {
            supports_preview_metadata: preview,
            ..Features::default()
        }
    }

    #[test]
    fn capabilities_follow_the_versions_table() {
        let current = Capabilities::detect(
            ComfyVersion::parse("0.33.0"),
            Some(&features(true)),
            Some(true),
        );
        assert_eq!(
            current,
            Capabilities {
                version: Some(ComfyVersion::new(0, 33, 0)),
                targeted_interrupt: true,
                jobs_api: true,
                jobs_cancel: true,
                client_prompt_id: true,
                preview_metadata: true,
                progress_state: true,
            }
        );

        // 0.3.56: ids and /features, but every interrupt is global.
        let old = Capabilities::detect(
            ComfyVersion::parse("0.3.56"),
            Some(&features(true)),
            Some(false),
        );
        assert!(old.client_prompt_id && old.preview_metadata && old.progress_state);
        assert!(!old.targeted_interrupt && !old.jobs_api && !old.jobs_cancel);

        // 0.3.44: nothing optional.
        let older = Capabilities::detect(ComfyVersion::parse("0.3.44"), None, Some(false));
        assert!(!older.client_prompt_id && !older.progress_state && !older.preview_metadata);
        assert!(!older.targeted_interrupt);

        // Jobs API from the version when the probe is inconclusive; the probe wins otherwise.
        let v = ComfyVersion::parse("0.6.0");
        assert!(Capabilities::detect(v, Some(&features(true)), None).jobs_api);
        assert!(!Capabilities::detect(v, Some(&features(true)), None).jobs_cancel);
        assert!(!Capabilities::detect(v, Some(&features(true)), Some(false)).jobs_api);

        // An unreadable version: /features vouches for ids, but never for targeted interrupt.
        let unknown = Capabilities::detect(None, Some(&features(false)), Some(true));
        assert!(unknown.client_prompt_id && unknown.jobs_api);
        assert!(!unknown.targeted_interrupt && !unknown.preview_metadata && !unknown.jobs_cancel);
        assert!(!Capabilities::detect(None, None, None).client_prompt_id);
    }
}
