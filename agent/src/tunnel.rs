//! Serving dial commands: one task per session, from the resource's socket to a client,
//! through one bridge after another.
//!
//! For a [`DialCommand`] the agent connects to the resource (under `connect_timeout`), dials
//! the named bridge with its agent certificate, sends the preamble naming the session, is
//! handed over to the client ([`bamf_client::e2e`]), accepts the end-to-end session as its
//! TLS server (the client's session certificate must name this agent, the session and the
//! resource), and carries the resource's bytes over a resumable stream
//! ([`bamf_client::resume`]). When the path breaks, the session waits up to
//! `resume_timeout` for a new dial command for it (the client attached again, through the
//! API): the client must then present a certificate for the same key as at first. The
//! session ends when both directions are done, the resource fails, it sits idle for
//! `idle_timeout`, nobody attaches again in time, the API says it ended (a kill, a
//! revocation, a deletion: learnt from the heartbeat's answer), or shutdown cuts it; the
//! agent then tells the API why, with the application's bytes each way. At most
//! `max_tunnels` sessions run at once; a command beyond is dropped (the bridge gives up
//! pairing the client after its own deadline).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bamf_client::batch::{self, Batching};
use bamf_client::e2e::{HANDOVER_TIMEOUT, HandoverError, Session};
use bamf_client::resume::{self, Reattach};
use bamf_client::tunnel::Outer;
use bamf_proto::api::{SessionEnd, SessionEnds};
use bamf_proto::san::{Identity, SessionId};
use bamf_proto::tunnel::{DialCommand, agent_failure_preamble, agent_preamble};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Resource};
use crate::enroll::{Tls, millis};
use crate::metrics::{self, ActiveTunnel, DialOutcome};

/// After the grace period, how long cut tunnels get to log their end.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// Where a new dial command for a session already served goes.
type Sessions = Arc<Mutex<HashMap<SessionId, Arc<Mailbox>>>>;

/// The newest dial command for a session already served: a later one supersedes it (the API
/// placed the session again). One slot, not a queue: every open tunnel holds one.
#[derive(Debug)]
struct Mailbox {
    next: Mutex<Option<DialCommand>>,
    arrived: Notify,
    /// Cancelled when the API says the session ended, or by shutdown (a child of the cut).
    ended: CancellationToken,
}

impl Mailbox {
    fn new(cut: &CancellationToken) -> Self {
        Self {
            next: Mutex::new(None),
            arrived: Notify::new(),
            ended: cut.child_token(),
        }
    }

    fn put(&self, cmd: DialCommand) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(cmd);
        }
        // Stores a permit when nobody waits, so a command put before `take` is not missed.
        self.arrived.notify_one();
    }

    async fn take(&self) -> DialCommand {
        loop {
            if let Some(cmd) = self.next.lock().ok().and_then(|mut next| next.take()) {
                return cmd;
            }
            self.arrived.notified().await;
        }
    }
}

