//! Opening a tunnel to a resource and carrying bytes through it.
//!
//! One session per TCP connection: `POST /api/v1/connect` with a CSR for a fresh key (the key
//! never leaves this process), then TLS to the bridge the API chose with the session
//! certificate, which is only valid for 60 s to *establish* the tunnel. Once the bridge has
//! paired us with the agent it hands us over, and the session's bytes travel in TLS between
//! this process and the agent (the bridge cannot read them), over a resumable stream: when
//! the path breaks (the bridge dies or drains), the session asks the API to go on through a
//! live bridge with a certificate for the same key, and continues where it stopped; the
//! application sees a pause. A half-close on either side is passed on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bamf_client::e2e::{HandoverError, OpenError, Reopen};
use bamf_client::https::HttpsError;
use bamf_client::resume::{End, Report, Settings};
use bamf_proto::api::{ConnectRequest, Resource};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, Result, Status};
use crate::output;
use crate::session::Ctx;

/// A tunnel that takes longer than this to open gets a progress line on stderr.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// An open tunnel to a resource.
#[derive(Debug)]
pub struct Tunnel {
    /// The end-to-end session with the agent, through the bridge.
    pub stream: bamf_client::e2e::Session,
    /// The session's id.
    pub session: String,
    /// The bridge it runs through.
    pub bridge: String,
    /// The session's private key (it never leaves this process): attaching again proves
    /// possession of it.
    key: String,
}

impl Tunnel {
    /// The bridge's ordinal, from its name.
    fn ordinal(&self) -> Option<u32> {
        self.bridge.split('.').next()?.parse().ok()
    }
}

/// Checks a resource name before it goes anywhere (and into an ssh command line).
///
/// # Errors
///
/// The name is not a valid resource name.
pub fn check_name(resource: &str) -> Result<()> {
    resource
        .parse::<bamf_proto::san::Name>()
        .map(|_| ())
        .map_err(|_| {
            Error::usage(format!(
                "'{resource}' is not a resource name (1-63 of a-z 0-9 - _ ., see `bamf ls`)"
            ))
        })
}

/// How a refused `/connect` reads: not found (status 5) and offline (6) get their own words;
/// the API's request id stays.
pub fn refusal(resource: &str, e: HttpsError) -> Error {
    match e {
        // The API answers a missing resource and a denied one alike (no existence oracle).
        HttpsError::Status { ref code, .. } if code == "not_found" => {
            Error::api(e).reworded(|_| {
                format!(
                    "there is no resource '{resource}' you may reach: `bamf ls` lists yours; \
                     ask an administrator for a role that allows it"
                )
            })
        }
        HttpsError::Status { ref code, .. } if code == "offline" => Error::api(e)
            .reworded(|message| format!("'{resource}' cannot be reached now: {message}")),
        other => Error::api(other),
    }
}

/// Opens a session to `resource` and dials its bridge. Prints a progress line on stderr
/// when this takes over a second.
///
/// # Errors
///
/// The API refuses (see [`refusal`]) or the bridge cannot be dialled.
pub async fn open(ctx: &Ctx, resource: &str) -> Result<Tunnel> {
    let bridge: Arc<Mutex<Option<String>>> = Arc::default();
    let progress = tokio::spawn({
        let bridge = bridge.clone();
        let resource = resource.to_owned();
        async move {
            tokio::time::sleep(PROGRESS_AFTER).await;
            let via = bridge.lock().ok().and_then(|b| b.clone());
            match via {
                Some(bridge) => output::note(format!("connecting to {resource} via {bridge}…")),
                None => output::note(format!("connecting to {resource}…")),
            }
        }
    });
    let opened = async {
        let (key, csr) = bamf_client::identity::key_and_csr()?;
        let grant = ctx
            .user()
            .connect(&ConnectRequest {
                resource: resource.to_owned(),
                csr,
            })
            .await
            .map_err(|e| refusal(resource, e))?;
        let (host, session, port) = (&grant.bridge_host, &grant.session_id, grant.bridge_port);
        if let Ok(mut b) = bridge.lock() {
            *b = Some(host.clone());
        }
        let (ca, cert) = (&grant.certificate.ca, &grant.certificate.certificate);
        let stream =
            bamf_client::e2e::open_through(ctx.api.proxies(), host, port, ctx.via, ca, cert, &key)
                .await
                .map_err(|e| match e {
                    OpenError::Tls(e) => Error::from(e),
                    OpenError::Handover(HandoverError::TargetUnreachable) => Error::of(
                        Status::Offline,
                        format!(
                            "'{resource}' cannot be reached now: its agent could not connect to it \
                         (offline)"
                        ),
                    ),
                    e => {
                        let at = ctx
                            .via
                            .map_or_else(|| format!("{host}:{port}"), |v| v.to_string());
                        Error::of(
                            Status::Offline,
                            format!(
                                "cannot open the tunnel to '{resource}' through {host} at {at}: {e}"
                            ),
                        )
                    }
                })?;
        Ok(Tunnel {
            stream,
            session: session.clone(),
            bridge: host.clone(),
            key,
        })
    }
    .await;
    progress.abort();
    opened
}

