//! Presence: who is alive right now, and the channel that reaches each agent.
//!
//! Everything here expires on its own (heartbeats carry a TTL), so losing it loses nothing
//! durable: bridges and agents re-register within one heartbeat. API tokens are not here:
//! they are credentials, kept in the store so a Redis restart signs nobody out. One type, two backends: [`RedisPresence`] shared by every API
//! replica, and [`MemoryPresence`] for a single node.
//!
//! Agent commands travel by publish/subscribe, so whichever replica holds an agent's command
//! stream receives the commands any replica publishes. Subscriptions are bounded queues: a
//! subscriber that falls behind loses commands (each one is time-bound anyway) instead of
//! growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bamf_proto::san::AgentId;
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Commands queued per subscriber before new ones are dropped.
pub const COMMAND_QUEUE: usize = 64;

/// Key prefix, so one Redis can serve several BAMF installations.
const PREFIX: &str = "bamf";

/// Why presence could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Redis refused or is unreachable.
    #[error("presence backend: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value did not parse.
    #[error("presence value is malformed")]
    Malformed,
}

/// A bridge's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Its ordinal.
    pub ordinal: u32,
    /// Open tunnels (the load the API balances on).
    pub load: u32,
    /// Draining: alive, but takes no new sessions.
    pub draining: bool,
}

impl BridgeStatus {
    fn encode(&self) -> String {
        format!("{} {} {}", self.ordinal, self.load, u8::from(self.draining))
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let status = Self {
            ordinal: parts.next()?.parse().ok()?,
            load: parts.next()?.parse().ok()?,
            draining: parts.next()? == "1",
        };
        parts.next().is_none().then_some(status)
    }
}

/// Liveness and agent commands, in this process or in Redis: one type, so that nothing
/// above it is generic over the backend.
#[derive(Debug)]
pub enum Presence {
    /// A single node.
    Memory(MemoryPresence),
    /// Shared by every API replica.
    Redis(RedisPresence),
}

/// Calls the same method on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Self::Memory(p) => p.$method($($arg),*).await,
            Self::Redis(p) => p.$method($($arg),*).await,
        }
    };
}

impl Presence {
    /// Keeps `value` under `key` for `ttl`, for [`Presence::take_once`] (single sign-on
    /// flows). `false` when the key is taken or the in-process table is full.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn put_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        dispatch!(self.put_once(key, value, ttl))
    }

    /// The value kept under `key`, removed in the same step: a second take (a replay) and
    /// a take after the TTL find nothing.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn take_once(&self, key: &str) -> Result<Option<String>, PresenceError> {
        dispatch!(self.take_once(key))
    }

    /// Records a bridge heartbeat, alive for `ttl`.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn heartbeat_bridge(
        &self,
        status: BridgeStatus,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        dispatch!(self.heartbeat_bridge(status, ttl))
    }

    /// Bridges whose heartbeat has not expired, by ordinal.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn live_bridges(&self) -> Result<Vec<BridgeStatus>, PresenceError> {
        dispatch!(self.live_bridges())
    }

    /// Forgets a bridge at once (its control stream ended): no session is placed on it
    /// until its next heartbeat.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn forget_bridge(&self, ordinal: u32) -> Result<(), PresenceError> {
        dispatch!(self.forget_bridge(ordinal))
    }

    /// Records an agent heartbeat, alive for `ttl`.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn heartbeat_agent(
        &self,
        agent: AgentId,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        dispatch!(self.heartbeat_agent(agent, ttl))
    }

    /// Whether the agent's heartbeat has not expired.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn agent_online(&self, agent: AgentId) -> Result<bool, PresenceError> {
        dispatch!(self.agent_online(agent))
    }

    /// Publishes a command to an agent; returns how many subscribers it reached.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn publish_command(
        &self,
        agent: AgentId,
        command: &str,
    ) -> Result<usize, PresenceError> {
        dispatch!(self.publish_command(agent, command))
    }

    /// Subscribes to an agent's commands (bounded; see [`COMMAND_QUEUE`]).
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn subscribe_commands(
        &self,
        agent: AgentId,
    ) -> Result<mpsc::Receiver<String>, PresenceError> {
        dispatch!(self.subscribe_commands(agent))
    }

    /// Whether the backend answers (for `/ready`).
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when it does not.
    pub async fn ping(&self) -> Result<(), PresenceError> {
        dispatch!(self.ping())
    }

    /// Failed sign-ins from `address` counted by every replica in the current window
    /// (always 0 in process: a single node's `LoginGuard` counts them itself).
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn login_failures(&self, address: IpAddr) -> Result<u32, PresenceError> {
        dispatch!(self.login_failures(address))
    }

    /// Counts a failed sign-in from `address`; the count expires `window` after its first
    /// failure.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the backend fails.
    pub async fn record_login_failure(
        &self,
        address: IpAddr,
        window: Duration,
    ) -> Result<(), PresenceError> {
        dispatch!(self.record_login_failure(address, window))
    }
}

