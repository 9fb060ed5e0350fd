//! Workflows: `WorkflowDefinition` (a ComfyUI API-format graph parsed into
//! `ComfyNode`s and edges, with its graph checks) and `WorkflowExecution`
//! (one run of a workflow and its tasks).
//!
//! Parsing here is structural: it knows the API format (`class_type`,
//! `inputs`, links as `[node_id, output_index]`) but not which node classes a
//! backend has or what their inputs mean; the executor refines that with the
//! backend's `/object_info`. Nothing here talks to a backend.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::task::{Task, TaskMetrics, TaskStatus, strip_optional};
use super::{
    JsonObject, MAX_JSON_DEPTH, ValidationError, check_non_negative, check_progress, index_path,
    key_path, validate_id, validate_json_object, validate_name, validate_semver,
};

/// Largest accepted `workflow_json`, in bytes (16 MiB).
pub const MAX_WORKFLOW_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Most nodes accepted in one workflow.
pub const MAX_WORKFLOW_NODES: usize = 10_000;

/// Most structural violations reported for one `workflow_json`; the rest are
/// summed up in one last violation so a bad 16 MiB graph gives a short answer.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// The seed's default workflow version.
pub const DEFAULT_WORKFLOW_VERSION: &str = "1.0.0";

/// Node classes known to be output nodes (ComfyUI's `OUTPUT_NODE = True`),
/// from the core nodes and the test nodes of the captured protocol.
pub const OUTPUT_NODE_CLASSES: &[&str] = &[
    "SaveImage",
    "PreviewImage",
    "SaveImageWebsocket",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveLatent",
    "SaveAudio",
    "SaveVideo",
    "SaveGLB",
    "TestDelay",
    "TestWriteBlob",
];

/// The graph problem reported when no node's class is an output node by
/// name; a backend's `/object_info` (`output_node`) has the last word.
pub const NO_OUTPUT_NODE: &str =
    "workflow has no output node (a node such as SaveImage or PreviewImage)";

/// Whether `class_type` is an output node, by name: one of
/// [`OUTPUT_NODE_CLASSES`] or any class starting with `Save` or `Preview`.
///
/// This is a heuristic for checking a graph without a backend; the executor
/// refines it with `/object_info` (`output_node`) of the backend it runs on.
pub fn is_output_class(class_type: &str) -> bool {
    OUTPUT_NODE_CLASSES.contains(&class_type)
        || class_type.starts_with("Save")
        || class_type.starts_with("Preview")
}

/// One node of a ComfyUI graph (the seed's `ComfyNode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComfyNode {
    /// The node's id in the graph (the API format's key, e.g. `"3"`).
    pub id: String,
    /// The node class, e.g. `SaveImage` (the seed's `type`, ComfyUI's `class_type`).
    pub class_type: String,
    /// Input values exactly as received: literals, or links `[node_id, output_index]`.
    pub inputs: JsonObject,
    /// Output slot indices other nodes consume, as strings, sorted numerically.
    pub outputs: Vec<String>,
    /// The node's `_meta` object (e.g. `{"title": "Empty Image"}`).
    pub metadata: JsonObject,
}

impl ComfyNode {
    /// Whether this node is an output node (see [`is_output_class`]).
    pub fn is_output_node(&self) -> bool {
        is_output_class(&self.class_type)
    }

    /// The links among this node's inputs: `(input name, source node, output
    /// index)` where the index is the raw JSON number (validated by the graph checks).
    pub fn links(&self) -> impl Iterator<Item = (&str, &str, &serde_json::Number)> {
        self.inputs
            .iter()
            .filter_map(|(name, value)| as_link(value).map(|(src, idx)| (name.as_str(), src, idx)))
    }
}

/// A link is what ComfyUI's `is_link` accepts: a 2-element array of a string
/// (the source node id) and a number (the output index).
fn as_link(value: &Value) -> Option<(&str, &serde_json::Number)> {
    match value.as_array()?.as_slice() {
        [Value::String(src), Value::Number(idx)] => Some((src, idx)),
        _ => None,
    }
}

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
    pub created_at: DateTime<Utc>,
    /// See [`WorkflowDefinition::workflow_json`].
    pub workflow_json: String,
}

