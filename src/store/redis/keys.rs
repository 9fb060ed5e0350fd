//! The Redis store's key layout. Every key starts with `{prefix}:`, a hash
//! tag, so all of them live in one Redis Cluster slot and each multi-key step
//! can be one Lua script. The README's "Scale-out on Redis" section lists
//! the same layout for operators.

/// The names of every key the store uses, built once from the prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// String: the token of the runtime holding the lease (with an expiry).
    pub lease: String,
    /// String counter: the creation order of tasks and executions.
    pub seq: String,
    /// Hash: task id -> task JSON.
    pub tasks: String,
    /// Sorted set: task id scored by creation order (the listing order).
    pub task_order: String,
    /// Sorted set, all scores 0: `parent \0 order(20 digits) \0 child`, so a
    /// lexical range lists one parent's children in creation order.
    pub children: String,
    /// Hash: task id (root or node) -> its execution's id.
    pub task_execution: String,
    /// Hash: task idempotency key -> `fingerprint \n task id`.
    pub task_keys: String,
    /// Hash: execution id -> execution JSON (without its tasks).
    pub executions: String,
    /// Sorted set: execution id scored by creation order.
    pub execution_order: String,
    /// Hash: execution id -> its ComfyUI prompt JSON.
    pub prompts: String,
    /// Hash: execution idempotency key -> `fingerprint \n execution id`.
    pub execution_keys: String,
    /// Stream: one entry per event, id `<sequence>-0`, field `e` = event JSON.
    pub events: String,
    /// String: the highest event sequence ever written (kept past trimming).
    pub events_last: String,
    /// Hash: values the runtime keeps about itself.
    pub meta: String,
    /// Hash: workflow member (see [`Keys::workflow_member`]) -> workflow JSON.
    pub workflows: String,
    /// Sorted set, all scores 0: workflow members, in id then numeric version order.
    pub workflow_index: String,
}

impl Keys {
    /// The layout under `prefix` (validated: no braces or whitespace).
    pub fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Self {
            lease: key("lease"),
            seq: key("seq"),
            tasks: key("tasks"),
            task_order: key("tasks:order"),
            children: key("tasks:children"),
            task_execution: key("tasks:execution"),
            task_keys: key("tasks:idempotency"),
            executions: key("executions"),
            execution_order: key("executions:order"),
            prompts: key("executions:prompt"),
            execution_keys: key("executions:idempotency"),
            events: key("events"),
            events_last: key("events:last"),
            meta: key("meta"),
            workflows: key("workflows"),
            workflow_index: key("workflows:index"),
        }
    }

    /// Every key, in the order the Lua scripts unpack `KEYS` (see `scripts.rs`).
    pub fn all(&self) -> [&str; 16] {
        [
            &self.lease,
            &self.seq,
            &self.tasks,
            &self.task_order,
            &self.children,
            &self.task_execution,
            &self.task_keys,
            &self.executions,
            &self.execution_order,
            &self.prompts,
            &self.execution_keys,
            &self.events,
            &self.events_last,
            &self.meta,
            &self.workflows,
            &self.workflow_index,
        ]
    }

    /// A workflow version's member in `workflows` and `workflow_index`: the
    /// id, a NUL, and the numeric version zero-padded, so that lexical order is
    /// id order, then numeric version order ("1.10.0" after "1.9.0").
    pub fn workflow_member(id: &str, version: &str) -> String {
        let (major, minor, patch) = crate::store::version_key(version);
        format!("{id}\0{major:020}.{minor:020}.{patch:020}")
    }

    /// The first member of `children` that can belong to `parent`'s children, inclusive.
    pub fn children_start(parent: &str) -> Vec<u8> {
        let mut start = b"[".to_vec();
        start.extend_from_slice(parent.as_bytes());
        start.push(0);
        start
    }

    /// The end of `parent`'s children in `children`, exclusive.
    pub fn children_end(parent: &str) -> Vec<u8> {
        let mut end = b"(".to_vec();
        end.extend_from_slice(parent.as_bytes());
        end.push(1);
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let keys = Keys::new("studio-a");
        for key in keys.all() {
            assert!(key.starts_with("{studio-a}:"), "{key}");
        }
        let mut unique: Vec<&str> = keys.all().to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.all().len());
    }

    #[test]
    fn workflow_members_sort_by_id_then_numeric_version() {
        let mut members = [
            Keys::workflow_member("w", "1.10.0"),
            Keys::workflow_member("w", "1.9.0"),
            Keys::workflow_member("wa", "0.1.0"),
            Keys::workflow_member("v", "2.0.0"),
        ];
        members.sort();
        let order: Vec<&str> = members
            .iter()
            .map(|m| m.split('\0').next().unwrap())
            .collect();
        assert_eq!(order, ["v", "w", "w", "wa"]);
        assert!(members[1] < members[2]);
        assert_eq!(members[2], Keys::workflow_member("w", "1.10.0"));
    }
}