/// Before listening for local connections: is `resource` one the user may reach and
/// online? A name the listing does not show is asked of `/connect`, whose refusal reads the
/// same whether it is unknown or denied.
///
/// # Errors
///
/// Unknown, denied or offline.
pub async fn preflight(ctx: &Ctx, resource: &str) -> Result<Option<Resource>> {
    check_name(resource)?;
    let listed = ctx.user().resources().await.map_err(Error::api)?;
    let found = listed.items.into_iter().find(|r| r.name == resource);
    match found {
        Some(item) if item.online => Ok(Some(item)),
        Some(_) => Err(Error::of(
            Status::Offline,
            format!("'{resource}' cannot be reached now: its agent is offline (offline)"),
        )),
        None => {
            let (_, csr) = bamf_client::identity::key_and_csr()?;
            ctx.user()
                .connect(&ConnectRequest {
                    resource: resource.to_owned(),
                    csr,
                })
                .await
                .map_err(|e| refusal(resource, e))?;
            // It became reachable in between; that session goes unused and times out.
            Ok(None)
        }
    }
}

/// Local connections through a tunnel are closed after this long with no byte either way,
/// like the bridge's own idle timeout.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Carries `local` through the tunnel over the resumable stream, attaching again through
/// the API when its path breaks; `stop` ends it early.
async fn carry<L>(ctx: &Ctx, local: L, tunnel: Tunnel, stop: impl Future<Output = ()>) -> Report
where
    L: AsyncRead + AsyncWrite + Unpin,
{
    let attaching = Reopen {
        api: ctx.user(),
        broken: tunnel.ordinal(),
        session: tunnel.session,
        key: tunnel.key,
        via: ctx.via,
        on_retry: |session, e| {
            output::note(format!(
                "session {session}: its path broke; attaching again ({e})…"
            ));
        },
    };
    let settings = Settings {
        idle: IDLE_TIMEOUT,
        ..Settings::default()
    };
    bamf_client::resume::carry(local, tunnel.stream, attaching, &settings, stop).await
}

/// Whether a stream's end is a normal one for the CLI: both sides done, stopped, idle, or
/// the reader of our output went away.
fn ended_well(end: &End) -> Result<(), String> {
    match end {
        End::Finished | End::Stopped | End::IdleTimeout => Ok(()),
        End::LocalError(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        End::LocalError(e) => Err(e.to_string()),
        End::PeerClosed(_) => Err("the agent closed it (the resource failed)".into()),
        End::ResumeTimeout => Err("it could not be attached again through a live bridge".into()),
        End::Protocol(e) => Err(format!("protocol error: {e}")),
    }
}

/// Carries a local TCP connection through a tunnel until both directions finish; a failure
/// in either ends both.
pub async fn splice_tcp(ctx: &Ctx, local: TcpStream, tunnel: Tunnel) {
    let (session, bridge) = (tunnel.session.clone(), tunnel.bridge.clone());
    let report = carry(ctx, local, tunnel, std::future::pending()).await;
    if let Err(e) = ended_well(&report.end) {
        output::warn(format!(
            "the tunnel was cut: {e} (session {session}, bridge {bridge})"
        ));
    }
}

/// Carries stdin and stdout through a tunnel (`bamf pipe`, ssh's ProxyCommand). Ends when
/// the far side finishes sending (whatever stdin does); the end of stdin is passed on as a
/// half-close.
pub async fn splice_stdio(ctx: &Ctx, resource: &str, tunnel: Tunnel) -> Result<()> {
    let (session, bridge) = (tunnel.session.clone(), tunnel.bridge.clone());
    let done = Arc::new(tokio::sync::Notify::new());
    let stdout = EndsWithShutdown {
        inner: tokio::io::stdout(),
        done: done.clone(),
    };
    let local = tokio::io::join(tokio::io::stdin(), stdout);
    let report = carry(ctx, local, tunnel, done.notified()).await;
    ended_well(&report.end).map_err(|e| {
        Error::of(
            Status::Offline,
            format!("the tunnel to '{resource}' was cut: {e} (session {session}, bridge {bridge})"),
        )
    })
}

/// A writer that announces its shutdown: the relay shuts stdout down when the far side has
/// finished sending, which is the end of a stdio session.
struct EndsWithShutdown<W> {
    inner: W,
    done: Arc<tokio::sync::Notify>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for EndsWithShutdown<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let shut = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        self.done.notify_one();
        Poll::Ready(shut)
    }
}
