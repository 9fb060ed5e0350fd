//! Workflows: [`WorkflowDefinition`] (a ComfyUI API-format graph parsed into
//! [`ComfyNode`]s and edges, with its graph checks) and [`WorkflowExecution`]
//! (one run of a workflow and its tasks).
//!
//! Parsing here is structural: it knows the API format (`class_type`,
//! `inputs`, links as `[node_id, output_index]`) but not which node classes a
//! backend has or what their inputs mean; the executor refines that with the
//! backend's `/object_info`. Nothing here talks to a backend.
//!
//! This file owns the definition and its metadata ([`NewWorkflow`],
//! [`WorkflowRecord`]); the rest lives below it, and the imports point one
//! way:
//!
//! ```text
//! mod (the definition) -> parse, graph -> node        execution (alone)
//! ```
//!
//! - `node`: one node of a graph, its links, the output-node heuristic;
//! - `parse`: API-format JSON to nodes, with the structural hard errors;
//! - `graph`: the graph checks (links, cycles, output nodes);
//! - `execution`: one run of a workflow, which imports only the task model.

mod execution;
mod graph;
mod node;
mod parse;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::json_text;
use crate::model::task::strip_optional;
use crate::model::{
    JsonObject, ValidationError, index_path, validate_id, validate_name, validate_semver,
};

pub use execution::{ExecutionRecord, ExecutionTransitionError, NewExecution, WorkflowExecution};
pub use graph::{GraphProblem, GraphProblemKind, NO_OUTPUT_NODE, shown};
pub use node::{ComfyNode, OUTPUT_NODE_CLASSES, is_output_class};
pub use parse::{MAX_REPORTED_PROBLEMS, MAX_WORKFLOW_JSON_BYTES, MAX_WORKFLOW_NODES};

use graph::{GraphAnalysis, analyze};
use node::WORKFLOW_JSON;
use parse::{graph_base, parse_api_graph};

/// The seed's default workflow version.
pub const DEFAULT_WORKFLOW_VERSION: &str = "1.0.0";

/// Metadata supplied with a new workflow; the graph comes separately as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewWorkflow {
    /// Human-readable name; stripped, must be non-empty.
    pub name: String,
    /// Longer description; stripped, empty becomes `None`.
    pub description: Option<String>,
    /// Semver `x.y.z`, stripped; `None` means `1.0.0`.
    pub version: Option<String>,
    /// Labels; each stripped and non-empty (violations name `tags[i]`, `i`
    /// counting in set order).
    pub tags: BTreeSet<String>,
    /// Who wrote it; stripped, empty becomes `None`.
    pub author: Option<String>,
}

impl NewWorkflow {
    /// Metadata with just a name; everything else defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// What a store keeps of a workflow: its identity, metadata and the original
/// JSON. [`WorkflowDefinition::restore`] re-parses it. Also the serde shape
/// read back by `Deserialize for WorkflowDefinition` (derived fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// See [`WorkflowDefinition::id`].
    pub id: String,
    /// See [`WorkflowDefinition::name`].
    pub name: String,
    /// See [`WorkflowDefinition::description`].
    pub description: Option<String>,
    /// See [`WorkflowDefinition::version`].
    pub version: String,
    /// See [`WorkflowDefinition::tags`].
    pub tags: BTreeSet<String>,
    /// See [`WorkflowDefinition::author`].
    pub author: Option<String>,
    /// See [`WorkflowDefinition::created_at`].
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// See [`WorkflowDefinition::workflow_json`].
    pub workflow_json: String,
    /// See [`WorkflowDefinition::ownership`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<crate::model::Ownership>,
}