/// Presence for a single node: in this process, gone with it.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    bridges: HashMap<u32, (BridgeStatus, Instant)>,
    agents: HashMap<AgentId, Instant>,
    subscribers: HashMap<AgentId, Vec<mpsc::Sender<String>>>,
    once: HashMap<String, (String, Instant)>,
}

/// Values kept for one use at most, in process (pending single sign-on flows).
pub const MAX_ONCE: usize = 10_000;

impl MemoryPresence {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        // A poisoned lock only means another task panicked mid-update of expiring data;
        // the data is still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }
}

impl MemoryPresence {
    async fn put_once(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, PresenceError> {
        let now = Instant::now();
        Ok(self.with(|s| {
            if s.once.len() >= MAX_ONCE {
                s.once.retain(|_, (_, until)| *until > now);
            }
            if s.once.len() >= MAX_ONCE || s.once.get(key).is_some_and(|(_, until)| *until > now) {
                return false;
            }
            s.once.insert(key.to_owned(), (value.to_owned(), now + ttl));
            true
        }))
    }

    async fn take_once(&self, key: &str) -> Result<Option<String>, PresenceError> {
        let now = Instant::now();
        Ok(self.with(|s| {
            s.once
                .remove(key)
                .filter(|(_, until)| *until > now)
                .map(|(value, _)| value)
        }))
    }

    async fn heartbeat_bridge(
        &self,
        status: BridgeStatus,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let until = Instant::now() + ttl;
        self.with(|s| s.bridges.insert(status.ordinal, (status, until)));
        Ok(())
    }

    async fn live_bridges(&self) -> Result<Vec<BridgeStatus>, PresenceError> {
        let now = Instant::now();
        Ok(self.with(|s| {
            s.bridges.retain(|_, (_, until)| *until > now);
            let mut live: Vec<_> = s.bridges.values().map(|(b, _)| *b).collect();
            live.sort_by_key(|b| b.ordinal);
            live
        }))
    }

    async fn forget_bridge(&self, ordinal: u32) -> Result<(), PresenceError> {
        self.with(|s| s.bridges.remove(&ordinal));
        Ok(())
    }

    async fn heartbeat_agent(&self, agent: AgentId, ttl: Duration) -> Result<(), PresenceError> {
        let until = Instant::now() + ttl;
        self.with(|s| s.agents.insert(agent, until));
        Ok(())
    }

    async fn agent_online(&self, agent: AgentId) -> Result<bool, PresenceError> {
        let now = Instant::now();
        Ok(self.with(|s| s.agents.get(&agent).is_some_and(|until| *until > now)))
    }

    async fn publish_command(&self, agent: AgentId, command: &str) -> Result<usize, PresenceError> {
        Ok(self.with(|s| {
            let Some(subscribers) = s.subscribers.get_mut(&agent) else {
                return 0;
            };
            subscribers.retain(|tx| !tx.is_closed());
            // A full queue drops this command for that subscriber; it still counts as
            // reached, as a Redis subscriber with a full queue would.
            subscribers
                .iter()
                .filter(|tx| {
                    !matches!(
                        tx.try_send(command.to_owned()),
                        Err(mpsc::error::TrySendError::Closed(_))
                    )
                })
                .count()
        }))
    }

    async fn subscribe_commands(
        &self,
        agent: AgentId,
    ) -> Result<mpsc::Receiver<String>, PresenceError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        self.with(|s| s.subscribers.entry(agent).or_default().push(tx));
        Ok(rx)
    }

    async fn login_failures(&self, _address: IpAddr) -> Result<u32, PresenceError> {
        Ok(0)
    }

    async fn record_login_failure(
        &self,
        _address: IpAddr,
        _window: Duration,
    ) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), PresenceError> {
        Ok(())
    }
}