/// A ComfyUI workflow (the seed's `WorkflowDefinition`): metadata plus the
/// graph parsed from API-format JSON.
///
/// The graph fields (`nodes`, `edges`, `is_valid`, `validation_errors`) are
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
    /// Labels for filtering.
    pub tags: BTreeSet<String>,
    /// Who wrote it.
    pub author: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The ComfyUI API-format JSON text exactly as received (possibly
    /// `{"prompt": ...}`-wrapped).
    pub workflow_json: String,
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
    /// land in `validation_errors` and clear `is_valid`, and the caller decides.
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
        Self::build(
            Some(record.id),
            meta,
            &record.workflow_json,
            record.created_at,
        )
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
        }
    }

    fn build(
        id: Option<String>,
        meta: NewWorkflow,
        workflow_json: &str,
        created_at: DateTime<Utc>,
    ) -> Result<Self, ValidationError> {
        let mut errors = ValidationError::new();
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
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
        let nodes = errors.absorb(parse_api_graph(workflow_json));
        errors.into_result()?;
        let nodes = nodes.unwrap_or_default();

        let mut definition = WorkflowDefinition {
            id,
            name,
            description: strip_optional(meta.description),
            version,
            nodes,
            edges: Vec::new(),
            is_valid: true,
            validation_errors: Vec::new(),
            tags,
            author: strip_optional(meta.author),
            created_at,
            workflow_json: workflow_json.to_owned(),
        };
        definition.revalidate();
        Ok(definition)
    }

    /// Re-derives `edges`, each node's `outputs`, `is_valid` and
    /// `validation_errors` from `nodes` (after `nodes` was edited).
    pub fn revalidate(&mut self) {
        let analysis = analyze(&self.nodes);
        for (id, node) in &mut self.nodes {
            node.outputs = analysis
                .consumed
                .get(id)
                .map(|slots| slots.iter().map(u64::to_string).collect())
                .unwrap_or_default();
        }
        self.edges = analysis.edges;
        self.is_valid = analysis.errors.is_empty();
        self.validation_errors = analysis.errors;
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
        analyze(&self.nodes).errors
    }

    /// The graph as a POST /prompt `prompt` object: `{id: {"class_type",
    /// "inputs", "_meta"?}}`, inputs unchanged (numbers keep their exact text).
    pub fn to_api_prompt(&self) -> JsonObject {
        self.nodes
            .iter()
            .map(|(id, node)| {
                let mut entry = JsonObject::new();
                entry.insert("class_type".into(), Value::String(node.class_type.clone()));
                entry.insert("inputs".into(), Value::Object(node.inputs.clone()));
                if !node.metadata.is_empty() {
                    entry.insert("_meta".into(), Value::Object(node.metadata.clone()));
                }
                (id.clone(), Value::Object(entry))
            })
            .collect()
    }
}

impl TryFrom<WorkflowRecord> for WorkflowDefinition {
    type Error = ValidationError;

    fn try_from(record: WorkflowRecord) -> Result<Self, Self::Error> {
        Self::restore(record)
    }
}

/// Collects violations up to [`MAX_REPORTED_PROBLEMS`], counting the rest.
struct Problems {
    errors: ValidationError,
    dropped: usize,
}