/// A ComfyUI workflow (the seed's `WorkflowDefinition`): metadata plus the
/// graph parsed from API-format JSON.
///
/// The graph fields (`nodes`, `edges`, `is_valid`, `validation_errors`,
/// `graph_problems`) are
/// derived from `workflow_json` when it is parsed. After editing `nodes`,
/// call [`WorkflowDefinition::revalidate`] to bring the others back in line.
/// The id is a fresh UUID v4; a registry that names workflows sets `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WorkflowRecord")]
pub struct WorkflowDefinition {
    /// Unique id (a UUID v4 unless the creator chose one).
    pub id: String,
    /// Human-readable name, stripped, non-empty, at most 256 characters.
    pub name: String,
    /// Longer description.
    pub description: Option<String>,
    /// Semver `x.y.z` (default `1.0.0`).
    pub version: String,
    /// Nodes by id (the API format's keys).
    pub nodes: BTreeMap<String, ComfyNode>,
    /// `(from_node, to_node)` for every link, deduplicated and sorted (ids
    /// that are numbers sort numerically, before the others).
    pub edges: Vec<(String, String)>,
    /// Whether the graph checks found nothing.
    pub is_valid: bool,
    /// What the graph checks found (missing nodes, bad indices, cycles, no output).
    pub validation_errors: Vec<String>,
    /// The same findings, each with its kind and the field path it is about
    /// (not in the seed, and not serialized: it is derived like the others).
    #[serde(skip_serializing)]
    pub graph_problems: Vec<GraphProblem>,
    /// Labels for filtering.
    pub tags: BTreeSet<String>,
    /// Who wrote it.
    pub author: Option<String>,
    /// When it was registered.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// The ComfyUI API-format JSON text exactly as received (possibly
    /// `{"prompt": ...}`-wrapped).
    pub workflow_json: String,
    /// Who registered it (not in the seed); `None` when registered without authentication.
    pub ownership: Option<crate::model::Ownership>,
}

impl WorkflowDefinition {
    /// Parses ComfyUI API-format JSON (`{node_id: {"class_type", "inputs",
    /// "_meta"?}}`, or the same wrapped as `{"prompt": {...}}` like a
    /// POST /prompt body) and validates `meta`.
    ///
    /// Metadata and structural problems (not JSON, too big or deep, not an
    /// object, no nodes, a node without a class or inputs object) are hard
    /// errors, all reported at once, with paths under `workflow_json` such as
    /// `workflow_json["3"].class_type`. Graph problems (links to missing
    /// nodes, bad output indices, cycles, no output node) are not errors: they
    /// land in `validation_errors` (and, with their field paths, in
    /// `graph_problems`) and clear `is_valid`, and the caller decides.
    pub fn from_api_json(meta: NewWorkflow, workflow_json: &str) -> Result<Self, ValidationError> {
        Self::build(None, meta, workflow_json, Utc::now())
    }

    /// Rebuilds a stored workflow, re-parsing and re-checking its JSON.
    pub fn restore(record: WorkflowRecord) -> Result<Self, ValidationError> {
        let meta = NewWorkflow {
            name: record.name,
            description: record.description,
            version: Some(record.version),
            tags: record.tags,
            author: record.author,
        };
        let mut definition = Self::build(
            Some(record.id),
            meta,
            &record.workflow_json,
            record.created_at,
        )?;
        definition.ownership = record.ownership;
        Ok(definition)
    }