/// The tunnels of one agent: the limit, the tasks, the sessions being served, and the
/// switch that cuts them.
#[derive(Debug, Clone)]
pub struct Tunnels {
    config: Arc<Config>,
    tls: watch::Receiver<Arc<Tls>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    cut: CancellationToken,
    sessions: Sessions,
    /// Where ended sessions' accounts wait for the API ([`report_ends`]).
    ends: mpsc::Sender<SessionEnd>,
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
    /// No tunnels yet; at most `config.limits.max_tunnels` at once; their ends are queued
    /// on `ends`.
    pub fn new(
        config: Arc<Config>,
        tls: watch::Receiver<Arc<Tls>>,
        ends: mpsc::Sender<SessionEnd>,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.limits.max_tunnels.get())),
            config,
            tls,
            tasks: TaskTracker::new(),
            cut: CancellationToken::new(),
            sessions: Arc::default(),
            ends,
        }
    }

    /// Starts serving `cmd` in its own task, unless its resource is unknown or the limit is
    /// reached (both logged). A command for a session already served here is the client
    /// attaching again: it goes to that session.
    pub fn dispatch(&self, cmd: DialCommand) {
        let attaching = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&cmd.session).cloned());
        if let Some(session) = attaching {
            session.put(cmd);
            return;
        }
        if cmd.reattach {
            // Not served here any more: it ended (its end may not have reached the API yet)
            // or this agent restarted. Started afresh, it would answer the client's stream
            // from offset 0 and give the session a second, empty account.
            metrics::dial_skipped(DialOutcome::NotServed);
            tracing::info!(
                session = %cmd.session,
                bridge = %cmd.bridge_host,
                "a client attached again to a session not served here; refused"
            );
            let (config, tls) = (self.config.clone(), self.tls.borrow().clone());
            self.tasks.spawn(async move {
                if let Ok(mut bridge) = dial(&config, &tls, &cmd).await {
                    refuse(&mut bridge, cmd.session).await;
                }
            });
            return;
        }
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
        let mailbox = Arc::new(Mailbox::new(&self.cut));
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(cmd.session, mailbox.clone());
        }
        let (config, tls, cut, sessions, ends) = (
            self.config.clone(),
            self.tls.clone(),
            self.cut.clone(),
            self.sessions.clone(),
            self.ends.clone(),
        );
        self.tasks.spawn(async move {
            serve(&config, &cmd, &resource, tls, mailbox, &cut, &ends).await;
            if let Ok(mut sessions) = sessions.lock() {
                sessions.remove(&cmd.session);
            }
            drop(slot);
        });
    }

    /// The sessions served now (open, or waiting to attach again), for the heartbeat.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.sessions
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Ends the sessions the API says are over: their streams stop and their resource
    /// connections close. Returns how many of them were served here.
    pub fn end(&self, ended: &[String]) -> usize {
        let Ok(sessions) = self.sessions.lock() else {
            return 0;
        };
        let mut n = 0;
        for id in ended.iter().filter_map(|id| id.parse::<SessionId>().ok()) {
            if let Some(mailbox) = sessions.get(&id) {
                tracing::info!(session = %id, "the API ended this session");
                mailbox.ended.cancel();
                n += 1;
            }
        }
        n
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

/// Serves one session to its end, logging how it went and counting how the first dial
/// ended; later dial commands for it arrive on `attach`.
async fn serve(
    config: &Config,
    cmd: &DialCommand,
    resource: &Resource,
    tls: watch::Receiver<Arc<Tls>>,
    attach: Arc<Mailbox>,
    cut: &CancellationToken,
    ends: &mpsc::Sender<SessionEnd>,
) {
    let started = Instant::now();
    // Boxed: the dial and handshakes' state is large and lives only for a moment; inline, it
    // would size the tunnel's task for its whole life.
    let Some((target, session, key)) =
        Box::pin(open(config, cmd, resource, &tls, cut, started)).await
    else {
        return;
    };
    metrics::dialled(DialOutcome::Ok, started.elapsed());
    let _active = ActiveTunnel::new();
    tracing::info!(
        session = %cmd.session,
        resource = %cmd.resource,
        bridge = %cmd.bridge_host,
        "tunnel open"
    );
    let settings = resume::Settings {
        buffer: config.limits.resume_buffer,
        resume_deadline: config.limits.resume_timeout,
        idle: config.limits.idle_timeout,
        ..resume::Settings::default()
    };
    let attaching = Attaching {
        config,
        tls: tls.clone(),
        session: cmd.session,
        resource: &cmd.resource,
        key,
        commands: attach,
        next: None,
    };
    let ended = attaching.commands.ended.clone();
    let report = resume::carry(target, session, attaching, &settings, ended.cancelled()).await;
    let reason = match &report.end {
        resume::End::LocalError(_) => "resource_error",
        resume::End::PeerClosed(_) => "client_error",
        resume::End::Stopped if cut.is_cancelled() => "shutdown",
        resume::End::Stopped => "killed",
        other => other.as_str(),
    };
    metrics::tunnel_bytes_moved(report.received, report.sent);
    tracing::info!(
        session = %cmd.session,
        resource = %cmd.resource,
        outcome = reason,
        bytes_to_resource = report.received,
        bytes_from_resource = report.sent,
        reattached = report.reattached,
        paused_ms = millis(report.paused),
        duration_ms = millis(started.elapsed()),
        "tunnel closed"
    );
    let end = SessionEnd {
        session: cmd.session,
        reason: reason.to_owned(),
        bytes_up: report.received,
        bytes_down: report.sent,
        reattaches: report.reattached,
        paused_ms: u64::try_from(report.paused.as_millis()).unwrap_or(u64::MAX),
    };
    // Queued: the tunnel's slot is free now, whatever the API does.
    match ends.try_send(end) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(end)) => {
            tracing::warn!(session = %end.session, queued = ENDS_QUEUE, "too many session ends wait for the API; this one is dropped");
        }
    }
}

