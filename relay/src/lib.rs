//! The relay: copying bytes both ways until both sides are done, written once for every
//! BAMF process (the bridge's front door and tunnels, the agent, the CLI).
//!
//! The carrier is chosen by the kind of stream:
//! - [`relay_sockets`]: two TCP sockets, `splice(2)` through a pipe for bulk data and a
//!   buffer for small exchanges (the front door's passthrough);
//! - [`relay_streams`]: any two byte streams (TLS on either side), through pooled buffers.
//!
//! Both borrow their carriers from one [`Carriers`] pool only while bytes are in flight, pass
//! a half-close on, share one idle deadline per relay, count bytes into [`Meters`] while they
//! flow, stop on the caller's signal, and end with one [`RelayEnd`] that says which [`Side`]
//! failed.

mod carriers;
mod sockets;
mod streams;

use std::io;

use metrics::Counter;

pub use carriers::{BUFFER_SIZE, Carriers};
pub use sockets::relay_sockets;
pub use streams::relay_streams;

/// Which side of a relay failed. Every relay has a side towards the party that started it
/// (the **client**: whoever dialled, or the bridge's side of an agent's tunnel) and a side
/// towards the target (the **upstream**: the backend, the agent, the resource, the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Towards the party that started it.
    Client,
    /// Towards the target.
    Upstream,
}

impl Side {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
        }
    }
}

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
}

/// Counters a relay adds its bytes to while they flow.
#[derive(Debug, Clone)]
pub struct Meters {
    /// Client to upstream.
    pub up: Counter,
    /// Upstream to client.
    pub down: Counter,
}

impl Default for Meters {
    /// Counters that count nowhere (tests, benchmarks).
    fn default() -> Self {
        Self {
            up: Counter::noop(),
            down: Counter::noop(),
        }
    }
}

/// How a relay ended: the one end type of every relay.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF and were passed on.
    Finished,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The caller's stop signal fired (a kill, a shutdown cut).
    Stopped,
    /// A read or write failed on this side (a reset is the usual case).
    Failed(Side, io::Error),
}

#[cfg(test)]
pub(crate) mod testing {
    use tokio::net::{TcpListener, TcpStream};

    /// Two ends of a fresh loopback TCP connection: (connecting side, accepted side).
    pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        a.set_nodelay(true).unwrap();
        (a, b)
    }
}
