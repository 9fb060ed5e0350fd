//! `RedisStore`: the store kept in a Redis server (`runtime.queue_type =
//! "redis"`), so that state and the event log outlive the machine a runtime
//! runs on, and a replacement runtime (a restart elsewhere, or a standby
//! waiting at start) carries on where a dead one stopped.
//!
//! Layout: `keys.rs` names every key; `scripts.rs` holds the Lua scripts,
//! one per write, each checking this runtime's lease first; `writer.rs`
//! sends the writes, grouped, from one thread; `lease.rs` takes and renews
//! the lease; `health.rs` is what readiness asks. Reads here go straight to
//! Redis over a small connection pool (r2d2).
//!
//! One runtime holds the lease at a time; a second one on the same
//! `redis.key_prefix` waits for it at start. What a Redis crash can lose is
//! in the README ("Scale-out on Redis").

mod candidate;
mod health;
mod keys;
mod lease;
mod scripts;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{Client, Commands, Connection, RedisError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::candidate::{LeaseHolder, RedisCandidate};
use self::health::Health;
use self::keys::Keys;
use self::lease::Lease;
use self::scripts::Kind;
use self::writer::{Job, Reply, Writer, unreachable};
use super::{
    Changes, Committed, CreateOutcome, ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey,
    NewExecutionRecord, Page, Store, StoreError, TaskFilter, WorkflowCursor, WorkflowFilter,
};
use crate::model::events::Event;
use crate::model::{Task, WorkflowDefinition, WorkflowExecution};

/// Connections the readers share.
const READ_POOL: u32 = 8;
/// Entries read per round trip while a listing scans past filtered-out items.
const SCAN_BATCH: usize = 256;

/// How to reach Redis and hold the keys there (from `runtime.queue_url` and `[redis]`).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` or `unix:///path`.
    pub url: String,
    /// The keys' prefix (`redis.key_prefix`).
    pub key_prefix: String,
    /// The lease's length (`redis.lease_seconds`).
    pub lease: Duration,
    /// Events kept in the stream (`redis.event_retention`).
    pub event_retention: u64,
    /// One command's time limit (`redis.command_timeout_seconds`).
    pub command_timeout: Duration,
}

impl RedisOptions {
    /// The options a configuration names; None unless `runtime.queue_type = "redis"` with a url.
    pub fn from_config(config: &crate::config::Config) -> Option<Self> {
        let url = config.runtime.queue_url.clone()?;
        Some(Self {
            url,
            key_prefix: config.redis.key_prefix.clone(),
            lease: config.redis.lease(),
            event_retention: config.redis.event_retention,
            command_timeout: config.redis.command_timeout(),
        })
    }
}

/// Sets each pooled connection's timeouts.
#[derive(Debug)]
struct Timeouts(Duration);

impl r2d2::CustomizeConnection<Connection, RedisError> for Timeouts {
    fn on_acquire(&self, connection: &mut Connection) -> Result<(), RedisError> {
        connection.set_read_timeout(Some(self.0))?;
        connection.set_write_timeout(Some(self.0))
    }
}

