//! The Redis store's writer thread: every write is one Lua script (see
//! `scripts.rs`), and the scripts queued while the previous round trip ran
//! go to Redis together in one pipeline (group commit). Writes are answered
//! in the order they were handed over.
//!
//! While Redis cannot be reached the writer keeps its batch and retries with
//! backoff (reconnecting, reloading the scripts), so a state change of
//! running work is never dropped: it waits for Redis. A write whose caller
//! waits has a deadline instead, and is answered UNAVAILABLE once it passes.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError};

use super::health::Health;
use super::keys::Keys;
use super::scripts::Kind;
use crate::store::StoreError;

/// Writes waiting for the writer thread; a full queue blocks the caller.
const WRITE_QUEUE: usize = 4096;
/// Most writes sent in one pipeline.
const MAX_BATCH: usize = 512;
/// The longest pause between two attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a script answered: its list of strings.
pub(super) type Reply = Vec<Vec<u8>>;

/// One script run, and who is told its answer.
pub(super) struct Job {
    /// The script.
    pub kind: Kind,
    /// `ARGV` after the lease token.
    pub args: Vec<Vec<u8>>,
    /// When a waiting caller gives up; None for a write that must not be
    /// dropped (it is retried until Redis answers).
    pub deadline: Option<Instant>,
    /// Told the answer, on the writer thread.
    pub reply: Box<dyn FnOnce(Result<Reply, StoreError>) + Send>,
}

enum Command {
    Run(Job),
    Stop,
}

