//! The Lua scripts behind every write of the Redis store. Each write is one
//! script, so it applies whole or not at all, and only while this runtime
//! still holds the lease (a runtime that lost it is fenced off). Every
//! script gets the same `KEYS` (see [`Keys::all`](super::keys::Keys::all)),
//! `ARGV[1]` = the lease token and `ARGV[2]` = the lease's length in ms
//! (the prelude takes a lease that expired while Redis was away and nobody
//! else took, then removes `ARGV[2]`), and answers a list whose first element
//! is `ok`, `fenced`, `missing` or `existing`.
//!
//! Each script is safe to run twice (the writer resends a batch whose
//! answer was lost to a dropped connection): inserts check what is already
//! there, and events at or below the stored high-water mark are skipped.

use std::sync::LazyLock;

use redis::Script;

/// Names the keys and checks the lease; every script starts with it.
const PRELUDE: &str = r#"
local K_LEASE, K_SEQ, K_TASKS, K_TASK_ORDER, K_CHILDREN, K_TASK_EXEC, K_TASK_KEYS,
      K_EXECS, K_EXEC_ORDER, K_PROMPTS, K_EXEC_KEYS, K_EVENTS, K_EVENTS_LAST, K_META,
      K_WORKFLOWS, K_WORKFLOW_INDEX = unpack(KEYS)
local holder = redis.call('GET', K_LEASE)
if holder == false then
  -- Expired while Redis was away and nobody took it: this runtime's again.
  redis.call('SET', K_LEASE, ARGV[1], 'PX', ARGV[2])
elseif holder ~= ARGV[1] then
  return {'fenced', holder}
end
-- From here on ARGV[2] is the script's own first argument.
table.remove(ARGV, 2)

-- A new task: creation order, its parent's child list, its body. Run twice, it only rewrites the body.
local function insert_task(id, parent, body)
  if redis.call('ZSCORE', K_TASK_ORDER, id) == false then
    local seq = redis.call('INCR', K_SEQ)
    redis.call('ZADD', K_TASK_ORDER, seq, id)
    if parent ~= '' then
      redis.call('ZADD', K_CHILDREN, 0, parent .. '\0' .. string.format('%020d', seq) .. '\0' .. id)
    end
  end
  redis.call('HSET', K_TASKS, id, body)
end

-- A new execution, its prompt and its n tasks (id, parent, body each, from ARGV[i] on). Run
-- twice, it only rewrites the execution's body. Answers the index after its tasks.
local function insert_execution(id, body, prompt, n, i)
  local fresh = redis.call('HEXISTS', K_EXECS, id) == 0
  for _ = 1, n do
    if fresh then
      insert_task(ARGV[i], ARGV[i + 1], ARGV[i + 2])
      redis.call('HSET', K_TASK_EXEC, ARGV[i], id)
    end
    i = i + 3
  end
  if fresh then
    redis.call('ZADD', K_EXEC_ORDER, redis.call('INCR', K_SEQ), id)
    redis.call('HSET', K_PROMPTS, id, prompt)
  end
  redis.call('HSET', K_EXECS, id, body)
  return i
end

-- 'fingerprint \n id' split in two.
local function split_key(value)
  local cut = string.find(value, '\n', 1, true)
  return string.sub(value, 1, cut - 1), string.sub(value, cut + 1)
end
"#;

/// `ARGV`: token, retention, n new executions, (id, body, prompt, n tasks,
/// (id, parent, body) each) each, execution id of new tasks (or ''), n new
/// tasks, (id, parent, body) each, n tasks, (id, body) each, n executions,
/// (id, body) each, n events, (sequence, body) each. Checks every id before
/// changing anything; new executions are stored first (as CREATE_EXECUTION
/// without a key does).
const APPLY: &str = r#"
local retention = ARGV[2]
local i = 3
local n_new_execs = tonumber(ARGV[i]); i = i + 1
local new_execs_at = i
local new_exec_ids = {}
local new_ids = {}
for _ = 1, n_new_execs do
  new_exec_ids[ARGV[i]] = true
  local n = tonumber(ARGV[i + 3]); i = i + 4
  for _ = 1, n do new_ids[ARGV[i]] = true; i = i + 3 end
