//! Serving dial commands: one task per tunnel, from the resource's socket to a bridge.
//!
//! For a [`DialCommand`] the agent connects to the resource (under `connect_timeout`), dials
//! the named bridge with its agent certificate, sends the preamble naming the session, is
//! handed over to the client ([`bamf_client::e2e`]), accepts the end-to-end session as its
//! TLS server (the client's session certificate must name this agent, the session and the
//! resource), then relays bytes both ways until both sides finish, the tunnel sits idle for
//! `idle_timeout`, or shutdown cuts it. At most `max_tunnels` run at once; a command beyond
//! is dropped (the bridge gives up pairing the client after its own deadline).
//!
//! The relay copies through pooled buffers: the session is TLS on the bridge's side.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bamf_proto::tunnel::{DialCommand, agent_failure_preamble, agent_preamble};
use bamf_relay::{Carriers, Meters, RelayEnd, Side, relay_streams};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Resource};
use crate::enroll::{Tls, millis};
use crate::metrics::{self, ActiveTunnel, DialOutcome};

/// After the grace period, how long cut tunnels get to log their end.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// The tunnels of one agent: the limit, the tasks, and the switch that cuts them.
#[derive(Debug, Clone)]
pub struct Tunnels {
    config: Arc<Config>,
    tls: watch::Receiver<Arc<Tls>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    cut: CancellationToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Tunnels open when the drain began.
    pub open_at_start: usize,
    /// Of those, still open when the grace period ran out, and so cut.
    pub cut: usize,
}

impl Tunnels {
    /// No tunnels yet; at most `config.limits.max_tunnels` at once.
    pub fn new(config: Arc<Config>, tls: watch::Receiver<Arc<Tls>>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.limits.max_tunnels.get())),
            config,
            tls,
            tasks: TaskTracker::new(),
            cut: CancellationToken::new(),
        }
    }

    /// Starts serving `cmd` in its own task, unless its resource is unknown or the limit is
    /// reached (both logged).
    pub fn dispatch(&self, cmd: DialCommand) {
        let Some(resource) = self.config.resource(&cmd.resource).cloned() else {
            metrics::dial_skipped(DialOutcome::UnknownResource);
            tracing::warn!(
                session = %cmd.session,
                resource = %cmd.resource,
                "dial command for a resource this agent does not serve; ignored"
            );
            return;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            metrics::dial_skipped(DialOutcome::LimitReached);
            tracing::warn!(
                session = %cmd.session,
                resource = %cmd.resource,
                max_tunnels = self.config.limits.max_tunnels.get(),
                "tunnel limit reached; dial command dropped"
            );
            return;
        };
        let tls = self.tls.borrow().clone();
        let config = self.config.clone();
        let cut = self.cut.clone();
        self.tasks.spawn(async move {
            serve(&config, &cmd, &resource, tls, &cut).await;
            drop(slot);
        });
    }

    /// Open tunnels.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }

    /// Waits up to `grace` for open tunnels to finish, then cuts the rest.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        self.tasks.close();
        let open_at_start = self.tasks.len();
        let mut cut = 0;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            cut = self.tasks.len();
            self.cut.cancel();
            let _ = tokio::time::timeout(CUT_WAIT, self.tasks.wait()).await;
        }
        DrainReport { open_at_start, cut }
    }
}