/// The handle on the writer thread.
pub(super) struct Writer {
    commands: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Writer {
    /// Starts the thread; it connects on its first write.
    pub fn start(
        client: Client,
        keys: Keys,
        token: Arc<str>,
        lease: Duration,
        timeout: Duration,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
        let (commands, received) = mpsc::sync_channel(WRITE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("redis-store-writer".into())
            .spawn(move || {
                let mut state = State {
                    client,
                    keys,
                    token,
                    lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                    timeout,
                    health,
                    connection: None,
                };
                state.run(&received);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the redis writer: {e}")))?;
        Ok(Self {
            commands,
            thread: Some(thread),
            timeout,
        })
    }

    /// Queues `job` without waiting. When the writer is gone the job is answered at once.
    pub fn submit(&self, job: Job) {
        if let Err(error) = self.commands.send(Command::Run(job))
            && let Command::Run(job) = error.0
        {
            (job.reply)(Err(StoreError::Unavailable(
                "the redis writer has stopped".into(),
            )));
        }
    }

    /// Runs `kind` with `args` and waits for its answer (at most the command timeout, plus
    /// the time to reach the front of the queue).
    pub fn call(&self, kind: Kind, args: Vec<Vec<u8>>) -> Result<Reply, StoreError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let deadline = Instant::now() + self.timeout;
        self.submit(Job {
            kind,
            args,
            deadline: Some(deadline),
            reply: Box::new(move |reply| {
                let _ = answer.send(reply);
            }),
        });
        // The writer answers every job it takes, expired or not; this bound only
        // guards against a writer stuck in one slow round trip.
        match answered.recv_timeout(self.timeout * 3) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => Err(StoreError::Unreachable(format!(
                "redis did not answer a write within {:.1} s",
                (self.timeout * 3).as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
                "the redis writer has stopped".into(),
            )),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Finish what is queued, then stop. A full queue means the writer is
        // stuck on Redis: leave it (it ends with the process).
        match self.commands.try_send(Command::Stop) {
            Ok(()) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }
}

/// What the writer thread owns.
struct State {
    client: Client,
    keys: Keys,
    token: Arc<str>,
    lease_ms: u64,
    timeout: Duration,
    health: Arc<Health>,
    connection: Option<Connection>,
}

impl State {
    fn run(&mut self, received: &Receiver<Command>) {
        while let Ok(Command::Run(first)) = received.recv() {
            let mut batch = vec![first];
            let mut stop = false;
            while batch.len() < MAX_BATCH {
                match received.try_recv() {
                    Ok(Command::Run(job)) => batch.push(job),
                    Ok(Command::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.send(batch);
            if stop {
                break;
            }
        }
    }

    /// Sends `batch` until Redis answered it, answering each job.
    fn send(&mut self, mut batch: Vec<Job>) {
        let mut backoff = Duration::from_millis(25);
        loop {
            let now = Instant::now();
            let (expired, live): (Vec<Job>, Vec<Job>) = batch
                .into_iter()
                .partition(|job| job.deadline.is_some_and(|deadline| deadline <= now));
            batch = live;
            for job in expired {
                (job.reply)(Err(StoreError::Unreachable(format!(
                    "redis did not take the write within {:.1} s; it may or may not have been stored",
                    self.timeout.as_secs_f64()
                ))));
            }
            if batch.is_empty() {
                return;
            }
            match self.pipeline(&batch) {
                Ok(replies) => {
                    self.health.reached();
                    for (job, reply) in batch.into_iter().zip(replies) {
                        (job.reply)(Ok(reply));
                    }
                    return;
                }
                Err(error) if is_transient(&error) => {
                    self.connection = None;
                    self.health.unreachable(&error.to_string());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(_) => {
                    // A script failed outright (a bug, or a server refusing it):
                    // run them one by one, so only the failing write fails.
                    for job in batch {
                        let reply = self.one(&job);
                        (job.reply)(reply);
                    }
                    return;
                }
            }
        }
    }

    /// One round trip carrying every job of the batch.
    fn pipeline(&mut self, batch: &[Job]) -> Result<Vec<Reply>, RedisError> {
        let mut pipe = redis::pipe();
        for job in batch {
            self.push(&mut pipe, job);
        }
        let connection = self.connect()?;
        match pipe.query::<Vec<Reply>>(connection) {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // The server forgot the scripts (restarted, or SCRIPT FLUSH): load them, once more.
                load_scripts(connection)?;
                pipe.query::<Vec<Reply>>(connection)
            }
            other => other,
        }
    }

    /// One job alone; a failure becomes that job's error.
    fn one(&mut self, job: &Job) -> Result<Reply, StoreError> {
        let mut pipe = redis::pipe();
        self.push(&mut pipe, job);
        let connection = self.connect().map_err(unreachable)?;
        pipe.query::<Vec<Reply>>(connection)
            .map_err(|error| {
                if is_transient(&error) {
                    unreachable(error)
                } else {
                    StoreError::Unavailable(format!("redis refused a write: {error}"))
                }
            })?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("redis answered a write with nothing".into()))
    }

    fn push(&self, pipe: &mut redis::Pipeline, job: &Job) {
        let keys = self.keys.all();
        let command = pipe
            .cmd("EVALSHA")
            .arg(job.kind.script().get_hash())
            .arg(keys.len())
            .arg(&keys[..])
            .arg(&*self.token)
            .arg(self.lease_ms);
        for arg in &job.args {
            command.arg(arg.as_slice());
        }
    }

    /// The writer's connection, opened (with the scripts loaded) when there is none.
    fn connect(&mut self) -> Result<&mut Connection, RedisError> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let mut connection = self.client.get_connection_with_timeout(self.timeout)?;
                connection.set_read_timeout(Some(self.timeout))?;
                connection.set_write_timeout(Some(self.timeout))?;
                load_scripts(&mut connection)?;
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }
}

/// Loads every writing script into the server's script cache.
fn load_scripts(connection: &mut Connection) -> Result<(), RedisError> {
    for kind in Kind::ALL {
        kind.script().load(connection)?;
    }
    Ok(())
}

/// Whether `error` may pass by itself: the connection, a timeout, a server
/// loading its data or failing over.
pub(super) fn is_transient(error: &RedisError) -> bool {
    use redis::ServerErrorKind as Server;
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                Server::BusyLoading
                    | Server::TryAgain
                    | Server::ClusterDown
                    | Server::MasterDown
                    | Server::ReadOnly
            )
        )
}

/// A Redis failure as the store's "unreachable" error.
pub(super) fn unreachable(error: RedisError) -> StoreError {
    StoreError::Unreachable(format!("redis: {error}"))
}