/// A `Store` in Redis. Dropping it finishes the queued writes and gives the lease up.
pub struct RedisStore {
    keys: Keys,
    readers: r2d2::Pool<Client>,
    // Declared before the lease: on drop the queued writes finish while it is still held.
    writer: Writer,
    health: Arc<Health>,
    retention: u64,
    _lease: Lease,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.lease)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, takes the lease (waiting up to one and a half lease lengths
    /// for a dead holder's to expire) and starts the writer.
    pub fn open(options: &RedisOptions) -> Result<Self, StoreError> {
        let client = open_client(options)?;
        let keys = Keys::new(&options.key_prefix);
        let health = Arc::new(Health::default());
        let token: Arc<str> = lease_token(None).into();
        let lease = Lease::take(
            client.clone(),
            keys.lease.clone(),
            Arc::clone(&token),
            options.lease,
            options.command_timeout,
            options.lease.mul_f64(1.5),
            Arc::clone(&health),
        )?;
        Self::with_lease(options, client, keys, token, lease, health)
    }

    /// The store of a runtime that holds `lease` (taken with `token`, reporting to `health`).
    fn with_lease(
        options: &RedisOptions,
        client: Client,
        keys: Keys,
        token: Arc<str>,
        lease: Lease,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
        let readers = r2d2::Pool::builder()
            .max_size(READ_POOL)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(options.command_timeout)
            .connection_customizer(Box::new(Timeouts(options.command_timeout)))
            .build_unchecked(client.clone());
        let writer = Writer::start(
            client,
            keys.clone(),
            token,
            options.lease,
            options.command_timeout,
            Arc::clone(&health),
        )?;
        Ok(Self {
            keys,
            readers,
            writer,
            health,
            retention: options.event_retention,
            _lease: lease,
        })
    }

    /// Runs `read` on a pooled connection; a failure to reach Redis is `Unreachable`.
    fn read<R>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<R, RedisError>,
    ) -> Result<R, StoreError> {
        let mut connection = self.readers.get().map_err(|error| {
            self.health.unreachable(&error.to_string());
            StoreError::Unreachable(format!("no redis connection: {error}"))
        })?;
        read(&mut connection).map_err(|error| {
            if writer::is_transient(&error) {
                self.health.unreachable(&error.to_string());
                unreachable(error)
            } else {
                StoreError::Unavailable(format!("redis: {error}"))
            }
        })
    }

    /// Runs a writing script and waits for its answer; `fenced` becomes an error.
    fn call(&self, kind: Kind, args: Vec<Vec<u8>>) -> Result<Reply, StoreError> {
        let reply = self.writer.call(kind, args)?;
        self.check_fenced(&reply)?;
        Ok(reply)
    }

    fn check_fenced(&self, reply: &Reply) -> Result<(), StoreError> {
        if reply.first().is_some_and(|status| status == b"fenced") {
            let holder = reply
                .get(1)
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_default();
            self.health.fence(&holder);
            return Err(StoreError::Fenced(format!("held by {holder}")));
        }
        Ok(())
    }

    /// The tasks or executions whose ids `order` lists after `after`, in
    /// order, filtered by `keep`, at most `limit` (with the cursor when more follow).
    fn scan<T: DeserializeOwned>(
        &self,
        what: &'static str,
        order: &str,
        bodies: &str,
        after: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&T, &mut Connection) -> Result<bool, RedisError>,
    ) -> Result<Page<T, u64>, StoreError> {
        let mut items = Vec::new();
        let mut cursor = after.unwrap_or(0);
        let mut last = None;
        loop {
            let start = format!("({cursor}");
            let (ids, found): (Vec<(String, u64)>, Vec<Option<String>>) = self.read(|c| {
                let ids: Vec<(String, u64)> = redis::cmd("ZRANGE")
                    .arg(order)
                    .arg(&start)
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SCAN_BATCH)
                    .arg("WITHSCORES")
                    .query(c)?;
                if ids.is_empty() {
                    return Ok((ids, Vec::new()));
                }
                let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
                let found: Vec<Option<String>> =
                    redis::cmd("HMGET").arg(bodies).arg(&names).query(c)?;
                Ok((ids, found))
            })?;
            let exhausted = ids.len() < SCAN_BATCH;
            for ((id, seq), body) in ids.into_iter().zip(found) {
                cursor = seq;
                let Some(body) = body else { continue };
                let item: T = decode(what, &id, &body)?;
                if !self.read(|c| keep(&item, c))? {
                    continue;
                }
                if items.len() == limit {
                    return Ok(Page { items, next: last });
                }
                items.push(item);
                last = Some(seq);
            }
            if exhausted {
                return Ok(Page { items, next: None });
            }
        }
    }

    fn get_body<T: DeserializeOwned>(
        &self,
        what: &str,
        hash: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let body: Option<String> = self.read(|c| c.hget(hash, id))?;
        body.map(|body| decode(what, id, &body)).transpose()
    }
}

