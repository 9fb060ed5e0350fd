//! Running one staged node: its inputs gathered from the run's results,
//! the cache consulted, the node called (computing nodes on a blocking
//! thread, TestDelay and SaveImageWebsocket here, since they report
//! progress and honour interrupts), its UI recorded and sent.
//!
//! The node computations themselves are `crate::nodes`'s; the order of the
//! nodes and the run's outcome are the run's (`super`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::cache::CacheEntry;
use super::graph::as_link;
use super::{NodeFailure, Run};
use crate::image::{self, PngLayout};
use crate::nodes::{
    self, Datum, NodeInputs, NodeKind, NodeOutcome, NodeSpec, PyException, Site, catalog,
};
use crate::pyjson::{self, object};

impl Run<'_> {
    /// `get_input_data`: the node's declared inputs (links resolved from
    /// this run's results) and its hidden inputs.
    pub(super) fn gather_inputs(&self, node: &str, spec: &NodeSpec) -> NodeInputs {
        let mut values = Vec::new();
        if let Some(Value::Object(inputs)) =
            self.item.prompt.get(node).and_then(|n| n.get("inputs"))
        {
            for (name, value) in inputs {
                if let Some((from, slot)) = as_link(value) {
                    let datum = slot
                        .as_u64()
                        .and_then(|slot| {
                            self.results
                                .get(from)
                                .and_then(|r| r.outputs.get(slot as usize).cloned())
                        })
                        .unwrap_or(Datum::Json(Value::Null));
                    values.push((name.clone(), datum));
                } else if spec.input(name).is_some() {
                    values.push((name.clone(), Datum::Json(value.clone())));
                }
            }
        }
        for (name, kind) in &spec.hidden {
            let value = match kind.as_str() {
                "UNIQUE_ID" => Value::String(node.to_owned()),
                "PROMPT" => Value::Object(self.item.prompt.clone()),
                "EXTRA_PNGINFO" => self
                    .item
                    .extra_data
                    .get("extra_pnginfo")
                    .cloned()
                    .unwrap_or(Value::Null),
                "AUTH_TOKEN_COMFY_ORG" => self
                    .item
                    .sensitive
                    .get("auth_token_comfy_org")
                    .cloned()
                    .unwrap_or(Value::Null),
                "API_KEY_COMFY_ORG" => self
                    .item
                    .sensitive
                    .get("api_key_comfy_org")
                    .cloned()
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            };
            values.push((name.clone(), Datum::Json(value)));
        }
        NodeInputs { values }
    }

    /// Runs (or serves from the cache) one staged node.
    pub(super) async fn execute_node(&mut self, node: &str) -> Result<(), NodeFailure> {
        let spec = self
            .item
            .prompt
            .get(node)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .and_then(|c| catalog().get(c))
            .ok_or_else(|| {
                NodeFailure::from(PyException::new(
                    "KeyError",
                    format!("'{node}'"),
                    "execution.py",
                    530,
                    "execute",
                ))
            })?;
        let signature = self.signatures.get(node).copied().unwrap_or_default();
        if let Some(entry) = self.cache.get(signature) {
            if let Some((meta, output)) = &entry.ui {
                self.send_to_client(
                    "executed",
                    object([
                        ("node", Value::String(node.to_owned())),
                        ("display_node", Value::String(node.to_owned())),
                        ("output", output.clone()),
                        ("prompt_id", self.prompt_id()),
                    ]),
                );
                self.record_ui(node, meta.clone(), output.clone());
            }
            self.finish_progress(node);
            self.results.insert(node.to_owned(), entry);
            return Ok(());
        }

        self.start_progress(node);
        let inputs = self.gather_inputs(node, spec);
        if self.target.has_client() {
            self.shared.hub.set_last_node(Some(node.to_owned()));
            self.send_to_client(
                "executing",
                object([
                    ("node", Value::String(node.to_owned())),
                    ("display_node", Value::String(node.to_owned())),
                    ("prompt_id", self.prompt_id()),
                ]),
            );
        }
        if self.interrupted() {
            return Err(NodeFailure::Interrupted);
        }
        let outcome = match spec.kind {
            NodeKind::TestDelay => self.test_delay(node, &inputs).await,
            NodeKind::SaveImageWebsocket => self.save_image_websocket(node, &inputs).await,
            kind => self.run_computing(kind, &inputs).await,
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(NodeFailure::Raised(mut raised)) => {
                raised.current_inputs = inputs.formatted();
                return Err(NodeFailure::Raised(raised));
            }
            Err(other) => return Err(other),
        };
        let ui = outcome.ui.filter(|ui| !ui.is_empty()).map(|ui| {
            let meta = object([
                ("node_id", Value::String(node.to_owned())),
                ("display_node", Value::String(node.to_owned())),
                ("parent_node", Value::Null),
                ("real_node_id", Value::String(node.to_owned())),
            ]);
            (meta, Value::Object(ui))
        });
        if let Some((meta, output)) = &ui {
            self.record_ui(node, meta.clone(), output.clone());
            self.send_to_client(
                "executed",
                object([
                    ("node", Value::String(node.to_owned())),
                    ("display_node", Value::String(node.to_owned())),
                    ("output", output.clone()),
                    ("prompt_id", self.prompt_id()),
                ]),
            );
        }
        let entry = Arc::new(CacheEntry {
            outputs: outcome.outputs,
            ui,
        });
        self.cache.insert(signature, entry.clone());
        self.results.insert(node.to_owned(), entry);
        self.finish_progress(node);
        self.executed.push(node.to_owned());
        Ok(())
    }

    /// `ui_outputs[node] = …` (an existing key keeps its place).
    pub(super) fn record_ui(&mut self, node: &str, meta: Value, output: Value) {
        match self.ui_outputs.iter_mut().find(|(id, _, _)| id == node) {
            Some(slot) => {
                slot.1 = meta;
                slot.2 = output;
            }
            None => self.ui_outputs.push((node.to_owned(), meta, output)),
        }
    }

    /// Runs a computing node on a blocking thread.
    pub(super) async fn run_computing(
        &self,
        kind: NodeKind,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let env = nodes::NodeEnv {
            dirs: self.shared.dirs.clone(),
            prompt: Value::Object(self.item.prompt.clone()),
            extra_pnginfo: self.item.extra_data.get("extra_pnginfo").cloned(),
        };
        let inputs = inputs.clone();
        let task = self
            .shared
            .tracker
            .spawn_blocking(move || nodes::run_computing(kind, &inputs, &env));
        tokio::select! {
            joined = task => match joined {
                Ok(result) => result.map_err(NodeFailure::from),
                Err(_) => Err(NodeFailure::from(PyException::new(
                    "RuntimeError",
                    "node crashed",
                    "execution.py",
                    306,
                    "process_inputs",
                ))),
            },
            _ = self.cancel.cancelled() => Err(NodeFailure::Aborted),
        }
    }

    /// TestDelay: sleeps `seconds * time_scale` in `steps` progress steps.
    pub(super) async fn test_delay(
        &mut self,
        node: &str,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let at = Site {
            file: "custom_nodes/zz_test_nodes.py",
            line: 41,
            function: "run",
        };
        let seconds = inputs.float("seconds", at)?;
        let steps = inputs.int("steps", at)?.max(1);
        let progress_text =
            matches!(inputs.get("progress_text"), Some(Datum::Json(v)) if pyjson::truthy(v));
        let value = match inputs.get("value") {
            Some(Datum::Json(v @ Value::Number(_))) => v.clone(),
            _ => Value::from(0),
        };
        let total = seconds * self.shared.settings.time_scale;
        let total = if total.is_finite() {
            total.clamp(0.0, 86_400.0)
        } else {
            0.0
        };
        let step = Duration::try_from_secs_f64(total / steps as f64).unwrap_or_default();
        let throttle = self.throttle();
        let start = Instant::now();
        let mut interrupt = self.interrupt.clone();
        let mut last_sent: Option<(Instant, i64)> = None;
        for i in 1..=steps {
            let deadline = start + step.mul_f64(i as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = interrupt.wait_for(|on| *on) => return Err(NodeFailure::Interrupted),
                _ = self.cancel.cancelled() => return Err(NodeFailure::Aborted),
            }
            // Throttle on the scheduled step times rather than the clock, so
            // a busy machine sees the same messages as an idle one.
            let due = match last_sent {
                None => true,
                Some(_) if i >= steps => true,
                Some((at, value)) => {
                    deadline.duration_since(at) >= throttle
                        && (i - value) as f64 / steps as f64 >= 0.005
                }
            };
            if due {
                self.progress_update(node, i, steps, None)?;
                last_sent = Some((deadline, i));
            }
            if progress_text {
                self.progress_text(node, &format!("step {i}/{steps}"));
            }
        }
        let mut ui = Map::new();
        ui.insert(
            "text".to_owned(),
            Value::Array(vec![Value::String(format!(
                "slept {}s in {steps} steps",
                pyjson::float_repr(seconds)
            ))]),
        );
        Ok(NodeOutcome {
            outputs: vec![Datum::Json(value)],
            ui: Some(ui),
        })
    }

    /// SaveImageWebsocket: one progress step with a PNG preview per image.
    pub(super) async fn save_image_websocket(
        &mut self,
        node: &str,
        inputs: &NodeInputs,
    ) -> Result<NodeOutcome, NodeFailure> {
        let at = Site {
            file: "custom_nodes/websocket_image_save.py",
            line: 29,
            function: "save_images",
        };
        let images = inputs.image("images", at)?;
        let total = images.frames.len() as i64;
        for step in 0..images.frames.len() {
            let batch = images.clone();
            let task = self.shared.tracker.spawn_blocking(move || {
                image::encode_png(
                    batch.width,
                    batch.height,
                    PngLayout::Rgb,
                    &batch.frames[step],
                    &[],
                    true,
                )
            });
            let png = tokio::select! {
                joined = task => match joined {
                    Ok(Ok(png)) => png,
                    Ok(Err(message)) => return Err(at.raise("OSError", message).into()),
                    Err(_) => return Err(at.raise("RuntimeError", "encoder crashed").into()),
                },
                _ = self.cancel.cancelled() => return Err(NodeFailure::Aborted),
            };
            self.progress_update(node, step as i64, total, Some(&png))?;
        }
        Ok(NodeOutcome::default())
    }
}
