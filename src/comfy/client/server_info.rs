//! What the server is and has: capabilities (detected once, cached, and
//! detected again after a reconnect), `/system_stats`, `/features`, the node
//! catalogue (`/object_info`), and the server-wide `/free`.
//!
//! The rules that turn a version and features into capabilities are
//! `crate::comfy::capabilities`'s; this module only asks the server.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use reqwest::StatusCode;

use super::{ComfyClient, ComfyError};
use crate::comfy::capabilities::{Capabilities, ComfyVersion};
use crate::comfy::wire::{self, FreeRequest, NodeInfo, SystemStats};

impl ComfyClient {
    /// The capabilities from the last detection, if any.
    pub fn cached_capabilities(&self) -> Option<Capabilities> {
        *self
            .inner
            .capabilities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The capabilities, detected on first use and cached.
    pub async fn capabilities(&self) -> Result<Capabilities, ComfyError> {
        match self.cached_capabilities() {
            Some(capabilities) => Ok(capabilities),
            None => self.detect_capabilities().await,
        }
    }

    /// Detects the capabilities now (`/system_stats`, `/features`, `GET /api/jobs?limit=1`) and
    /// caches them. Called again after a reconnect: the server may have been upgraded.
    pub async fn detect_capabilities(&self) -> Result<Capabilities, ComfyError> {
        let stats = self.system_stats().await?;
        let version = stats
            .system
            .comfyui_version
            .as_deref()
            .and_then(ComfyVersion::parse);
        let features = self.features().await?;
        let jobs_probe = self.probe_jobs_api().await;
        let capabilities = Capabilities::detect(version, features.as_ref(), jobs_probe);
        tracing::debug!(server = %self.inner.display, ?capabilities, "comfyui capabilities detected");
        *self
            .inner
            .capabilities
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(capabilities);
        Ok(capabilities)
    }

    /// `GET /api/jobs?limit=1`: `Some(true)` on 200, `Some(false)` on 404/405, `None` otherwise.
    async fn probe_jobs_api(&self) -> Option<bool> {
        let url = self.endpoint(&["api", "jobs"]).ok()?;
        let request = self
            .inner
            .http
            .get(url)
            .query(&[("limit", "1")])
            .timeout(self.inner.timeout);
        match self.send("api/jobs", request).await {
            Ok(response) if response.status().is_success() => Some(true),
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    /// [`ComfyError::Unsupported`] for `what` on a server with `capabilities`.
    pub(super) fn unsupported(
        &self,
        what: &'static str,
        capabilities: &Capabilities,
    ) -> ComfyError {
        ComfyError::Unsupported {
            what,
            version: capabilities
                .version
                .map_or_else(|| "of unknown version".to_owned(), |v| v.to_string()),
        }
    }

    /// `GET /object_info`: every node class. Classes whose entry cannot be read are skipped
    /// (and logged) rather than failing the catalogue.
    pub async fn object_info(&self) -> Result<BTreeMap<String, NodeInfo>, ComfyError> {
        let body = self.get_bytes(&["object_info"]).await?;
        let (nodes, skipped) = wire::parse_object_info(&body)
            .map_err(|e| self.protocol("object_info", e.to_string()))?;
        if !skipped.is_empty() {
            tracing::warn!(server = %self.inner.display, skipped = ?skipped, "object_info classes that could not be read");
        }
        Ok(nodes)
    }

    /// `GET /object_info/{class}`: one node class, or `None` when the server does not know it.
    pub async fn object_info_class(&self, class: &str) -> Result<Option<NodeInfo>, ComfyError> {
        if class.is_empty() {
            return Err(ComfyError::InvalidArgument {
                field: "class",
                message: "must not be empty".into(),
            });
        }
        let body = self.get_bytes(&["object_info", class]).await?;
        let (mut nodes, skipped) = wire::parse_object_info(&body)
            .map_err(|e| self.protocol("object_info", e.to_string()))?;
        if skipped.iter().any(|name| name == class) {
            return Err(self.protocol("object_info", format!("class {class} could not be read")));
        }
        Ok(nodes.remove(class))
    }

    /// `GET /system_stats`.
    pub async fn system_stats(&self) -> Result<SystemStats, ComfyError> {
        self.get_json(&["system_stats"], &[]).await
    }

    /// `GET /features`, or `None` on servers before 0.3.45 (404).
    pub async fn features(&self) -> Result<Option<wire::Features>, ComfyError> {
        self.get_json_optional(&["features"]).await
    }

    /// `POST /free`; applied by the worker after the current prompt. `free_memory` also clears
    /// the output cache. Retried.
    pub async fn free(&self, unload_models: bool, free_memory: bool) -> Result<(), ComfyError> {
        self.post_idempotent(
            &["free"],
            &FreeRequest {
                unload_models,
                free_memory,
            },
        )
        .await
    }
}
