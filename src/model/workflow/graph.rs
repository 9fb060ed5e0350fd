//! The graph checks of a parsed workflow: links to missing nodes and bad
//! output indices, cycles, and whether any node is an output node. They are
//! not hard errors: the definition keeps what they find ([`GraphProblem`]s,
//! each with the field path it is about), and the caller decides.
//!
//! Imports point down only, to [`node`](super::node); the definition
//! (`workflow/mod.rs`) imports this module.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::model::key_path;

use super::node::{ComfyNode, WORKFLOW_JSON};

/// The graph problem reported when no node's class is an output node by
/// name; a backend's `/object_info` (`output_node`) has the last word.
pub const NO_OUTPUT_NODE: &str =
    "workflow has no output node (a node such as SaveImage or PreviewImage)";

/// A node id, with its number read once, as node ids are ordered: numeric ids
/// numerically (then by text, so `01` and `1` stay distinct), before all other
/// ids, which sort as text. A sort and the cycle check's searches compare each
/// id many times; its number is not read again at each comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeKey<'a> {
    /// The id's value when it is all ASCII digits and fits a `u64`.
    number: Option<u64>,
    id: &'a str,
}

impl<'a> NodeKey<'a> {
    fn of(id: &'a str) -> Self {
        let number = if id.bytes().all(|c| c.is_ascii_digit()) {
            id.parse::<u64>().ok()
        } else {
            None
        };
        Self { number, id }
    }
}

impl Ord for NodeKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.number, other.number) {
            (Some(x), Some(y)) => x.cmp(&y).then_with(|| self.id.cmp(other.id)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => self.id.cmp(other.id),
        }
    }
}

impl PartialOrd for NodeKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
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

/// What a graph problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphProblemKind {
    /// A link names a node the graph does not have.
    MissingNode,
    /// A link's output index is not a non-negative integer.
    BadOutputIndex,
    /// Nodes are linked in a cycle.
    Cycle,
    /// No node's class is an output node by name ([`NO_OUTPUT_NODE`]).
    NoOutputNode,
}

/// One finding of the graph checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphProblem {
    /// What it is.
    pub kind: GraphProblemKind,
    /// The field path it is about, in the style of the structural errors: the
    /// input's path for a bad link (`workflow_json["2"].inputs.images`), the
    /// whole `workflow_json` for a cycle or a graph without an output node.
    pub field: String,
    /// What is wrong, e.g. `node 2 input images links to missing node 99`.
    pub description: String,
}

impl GraphProblem {
    /// A problem of the whole graph, on `workflow_json`.
    fn whole_graph(kind: GraphProblemKind, description: String) -> Self {
        Self {
            kind,
            field: WORKFLOW_JSON.to_owned(),
            description,
        }
    }
}

/// What the graph checks derive from the nodes (`'a`: the nodes' lifetime).
pub(super) struct GraphAnalysis<'a> {
    /// Deduplicated, sorted `(from, to)` pairs.
    pub(super) edges: Vec<(String, String)>,
    /// Output slots consumed, `(source node, slot)`: sorted by node id as
    /// text, then slot, without repeats (see [`GraphAnalysis::slots_of`]).
    pub(super) consumed: Vec<(&'a str, u64)>,
    /// What is wrong, in the order found.
    pub(super) problems: Vec<GraphProblem>,
}

impl GraphAnalysis<'_> {
    /// The output slots of `node` that other nodes consume, in order.
    pub(super) fn slots_of<'s>(&'s self, node: &'s str) -> impl Iterator<Item = u64> + 's {
        let from = self.consumed.partition_point(|(id, _)| *id < node);
        self.consumed[from..]
            .iter()
            .take_while(move |(id, _)| *id == node)
            .map(|&(_, slot)| slot)
    }
}

