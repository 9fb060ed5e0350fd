//! The prompt as a graph: which node runs next (ComfyUI's `ExecutionList`)
//! and every node's input signature (ComfyUI's cache key).
//!
//! Pure functions of the prompt (and of the input folder, for LoadImage's
//! fingerprint): nothing here sends a message or runs a node.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};

use serde_json::{Map, Value};

use crate::nodes::{self, NodeKind, NodeSpec, catalog};
use crate::pyjson;
use crate::shared::Shared;

/// `ExecutionList`: which node runs next.
#[derive(Debug, Default)]
pub(super) struct ExecutionList {
    /// Nodes still to run, in insertion order.
    pub(super) pending: Vec<String>,
    /// How many pending nodes each node waits for.
    block_count: HashMap<String, usize>,
    /// Which nodes each node blocks, in insertion order.
    blocking: HashMap<String, Vec<String>>,
}

/// `is_link` of ComfyUI's graph utilities.
pub(super) fn as_link(value: &Value) -> Option<(&str, &Value)> {
    match value {
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::String(id), slot @ Value::Number(_)) => Some((id.as_str(), slot)),
            _ => None,
        },
        _ => None,
    }
}

impl ExecutionList {
    /// `add_node`: the node and, depth first, its uncached inputs.
    pub(super) fn add_node(
        &mut self,
        prompt: &Map<String, Value>,
        node: &str,
        cached: &dyn Fn(&str) -> bool,
    ) {
        let mut stack = vec![node.to_owned()];
        let mut links = Vec::new();
        while let Some(id) = stack.pop() {
            if self.pending.contains(&id) {
                continue;
            }
            self.pending.push(id.clone());
            self.block_count.insert(id.clone(), 0);
            self.blocking.insert(id.clone(), Vec::new());
            let Some(Value::Object(inputs)) = prompt.get(&id).and_then(|n| n.get("inputs")) else {
                continue;
            };
            for value in inputs.values() {
                if let Some((from, _)) = as_link(value) {
                    if !prompt.contains_key(from) {
                        continue;
                    }
                    if !cached(from) {
                        stack.push(from.to_owned());
                    }
                    links.push((from.to_owned(), id.clone()));
                }
            }
        }
        for (from, to) in links {
            if cached(&from) {
                continue;
            }
            if !self.pending.contains(&from) {
                self.add_node(prompt, &from, cached);
            }
            let blocked = self.blocking.entry(from).or_default();
            if !blocked.contains(&to) {
                blocked.push(to.clone());
                *self.block_count.entry(to).or_default() += 1;
            }
        }
    }

    /// `stage_node_execution` with `ux_friendly_pick_node`.
    pub(super) fn stage(&self, is_output: &dyn Fn(&str) -> bool) -> Option<String> {
        let ready: Vec<&String> = self
            .pending
            .iter()
            .filter(|id| self.block_count.get(*id).copied().unwrap_or(0) == 0)
            .collect();
        if let Some(id) = ready.iter().find(|id| is_output(id)) {
            return Some((*id).clone());
        }
        let blocks =
            |id: &str| -> &[String] { self.blocking.get(id).map(Vec::as_slice).unwrap_or(&[]) };
        if let Some(id) = ready
            .iter()
            .find(|id| blocks(id).iter().any(|b| is_output(b)))
        {
            return Some((*id).clone());
        }
        if let Some(id) = ready.iter().find(|id| {
            blocks(id)
                .iter()
                .any(|b| blocks(b).iter().any(|c| is_output(c)))
        }) {
            return Some((*id).clone());
        }
        ready.first().map(|id| (*id).clone())
    }

    /// `complete_node_execution`.
    pub(super) fn complete(&mut self, node: &str) {
        self.pending.retain(|id| id != node);
        for blocked in self.blocking.remove(node).unwrap_or_default() {
            if let Some(count) = self.block_count.get_mut(&blocked) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// The input signature of every node of a prompt (ComfyUI's cache key):
/// its class, its literal inputs and its inputs' signatures, plus the node
/// id for nodes with a hidden `UNIQUE_ID`. Computed bottom-up without
/// recursion, so deep or cyclic (unvalidated) parts cannot exhaust the stack.
pub(super) fn signatures(prompt: &Map<String, Value>, shared: &Shared) -> HashMap<String, u64> {
    let links_of = |id: &str| -> Vec<String> {
        match prompt.get(id).and_then(|n| n.get("inputs")) {
            Some(Value::Object(inputs)) => inputs
                .values()
                .filter_map(as_link)
                .map(|(from, _)| from.to_owned())
                .filter(|from| prompt.contains_key(from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut memo: HashMap<String, u64> = HashMap::new();
    for root in prompt.keys() {
        let mut on_path: HashSet<String> = HashSet::new();
        let mut stack: Vec<(String, bool)> = vec![(root.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(&id) {
                continue;
            }
            if expanded {
                let signature = node_signature(prompt, &id, &memo, shared);
                memo.insert(id.clone(), signature);
                on_path.remove(&id);
                continue;
            }
            if !on_path.insert(id.clone()) {
                continue;
            }
            stack.push((id.clone(), true));
            for from in links_of(&id) {
                if !memo.contains_key(&from) && !on_path.contains(&from) {
                    stack.push((from, false));
                }
            }
        }
    }
    memo
}

/// One node's signature, given its inputs' (a missing one closes a cycle).
fn node_signature(
    prompt: &Map<String, Value>,
    id: &str,
    memo: &HashMap<String, u64>,
    shared: &Shared,
) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    let Some(node) = prompt.get(id) else {
        "missing".hash(&mut hasher);
        return hasher.finish();
    };
    let class_type = node
        .get("class_type")
        .map(pyjson::dumps)
        .unwrap_or_default();
    class_type.hash(&mut hasher);
    let spec = node
        .get("class_type")
        .and_then(Value::as_str)
        .and_then(|c| catalog().get(c));
    if spec.is_some_and(NodeSpec::keyed_by_node_id) {
        id.hash(&mut hasher);
    }
    if spec.is_some_and(|s| s.kind == NodeKind::SaveImageWebsocket) {
        // Its IS_CHANGED returns time.time(): it never comes from the cache.
        uuid::Uuid::new_v4().hash(&mut hasher);
    }
    if let Some(Value::Object(inputs)) = node.get("inputs") {
        let mut names: Vec<&String> = inputs.keys().collect();
        names.sort();
        for name in names {
            name.hash(&mut hasher);
            let value = &inputs[name.as_str()];
            match as_link(value) {
                Some((from, slot)) => {
                    "link".hash(&mut hasher);
                    match memo.get(from) {
                        Some(signature) => signature.hash(&mut hasher),
                        None => ("cycle", from).hash(&mut hasher),
                    }
                    slot.to_string().hash(&mut hasher);
                }
                None => pyjson::dumps(value).hash(&mut hasher),
            }
            if spec.is_some_and(|s| s.kind == NodeKind::LoadImage) && name == "image" {
                nodes::load_image_fingerprint(value, &shared.dirs).hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}