/// The client of `options.url`.
fn open_client(options: &RedisOptions) -> Result<Client, StoreError> {
    Client::open(options.url.as_str()).map_err(|error| StoreError::Open {
        path: crate::config::redact_url(&options.url).into_owned().into(),
        reason: format!("not a redis url: {error}"),
    })
}

/// This process's lease token: host, pid and a random part, so that an
/// operator reading the lease key sees who holds it, then (after a space) the
/// url other replicas forward calls to while it holds the lease.
fn lease_token(advertise: Option<&str>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    let token = format!("{host}/pid-{}/{}", std::process::id(), &random[..12]);
    match advertise {
        Some(url) => format!("{token} {url}"),
        None => token,
    }
}

fn encode(what: &str, id: &str, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|error| StoreError::Unavailable(format!("cannot encode {what} {id}: {error}")))
}

fn decode<T: DeserializeOwned>(what: &str, id: &str, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|error| StoreError::Corrupt(format!("{what} {id}: {error}")))
}

/// An execution as stored: without its tasks (they are stored as tasks).
fn execution_body(execution: &WorkflowExecution) -> Result<Vec<u8>, StoreError> {
    if execution.tasks.is_empty() {
        return encode("execution", &execution.id, execution);
    }
    let mut bare = execution.clone();
    bare.tasks = Vec::new();
    encode("execution", &execution.id, &bare)
}

/// `fingerprint \n id` split in two.
fn split_key(value: &str) -> Option<(String, String)> {
    let (fingerprint, id) = value.split_once('\n')?;
    Some((fingerprint.to_owned(), id.to_owned()))
}

fn text(reply: &Reply, index: usize) -> String {
    reply
        .get(index)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn status(reply: &Reply) -> &[u8] {
    reply.first().map_or(&b""[..], |s| s.as_slice())
}

/// The script arguments of a new execution (see `scripts::CREATE_EXECUTION`).
fn create_args(
    new: &NewExecutionRecord,
    idempotency: Option<IdempotencyKey>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let (key, fingerprint) = idempotency
        .map(|k| (k.key, k.fingerprint))
        .unwrap_or_default();
    let mut args = vec![
        new.execution.id.clone().into_bytes(),
        execution_body(&new.execution)?,
        new.prompt.to_vec(),
        key.into_bytes(),
        fingerprint.into_bytes(),
        new.tasks.len().to_string().into_bytes(),
    ];
    for task in &new.tasks {
        args.push(task.id.clone().into_bytes());
        args.push(task.parent_id.clone().unwrap_or_default().into_bytes());
        args.push(encode("task", &task.id, task.as_ref())?);
    }
    Ok(args)
}

/// The script arguments of `changes` (see `scripts::APPLY`).
fn apply_args(changes: &Changes, retention: u64) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut args = vec![
        retention.to_string().into_bytes(),
        changes.new_executions.len().to_string().into_bytes(),
    ];
    for new in &changes.new_executions {
        args.push(new.execution.id.clone().into_bytes());
        args.push(execution_body(&new.execution)?);
        args.push(new.prompt.to_vec());
        args.push(new.tasks.len().to_string().into_bytes());
        for task in &new.tasks {
            args.push(task.id.clone().into_bytes());
            args.push(task.parent_id.clone().unwrap_or_default().into_bytes());
            args.push(encode("task", &task.id, task.as_ref())?);
        }
    }
    match &changes.new_execution_tasks {
        Some((execution_id, tasks)) => {
            args.push(execution_id.clone().into_bytes());
            args.push(tasks.len().to_string().into_bytes());
            for task in tasks {
                args.push(task.id.clone().into_bytes());
                args.push(task.parent_id.clone().unwrap_or_default().into_bytes());
                args.push(encode("task", &task.id, task.as_ref())?);
            }
        }
        None => {
            args.push(Vec::new());
            args.push(b"0".to_vec());
        }
    }
    args.push(changes.tasks.len().to_string().into_bytes());
    for task in &changes.tasks {
        args.push(task.id.clone().into_bytes());
        args.push(encode("task", &task.id, &**task)?);
    }
    args.push(changes.executions.len().to_string().into_bytes());
    for execution in &changes.executions {
        args.push(execution.id.clone().into_bytes());
        args.push(execution_body(execution)?);
    }
    args.push(changes.events.len().to_string().into_bytes());
    for event in &changes.events {
        let sequence = event.sequence.to_string();
        args.push(encode("event", &sequence, event.as_ref())?);
        args.insert(args.len() - 1, sequence.into_bytes());
    }
    Ok(args)
}