/// Serves one dial command to its end, logging how it went and counting how the dial ended.
async fn serve(
    config: &Config,
    cmd: &DialCommand,
    resource: &Resource,
    tls: Arc<Tls>,
    cut: &CancellationToken,
) {
    let started = Instant::now();
    let fail = |outcome: DialOutcome, stage: &'static str, error: &dyn std::fmt::Display| {
        metrics::dialled(outcome, started.elapsed());
        tracing::warn!(
            session = %cmd.session,
            resource = %cmd.resource,
            bridge = %cmd.bridge_host,
            stage,
            outcome = outcome.as_str(),
            error = %error,
            "tunnel failed"
        );
    };
    let connect = resource.address.connect();
    let target = match tokio::time::timeout(config.limits.connect_timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err((
            DialOutcome::resource(&e),
            format!("{}: {e}", resource.address),
        )),
        Err(_) => Err((
            DialOutcome::ResourceTimeout,
            format!("{}: connect timed out", resource.address),
        )),
    };
    let dial = bamf_client::tunnel::dial(
        &cmd.bridge_host,
        cmd.bridge_port,
        config.bridge_address,
        tls.bridge.clone(),
    );
    let mut bridge = match cut.run_until_cancelled(dial).await {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => return fail(DialOutcome::bridge(&e), "bridge", &e),
        None => return fail(DialOutcome::Shutdown, "bridge", &"cut by shutdown"),
    };
    let target = match target {
        Ok(stream) => stream,
        Err((outcome, e)) => {
            // Tell the bridge, so the client is closed now rather than at the match timeout.
            let _ = write_preamble(&mut bridge, &agent_failure_preamble(cmd.session)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), bridge.shutdown()).await;
            return fail(outcome, "resource", &e);
        }
    };
    let _ = target.set_nodelay(true);
    if let Err(e) = write_preamble(&mut bridge, &agent_preamble(cmd.session)).await {
        return fail(DialOutcome::PreambleError, "preamble", &e);
    }
    let session = match cut.run_until_cancelled(end_to_end(bridge, &tls, cmd)).await {
        Some(Ok(session)) => session,
        Some(Err((outcome, e))) => return fail(outcome, "end_to_end", &e),
        None => return fail(DialOutcome::Shutdown, "end_to_end", &"cut by shutdown"),
    };
    metrics::dialled(DialOutcome::Ok, started.elapsed());
    let _active = ActiveTunnel::new();
    tracing::info!(
        session = %cmd.session,
        resource = %cmd.resource,
        bridge = %cmd.bridge_host,
        "tunnel open"
    );
    let relayed = relay(session, target, config.limits.idle_timeout, cut).await;
    tracing::info!(
        session = %cmd.session,
        resource = %cmd.resource,
        bridge = %cmd.bridge_host,
        outcome = relayed.end.as_str(),
        bytes_from_resource = relayed.from_resource,
        bytes_to_resource = relayed.to_resource,
        duration_ms = millis(started.elapsed()),
        "tunnel closed"
    );
}

/// The end-to-end session with the client: the handover, then this agent as TLS server; the
/// client's certificate must name this agent, `cmd`'s session and its resource.
async fn end_to_end(
    bridge: bamf_client::e2e::Outer,
    tls: &Tls,
    cmd: &DialCommand,
) -> Result<bamf_client::e2e::AgentSession, (DialOutcome, String)> {
    use bamf_client::e2e::{HANDOVER_TIMEOUT, HandoverError, accept, hand_over, peer_identity};
    let raw = hand_over(bridge, HANDOVER_TIMEOUT)
        .await
        .map_err(|e| match e {
            HandoverError::Unpaired | HandoverError::TimedOut => {
                (DialOutcome::Unpaired, e.to_string())
            }
            e => (DialOutcome::BridgeError, e.to_string()),
        })?;
    let session = accept(raw, tls.inner.clone()).await.map_err(|e| {
        (
            DialOutcome::ClientRefused,
            format!("end-to-end handshake: {e}"),
        )
    })?;
    match peer_identity(session.get_ref().1) {
        Some(bamf_proto::san::Identity::Client {
            session: id,
            agent,
            resource,
            ..
        }) if id == cmd.session && agent == tls.agent_id && resource.as_str() == cmd.resource => {
            Ok(session)
        }
        _ => Err((
            DialOutcome::ClientRefused,
            "the client's certificate is not for this session".to_owned(),
        )),
    }
}

async fn write_preamble<S: AsyncWrite + Unpin>(bridge: &mut S, preamble: &[u8]) -> io::Result<()> {
    let write = async {
        bridge.write_all(preamble).await?;
        bridge.flush().await
    };
    tokio::time::timeout(bamf_client::tunnel::DIAL_TIMEOUT, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the preamble timed out"))?
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// No bytes either way for the idle timeout.
    IdleTimeout,
    /// Shutdown's grace period ran out.
    Cut,
    /// A read or write towards the bridge failed (a reset, a TLS error).
    BridgeError,
    /// A read or write towards the resource failed.
    ResourceError,
}

impl End {
    /// The name logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Cut => "cut",
            Self::BridgeError => "bridge_error",
            Self::ResourceError => "resource_error",
        }
    }
}