end
local function known_execution(id)
  return new_exec_ids[id] or redis.call('HEXISTS', K_EXECS, id) == 1
end
local execution_id = ARGV[i]; i = i + 1
local n_new = tonumber(ARGV[i]); i = i + 1
local new_at = i
for _ = 1, n_new do new_ids[ARGV[i]] = true; i = i + 3 end
if execution_id ~= '' and not known_execution(execution_id) then
  return {'missing', 'execution ' .. execution_id}
end
local n_tasks = tonumber(ARGV[i]); i = i + 1
local tasks_at = i
for _ = 1, n_tasks do
  if not new_ids[ARGV[i]] and redis.call('HEXISTS', K_TASKS, ARGV[i]) == 0 then
    return {'missing', 'task ' .. ARGV[i]}
  end
  i = i + 2
end
local n_execs = tonumber(ARGV[i]); i = i + 1
local execs_at = i
for _ = 1, n_execs do
  if not known_execution(ARGV[i]) then
    return {'missing', 'execution ' .. ARGV[i]}
  end
  i = i + 2
end
local n_events = tonumber(ARGV[i]); i = i + 1
local events_at = i

i = new_execs_at
for _ = 1, n_new_execs do
  i = insert_execution(ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), i + 4)
end

i = new_at
for _ = 1, n_new do
  insert_task(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('HSET', K_TASK_EXEC, ARGV[i], execution_id)
  i = i + 3
end
i = tasks_at
for _ = 1, n_tasks do redis.call('HSET', K_TASKS, ARGV[i], ARGV[i + 1]); i = i + 2 end
i = execs_at
for _ = 1, n_execs do redis.call('HSET', K_EXECS, ARGV[i], ARGV[i + 1]); i = i + 2 end
if n_events > 0 then
  local last = tonumber(redis.call('GET', K_EVENTS_LAST) or '0')
  i = events_at
  for _ = 1, n_events do
    local sequence = tonumber(ARGV[i])
    if sequence > last then
      redis.call('XADD', K_EVENTS, 'MAXLEN', '~', retention, ARGV[i] .. '-0', 'e', ARGV[i + 1])
      last = sequence
    end
    i = i + 2
  end
  redis.call('SET', K_EVENTS_LAST, string.format('%d', last))
end
return {'ok'}
"#;

/// `ARGV`: token, id, parent (or ''), body, idempotency key (or ''), fingerprint.
const CREATE_TASK: &str = r#"
local id, parent, body, key, fingerprint = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if key ~= '' then
  local found = redis.call('HGET', K_TASK_KEYS, key)
  if found then
    local stored_fingerprint, task_id = split_key(found)
    local existing = redis.call('HGET', K_TASKS, task_id)
    if existing and task_id ~= id then
      return {'existing', stored_fingerprint, existing}
    end
  end
  redis.call('HSET', K_TASK_KEYS, key, fingerprint .. '\n' .. id)
end
insert_task(id, parent, body)
return {'ok'}
"#;

/// `ARGV`: token, execution id, execution body, prompt, idempotency key (or
/// ''), fingerprint, n tasks, (id, parent, body) each.
const CREATE_EXECUTION: &str = r#"
local id, body, prompt, key, fingerprint = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if key ~= '' then
  local found = redis.call('HGET', K_EXEC_KEYS, key)
  if found then
    local stored_fingerprint, execution_id = split_key(found)
    local existing = redis.call('HGET', K_EXECS, execution_id)
    if existing and execution_id ~= id then
      return {'existing', stored_fingerprint, existing}
    end
  end
end
insert_execution(id, body, prompt, tonumber(ARGV[7]), 8)
if key ~= '' then
  redis.call('HSET', K_EXEC_KEYS, key, fingerprint .. '\n' .. id)
end
return {'ok'}
"#;

/// `ARGV`: token, 'task' or 'execution', id, body. Answers `missing` for an unknown id.
const PUT: &str = r#"
local hash = K_TASKS
if ARGV[2] == 'execution' then hash = K_EXECS end
if redis.call('HEXISTS', hash, ARGV[3]) == 0 then
  return {'missing'}
end
redis.call('HSET', hash, ARGV[3], ARGV[4])
return {'ok'}
"#;

/// `ARGV`: token, key, value.
const SET_META: &str = r#"
redis.call('HSET', K_META, ARGV[2], ARGV[3])
return {'ok'}
"#;

/// `ARGV`: token, member, body. Answers `existing` with the stored body
/// when the version is taken by another body.
const INSERT_WORKFLOW: &str = r#"
local existing = redis.call('HGET', K_WORKFLOWS, ARGV[2])
if existing and existing ~= ARGV[3] then
  return {'existing', existing}
end
redis.call('HSET', K_WORKFLOWS, ARGV[2], ARGV[3])
redis.call('ZADD', K_WORKFLOW_INDEX, 0, ARGV[2])
return {'ok'}
"#;

/// `ARGV`: token, id, member (or '' for every version). Answers `ok` and the
/// deleted bodies.
const DELETE_WORKFLOW: &str = r#"
local members
if ARGV[3] ~= '' then
  members = {ARGV[3]}
else
  members = redis.call('ZRANGEBYLEX', K_WORKFLOW_INDEX, '[' .. ARGV[2] .. '\0', '(' .. ARGV[2] .. '\1')
end
local deleted = {'ok'}
for _, member in ipairs(members) do
  local body = redis.call('HGET', K_WORKFLOWS, member)
  if body then
    redis.call('HDEL', K_WORKFLOWS, member)
    table.insert(deleted, body)
  end
  redis.call('ZREM', K_WORKFLOW_INDEX, member)
end
return deleted
"#;

/// Takes, renews or checks the lease. `ARGV`: token, milliseconds. Answers
/// `ok` when this token holds it now (taken if it was free), else `held`
/// and the holder. Has no prelude: it is the one script that runs without the lease.
pub(super) const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'ok'}
end
return {'held', holder}
"#;