impl Problems {
    fn push(&mut self, field: String, description: &str) {
        if self.errors.len() < MAX_REPORTED_PROBLEMS {
            self.errors.push(field, description);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> ValidationError {
        if self.dropped > 0 {
            self.errors.push(
                "workflow_json",
                format!("{} more problems not shown", self.dropped),
            );
        }
        self.errors
    }
}

/// Whether `text` nests arrays/objects deeper than `limit`, by scanning the
/// text (no parse, no recursion). Brackets inside strings do not count.
fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses and structurally checks API-format JSON into nodes.
fn parse_api_graph(text: &str) -> Result<BTreeMap<String, ComfyNode>, ValidationError> {
    const FIELD: &str = "workflow_json";
    if text.len() > MAX_WORKFLOW_JSON_BYTES {
        return Err(ValidationError::single(
            FIELD,
            format!("must be at most {MAX_WORKFLOW_JSON_BYTES} bytes"),
        ));
    }
    if nests_deeper_than(text, MAX_JSON_DEPTH) {
        return Err(ValidationError::single(
            FIELD,
            format!("must not nest deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ValidationError::single(FIELD, format!("is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ValidationError::single(
            FIELD,
            "must be a JSON object of nodes keyed by node id",
        ));
    };
    // A POST /prompt body: the graph is under "prompt" (unless "prompt" is
    // itself a node, which has a class_type).
    let wrapped =
        matches!(top.get("prompt"), Some(Value::Object(p)) if !p.contains_key("class_type"));
    let (graph, base) = if wrapped {
        match top.remove("prompt") {
            Some(Value::Object(graph)) => (graph, format!("{FIELD}.prompt")),
            _ => (top, FIELD.to_owned()),
        }
    } else {
        (top, FIELD.to_owned())
    };
    if graph.is_empty() {
        return Err(ValidationError::single(
            base,
            "must contain at least one node",
        ));
    }
    if graph.len() > MAX_WORKFLOW_NODES {
        return Err(ValidationError::single(
            base,
            format!(
                "has {} nodes; at most {MAX_WORKFLOW_NODES} are allowed",
                graph.len()
            ),
        ));
    }

    let mut problems = Problems {
        errors: ValidationError::new(),
        dropped: 0,
    };
    let mut nodes = BTreeMap::new();
    for (id, node) in graph {
        let path = key_path(&base, &id);
        if id.trim().is_empty() {
            problems.push(path.clone(), "node id must not be empty");
        }
        let Value::Object(mut node) = node else {
            problems.push(path, "node must be an object");
            continue;
        };
        let class_type = match node.remove("class_type") {
            Some(Value::String(c)) if !c.trim().is_empty() => Some(c),
            Some(Value::String(_)) => {
                problems.push(format!("{path}.class_type"), "must not be empty");
                None
            }
            Some(_) => {
                problems.push(format!("{path}.class_type"), "must be a string");
                None
            }
            None => {
                problems.push(format!("{path}.class_type"), "is required");
                None
            }
        };
        let inputs = match node.remove("inputs") {
            Some(Value::Object(inputs)) => Some(inputs),
            Some(_) => {
                problems.push(format!("{path}.inputs"), "must be an object");
                None
            }
            None => {
                problems.push(format!("{path}.inputs"), "is required (an object)");
                None
            }
        };
        let metadata = match node.remove("_meta") {
            None => Some(JsonObject::new()),
            Some(Value::Object(meta)) => Some(meta),
            Some(_) => {
                problems.push(format!("{path}._meta"), "must be an object");
                None
            }
        };
        if let (Some(class_type), Some(inputs), Some(metadata)) = (class_type, inputs, metadata) {
            nodes.insert(
                id.clone(),
                ComfyNode {
                    id,
                    class_type,
                    inputs,
                    outputs: Vec::new(),
                    metadata,
                },
            );
        }
    }
    problems.finish().into_result()?;
    Ok(nodes)
}

/// Orders node ids: numeric ids numerically (then by text, so `01` and `1`
/// stay distinct), before all other ids, which sort as text.
fn node_id_order(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Shortens user-supplied ids and names for messages (64 characters and an
/// ellipsis at most).
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// What the graph checks derive from the nodes.
struct GraphAnalysis {
    /// Deduplicated, sorted `(from, to)` pairs.
    edges: Vec<(String, String)>,
    /// Output slots consumed, by source node.
    consumed: BTreeMap<String, BTreeSet<u64>>,
    /// Human-readable problems.
    errors: Vec<String>,
}

/// Runs the graph checks: links (missing nodes, bad indices), cycles, output nodes.
fn analyze(nodes: &BTreeMap<String, ComfyNode>) -> GraphAnalysis {
    let mut errors = Vec::new();
    let mut edges = BTreeSet::new();
    let mut consumed: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut ordered: Vec<&str> = nodes.keys().map(String::as_str).collect();
    ordered.sort_by(|a, b| node_id_order(a, b));

    for id in &ordered {
        let Some(node) = nodes.get(*id) else { continue };
        for (input, src, idx) in node.links() {
            let Some(slot) = idx.as_u64() else {
                errors.push(format!(
                    "node {} input {} links to output index {} of node {}, which is not a non-negative integer",
                    shown(id),
                    shown(input),
                    shown(&idx.to_string()),
                    shown(src)
                ));
                continue;
            };
            if !nodes.contains_key(src) {
                errors.push(format!(
                    "node {} input {} links to missing node {}",
                    shown(id),
                    shown(input),
                    shown(src)
                ));
                continue;
            }
            edges.insert((src.to_owned(), (*id).to_owned()));
            consumed.entry(src.to_owned()).or_default().insert(slot);
        }
    }
    let mut edges: Vec<(String, String)> = edges.into_iter().collect();
    edges.sort_by(|a, b| node_id_order(&a.0, &b.0).then_with(|| node_id_order(&a.1, &b.1)));

    errors.extend(cycle_errors(&ordered, &edges));

    if !nodes.values().any(ComfyNode::is_output_node) {
        errors.push(NO_OUTPUT_NODE.to_owned());
    }
    GraphAnalysis {
        edges,
        consumed,
        errors,
    }
}

/// One message per cycle: each strongly connected component with more than
/// one node, or a node linked to itself. Names a concrete cycle through the
/// component's first node, and the whole component when it is larger.
fn cycle_errors(ordered: &[&str], edges: &[(String, String)]) -> Vec<String> {
    let index: BTreeMap<&str, usize> = ordered.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut adjacency = vec![Vec::new(); ordered.len()];
    for (from, to) in edges {
        if let (Some(&f), Some(&t)) = (index.get(from.as_str()), index.get(to.as_str())) {
            adjacency[f].push(t);
        }
    }
    let mut messages = Vec::new();
    let mut components = strongly_connected_components(&adjacency);
    for c in &mut components {
        c.sort_unstable();
    }
    components.sort_unstable();
    for component in components {
        let Some(&first) = component.first() else {
            continue;
        };
        let is_cycle = component.len() > 1 || adjacency[first].contains(&first);
        if !is_cycle {
            continue;
        }
        let path = shortest_cycle(&adjacency, &component, first);
        let mut names: Vec<String> = path.iter().map(|&i| shown(ordered[i])).collect();
        // Long cycles show their two ends; the count says how much is left out.
        const ENDS: usize = 10;
        if names.len() > 2 * ENDS + 1 {
            let hidden = names.len() - 2 * ENDS;
            let tail = names.split_off(names.len() - ENDS);
            names.truncate(ENDS);
            names.push(format!("({hidden} more)"));
            names.extend(tail);
        }
        let mut message = format!("cycle between nodes {}", names.join(" -> "));
        if component.len() + 1 > path.len() {
            const LISTED: usize = 20;
            let mut members: Vec<String> = component
                .iter()
                .take(LISTED)
                .map(|&i| shown(ordered[i]))
                .collect();
            if component.len() > LISTED {
                members.push(format!("and {} more", component.len() - LISTED));
            }
            message.push_str(&format!(
                " (nodes {} are all on cycles through each other)",
                members.join(", ")
            ));
        }
        messages.push(message);
    }
    messages
}

/// Tarjan's algorithm with an explicit stack, so a 10,000-node chain cannot
/// overflow the thread's stack. Returns the components (node indices).
fn strongly_connected_components(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let n = adjacency.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut components = Vec::new();
    // (node, position of the next neighbour to visit)
    let mut calls: Vec<(usize, usize)> = Vec::new();

    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(frame) = calls.last_mut() {
            let v = frame.0;
            if let Some(&w) = adjacency[v].get(frame.1) {
                frame.1 += 1;
                if index[w] == UNVISITED {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

/// The shortest cycle from `start` back to itself inside `component` (BFS),
/// as a path that begins and ends with `start`.
fn shortest_cycle(adjacency: &[Vec<usize>], component: &[usize], start: usize) -> Vec<usize> {
    let inside: BTreeSet<usize> = component.iter().copied().collect();
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adjacency[v] {
            if w == start {
                let mut path = vec![start];
                let mut at = v;
                while at != start {
                    path.push(at);
                    at = match parent.get(&at) {
                        Some(&p) => p,
                        None => break,
                    };
                }
                path.push(start);
                path.reverse();
                return path;
            }
            if inside.contains(&w) && !parent.contains_key(&w) && w != start {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    // Every node of a strongly connected component lies on a cycle through
    // `start`, so the loop returns; this fallback just names the component.
    let mut path = component.to_vec();
    path.push(start);
    path
}

/// A status change the state machine forbids, for an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal workflow execution transition from {from} to {to}")]
pub struct ExecutionTransitionError {
    /// The execution's status when the change was asked for.
    pub from: TaskStatus,
    /// The status asked for.
    pub to: TaskStatus,
}

/// What a caller supplies to start an execution record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewExecution {
    /// The execution's id; `None` makes a fresh UUID v4.
    pub id: Option<String>,
    /// The workflow being run.
    pub workflow_id: String,
    /// The ComfyUI client id to use; `None` makes a fresh UUID v4.
    pub client_id: Option<String>,
    /// The task that drives the whole run.
    pub root_task_id: Option<String>,
    /// Run configuration.
    pub config: JsonObject,
    /// Environment variables for the run.
    pub environment: BTreeMap<String, String>,
    /// The registered version that runs; `None` for an inline workflow.
    pub workflow_version: Option<String>,
}

/// Every field of an execution in plain form: what a store persists and hands
/// back to [`WorkflowExecution::restore`]. Also its serde shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// See [`WorkflowExecution::id`].
    pub id: String,
    /// See [`WorkflowExecution::workflow_id`].
    pub workflow_id: String,
    /// See [`WorkflowExecution::client_id`].
    pub client_id: String,
    /// See [`WorkflowExecution::status`].
    pub status: TaskStatus,
    /// See [`WorkflowExecution::progress`].
    pub progress: f64,
    /// See [`WorkflowExecution::root_task_id`].
    pub root_task_id: Option<String>,
    /// See [`WorkflowExecution::tasks`].
    pub tasks: Vec<Task>,
    /// See [`WorkflowExecution::outputs`].
    pub outputs: JsonObject,
    /// See [`WorkflowExecution::artifacts`].
    pub artifacts: Vec<String>,
    /// See [`WorkflowExecution::total_duration_seconds`].
    pub total_duration_seconds: Option<f64>,
    /// See [`WorkflowExecution::node_metrics`].
    pub node_metrics: BTreeMap<String, TaskMetrics>,
    /// See [`WorkflowExecution::config`].
    pub config: JsonObject,
    /// See [`WorkflowExecution::environment`].
    pub environment: BTreeMap<String, String>,
    /// See [`WorkflowExecution::created_at`].
    pub created_at: DateTime<Utc>,
    /// See [`WorkflowExecution::updated_at`].
    pub updated_at: Option<DateTime<Utc>>,
    /// See [`WorkflowExecution::workflow_version`].
    #[serde(default)]
    pub workflow_version: Option<String>,
    /// See [`WorkflowExecution::backend`].
    #[serde(default)]
    pub backend: Option<String>,
    /// See [`WorkflowExecution::prompt_id`].
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// One run of a workflow (the seed's `WorkflowExecution`). Status and
/// progress are private and follow the task state machine and [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ExecutionRecord")]
pub struct WorkflowExecution {
    /// Unique id (a UUID v4 unless the creator chose one).
    pub id: String,
    /// The workflow being run.
    pub workflow_id: String,
    /// The ComfyUI client id the run uses (UUID v4 by default).
    pub client_id: String,
    /// Where the run is; see [`WorkflowExecution::transition`].
    status: TaskStatus,
    /// Fraction done in [0, 1]; see [`WorkflowExecution::set_progress`].
    progress: f64,
    /// The task that drives the whole run.
    pub root_task_id: Option<String>,
    /// The run's tasks.
    pub tasks: Vec<Task>,
    /// Outputs by node id, as the backend reported them.
    pub outputs: JsonObject,
    /// Paths or URLs of produced files.
    pub artifacts: Vec<String>,
    /// Wall time of the whole run, in seconds.
    pub total_duration_seconds: Option<f64>,
    /// Metrics by node id.
    pub node_metrics: BTreeMap<String, TaskMetrics>,
    /// Run configuration.
    pub config: JsonObject,
    /// Environment variables for the run.
    pub environment: BTreeMap<String, String>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When the run last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// The registered version that runs; `None` for an inline workflow (not in the seed).
    pub workflow_version: Option<String>,
    /// The backend the current or last attempt went to (not in the seed).
    pub backend: Option<String>,
    /// The ComfyUI prompt id of the current or last attempt (not in the seed).
    pub prompt_id: Option<String>,
}

impl WorkflowExecution {
    /// Validates `new` and builds a pending execution with progress 0.
    pub fn new(new: NewExecution) -> Result<Self, ValidationError> {
        let execution = WorkflowExecution {
            id: new.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            workflow_id: new.workflow_id,
            client_id: new
                .client_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            status: TaskStatus::Pending,
            progress: 0.0,
            root_task_id: new.root_task_id,
            tasks: Vec::new(),
            outputs: JsonObject::new(),
            artifacts: Vec::new(),
            total_duration_seconds: None,
            node_metrics: BTreeMap::new(),
            config: new.config,
            environment: new.environment,
            created_at: Utc::now(),
            updated_at: None,
            workflow_version: new.workflow_version,
            backend: None,
            prompt_id: None,
        };
        execution.validate()?;
        Ok(execution)
    }

    /// Rebuilds an execution in any status from a record, checking every rule.
    pub fn restore(record: ExecutionRecord) -> Result<Self, ValidationError> {
        let execution = WorkflowExecution {
            id: record.id,
            workflow_id: record.workflow_id,
            client_id: record.client_id,
            status: record.status,
            progress: record.progress,
            root_task_id: record.root_task_id,
            tasks: record.tasks,
            outputs: record.outputs,
            artifacts: record.artifacts,
            total_duration_seconds: record.total_duration_seconds,
            node_metrics: record.node_metrics,
            config: record.config,
            environment: record.environment,
            created_at: record.created_at,
            updated_at: record.updated_at,
            workflow_version: record.workflow_version,
            backend: record.backend,
            prompt_id: record.prompt_id,
        };
        execution.validate()?;
        Ok(execution)
    }

    /// The execution as a plain record (for a store).
    pub fn to_record(&self) -> ExecutionRecord {
        ExecutionRecord {
            id: self.id.clone(),
            workflow_id: self.workflow_id.clone(),
            client_id: self.client_id.clone(),
            status: self.status,
            progress: self.progress,
            root_task_id: self.root_task_id.clone(),
            tasks: self.tasks.clone(),
            outputs: self.outputs.clone(),
            artifacts: self.artifacts.clone(),
            total_duration_seconds: self.total_duration_seconds,
            node_metrics: self.node_metrics.clone(),
            config: self.config.clone(),
            environment: self.environment.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            workflow_version: self.workflow_version.clone(),
            backend: self.backend.clone(),
            prompt_id: self.prompt_id.clone(),
        }
    }

    /// Checks every rule: ids, progress in [0, 1], a finite non-negative
    /// duration, valid tasks and node metrics, JSON objects, non-empty
    /// environment names.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        errors.absorb(validate_id("id", &self.id));
        errors.absorb(validate_id("workflow_id", &self.workflow_id));
        errors.absorb(validate_id("client_id", &self.client_id));
        if let Some(root) = &self.root_task_id {
            errors.absorb(validate_id("root_task_id", root));
        }
        errors.absorb(check_progress("progress", self.progress));
        check_non_negative(
            &mut errors,
            "total_duration_seconds",
            self.total_duration_seconds,
        );
        for (i, task) in self.tasks.iter().enumerate() {
            if let Err(e) = task.validate() {
                errors.extend(e.prefixed(&index_path("tasks", i)));
            }
        }
        for (node, metrics) in &self.node_metrics {
            if let Err(e) = metrics.validate() {
                errors.extend(e.prefixed(&key_path("node_metrics", node)));
            }
        }
        errors.absorb(validate_json_object("outputs", &self.outputs));
        errors.absorb(validate_json_object("config", &self.config));
        if self.environment.keys().any(|k| k.trim().is_empty()) {
            errors.push("environment", "variable names must not be empty");
        }
        errors.into_result()
    }

    /// Where the run is.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Fraction done, in [0, 1].
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// The status is terminal.
    pub fn is_complete(&self) -> bool {
        self.status.is_terminal()
    }

    /// How many tasks are complete (terminal), as the seed counts them.
    pub fn completed_tasks(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_complete()).count()
    }

    /// How many tasks failed.
    pub fn failed_tasks(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.status() == TaskStatus::Failed)
            .count()
    }

    /// Sets `updated_at` to now, never moving it backwards.
    pub fn touch(&mut self) {
        let floor = self.updated_at.unwrap_or(self.created_at);
        self.updated_at = Some(Utc::now().max(floor));
    }

    /// Moves to `to` if the task state machine allows it
    /// ([`TaskStatus::can_transition_to`]); entering Completed sets progress
    /// to 1. Touches the execution.
    pub fn transition(&mut self, to: TaskStatus) -> Result<(), ExecutionTransitionError> {
        if !self.status.can_transition_to(to) {
            return Err(ExecutionTransitionError {
                from: self.status,
                to,
            });
        }
        self.status = to;
        if to == TaskStatus::Completed {
            self.progress = 1.0;
        }
        self.touch();
        Ok(())
    }

    /// Sets progress; NaN or outside [0, 1] is an error on `progress`.
    pub fn set_progress(&mut self, progress: f64) -> Result<(), ValidationError> {
        check_progress("progress", progress)?;
        self.progress = progress;
        self.touch();
        Ok(())
    }
}

impl TryFrom<ExecutionRecord> for WorkflowExecution {
    type Error = ValidationError;

    fn try_from(record: ExecutionRecord) -> Result<Self, Self::Error> {
        Self::restore(record)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::task::{NewTask, TaskType};

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

    fn parse(json: &str) -> Result<WorkflowDefinition, ValidationError> {
        WorkflowDefinition::from_api_json(NewWorkflow::new("wf"), json)
    }

    fn edges(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

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
    fn cycles_name_their_nodes() {
        let wf = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
                "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
                "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}}}"#,
        )
        .unwrap();
        assert!(!wf.is_valid);
        assert_eq!(wf.validation_errors, ["cycle between nodes 2 -> 3 -> 2"]);
        assert_eq!(wf.validate_graph(), wf.validation_errors);

        let wf =
            parse(r#"{"5": {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}}}"#).unwrap();
        assert_eq!(wf.validation_errors, ["cycle between nodes 5 -> 5"]);

        // Two cycles through node 1 in one component: a concrete shortest
        // cycle plus the whole component.
        let wf = parse(
            r#"{"1": {"class_type": "A", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
                "2": {"class_type": "B", "inputs": {"a": ["1", 0]}},
                "3": {"class_type": "C", "inputs": {"a": ["1", 0]}},
                "9": {"class_type": "SaveImage", "inputs": {}}}"#,
        )
        .unwrap();
        assert_eq!(
            wf.validation_errors,
            [
                "cycle between nodes 1 -> 2 -> 1 (nodes 1, 2, 3 are all on cycles through each other)"
            ]
        );

        // Two separate cycles: one message each, in node order.
        let wf = parse(
            r#"{"10": {"class_type": "A", "inputs": {"a": ["11", 0]}},
                "11": {"class_type": "A", "inputs": {"a": ["10", 1]}},
                "2": {"class_type": "A", "inputs": {"a": ["3", 0]}},
                "3": {"class_type": "A", "inputs": {"a": ["4", 0]}},
                "4": {"class_type": "SaveImage", "inputs": {"a": ["2", 0]}}}"#,
        )
        .unwrap();
        assert_eq!(
            wf.validation_errors,
            [
                "cycle between nodes 2 -> 4 -> 3 -> 2",
                "cycle between nodes 10 -> 11 -> 10"
            ]
        );
    }

    #[test]
    fn deep_chain_does_not_overflow() {
        let n = MAX_WORKFLOW_NODES;
        let mut graph = JsonObject::new();
        for i in 0..n {
            let inputs = if i == 0 {
                json!({"x": [(n - 1).to_string(), 0]})
            } else {
                json!({"x": [(i - 1).to_string(), 0]})
            };
            graph.insert(
                i.to_string(),
                json!({"class_type": "SaveImage", "inputs": inputs}),
            );
        }
        let text = Value::Object(graph.clone()).to_string();
        let wf = parse(&text).unwrap();
        assert_eq!(wf.validation_errors.len(), 1);
        assert!(wf.validation_errors[0].starts_with("cycle between nodes 0 -> 1 -> 2"));
        assert!(wf.validation_errors[0].contains("-> 9999 -> 0"));
        // Break the ring: a 10,000-node chain is valid.
        graph.insert(
            "0".into(),
            json!({"class_type": "EmptyImage", "inputs": {}}),
        );
        let wf = parse(&Value::Object(graph).to_string()).unwrap();
        assert!(wf.is_valid, "{:?}", wf.validation_errors);
        assert_eq!(wf.edges.len(), n - 1);
        assert_eq!(wf.edges[0], ("0".to_owned(), "1".to_owned()));
    }

    #[test]
    fn link_problems_are_reported() {
        let wf = parse(r#"{"2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}}"#)
            .unwrap();
        assert!(!wf.is_valid);
        assert_eq!(
            wf.validation_errors,
            ["node 2 input images links to missing node 99"]
        );
        assert!(wf.edges.is_empty());

        let wf = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {}},
                "2": {"class_type": "SaveImage", "inputs": {"a": ["1", -1], "b": ["1", 0.5], "c": ["1", 1e2]}}}"#,
        )
        .unwrap();
        assert_eq!(
            wf.validation_errors,
            [
                "node 2 input a links to output index -1 of node 1, which is not a non-negative integer",
                "node 2 input b links to output index 0.5 of node 1, which is not a non-negative integer",
                // serde_json writes exponents with an explicit sign.
                "node 2 input c links to output index 1e+2 of node 1, which is not a non-negative integer",
            ]
        );

        // Not links: wrong shapes stay literal values.
        let wf = parse(
            r#"{"1": {"class_type": "SaveImage",
                      "inputs": {"a": ["x"], "b": [1, 0], "c": ["x", "y"], "d": ["x", 0, 1], "e": {"0": "x"}}}}"#,
        )
        .unwrap();
        assert!(wf.is_valid, "{:?}", wf.validation_errors);
    }

    #[test]
    fn outputs_list_consumed_slots_numerically() {
        let wf = parse(
            r#"{"1": {"class_type": "Multi", "inputs": {}},
                "2": {"class_type": "SaveImage", "inputs": {"a": ["1", 10], "b": ["1", 2], "c": ["1", 2]}},
                "3": {"class_type": "SaveImage", "inputs": {"a": ["1", 0]}}}"#,
        )
        .unwrap();
        assert_eq!(wf.nodes["1"].outputs, ["0", "2", "10"]);
        assert_eq!(wf.edges, edges(&[("1", "2"), ("1", "3")]));
    }

    #[test]
    fn missing_output_node_is_reported() {
        let wf = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}"#,
        )
        .unwrap();
        assert!(!wf.is_valid);
        assert_eq!(wf.validation_errors.len(), 1);
        assert!(wf.validation_errors[0].contains("no output node"));
    }

    #[test]
    fn output_class_heuristic() {
        for (class, want) in [
            ("SaveImage", true),
            ("PreviewImage", true),
            ("SaveImageWebsocket", true),
            ("SaveGLB", true),
            ("TestDelay", true),
            ("TestWriteBlob", true),
            ("SaveAnything", true),
            ("PreviewAny", true),
            ("TestFail", false),
            ("ImageInvert", false),
            ("saveimage", false),
            ("", false),
        ] {
            assert_eq!(is_output_class(class), want, "{class}");
        }
    }

    #[test]
    fn structural_errors_are_hard_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "workflow_json"),
            ("not json", "workflow_json"),
            ("[1, 2]", "workflow_json"),
            ("42", "workflow_json"),
            ("{}", "workflow_json"),
            (r#"{"prompt": {}}"#, "workflow_json.prompt"),
            (r#"{"1": 5}"#, r#"workflow_json["1"]"#),
            (r#"{"prompt": "x"}"#, "workflow_json.prompt"),
            (
                r#"{"1": {"inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": " ", "inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": 7, "inputs": {}}}"#,
                r#"workflow_json["1"].class_type"#,
            ),
            (
                r#"{"1": {"class_type": "A"}}"#,
                r#"workflow_json["1"].inputs"#,
            ),
            (
                r#"{"1": {"class_type": "A", "inputs": []}}"#,
                r#"workflow_json["1"].inputs"#,
            ),
            (
                r#"{"1": {"class_type": "A", "inputs": {}, "_meta": 1}}"#,
                r#"workflow_json["1"]._meta"#,
            ),
            (
                r#"{"": {"class_type": "A", "inputs": {}}}"#,
                r#"workflow_json[""]"#,
            ),
            (
                r#"{"prompt": {"7": {"class_type": "A", "inputs": 1}}, "client_id": "c"}"#,
                r#"workflow_json.prompt["7"].inputs"#,
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.has_field(field), "{json}: {e}");
        }
        // Every node problem at once.
        let e = parse(r#"{"1": {"inputs": {}}, "2": {"class_type": "A"}}"#).unwrap_err();
        assert_eq!(e.len(), 2, "{e}");
    }

    #[test]
    fn size_limits_are_hard_errors() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let e = parse(&format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": {deep}}}}}}}"#
        ))
        .unwrap_err();
        assert!(
            e.has_field("workflow_json") && e.to_string().contains("nest"),
            "{e}"
        );
        // Brackets inside strings do not count.
        let text = format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": "{}\"{}"}}}}}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(parse(&text).is_ok());

        let big = format!(
            r#"{{"1": {{"class_type": "SaveImage", "inputs": {{"x": "{}"}}}}}}"#,
            "a".repeat(MAX_WORKFLOW_JSON_BYTES)
        );
        let e = parse(&big).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");

        let mut graph = JsonObject::new();
        for i in 0..=MAX_WORKFLOW_NODES {
            graph.insert(
                i.to_string(),
                json!({"class_type": "SaveImage", "inputs": {}}),
            );
        }
        let e = parse(&Value::Object(graph).to_string()).unwrap_err();
        assert!(
            e.has_field("workflow_json") && e.to_string().contains("nodes"),
            "{e}"
        );

        let mut graph = JsonObject::new();
        for i in 0..500 {
            graph.insert(i.to_string(), json!(1));
        }
        let e = parse(&Value::Object(graph).to_string()).unwrap_err();
        assert_eq!(e.len(), MAX_REPORTED_PROBLEMS + 1);
        assert!(
            e.to_string().ends_with("400 more problems not shown"),
            "{e}"
        );
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

    #[test]
    fn node_id_order_is_numeric_first() {
        let mut ids = vec!["b", "10", "2", "a", "01", "1"];
        ids.sort_by(|a, b| node_id_order(a, b));
        assert_eq!(ids, ["01", "1", "2", "10", "a", "b"]);
    }

    fn execution() -> WorkflowExecution {
        WorkflowExecution::new(NewExecution {
            workflow_id: "wf".into(),
            ..NewExecution::default()
        })
        .unwrap()
    }

    fn task_with(status: TaskStatus) -> Task {
        let mut record = Task::new(NewTask::new("t", TaskType::Node))
            .unwrap()
            .to_record();
        record.status = status;
        Task::restore(record).unwrap()
    }

    #[test]
    fn execution_defaults_and_counts() {
        let mut ex = execution();
        assert_eq!(ex.status(), TaskStatus::Pending);
        assert_eq!(ex.progress(), 0.0);
        assert!(uuid::Uuid::parse_str(&ex.id).is_ok());
        assert!(uuid::Uuid::parse_str(&ex.client_id).is_ok());
        assert_eq!((ex.completed_tasks(), ex.failed_tasks()), (0, 0));
        ex.tasks = TaskStatus::ALL.iter().map(|&s| task_with(s)).collect();
        ex.tasks.push(task_with(TaskStatus::Failed));
        // completed = terminal (completed, failed x2, cancelled); failed = 2.
        assert_eq!(ex.completed_tasks(), 4);
        assert_eq!(ex.failed_tasks(), 2);
        assert!(ex.validate().is_ok());
    }

    #[test]
    fn execution_state_and_progress() {
        let mut ex = execution();
        let e = ex.set_progress(1.5).unwrap_err();
        assert!(e.has_field("progress"));
        assert!(ex.updated_at.is_none());
        ex.set_progress(0.5).unwrap();
        assert!(ex.updated_at.is_some());
        assert_eq!(
            ex.transition(TaskStatus::Retrying),
            Err(ExecutionTransitionError {
                from: TaskStatus::Pending,
                to: TaskStatus::Retrying
            })
        );
        ex.transition(TaskStatus::Running).unwrap();
        ex.transition(TaskStatus::Completed).unwrap();
        assert!(ex.is_complete());
        assert_eq!(ex.progress(), 1.0);
        assert!(ex.transition(TaskStatus::Running).is_err());
        let first = ex.updated_at;
        ex.touch();
        assert!(ex.updated_at >= first);
    }

    #[test]
    fn execution_validation_rules() {
        type Edit = fn(&mut ExecutionRecord);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "empty workflow",
                |r| r.workflow_id = String::new(),
                Some("workflow_id"),
            ),
            (
                "empty client",
                |r| r.client_id = " ".into(),
                Some("client_id"),
            ),
            ("empty id", |r| r.id = String::new(), Some("id")),
            (
                "empty root",
                |r| r.root_task_id = Some(String::new()),
                Some("root_task_id"),
            ),
            ("progress", |r| r.progress = -0.5, Some("progress")),
            ("progress nan", |r| r.progress = f64::NAN, Some("progress")),
            (
                "duration",
                |r| r.total_duration_seconds = Some(-1.0),
                Some("total_duration_seconds"),
            ),
            (
                "node metrics",
                |r| {
                    r.node_metrics.insert(
                        "3".into(),
                        TaskMetrics {
                            cpu_time: Some(-2.0),
                            ..TaskMetrics::default()
                        },
                    );
                },
                Some(r#"node_metrics["3"].cpu_time"#),
            ),
            (
                "task",
                |r| {
                    let mut t = Task::new(NewTask::new("t", TaskType::Node)).unwrap();
                    t.name = String::new();
                    r.tasks = vec![t];
                },
                Some("tasks[0].name"),
            ),
            (
                "env",
                |r| {
                    r.environment.insert(String::new(), "v".into());
                },
                Some("environment"),
            ),
            (
                "config",
                |r| {
                    r.config.insert(String::new(), json!(1));
                },
                Some("config"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut record = execution().to_record();
            edit(&mut record);
            match (WorkflowExecution::restore(record), want) {
                (Ok(_), None) => {}
                (Err(e), Some(field)) => assert!(e.has_field(field), "{label}: {e}"),
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        let e = WorkflowExecution::new(NewExecution::default()).unwrap_err();
        assert!(e.has_field("workflow_id"));
        let mut ex = execution();
        ex.set_progress(0.25).unwrap();
        let text = serde_json::to_string(&ex).unwrap();
        assert_eq!(
            serde_json::from_str::<WorkflowExecution>(&text).unwrap(),
            ex
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just("1".to_owned()),
                Just("prompt".to_owned()),
                "[a-z0-9_]{0,6}",
                ".{0,8}"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("class_type".to_owned()),
                        Just("inputs".to_owned()),
                        Just("_meta".to_owned()),
                        Just("prompt".to_owned()),
                        "[0-9]{1,2}",
                        ".{0,4}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Graph-shaped JSON: nodes with class types and link-ish inputs.
    fn arb_graph() -> impl Strategy<Value = Value> {
        let input = prop_oneof![
            (0u8..8, -2i64..4).prop_map(|(n, i)| json!([n.to_string(), i])),
            arb_json(),
        ];
        let node = (
            prop_oneof![Just("SaveImage"), Just("ImageInvert"), Just(""), Just("PreviewX")],
            prop::collection::btree_map("[a-z]{1,3}", input, 0..4),
        )
            .prop_map(|(c, inputs)| {
                json!({"class_type": c, "inputs": Value::Object(inputs.into_iter().collect())})
            });
        prop::collection::btree_map(0u8..8, node, 0..8)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn check_invariants(text: &str) {
        if let Ok(wf) = parse(text) {
            assert_eq!(wf.is_valid, wf.validation_errors.is_empty());
            assert_eq!(wf.validate_graph(), wf.validation_errors);
            assert_eq!(wf.workflow_json, text);
            for (from, to) in &wf.edges {
                assert!(wf.nodes.contains_key(from) && wf.nodes.contains_key(to));
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(text in ".{0,200}") {
            check_invariants(&text);
        }

        #[test]
        fn never_panics_on_arbitrary_json(value in arb_json()) {
            check_invariants(&value.to_string());
            check_invariants(&json!({"prompt": value}).to_string());
        }

        #[test]
        fn never_panics_on_graph_shaped_json(value in arb_graph()) {
            check_invariants(&value.to_string());
        }
    }
}
