//! `GET /system_stats` (the host, the ComfyUI build, the torch devices) and `GET /features` (the
//! server's feature flags, also the data of the WebSocket `feature_flags` reply).
//!
//! Every field is optional: older servers send fewer, forks send odd values. Deciding what a
//! server can do from these is `capabilities`' job, not this file's.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::lenient::{
    lenient_i64, lenient_opt_string, lenient_string, lenient_string_list, lenient_u64, value_to_u64,
};

/// `GET /system_stats`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SystemStats {
    /// The host and ComfyUI build.
    pub system: SystemInfo,
    /// Torch devices, primary first.
    pub devices: Vec<DeviceInfo>,
}

/// `system` of `GET /system_stats`. Every field is optional: older servers send fewer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct SystemInfo {
    /// `linux`, `nt`, `darwin`, ...
    #[serde(deserialize_with = "lenient_opt_string")]
    pub os: Option<String>,
    /// Total RAM in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub ram_total: Option<u64>,
    /// Free RAM in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub ram_free: Option<u64>,
    /// The ComfyUI version (`0.33.0`; forks write things like `0.3.29.Diana`).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub comfyui_version: Option<String>,
    /// The frontend version the server wants.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub required_frontend_version: Option<String>,
    /// Python version string.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub python_version: Option<String>,
    /// PyTorch version string.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub pytorch_version: Option<String>,
    /// Whether ComfyUI runs on its embedded Python.
    pub embedded_python: Option<bool>,
    /// `local-git`, `desktop`, ... (since 0.25.0).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub deploy_environment: Option<String>,
    /// The server's command line.
    #[serde(deserialize_with = "lenient_string_list")]
    pub argv: Vec<String>,
    /// Installed and required versions of companion packages (since 0.22.0).
    pub comfy_package_versions: Vec<PackageVersion>,
}

/// One entry of `comfy_package_versions`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct PackageVersion {
    /// Package name.
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// Installed version.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub installed: Option<String>,
    /// Required version.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub required: Option<String>,
}

/// One device of `GET /system_stats`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct DeviceInfo {
    /// Device name (`cpu`, `cuda:0 NVIDIA H100 ...`).
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// Device type (`cpu`, `cuda`, `mps`, ...).
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    pub device_type: String,
    /// Device index; null for the CPU.
    #[serde(deserialize_with = "lenient_i64")]
    pub index: Option<i64>,
    /// Total memory in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub vram_total: Option<u64>,
    /// Free memory in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub vram_free: Option<u64>,
    /// Memory torch has reserved, in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub torch_vram_total: Option<u64>,
    /// Free memory within torch's reservation, in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub torch_vram_free: Option<u64>,
}

/// `GET /features` (since 0.3.45), also the data of the WebSocket `feature_flags` reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    /// Whether the server sends binary event 4 to clients that ask for it.
    pub supports_preview_metadata: bool,
    /// Largest accepted upload in bytes.
    pub max_upload_size: Option<u64>,
    /// Every flag as sent, known or not.
    pub raw: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Map::<String, Value>::deserialize(d)?;
        Ok(Self {
            supports_preview_metadata: raw
                .get("supports_preview_metadata")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_upload_size: raw.get("max_upload_size").and_then(value_to_u64),
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::from_value;
    use crate::comfy::wire::test_support::{responses, transcript};

    #[test]
    fn system_stats_and_features_parse() {
        let t = transcript("misc.json");
        let mut stats_seen = 0;
        for (path, status, body) in responses(&t) {
            match path.trim_start_matches("/api") {
                "/system_stats" => {
                    let stats: SystemStats = from_value(body).unwrap();
                    assert_eq!(stats.system.comfyui_version.as_deref(), Some("0.33.0"));
                    assert_eq!(stats.system.ram_total, Some(25276510208));
                    assert_eq!(stats.devices[0].device_type, "cpu");
                    assert_eq!(stats.devices[0].index, None);
                    assert_eq!(stats.system.comfy_package_versions.len(), 5);
                    stats_seen += 1;
                }
                "/features" => {
                    let features: Features = from_value(body).unwrap();
                    assert!(features.supports_preview_metadata);
                    assert_eq!(features.max_upload_size, Some(104857600));
                    assert_eq!(features.raw["assets"], false);
                }
                _ => {
                    let _ = status;
                }
            }
        }
        assert_eq!(stats_seen, 2);
    }
}