/// The outcome of an APPLY reply.
fn applied(reply: &Reply) -> Result<(), StoreError> {
    match status(reply) {
        b"ok" => Ok(()),
        b"missing" => Err(StoreError::Unavailable(format!(
            "{} is not stored",
            text(reply, 1)
        ))),
        b"fenced" => Err(StoreError::Fenced(format!("held by {}", text(reply, 1)))),
        other => Err(StoreError::Corrupt(format!(
            "redis answered a write with {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

impl Store for RedisStore {
    fn create_task(
        &self,
        task: Task,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let (key, fingerprint) = idempotency
            .map(|k| (k.key, k.fingerprint))
            .unwrap_or_default();
        let reply = self.call(
            Kind::CreateTask,
            vec![
                task.id.clone().into_bytes(),
                task.parent_id.clone().unwrap_or_default().into_bytes(),
                encode("task", &task.id, &task)?,
                key.into_bytes(),
                fingerprint.clone().into_bytes(),
            ],
        )?;
        match status(&reply) {
            b"existing" => Ok(CreateOutcome::Existing {
                same_body: text(&reply, 1) == fingerprint,
                task: decode("task", &task.id, &text(&reply, 2))?,
            }),
            _ => applied(&reply).map(|()| CreateOutcome::Created(task)),
        }
    }

    fn put_task(&self, task: &Task) -> Result<bool, StoreError> {
        let reply = self.call(
            Kind::Put,
            vec![
                b"task".to_vec(),
                task.id.clone().into_bytes(),
                encode("task", &task.id, task)?,
            ],
        )?;
        Ok(status(&reply) == b"ok")
    }

    fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.get_body("task", &self.keys.tasks, id)
    }

    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, StoreError> {
        let members: Vec<Vec<u8>> = self.read(|c| {
            redis::cmd("ZRANGEBYLEX")
                .arg(&self.keys.children)
                .arg(Keys::children_start(parent_id))
                .arg(Keys::children_end(parent_id))
                .query(c)
        })?;
        Ok(members
            .iter()
            .filter_map(|member| {
                // parent \0 order(20 digits) \0 child
                let rest = member.get(parent_id.len() + 1 + 20 + 1..)?;
                Some(String::from_utf8_lossy(rest).into_owned())
            })
            .collect())
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, StoreError> {
        self.scan(
            "task",
            &self.keys.task_order,
            &self.keys.tasks,
            after,
            limit,
            |task: &Task, _| Ok(filter.matches(task)),
        )
    }

    fn create_execution(
        &self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<ExecutionCreateOutcome, StoreError> {
        let fingerprint = idempotency
            .as_ref()
            .map(|k| k.fingerprint.clone())
            .unwrap_or_default();
        let args = create_args(&new, idempotency)?;
        let mut execution = Arc::unwrap_or_clone(new.execution);
        execution.tasks = Vec::new();
        let reply = self.call(Kind::CreateExecution, args)?;
        match status(&reply) {
            b"existing" => Ok(ExecutionCreateOutcome::Existing {
                same_body: text(&reply, 1) == fingerprint,
                execution: decode("execution", &execution.id, &text(&reply, 2))?,
            }),
            _ => applied(&reply).map(|()| ExecutionCreateOutcome::Created(execution)),
        }
    }

    fn add_execution_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        let changes = Changes {
            new_execution_tasks: Some((
                execution_id.to_owned(),
                tasks.iter().cloned().map(Arc::new).collect(),
            )),
            ..Changes::default()
        };
        let reply = self.call(Kind::Apply, apply_args(&changes, self.retention)?)?;
        applied(&reply)
    }

    fn execution_for_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let found: Option<String> = self.read(|c| c.hget(&self.keys.execution_keys, key))?;
        Ok(found.as_deref().and_then(split_key))
    }

    fn put_execution(&self, execution: &WorkflowExecution) -> Result<bool, StoreError> {
        let reply = self.call(
            Kind::Put,
            vec![
                b"execution".to_vec(),
                execution.id.clone().into_bytes(),
                execution_body(execution)?,
            ],
        )?;
        Ok(status(&reply) == b"ok")
    }

    fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
        self.get_body("execution", &self.keys.executions, id)
    }

    fn execution_prompt(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let prompt: Option<Vec<u8>> = self.read(|c| c.hget(&self.keys.prompts, id))?;
        Ok(prompt.map(Bytes::from))
    }

    fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| c.hget(&self.keys.task_execution, task_id))
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WorkflowExecution, u64>, StoreError> {
        let tasks = &self.keys.tasks;
        self.scan(
            "execution",
            &self.keys.execution_order,
            &self.keys.executions,
            after,
            limit,
            |execution: &WorkflowExecution, c| {
                let matches = (filter.statuses.is_empty()
                    || filter.statuses.contains(&execution.status()))
                    && filter
                        .workflow_id
                        .as_ref()
                        .is_none_or(|id| *id == execution.workflow_id);
                if !matches || filter.tags.is_empty() {
                    return Ok(matches);
                }
                let Some(root) = execution.root_task_id.as_deref() else {
                    return Ok(false);
                };
                let body: Option<String> = c.hget(tasks, root)?;
                Ok(body
                    .and_then(|body| serde_json::from_str::<Task>(&body).ok())
                    .is_some_and(|root| filter.tags.iter().all(|t| root.tags.contains(t))))
            },
        )
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| c.hget(&self.keys.meta, key))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let reply = self.call(
            Kind::SetMeta,
            vec![key.as_bytes().to_vec(), value.as_bytes().to_vec()],
        )?;
        applied(&reply)
    }

    fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        let changes = Changes {
            events: vec![Arc::new(event.clone())],
            ..Changes::default()
        };
        let reply = self.call(Kind::Apply, apply_args(&changes, self.retention)?)?;
        applied(&reply)
    }

    fn write(&self, changes: Changes, committed: Committed) {
        let args = match apply_args(&changes, self.retention) {
            Ok(args) => args,
            Err(error) => return committed(Err(error)),
        };
        let health = Arc::clone(&self.health);
        self.writer.submit(Job {
            kind: Kind::Apply,
            args,
            // A state change waits for Redis however long it is away.
            deadline: None,
            reply: Box::new(move |reply| {
                let outcome = reply.and_then(|reply| {
                    if status(&reply) == b"fenced" {
                        health.fence(&text(&reply, 1));
                    }
                    applied(&reply)
                });
                committed(outcome);
            }),
        });
    }

    fn prefers_fewer_writes(&self) -> bool {
        // A script call each: a round trip to Redis and an AOF append.
        true
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, Vec<(String, String)>)> = self.read(|c| {
            redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query(c)
        })?;
        entries
            .into_iter()
            .map(|(id, fields)| {
                let body = fields
                    .into_iter()
                    .find(|(name, _)| name == "e")
                    .map(|(_, body)| body)
                    .ok_or_else(|| StoreError::Corrupt(format!("event {id} has no body")))?;
                decode("event", &id, &body)
            })
            .collect()
    }

    fn last_event_sequence(&self) -> Result<u64, StoreError> {
        let last: Option<u64> = self.read(|c| c.get(&self.keys.events_last))?;
        Ok(last.unwrap_or(0))
    }

    fn insert_workflow(
        &self,
        workflow: WorkflowDefinition,
    ) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError> {
        let member = Keys::workflow_member(&workflow.id, &workflow.version);
        let reply = self.call(
            Kind::InsertWorkflow,
            vec![
                member.clone().into_bytes(),
                encode("workflow", &workflow.id, &workflow)?,
            ],
        )?;
        if status(&reply) == b"existing" {
            return Ok(Err(decode("workflow", &workflow.id, &text(&reply, 1))?));
        }
        applied(&reply)?;
        Ok(Ok(workflow))
    }

    fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        let member = match version {
            Some(version) => Some(Keys::workflow_member(id, version)),
            None => {
                let highest: Vec<String> = self.read(|c| {
                    redis::cmd("ZREVRANGEBYLEX")
                        .arg(&self.keys.workflow_index)
                        .arg(format!("({id}\u{1}"))
                        .arg(format!("[{id}\0"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1)
                        .query(c)
                })?;
                highest.into_iter().next()
            }
        };
        match member {
            Some(member) => self.get_body("workflow", &self.keys.workflows, &member),
            None => Ok(None),
        }
    }

    fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError> {
        let start = match after {
            Some(cursor) => format!("({}", Keys::workflow_member(&cursor.id, &cursor.version)),
            None => "-".to_owned(),
        };
        let members: Vec<String> = self.read(|c| {
            redis::cmd("ZRANGEBYLEX")
                .arg(&self.keys.workflow_index)
                .arg(&start)
                .arg("+")
                .query(c)
        })?;
        let id_of = |member: &str| member.split('\0').next().unwrap_or_default().to_owned();
        // Only the highest version of each id, unless every version is asked for.
        let candidates: Vec<&String> = members
            .iter()
            .enumerate()
            .filter(|(i, member)| {
                filter.all_versions
                    || members
                        .get(i + 1)
                        .is_none_or(|next| id_of(next) != id_of(member))
            })
            .map(|(_, member)| member)
            .collect();
        let mut items: Vec<WorkflowDefinition> = Vec::new();
        let mut more = false;
        'pages: for chunk in candidates.chunks(SCAN_BATCH) {
            let bodies: Vec<Option<String>> = self.read(|c| {
                redis::cmd("HMGET")
                    .arg(&self.keys.workflows)
                    .arg(chunk)
                    .query(c)
            })?;
            for (member, body) in chunk.iter().zip(bodies) {
                let Some(body) = body else { continue };
                let workflow: WorkflowDefinition = decode("workflow", member, &body)?;
                if !filter.tags.iter().all(|t| workflow.tags.contains(t)) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'pages;
                }
                items.push(workflow);
            }
        }
        Ok(Page::of_workflows(items, more))
    }

    fn delete_workflow(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, StoreError> {
        let member = version
            .map(|v| Keys::workflow_member(id, v))
            .unwrap_or_default();
        let reply = self.call(
            Kind::DeleteWorkflow,
            vec![id.as_bytes().to_vec(), member.into_bytes()],
        )?;
        applied(&reply[..1.min(reply.len())].to_vec())?;
        reply
            .iter()
            .skip(1)
            .map(|body| {
                let workflow: WorkflowDefinition =
                    decode("workflow", id, &String::from_utf8_lossy(body))?;
                Ok(workflow.version)
            })
            .collect()
    }

    fn health(&self) -> Result<(), StoreError> {
        self.health.check()?;
        // Asks Redis itself: the flag above only knows the last attempt.
        let pong: String = self.read(|c| redis::cmd("PING").query(c))?;
        if pong == "PONG" {
            self.health.reached();
            Ok(())
        } else {
            Err(StoreError::Unreachable(format!(
                "redis answered PING with {pong}"
            )))
        }
    }
}
