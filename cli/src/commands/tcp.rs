//! `bamf tcp RESOURCE -p PORT [--exec CMD]`: a local listener on 127.0.0.1 whose every
//! accepted connection opens its own session to the resource.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_runtime::accept::Accept;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connect;
use crate::error::{Error, Result};
use crate::output;
use crate::session::SharedCtx;

/// How long open connections get to finish (close their tunnels cleanly) once the program
/// that used them has exited.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Local connections carried at once; more wait in the kernel's accept queue.
const MAX_LOCAL: usize = 256;

/// A running local listener.
#[derive(Debug)]
pub struct Forward {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    connections: TaskTracker,
}

impl Forward {
    /// Stops accepting and gives open connections `CLOSE_GRACE` to finish, so that their
    /// tunnels end cleanly rather than being cut when the process exits.
    pub async fn close(self) {
        self.stop.cancel();
        self.connections.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.connections.wait()).await;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Listens on `127.0.0.1:port` (0 picks one) and carries each accepted connection through
/// a session of its own, at most `MAX_LOCAL` at once (the shared accept loop).
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
    let (stop, connections) = (CancellationToken::new(), TaskTracker::new());
    let accept = Accept {
        stop: stop.clone(),
        tasks: connections.clone(),
        slots: Some(Arc::new(Semaphore::new(MAX_LOCAL))),
    };
    let on_error = |e: &std::io::Error| output::warn(format!("accepting a local connection: {e}"));
    tokio::spawn(bamf_runtime::accept::serve(
        listener,
        accept,
        on_error,
        move |local, peer| {
            let _ = local.set_nodelay(true);
            let (ctx, resource) = (ctx.clone(), resource.clone());
            Some(async move {
                match connect::open(&ctx, &resource).await {
                    Ok(tunnel) => connect::splice_tcp(&ctx, local, tunnel).await,
                    Err(e) => output::error(format!("connection from {peer}: {e}")),
                }
            })
        },
    ));
    Ok(Forward {
        addr,
        stop,
        connections,
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