    /// What a store keeps of this workflow.
    pub fn to_record(&self) -> WorkflowRecord {
        WorkflowRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            version: self.version.clone(),
            tags: self.tags.clone(),
            author: self.author.clone(),
            created_at: self.created_at,
            workflow_json: self.workflow_json.clone(),
            ownership: self.ownership.clone(),
        }
    }

    fn build(
        id: Option<String>,
        meta: NewWorkflow,
        workflow_json: &str,
        created_at: DateTime<Utc>,
    ) -> Result<Self, ValidationError> {
        let mut errors = ValidationError::new();
        let id = id.unwrap_or_else(crate::model::new_id);
        errors.absorb(validate_id("id", &id));
        let name = errors
            .absorb(validate_name("name", &meta.name))
            .unwrap_or_default();
        let version = meta.version.map_or_else(
            || DEFAULT_WORKFLOW_VERSION.to_owned(),
            |v| v.trim().to_owned(),
        );
        errors.absorb(validate_semver("version", &version));
        let tags = meta
            .tags
            .iter()
            .enumerate()
            .filter_map(|(i, tag)| errors.absorb(validate_name(&index_path("tags", i), tag)))
            .collect();
        let parsed = errors.absorb(parse_api_graph(workflow_json));
        errors.into_result()?;
        let (nodes, base) = parsed.map_or_else(
            || (BTreeMap::new(), WORKFLOW_JSON.to_owned()),
            |parsed| (parsed.nodes, parsed.base),
        );

        let mut definition = WorkflowDefinition {
            id,
            name,
            description: strip_optional(meta.description),
            version,
            nodes,
            edges: Vec::new(),
            is_valid: true,
            validation_errors: Vec::new(),
            graph_problems: Vec::new(),
            tags,
            author: strip_optional(meta.author),
            created_at,
            workflow_json: workflow_json.to_owned(),
            ownership: None,
        };
        definition.revalidate_under(&base);
        Ok(definition)
    }

    /// Re-derives `edges`, each node's `outputs`, `is_valid`,
    /// `validation_errors` and `graph_problems` from `nodes` (after `nodes`
    /// was edited). Reads `workflow_json` again for where its nodes lie (the
    /// top object, or under `prompt`), the root of the problems' field paths.
    pub fn revalidate(&mut self) {
        let base = graph_base(&self.workflow_json);
        self.revalidate_under(&base);
    }

    /// [`revalidate`](Self::revalidate) with the field path of the object
    /// that holds the nodes.
    fn revalidate_under(&mut self, base: &str) {
        let analysis = analyze(&self.nodes, base);
        let outputs: Vec<Vec<String>> = self
            .nodes
            .keys()
            .map(|id| analysis.slots_of(id).map(|slot| slot.to_string()).collect())
            .collect();
        let GraphAnalysis {
            edges, problems, ..
        } = analysis;
        for (node, outputs) in self.nodes.values_mut().zip(outputs) {
            node.outputs = outputs;
        }
        self.edges = edges;
        self.is_valid = problems.is_empty();
        self.validation_errors = problems
            .iter()
            .map(|problem| problem.description.clone())
            .collect();
        self.graph_problems = problems;
    }

    /// Ids of the output nodes (see [`is_output_class`]), in id order.
    pub fn output_nodes(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_output_node())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Checks the metadata rules on the current values (id, name stripped
    /// and non-empty, semver version, tags stripped and non-empty); the graph
    /// is checked by [`validate_graph`](Self::validate_graph).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        errors.absorb(validate_id("id", &self.id));
        errors.absorb(validate_semver("version", &self.version));
        let stripped = |field: &str, text: &str, errors: &mut ValidationError| match validate_name(
            field, text,
        ) {
            Ok(s) if s != text => errors.push(field, "must not have surrounding whitespace"),
            Ok(_) => {}
            Err(e) => errors.extend(e),
        };
        stripped("name", &self.name, &mut errors);
        for (i, tag) in self.tags.iter().enumerate() {
            stripped(&index_path("tags", i), tag, &mut errors);
        }
        errors.into_result()
    }

    /// Re-runs the graph checks on `nodes` and returns what they find (what
    /// `validation_errors` holds, unless `nodes` was edited since).
    pub fn validate_graph(&self) -> Vec<String> {
        analyze(&self.nodes, WORKFLOW_JSON)
            .problems
            .into_iter()
            .map(|problem| problem.description)
            .collect()
    }

    /// The graph as a POST /prompt `prompt` object: `{id: {"class_type",
    /// "inputs", "_meta"?}}`, inputs unchanged (numbers keep their exact text).
    pub fn to_api_prompt(&self) -> JsonObject {
        self.nodes
            .iter()
            .map(|(id, node)| {
                let entry = api_entry(
                    node.class_type.clone(),
                    node.inputs.clone(),
                    node.metadata.clone(),
                );
                (id.clone(), entry)
            })
            .collect()
    }

    /// The nodes, moved out: the definition is left without them (for a
    /// caller done with them, as a submit is once it has them to check, edit
    /// and write as its prompt with [`write_api_prompt`]).
    pub fn take_nodes(&mut self) -> BTreeMap<String, ComfyNode> {
        std::mem::take(&mut self.nodes)
    }
}