/// Runs the graph checks: links (missing nodes, bad indices), cycles, output
/// nodes. `base` is the field path of the object that holds the nodes (see
/// [`ParsedGraph::base`](super::parse::ParsedGraph::base)); a bad link is
/// reported on its input's path below it.
///
/// The ids are borrowed from `nodes` until the end: the checks run on every
/// submit, and owned keys in ordered sets cost a graph of seven nodes some
/// sixty allocations.
pub(super) fn analyze<'a>(nodes: &'a BTreeMap<String, ComfyNode>, base: &str) -> GraphAnalysis<'a> {
    let mut problems = Vec::new();
    // Room for every link at once (a vector grown from empty reallocates at 4, 8, 16 ...).
    let links = nodes.values().map(|node| node.links().count()).sum();
    let mut edges: Vec<(NodeKey<'a>, NodeKey<'a>)> = Vec::with_capacity(links);
    let mut consumed: Vec<(&str, u64)> = Vec::with_capacity(links);
    // Each id's number read once per node (here) and once per link (below), not at
    // every comparison.
    let mut ordered: Vec<(NodeKey<'a>, &'a ComfyNode)> = nodes
        .iter()
        .map(|(id, node)| (NodeKey::of(id), node))
        .collect();
    ordered.sort_unstable_by_key(|&(key, _)| key);

    for &(key, node) in &ordered {
        let id = key.id;
        // Built only for a problem: most graphs have none.
        let inputs = || format!("{}.inputs", key_path(base, id));
        for (input, src, idx) in node.links() {
            let Some(slot) = idx.as_u64() else {
                problems.push(GraphProblem {
                    kind: GraphProblemKind::BadOutputIndex,
                    field: key_path(&inputs(), input),
                    description: format!(
                        "node {} input {} links to output index {} of node {}, which is not a non-negative integer",
                        shown(id),
                        shown(input),
                        shown(&idx.to_string()),
                        shown(src)
                    ),
                });
                continue;
            };
            if !nodes.contains_key(src) {
                problems.push(GraphProblem {
                    kind: GraphProblemKind::MissingNode,
                    field: key_path(&inputs(), input),
                    description: format!(
                        "node {} input {} links to missing node {}",
                        shown(id),
                        shown(input),
                        shown(src)
                    ),
                });
                continue;
            }
            edges.push((NodeKey::of(src), key));
            consumed.push((src, slot));
        }
    }
    // `NodeKey`s tie only equal ids, so this leaves one of each pair.
    edges.sort_unstable();
    edges.dedup();
    consumed.sort_unstable();
    consumed.dedup();

    problems.extend(
        cycle_errors(&ordered, &edges)
            .into_iter()
            .map(|message| GraphProblem::whole_graph(GraphProblemKind::Cycle, message)),
    );

    if !nodes.values().any(ComfyNode::is_output_node) {
        problems.push(GraphProblem::whole_graph(
            GraphProblemKind::NoOutputNode,
            NO_OUTPUT_NODE.to_owned(),
        ));
    }
    GraphAnalysis {
        edges: edges
            .into_iter()
            .map(|(from, to)| (from.id.to_owned(), to.id.to_owned()))
            .collect(),
        consumed,
        problems,
    }
}