/// What a relay carried and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the resource to the bridge.
    pub from_resource: u64,
    /// Bytes from the bridge to the resource.
    pub to_resource: u64,
    /// Why it ended.
    pub end: End,
}

/// Copies both ways until both sides have finished (an end of stream on one side is passed
/// on as a write shutdown of the other, so half-closed protocols work), one side fails,
/// nothing moves for `idle`, or `cut` is cancelled. Bytes are counted into the agent's
/// metrics while they flow.
pub async fn relay<B, R>(bridge: B, resource: R, idle: Duration, cut: &CancellationToken) -> Relayed
where
    B: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    // Borrowed only while bytes are in flight: idle tunnels hold no copy buffers.
    static BUFFERS: std::sync::LazyLock<Carriers> =
        std::sync::LazyLock::new(|| Carriers::new(false));
    static BYTES: std::sync::LazyLock<Meters> = std::sync::LazyLock::new(metrics::tunnel_bytes);
    // The bridge's side is the client's; the resource is the upstream.
    let (end, moved) =
        relay_streams(bridge, resource, idle, &BUFFERS, &BYTES, cut.cancelled()).await;
    Relayed {
        from_resource: moved.down,
        to_resource: moved.up,
        end: match end {
            RelayEnd::Finished => End::Closed,
            RelayEnd::Failed(Side::Client, _) => End::BridgeError,
            RelayEnd::Failed(Side::Upstream, _) => End::ResourceError,
            RelayEnd::IdleTimeout => End::IdleTimeout,
            RelayEnd::Stopped => End::Cut,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn half_close_is_passed_on_and_bytes_are_counted() {
        // client <-> [bridge side | relay | resource side] <-> server
        let (mut client, bridge_side) = tcp_pair().await;
        let (resource_side, mut server) = tcp_pair().await;
        let cut = CancellationToken::new();
        let relay = tokio::spawn(async move {
            relay(bridge_side, resource_side, Duration::from_secs(10), &cut).await
        });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request and then end of stream, and can still answer.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"a longer response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"a longer response");
        let relayed = relay.await.unwrap();
        assert_eq!(
            relayed,
            Relayed {
                from_resource: 17,
                to_resource: 7,
                end: End::Closed
            }
        );
    }

    #[tokio::test]
    async fn idle_tunnels_time_out_and_cut_ones_end_at_once() {
        let (_client, bridge_side) = tcp_pair().await;
        let (resource_side, _server) = tcp_pair().await;
        let cut = CancellationToken::new();
        let started = Instant::now();
        let relayed = relay(bridge_side, resource_side, Duration::from_millis(200), &cut).await;
        assert_eq!(relayed.end, End::IdleTimeout);
        assert!(started.elapsed() >= Duration::from_millis(200));

        let (mut client, bridge_side) = tcp_pair().await;
        let (resource_side, _server) = tcp_pair().await;
        let cut = CancellationToken::new();
        let trigger = cut.clone();
        let task = tokio::spawn(async move {
            relay(bridge_side, resource_side, Duration::from_secs(60), &cut).await
        });
        client.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
        let relayed = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((relayed.end, relayed.to_resource), (End::Cut, 1));
    }

    #[tokio::test]
    async fn activity_keeps_a_tunnel_open_past_the_idle_timeout() {
        let (mut client, bridge_side) = tcp_pair().await;
        let (resource_side, mut server) = tcp_pair().await;
        let cut = CancellationToken::new();
        let task = tokio::spawn(async move {
            relay(bridge_side, resource_side, Duration::from_millis(300), &cut).await
        });
        let mut buf = [0u8; 1];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
        }
        assert!(!task.is_finished());
        let relayed = task.await.unwrap();
        assert_eq!((relayed.end, relayed.to_resource), (End::IdleTimeout, 6));
    }
}