/// Presence in Redis, shared by every API replica.
#[derive(Clone)]
pub struct RedisPresence {
    client: redis::Client,
    /// Made on first use, so the API starts (and reports not ready) while Redis is down.
    conn: std::sync::Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisPresence").finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Prepares the client; the connection is made on first use, and the connection
    /// manager reconnects by itself after a Redis restart.
    ///
    /// # Errors
    ///
    /// [`PresenceError::Redis`] when the URL is invalid.
    pub fn new(url: &str) -> Result<Self, PresenceError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: std::sync::Arc::default(),
        })
    }

    /// Connects now, to fail early in tests.
    ///
    /// # Errors
    ///
    /// [`PresenceError`] when the URL is invalid or Redis is unreachable.
    pub async fn connect(url: &str) -> Result<Self, PresenceError> {
        let presence = Self::new(url)?;
        presence.conn().await?;
        Ok(presence)
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, PresenceError> {
        let make = || async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            self.client.get_connection_manager_with_config(config).await
        };
        Ok(self.conn.get_or_try_init(make).await?.clone())
    }
}

/// Deadline for connecting to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for one Redis reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

fn bridge_key(ordinal: u32) -> String {
    format!("{PREFIX}:bridge:{ordinal}")
}

fn agent_key(agent: AgentId) -> String {
    format!("{PREFIX}:agent:{agent}")
}

fn command_channel(agent: AgentId) -> String {
    format!("{PREFIX}:commands:{agent}")
}

fn once_key(key: &str) -> String {
    format!("{PREFIX}:once:{key}")
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisPresence {
    async fn put_once(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, PresenceError> {
        let mut c = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(once_key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    async fn take_once(&self, key: &str) -> Result<Option<String>, PresenceError> {
        let mut c = self.conn().await?;
        // GETDEL (Redis 6.2): read and delete in one step, so a value is taken once.
        Ok(redis::cmd("GETDEL")
            .arg(once_key(key))
            .query_async(&mut c)
            .await?)
    }

    async fn heartbeat_bridge(
        &self,
        status: BridgeStatus,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let mut c = self.conn().await?;
        let _: () = c
            .pset_ex(bridge_key(status.ordinal), status.encode(), millis(ttl))
            .await?;
        Ok(())
    }

    async fn live_bridges(&self) -> Result<Vec<BridgeStatus>, PresenceError> {
        let mut c = self.conn().await?;
        let mut keys: Vec<String> = Vec::new();
        {
            let mut scan = c
                .scan_match::<_, String>(format!("{PREFIX}:bridge:*"))
                .await?;
            while let Some(key) = scan.next().await {
                keys.push(key?);
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self.conn().await?.mget(&keys).await?;
        let mut live = values
            .into_iter()
            .flatten()
            .map(|v| BridgeStatus::decode(&v).ok_or(PresenceError::Malformed))
            .collect::<Result<Vec<_>, _>>()?;
        live.sort_by_key(|b| b.ordinal);
        Ok(live)
    }

    async fn forget_bridge(&self, ordinal: u32) -> Result<(), PresenceError> {
        let mut c = self.conn().await?;
        let _: () = c.del(bridge_key(ordinal)).await?;
        Ok(())
    }

    async fn heartbeat_agent(&self, agent: AgentId, ttl: Duration) -> Result<(), PresenceError> {
        let mut c = self.conn().await?;
        let _: () = c.pset_ex(agent_key(agent), 1, millis(ttl)).await?;
        Ok(())
    }

    async fn agent_online(&self, agent: AgentId) -> Result<bool, PresenceError> {
        let mut c = self.conn().await?;
        Ok(c.exists(agent_key(agent)).await?)
    }

    async fn publish_command(&self, agent: AgentId, command: &str) -> Result<usize, PresenceError> {
        let mut c = self.conn().await?;
        Ok(c.publish(command_channel(agent), command).await?)
    }

    async fn subscribe_commands(
        &self,
        agent: AgentId,
    ) -> Result<mpsc::Receiver<String>, PresenceError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(command_channel(agent)).await?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            // Ends when the subscriber drops its receiver or the Redis connection goes away
            // (the agent's stream then ends and the agent reconnects).
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(payload) {
                            break;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn ping(&self) -> Result<(), PresenceError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    async fn login_failures(&self, address: IpAddr) -> Result<u32, PresenceError> {
        let mut c = self.conn().await?;
        let count: Option<u32> = c.get(login_failures_key(address)).await?;
        Ok(count.unwrap_or(0))
    }

    async fn record_login_failure(
        &self,
        address: IpAddr,
        window: Duration,
    ) -> Result<(), PresenceError> {
        let key = login_failures_key(address);
        let mut c = self.conn().await?;
        // One round trip; the window starts at the first failure (NX), as in process.
        let _: () = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(window))
            .arg("NX")
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}

fn login_failures_key(address: IpAddr) -> String {
    format!("{PREFIX}:login-failures:{address}")
}

#[cfg(test)]
mod tests;
