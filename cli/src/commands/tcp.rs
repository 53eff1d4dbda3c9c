//! `bamf tcp RESOURCE -p PORT [--exec CMD]`: a local listener on 127.0.0.1 whose every
//! accepted connection opens its own session to the resource.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::connect;
use crate::error::{Error, Result};
use crate::output;
use crate::session::SharedCtx;

/// How long open connections get to finish (close their tunnels cleanly) once the program
/// that used them has exited.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Connections being carried, and a wake-up when there are none.
#[derive(Debug, Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one connection while it lives.
struct Carrying(Arc<Active>);

impl Carrying {
    fn new(active: &Arc<Active>) -> Self {
        active.count.fetch_add(1, Ordering::AcqRel);
        Self(active.clone())
    }
}

impl Drop for Carrying {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A running local listener.
#[derive(Debug)]
pub struct Forward {
    /// Where it listens.
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    active: Arc<Active>,
}

impl Forward {
    /// Stops accepting and gives open connections [`CLOSE_GRACE`] to finish, so that their
    /// tunnels end cleanly rather than being cut when the process exits.
    pub async fn close(self) {
        self.accept.abort();
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        loop {
            let idle = self.active.idle.notified();
            if self.active.count.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on `127.0.0.1:port` (0 picks one) and carries each accepted connection through
/// a session of its own.
///
/// # Errors
///
/// The port cannot be bound.
pub async fn listen(ctx: SharedCtx, resource: &str, port: u16) -> Result<Forward> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::msg(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::msg(format!("listener address: {e}")))?;
    let resource = resource.to_owned();
    let active = Arc::new(Active::default());
    let counter = active.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (local, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    output::warn(format!("accepting a local connection: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let _ = local.set_nodelay(true);
            let (ctx, resource) = (ctx.clone(), resource.clone());
            let carrying = Carrying::new(&counter);
            tokio::spawn(async move {
                let _carrying = carrying;
                match connect::open(&ctx, &resource).await {
                    Ok(tunnel) => connect::splice_tcp(local, tunnel).await,
                    Err(e) => output::error(format!("connection from {peer}: {e}")),
                }
            });
        }
    });
    Ok(Forward {
        addr,
        accept,
        active,
    })
}

/// Runs a child to completion and returns its exit status as ours would be. While it runs,
/// Ctrl-C is left to the child (the terminal sends it to both; we keep the tunnels up until
/// the child decides).
///
/// # Errors
///
/// The child cannot be started.
pub async fn run_child(mut command: tokio::process::Command) -> std::io::Result<u8> {
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut child = command.spawn()?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = interrupts.recv() => {}
        }
    };
    Ok(super::exit_code(status))
}

/// `bamf tcp`.
///
/// # Errors
///
/// The resource is unknown, denied or offline; the port cannot be bound; the command
/// cannot be run or exits non-zero ([`Error::Exit`] with its status).
pub async fn run(
    ctx: SharedCtx,
    resource: &str,
    port: u16,
    exec: Option<&str>,
    json: bool,
) -> Result<()> {
    connect::preflight(&ctx, resource).await?;
    let forward = listen(ctx, resource, port).await?;
    let addr = forward.addr;
    if let Some(template) = exec {
        let command = template
            .replace("{port}", &addr.port().to_string())
            .replace("{host}", &addr.ip().to_string());
        let mut child = tokio::process::Command::new("sh");
        child
            .arg("-c")
            .arg(&command)
            .env("BAMF_TCP_HOST", addr.ip().to_string())
            .env("BAMF_TCP_PORT", addr.port().to_string());
        let code = run_child(child)
            .await
            .map_err(|e| Error::msg(format!("cannot run `{command}`: {e}")))?;
        forward.close().await;
        return if code == 0 {
            Ok(())
        } else {
            Err(Error::Exit(code))
        };
    }
    if json {
        output::json(&serde_json::json!({
            "resource": resource,
            "address": addr.to_string(),
            "host": addr.ip().to_string(),
            "port": addr.port(),
        }));
    } else {
        output::line(addr);
        output::note(format!(
            "forwarding {addr} to {resource}; each connection opens its own session \
             (Ctrl-C to stop)"
        ));
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::msg(format!("waiting for Ctrl-C: {e}")))?;
    forward.close().await;
    Ok(())
}