/// Session ends waiting for the API at most (about 150 bytes each). Beyond it an end is
/// dropped and logged: the API still ends the session, by the bridge's report or when nobody
/// attaches again in time, with the bridges' byte counts.
pub const ENDS_QUEUE: usize = 10_000;

/// The agent's session ends go in batches: those ending within 50 ms of each other in one
/// request, and one write at the API (a drain ends many at once). While the API is
/// unreachable a batch is retried, from 250 ms doubling to 5 s.
const ENDS_BATCHING: Batching = Batching {
    max: 500,
    linger: Duration::from_millis(50),
    retry: (Duration::from_millis(250), Duration::from_secs(5)),
};

/// Tells the API the session ends the tunnels queue on `ends`, in batches, until every
/// sender is gone or `stop` (what is queued then still goes, once).
pub async fn report_ends(
    tls: watch::Receiver<Arc<Tls>>,
    ends: mpsc::Receiver<SessionEnd>,
    stop: CancellationToken,
) {
    batch::deliver("session ends", ends, stop, ENDS_BATCHING, |ends| {
        let api = tls.borrow().api.clone();
        async move {
            let ends = SessionEnds { ends };
            let sent = api.sessions_ended(&ends).await.map(drop);
            (ends.ends, sent)
        }
    })
    .await;
}

/// A tunnel's first attachment: the target, and the end-to-end session with the client's key.
type Opened = (tokio::net::TcpStream, Session, Vec<u8>);

/// Connects to the target and dials the bridge at once, then runs the handover and the
/// end-to-end handshake. Logs and counts a failure, and returns `None` then.
async fn open(
    config: &Config,
    cmd: &DialCommand,
    resource: &Resource,
    tls: &watch::Receiver<Arc<Tls>>,
    cut: &CancellationToken,
    started: Instant,
) -> Option<Opened> {
    let fail = |outcome: DialOutcome,
                stage: &'static str,
                error: &dyn std::fmt::Display|
     -> Option<Opened> {
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
        None
    };
    let connect = async {
        match tokio::time::timeout(config.limits.connect_timeout, resource.address.connect()).await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err((
                DialOutcome::resource(&e),
                format!("{}: {e}", resource.address),
            )),
            Err(_) => Err((
                DialOutcome::ResourceTimeout,
                format!("{}: connect timed out", resource.address),
            )),
        }
    };
    let current = tls.borrow().clone();
    let (target, bridge) = tokio::join!(
        connect,
        cut.run_until_cancelled(dial(config, &current, cmd))
    );
    let mut bridge = match bridge {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => return fail(DialOutcome::bridge(&e), "bridge", &e),
        None => return fail(DialOutcome::Shutdown, "bridge", &"cut by shutdown"),
    };
    let target = match target {
        Ok(stream) => stream,
        Err((outcome, e)) => {
            refuse(&mut bridge, cmd.session).await;
            return fail(outcome, "resource", &e);
        }
    };
    let _ = target.set_nodelay(true);
    if let Err(e) = write_preamble(&mut bridge, &agent_preamble(cmd.session)).await {
        return fail(DialOutcome::PreambleError, "preamble", &e);
    }
    let (session, key) = match cut
        .run_until_cancelled(end_to_end(bridge, &current, cmd, None))
        .await
    {
        Some(Ok(attached)) => attached,
        Some(Err((outcome, e))) => return fail(outcome, "end_to_end", &e),
        None => return fail(DialOutcome::Shutdown, "end_to_end", &"cut by shutdown"),
    };
    Some((target, session, key))
}

/// Tells the bridge this agent will not serve `session`, so that the client is closed now
/// rather than at the bridge's match timeout.
async fn refuse(bridge: &mut Outer, session: SessionId) {
    let _ = write_preamble(bridge, &agent_failure_preamble(session)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), bridge.shutdown()).await;
}