/// Appends `nodes` to `out` as a POST /prompt `prompt` object in compact JSON:
/// the text of [`WorkflowDefinition::to_api_prompt`] of a definition with
/// these nodes, byte for byte, written from the nodes without building that
/// object.
pub fn write_api_prompt(out: &mut String, nodes: &BTreeMap<String, ComfyNode>) {
    out.push('{');
    for (i, (id, node)) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_text::write_str(out, id);
        out.push_str(r#":{"class_type":"#);
        json_text::write_str(out, &node.class_type);
        out.push_str(r#","inputs":"#);
        json_text::write_object(out, &node.inputs);
        if !node.metadata.is_empty() {
            out.push_str(r#","_meta":"#);
            json_text::write_object(out, &node.metadata);
        }
        out.push('}');
    }
    out.push('}');
}

/// One node of a POST /prompt `prompt` object.
fn api_entry(class_type: String, inputs: JsonObject, metadata: JsonObject) -> Value {
    let mut entry = JsonObject::with_capacity(3);
    entry.insert("class_type".into(), Value::String(class_type));
    entry.insert("inputs".into(), Value::Object(inputs));
    if !metadata.is_empty() {
        entry.insert("_meta".into(), Value::Object(metadata));
    }
    Value::Object(entry)
}

impl TryFrom<WorkflowRecord> for WorkflowDefinition {
    type Error = ValidationError;

    fn try_from(record: WorkflowRecord) -> Result<Self, Self::Error> {
        Self::restore(record)
    }
}

/// Helpers the tests of every part share.
#[cfg(test)]
mod test_support {
    use super::*;

    /// Parses `json` as a workflow named `wf`.
    pub(super) fn parse(json: &str) -> Result<WorkflowDefinition, ValidationError> {
        WorkflowDefinition::from_api_json(NewWorkflow::new("wf"), json)
    }

    /// Owned `(from, to)` pairs.
    pub(super) fn edges(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::workflow::test_support::{edges, parse};

    /// The POST /prompt body of the success scenario in
    /// shared/comfyui-protocol/success.json.
    const SUCCESS_PROMPT: &str = r#"{
     "prompt": {
      "1": {"class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 7691863},
            "_meta": {"title": "Empty Image"}},
      "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
      "3": {"class_type": "ImageScale",
            "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                       "width": 32, "height": 24, "crop": "disabled"}},
      "4": {"class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "proto/success"}}
     },
     "client_id": "089f07b8-3790-46f9-8a2c-c88f3ba1e82f"
    }"#;

    /// The same body read from the capture itself, when the shared folder is
    /// beside the checkout (it is not copied everywhere the tests run).
    fn success_body_from_capture() -> Option<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/comfyui-protocol/success.json"
        );
        let text = std::fs::read_to_string(path).ok()?;
        let capture: Value = serde_json::from_str(&text).ok()?;
        capture["events"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "http_request" && e["path"] == "/prompt")
            .map(|e| e["body"].to_string())
    }

    #[test]
    fn parses_the_success_chain() {
        let mut bodies = vec![SUCCESS_PROMPT.to_owned()];
        bodies.extend(success_body_from_capture());
        for body in bodies {
            let wf = parse(&body).unwrap();
            assert!(wf.is_valid, "{:?}", wf.validation_errors);
            assert!(wf.validation_errors.is_empty());
            assert_eq!(wf.validate_graph(), Vec::<String>::new());
            assert_eq!(wf.workflow_json, body);
            assert_eq!(wf.nodes.len(), 4);
            assert_eq!(wf.edges, edges(&[("1", "2"), ("2", "3"), ("3", "4")]));
            let classes: Vec<&str> = wf.nodes.values().map(|n| n.class_type.as_str()).collect();
            assert_eq!(
                classes,
                ["EmptyImage", "ImageInvert", "ImageScale", "SaveImage"]
            );
            assert_eq!(wf.nodes["1"].outputs, ["0"]);
            assert!(wf.nodes["4"].outputs.is_empty());
            assert_eq!(wf.nodes["1"].metadata["title"], "Empty Image");
            assert_eq!(wf.nodes["3"].inputs["upscale_method"], "nearest-exact");
            assert_eq!(wf.output_nodes(), ["4"]);
            assert_eq!(wf.version, "1.0.0");
            let prompt = wf.to_api_prompt();
            assert_eq!(prompt["4"]["inputs"]["images"], json!(["3", 0]));
            assert_eq!(prompt["1"]["_meta"]["title"], "Empty Image");
            assert!(prompt["2"].get("_meta").is_none());
        }
    }

    #[test]
    fn unwrapped_graph_is_accepted_too() {
        let wf = parse(r#"{"1": {"class_type": "PreviewImage", "inputs": {}}}"#).unwrap();
        assert!(wf.is_valid);
        assert!(wf.edges.is_empty());
    }

    #[test]
    fn numbers_round_trip_exactly() {
        let text = r#"{"1": {"class_type": "KSampler",
                       "inputs": {"seed": 18446744073709551615, "denoise": 0.1234567890123456789,
                                  "big": 123456789012345678901234567890, "exp": 1e400}},
                       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}"#;
        let wf = parse(text).unwrap();
        let inputs = serde_json::to_string(&wf.nodes["1"].inputs).unwrap();
        // Digits are kept exactly; only an exponent gains its sign (1e400 -> 1e+400,
        // the same value). `workflow_json` keeps the text byte for byte.
        assert_eq!(
            inputs,
            r#"{"seed":18446744073709551615,"denoise":0.1234567890123456789,"big":123456789012345678901234567890,"exp":1e+400}"#
        );
        let prompt = Value::Object(wf.to_api_prompt()).to_string();
        assert!(
            prompt.contains("18446744073709551615") && prompt.contains("0.1234567890123456789")
        );
        // Round trip through serde keeps the original text and re-derives the graph.
        let stored = serde_json::to_string(&wf).unwrap();
        let back: WorkflowDefinition = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, wf);
        assert_eq!(WorkflowDefinition::restore(wf.to_record()).unwrap(), wf);
    }

    /// Nodes with any ids, classes, inputs and `_meta` (empty or not).
    fn arb_nodes() -> impl proptest::strategy::Strategy<Value = BTreeMap<String, ComfyNode>> {
        use proptest::prelude::*;
        let value = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,6}|[\\x00-\\x7f]{0,6}".prop_map(Value::from),
            ("[a-z0-9]{1,2}", 0u8..3).prop_map(|(id, slot)| json!([id, slot])),
        ];
        let object = prop::collection::vec(("\\PC{0,4}|[\\x00-\\x7f]{0,4}", value), 0..4)
            .prop_map(|entries| entries.into_iter().collect::<JsonObject>());
        let node = ("\\PC{0,8}|[\\x00-\\x7f]{0,8}", object.clone(), object).prop_map(
            |(class_type, inputs, metadata)| ComfyNode {
                id: String::new(),
                class_type,
                inputs,
                outputs: Vec::new(),
                metadata,
            },
        );
        prop::collection::btree_map("\\PC{0,4}|[\\x00-\\x7f]{0,4}", node, 0..5)
    }

    proptest::proptest! {
        /// The prompt written from the nodes is the text of `to_api_prompt`'s object.
        #[test]
        fn the_api_prompt_written_from_nodes_is_its_objects_text(nodes in arb_nodes()) {
            let mut wf = parse(r#"{"1": {"class_type": "SaveImage", "inputs": {}}}"#).unwrap();
            wf.nodes = nodes;
            let mut written = String::new();
            write_api_prompt(&mut written, &wf.nodes);
            let object = serde_json::to_string(&wf.to_api_prompt()).unwrap();
            proptest::prop_assert_eq!(written, object);
        }
    }

    #[test]
    fn metadata_validation_rules() {
        type Edit = fn(&mut NewWorkflow);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            ("blank name", |m| m.name = " ".into(), Some("name")),
            ("long name", |m| m.name = "n".repeat(257), Some("name")),
            ("semver ok", |m| m.version = Some("2.10.3".into()), None),
            (
                "semver stripped",
                |m| m.version = Some(" 1.2.3 ".into()),
                None,
            ),
            (
                "semver short",
                |m| m.version = Some("1.0".into()),
                Some("version"),
            ),
            (
                "semver letters",
                |m| m.version = Some("1.a.0".into()),
                Some("version"),
            ),
            (
                "semver empty",
                |m| m.version = Some(String::new()),
                Some("version"),
            ),
            (
                "blank tag",
                |m| m.tags = BTreeSet::from(["a".into(), "".into()]),
                Some("tags[0]"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut meta = NewWorkflow::new("wf");
            edit(&mut meta);
            let got = WorkflowDefinition::from_api_json(meta, SUCCESS_PROMPT);
            match (got, want) {
                (Ok(wf), None) => assert!(validate_semver("version", &wf.version).is_ok()),
                (Err(e), Some(field)) => {
                    assert_eq!(e.len(), 1, "{label}: {e}");
                    assert!(e.has_field(field), "{label}: {e}");
                }
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        // Metadata and graph problems are reported together.
        let e = WorkflowDefinition::from_api_json(NewWorkflow::new(""), "[]").unwrap_err();
        assert!(e.has_field("name") && e.has_field("workflow_json"));
        let mut meta = NewWorkflow::new("  Name ");
        meta.author = Some(" ".into());
        meta.description = Some(" d ".into());
        meta.tags = BTreeSet::from([" x ".into(), "x".into()]);
        let wf = WorkflowDefinition::from_api_json(meta, SUCCESS_PROMPT).unwrap();
        assert!(wf.validate().is_ok());
        assert_eq!(wf.name, "Name");
        assert_eq!(wf.author, None);
        assert_eq!(wf.description.as_deref(), Some("d"));
        assert_eq!(wf.tags.len(), 1);
    }

    #[test]
    fn definition_validate_rules() {
        type Edit = fn(&mut WorkflowDefinition);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            ("id", |w| w.id = " ".into(), Some("id")),
            ("name", |w| w.name = String::new(), Some("name")),
            ("padded name", |w| w.name = " n".into(), Some("name")),
            ("version", |w| w.version = "1.0".into(), Some("version")),
            (
                "tag",
                |w| {
                    w.tags.insert(String::new());
                },
                Some("tags[0]"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut wf = parse(SUCCESS_PROMPT).unwrap();
            edit(&mut wf);
            match (wf.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(field)) => assert!(e.has_field(field), "{label}: {e}"),
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
    }

    #[test]
    fn revalidate_follows_edited_nodes() {
        let mut wf = parse(SUCCESS_PROMPT).unwrap();
        wf.nodes.remove("2");
        wf.revalidate();
        assert!(!wf.is_valid);
        assert_eq!(
            wf.validation_errors,
            ["node 3 input image links to missing node 2"]
        );
        assert_eq!(wf.edges, edges(&[("3", "4")]));
        assert!(wf.nodes["1"].outputs.is_empty());
        assert_eq!(wf.validate_graph(), wf.validation_errors);
    }
}
