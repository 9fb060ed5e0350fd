//! The lease a runtime holds on its Redis keys: taken at start (waiting out
//! a dead holder's lease), renewed every third of `redis.lease_seconds` on a
//! thread of its own, and given up when the store closes. Every write
//! script checks it (see `scripts.rs`), so a runtime whose lease passed to
//! another one cannot change anything any more.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError, Script};

use super::health::Health;
use super::scripts::{LEASE, RELEASE};
use super::writer::{is_transient, unreachable};
use crate::store::StoreError;

/// What the lease script answered.
enum Answer {
    /// This runtime holds it.
    Held,
    /// Another runtime does: its token.
    Other(String),
}

/// Runs the lease script once.
fn try_take(
    connection: &mut Connection,
    key: &str,
    token: &str,
    lease: Duration,
) -> Result<Answer, RedisError> {
    let millis = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let reply: Vec<String> = Script::new(LEASE)
        .key(key)
        .arg(token)
        .arg(millis)
        .invoke(connection)?;
    Ok(match reply.as_slice() {
        [status] if status == "ok" => Answer::Held,
        [_, holder] => Answer::Other(holder.clone()),
        _ => Answer::Other(String::new()),
    })
}

fn connect(client: &Client, timeout: Duration) -> Result<Connection, RedisError> {
    let connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    Ok(connection)
}

/// The held lease and the thread renewing it.
pub(super) struct Lease {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    client: Client,
    key: String,
    token: Arc<str>,
    timeout: Duration,
}

impl Lease {
    /// Takes the lease, waiting up to `wait` for another holder's to expire,
    /// then renews it until dropped.
    pub fn take(
        client: Client,
        key: String,
        token: Arc<str>,
        lease: Duration,
        timeout: Duration,
        wait: Duration,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
        let started = Instant::now();
        let mut connection = connect(&client, timeout).map_err(unreachable)?;
        let mut announced = false;
        loop {
            match try_take(&mut connection, &key, &token, lease).map_err(unreachable)? {
                Answer::Held => break,
                Answer::Other(holder) => {
                    if started.elapsed() >= wait {
                        return Err(StoreError::Unavailable(format!(
                            "another runtime ({holder}) holds the lease on {key} and keeps renewing it; give this one another redis.key_prefix, or stop the other"
                        )));
                    }
                    if !announced {
                        tracing::warn!(%holder, key, wait_seconds = wait.as_secs_f64(), "another runtime holds the redis lease; waiting for it to expire");
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        Self::renewing(client, connection, key, token, lease, timeout, health)
    }

    /// Takes the lease if nobody holds it (one attempt); `Ok(None)` while another runtime does.
    pub fn try_take_once(
        client: Client,
        key: String,
        token: Arc<str>,
        lease: Duration,
        timeout: Duration,
        health: Arc<Health>,
    ) -> Result<Option<Self>, StoreError> {
        let mut connection = connect(&client, timeout).map_err(unreachable)?;
        match try_take(&mut connection, &key, &token, lease).map_err(unreachable)? {
            Answer::Held => {
                Self::renewing(client, connection, key, token, lease, timeout, health).map(Some)
            }
            Answer::Other(_) => Ok(None),
        }
    }

    /// The held lease, renewed on a thread of its own from now on.
    fn renewing(
        client: Client,
        connection: Connection,
        key: String,
        token: Arc<str>,
        lease: Duration,
        timeout: Duration,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let renew = {
            let client = client.clone();
            let key = key.clone();
            let token = Arc::clone(&token);
            move || {
                let mut connection = Some(connection);
                let period = lease / 3;
                loop {
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let answer = match connection.take() {
                        Some(c) => Ok(c),
                        None => connect(&client, timeout),
                    }
                    .and_then(|mut c| {
                        let answer = try_take(&mut c, &key, &token, lease);
                        connection = Some(c);
                        answer
                    });
                    match answer {
                        Ok(Answer::Held) => health.reached(),
                        Ok(Answer::Other(holder)) => {
                            health.fence(&holder);
                            return;
                        }
                        Err(error) => {
                            if is_transient(&error) {
                                connection = None;
                            }
                            health.unreachable(&error.to_string());
                        }
                    }
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name("redis-store-lease".into())
            .spawn(renew)
            .map_err(|e| StoreError::Unavailable(format!("cannot start the lease thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            client,
            key,
            token,
            timeout,
        })
    }
}

/// The token of the runtime holding the lease on `key`, if any.
pub(super) fn holder(connection: &mut Connection, key: &str) -> Result<Option<String>, RedisError> {
    redis::cmd("GET").arg(key).query(connection)
}

/// A connection with `timeout` on its reads and writes.
pub(super) fn connect_with_timeout(
    client: &Client,
    timeout: Duration,
) -> Result<Connection, RedisError> {
    connect(client, timeout)
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Gives the lease up at once, so that a restart or standby need not wait it out.
        if let Ok(mut connection) = connect(&self.client, self.timeout) {
            let released: Result<Vec<String>, RedisError> = Script::new(RELEASE)
                .key(&self.key)
                .arg(&*self.token)
                .invoke(&mut connection);
            if let Err(error) = released {
                tracing::warn!(%error, "could not release the redis lease; it expires by itself");
            }
        }
    }
}