/// Dials the bridge a command names, with the agent certificate.
async fn dial(config: &Config, tls: &Tls, cmd: &DialCommand) -> io::Result<Outer> {
    bamf_client::tunnel::dial(
        &cmd.bridge_host,
        cmd.bridge_port,
        config.bridge_address,
        tls.bridge.clone(),
    )
    .await
}

/// A session's later attachments: each new dial command for it (its client attached again
/// through the API) is dialled, handed over and checked like the first, and the client must
/// hold the same key.
struct Attaching<'a> {
    config: &'a Config,
    tls: watch::Receiver<Arc<Tls>>,
    session: SessionId,
    resource: &'a str,
    /// The client's public key at the first attachment.
    key: Vec<u8>,
    commands: Arc<Mailbox>,
    /// A command that arrived while the current attachment still looked alive.
    next: Option<DialCommand>,
}

impl Attaching<'_> {
    async fn attach(&mut self, cmd: DialCommand) -> Result<Session, String> {
        if cmd.resource != self.resource {
            return Err("a dial command for another resource".into());
        }
        let tls = self.tls.borrow().clone();
        let mut bridge = dial(self.config, &tls, &cmd)
            .await
            .map_err(|e| e.to_string())?;
        write_preamble(&mut bridge, &agent_preamble(self.session))
            .await
            .map_err(|e| e.to_string())?;
        end_to_end(bridge, &tls, &cmd, Some(&self.key))
            .await
            .map(|(session, _)| session)
            .map_err(|(_, e)| e)
    }
}

impl Reattach<Session> for Attaching<'_> {
    async fn reattach(&mut self) -> Option<Session> {
        loop {
            let cmd = match self.next.take() {
                Some(cmd) => cmd,
                None => self.commands.take().await,
            };
            match self.attach(cmd.clone()).await {
                Ok(session) => {
                    tracing::info!(session = %self.session, bridge = %cmd.bridge_host, "tunnel attached again");
                    return Some(session);
                }
                Err(e) => {
                    tracing::warn!(session = %self.session, bridge = %cmd.bridge_host, error = %e, "attaching again failed");
                }
            }
        }
    }

    async fn superseded(&mut self) {
        if self.next.is_none() {
            self.next = Some(self.commands.take().await);
        }
    }
}

/// The end-to-end session with the client: the handover, then this agent as TLS server; the
/// client's certificate must name this agent, `cmd`'s session and its resource, and, when
/// attaching again, certify `key` (the session's key at first). Returns the session and the
/// client's key.
async fn end_to_end(
    bridge: Outer,
    tls: &Tls,
    cmd: &DialCommand,
    key: Option<&[u8]>,
) -> Result<(Session, Vec<u8>), (DialOutcome, String)> {
    use bamf_client::e2e::{accept, hand_over, peer_identity, peer_key};
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
    let chain = session.peer_certificates();
    let client_key = peer_key(chain);
    match (peer_identity(chain), client_key) {
        (
            Some(Identity::Client {
                session: id,
                agent,
                resource,
                ..
            }),
            Some(client_key),
        ) if id == cmd.session
            && agent == tls.agent_id
            && resource.as_str() == cmd.resource
            && key.is_none_or(|k| k == client_key.as_slice()) =>
        {
            Ok((session, client_key))
        }
        _ => Err((
            DialOutcome::ClientRefused,
            "the client's certificate is not for this session (or not its key)".to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without running it.
    fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_open_tunnel_keeps_a_small_future() {
        let serve = future_size(
            |(config, cmd, resource): (Arc<Config>, DialCommand, Resource),
             (tls, mailbox, cut, ends): (
                watch::Receiver<Arc<Tls>>,
                Arc<Mailbox>,
                CancellationToken,
                mpsc::Sender<SessionEnd>,
            )| async move {
                serve(&config, &cmd, &resource, tls, mailbox, &cut, &ends).await
            },
        );
        // What every open tunnel's task holds for its whole life: 9 152 bytes before the dial
        // and re-attach were boxed and the session split onto the heap, 2 960 after (debug).
        assert!(serve < 4096, "serve future is {serve} bytes");
    }
}