/// Gives the lease up when this token holds it. `ARGV`: token.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return {'ok'}
"#;

/// The scripts the writer runs, by what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// [`crate::store::Store::write`] and the other multi-record writes.
    Apply,
    /// A task with its idempotency key.
    CreateTask,
    /// An execution with its tasks, prompt and idempotency key.
    CreateExecution,
    /// One task or execution replaced.
    Put,
    /// A meta value.
    SetMeta,
    /// A workflow version.
    InsertWorkflow,
    /// Workflow versions deleted.
    DeleteWorkflow,
}

/// Every writing script, compiled once (each with its SHA-1 for EVALSHA).
static SCRIPTS: LazyLock<[Script; 7]> = LazyLock::new(|| {
    [
        APPLY,
        CREATE_TASK,
        CREATE_EXECUTION,
        PUT,
        SET_META,
        INSERT_WORKFLOW,
        DELETE_WORKFLOW,
    ]
    .map(|body| Script::new(&format!("{PRELUDE}{body}")))
});

impl Kind {
    /// Every kind, for loading them all into a fresh connection.
    pub const ALL: [Kind; 7] = [
        Kind::Apply,
        Kind::CreateTask,
        Kind::CreateExecution,
        Kind::Put,
        Kind::SetMeta,
        Kind::InsertWorkflow,
        Kind::DeleteWorkflow,
    ];

    /// The compiled script.
    pub fn script(self) -> &'static Script {
        &SCRIPTS[self as usize]
    }
}
