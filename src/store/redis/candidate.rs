//! A runtime on a Redis prefix that does not hold the lease (yet): a *forwarding
//! replica*. It asks who holds the lease (the holder's token names the url it
//! serves on) and tries to take the lease, so that it carries on the moment the
//! holder stops or dies. Holding nothing, it writes nothing.

use std::sync::{Arc, Mutex, PoisonError};

use redis::{Client, Connection, RedisError};

use super::health::Health;
use super::keys::Keys;
use super::lease::{Lease, connect_with_timeout, holder};
use super::writer::{is_transient, unreachable};
use super::{RedisOptions, RedisStore, lease_token, open_client};
use crate::store::StoreError;

/// The runtime holding the lease, as its token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The whole token (`host/pid-N/random url`).
    pub token: String,
    /// The url it serves the API on, for replicas to forward to; `None` for a
    /// runtime that does not take forwarded calls (a store opened by hand).
    pub url: Option<String>,
}

impl LeaseHolder {
    fn parse(token: String) -> Self {
        let url = token
            .split_once(' ')
            .map(|(_, url)| url.to_owned())
            .filter(|url| !url.is_empty());
        Self { token, url }
    }
}

/// See the module docs.
pub struct RedisCandidate {
    options: RedisOptions,
    client: Client,
    keys: Keys,
    /// This process's token, naming the url it serves on.
    token: Arc<str>,
    /// The connection the holder is read on, made again after a failure.
    connection: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for RedisCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCandidate")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl RedisCandidate {
    /// Connects (a Redis that cannot be reached fails here, before anything is
    /// served). Name the url to forward to with [`RedisCandidate::advertise`].
    pub fn connect(options: &RedisOptions) -> Result<Self, StoreError> {
        let client = open_client(options)?;
        let mut connection =
            connect_with_timeout(&client, options.command_timeout).map_err(unreachable)?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .map_err(unreachable)?;
        Ok(Self {
            options: options.clone(),
            keys: Keys::new(&options.key_prefix),
            token: lease_token(None).into(),
            client,
            connection: Mutex::new(Some(connection)),
        })
    }

    /// Names `url` in this process's lease token: other replicas forward calls
    /// there while this one holds the lease.
    pub fn advertise(&mut self, url: &str) {
        self.token = lease_token(Some(url)).into();
    }

    /// This process's lease token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lease key (for messages).
    pub fn lease_key(&self) -> &str {
        &self.keys.lease
    }

    /// Runs `read` on the candidate's connection (made again after a failure).
    fn read<R>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<R, RedisError>,
    ) -> Result<R, StoreError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => connect_with_timeout(&self.client, self.options.command_timeout)
                .map_err(unreachable)?,
        };
        match read(&mut connection) {
            Ok(value) => {
                *slot = Some(connection);
                Ok(value)
            }
            Err(error) if is_transient(&error) => Err(unreachable(error)),
            Err(error) => {
                *slot = Some(connection);
                Err(StoreError::Unavailable(format!("redis: {error}")))
            }
        }
    }

    /// Who holds the lease now; `None` between a holder's end and the next one's start.
    pub fn holder(&self) -> Result<Option<LeaseHolder>, StoreError> {
        let key = &self.keys.lease;
        Ok(self.read(|c| holder(c, key))?.map(LeaseHolder::parse))
    }

    /// One of the runtime's own values (`{p}:meta`), as `Store::meta` reads it.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let hash = &self.keys.meta;
        self.read(|c| redis::cmd("HGET").arg(hash).arg(key).query(c))
    }

    /// Takes the lease if nobody holds it, and opens the store on it (blocking:
    /// call it off the async workers); `Ok(None)` while another runtime holds it.
    pub fn try_lead(&self) -> Result<Option<RedisStore>, StoreError> {
        let health = Arc::new(Health::default());
        let Some(lease) = Lease::try_take_once(
            self.client.clone(),
            self.keys.lease.clone(),
            Arc::clone(&self.token),
            self.options.lease,
            self.options.command_timeout,
            Arc::clone(&health),
        )?
        else {
            return Ok(None);
        };
        RedisStore::with_lease(
            &self.options,
            self.client.clone(),
            self.keys.clone(),
            Arc::clone(&self.token),
            lease,
            health,
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseHolder;

    #[test]
    fn a_holder_token_names_its_url_after_a_space() {
        let holder = LeaseHolder::parse("host/pid-1/abc http://10.0.0.5:50051".into());
        assert_eq!(holder.url.as_deref(), Some("http://10.0.0.5:50051"));
        let bare = LeaseHolder::parse("host/pid-1/abc".into());
        assert_eq!(bare.url, None);
    }
}