/// One message per cycle: each strongly connected component with more than
/// one node, or a node linked to itself. Names a concrete cycle through the
/// component's first node, and the whole component when it is larger.
/// `ordered` (the nodes) and `edges` are sorted by their keys.
fn cycle_errors(
    ordered: &[(NodeKey<'_>, &ComfyNode)],
    edges: &[(NodeKey<'_>, NodeKey<'_>)],
) -> Vec<String> {
    let index = |key: &NodeKey<'_>| ordered.binary_search_by_key(key, |&(k, _)| k).ok();
    // Sorted by source, then target: `ordered` and `edges` sort alike.
    let mut links: Vec<(usize, usize)> = Vec::with_capacity(edges.len());
    links.extend(
        edges
            .iter()
            .filter_map(|(from, to)| Some((index(from)?, index(to)?))),
    );
    if is_acyclic(ordered.len(), &links) {
        return Vec::new();
    }
    let mut adjacency = vec![Vec::new(); ordered.len()];
    for &(from, to) in &links {
        adjacency[from].push(to);
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
        let mut names: Vec<String> = path.iter().map(|&i| shown(ordered[i].0.id)).collect();
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
                .map(|&i| shown(ordered[i].0.id))
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

/// Whether the graph of `n` nodes and `links` (sorted by source) has no
/// cycle: Kahn's peeling of nodes nothing links into, in three vectors. The
/// common case; the components are searched only for a graph that has one.
fn is_acyclic(n: usize, links: &[(usize, usize)]) -> bool {
    let mut incoming = vec![0_usize; n];
    for &(_, to) in links {
        incoming[to] += 1;
    }
    let mut ready: Vec<usize> = (0..n).filter(|&v| incoming[v] == 0).collect();
    let mut peeled = 0;
    while let Some(v) = ready.pop() {
        peeled += 1;
        let first = links.partition_point(|&(from, _)| from < v);
        for &(_, to) in links[first..].iter().take_while(|&&(from, _)| from == v) {
            incoming[to] -= 1;
            if incoming[to] == 0 {
                ready.push(to);
            }
        }
    }
    peeled == n
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::model::JsonObject;
    use crate::model::workflow::test_support::{edges, parse};
    use crate::model::workflow::{MAX_WORKFLOW_NODES, WorkflowDefinition};

    proptest! {
        /// The quick acyclic check (Kahn) agrees with the components search
        /// it stands in for: a graph is acyclic exactly when no component has
        /// two nodes and no node links to itself.
        #[test]
        fn the_quick_check_agrees_with_the_components(
            n in 1_usize..12,
            raw in proptest::collection::vec((0_usize..12, 0_usize..12), 0..30),
        ) {
            let mut links: Vec<(usize, usize)> =
                raw.into_iter().filter(|&(from, to)| from < n && to < n).collect();
            links.sort_unstable();
            links.dedup();
            let mut adjacency = vec![Vec::new(); n];
            for &(from, to) in &links {
                adjacency[from].push(to);
            }
            let cyclic = strongly_connected_components(&adjacency)
                .iter()
                .any(|c| c.len() > 1 || adjacency[c[0]].contains(&c[0]));
            prop_assert_eq!(is_acyclic(n, &links), !cyclic);
        }
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

    /// `(kind, field, description)` of every graph problem, in order.
    fn problems(wf: &WorkflowDefinition) -> Vec<(GraphProblemKind, &str, &str)> {
        wf.graph_problems
            .iter()
            .map(|p| (p.kind, p.field.as_str(), p.description.as_str()))
            .collect()
    }

    /// Inputs keep their order in the JSON (serde_json's `preserve_order`).
    #[test]
    fn link_problems_name_the_input_path() {
        use GraphProblemKind::{BadOutputIndex, Cycle, MissingNode, NoOutputNode};
        let wf = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "b": ["1", -1]}},
                "n-3": {"class_type": "A", "inputs": {"my input": ["gone", 0]}}}"#,
        )
        .unwrap();
        assert_eq!(
            problems(&wf),
            [
                (
                    MissingNode,
                    r#"workflow_json["2"].inputs.images"#,
                    "node 2 input images links to missing node 99"
                ),
                (
                    BadOutputIndex,
                    r#"workflow_json["2"].inputs.b"#,
                    "node 2 input b links to output index -1 of node 1, which is not a non-negative integer"
                ),
                (
                    MissingNode,
                    r#"workflow_json["n-3"].inputs["my input"]"#,
                    "node n-3 input my input links to missing node gone"
                ),
            ]
        );
        let descriptions: Vec<&str> = wf
            .graph_problems
            .iter()
            .map(|p| p.description.as_str())
            .collect();
        assert_eq!(wf.validation_errors, descriptions);

        // A POST /prompt body: the paths are under `prompt`, as the
        // structural errors' are; so after an edit of the nodes.
        let mut wf = parse(
            r#"{"prompt": {"2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0]}}},
                "client_id": "c"}"#,
        )
        .unwrap();
        assert_eq!(
            problems(&wf),
            [(
                MissingNode,
                r#"workflow_json.prompt["2"].inputs.images"#,
                "node 2 input images links to missing node 99"
            )]
        );
        wf.revalidate();
        assert_eq!(
            wf.graph_problems[0].field,
            r#"workflow_json.prompt["2"].inputs.images"#
        );

        // Cycles and a graph without an output node stay on the whole graph.
        let wf = parse(
            r#"{"1": {"class_type": "A", "inputs": {"x": ["2", 0]}},
                "2": {"class_type": "A", "inputs": {"x": ["1", 0]}}}"#,
        )
        .unwrap();
        assert_eq!(
            problems(&wf),
            [
                (Cycle, "workflow_json", "cycle between nodes 1 -> 2 -> 1"),
                (NoOutputNode, "workflow_json", NO_OUTPUT_NODE),
            ]
        );
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
    fn node_keys_order_numeric_ids_first() {
        // An all-digit id too large for a u64 sorts as text, after every number.
        let mut ids = vec!["b", "10", "2", "a", "01", "1", "", "18446744073709551616"];
        ids.sort_by_key(|id| NodeKey::of(id));
        assert_eq!(
            ids,
            ["01", "1", "2", "10", "", "18446744073709551616", "a", "b"]
        );
    }
}
