//! The carriers a relay borrows while bytes are in flight: kernel pipes (for `splice(2)`
//! between sockets) and user-space buffers, pooled per process. An idle relay holds neither,
//! so idle tunnels cost their sockets and task state only.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rustix::pipe::PipeFlags;

/// Bytes per relay buffer. 64 KiB moves bulk data in few syscalls on loopback and LAN
/// links; it is only held while data is in flight.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// Requested pipe capacity. Larger pipes mean fewer splice calls per megabyte; the kernel may
/// refuse (per-user pipe quota) and then the default 64 KiB stays, which still works.
pub(crate) const PIPE_SIZE: usize = 1024 * 1024;

/// Free carriers kept for reuse; beyond this they are freed, so a burst does not pin memory
/// (or, for pipes, two descriptors each) forever.
const POOL_KEEP: usize = 64;

/// What carries one direction's bytes while they are in flight.
pub(crate) enum Carrier {
    /// A kernel pipe: bytes are spliced in and out, never copied to user space.
    Pipe { read: OwnedFd, write: OwnedFd },
    /// A user-space buffer.
    Buffer(Box<[u8]>),
}

/// Pipes and buffers shared by every connection of a process.
#[derive(Debug)]
pub struct Carriers {
    splice: bool,
    pub(crate) pipes: Mutex<Vec<(OwnedFd, OwnedFd)>>,
    pub(crate) buffers: Mutex<Vec<Box<[u8]>>>,
}

impl Carriers {
    /// A pool that splices when `splice` is true (and a pipe can be had), else copies.
    pub fn new(splice: bool) -> Self {
        Self {
            splice,
            pipes: Mutex::default(),
            buffers: Mutex::default(),
        }
    }

    pub(crate) fn take(&self, bulk: bool) -> Carrier {
        if self.splice && bulk {
            let reused = self.pipes.lock().ok().and_then(|mut p| p.pop());
            if let Some((read, write)) = reused.or_else(new_pipe) {
                return Carrier::Pipe { read, write };
            }
        }
        let reused = self.buffers.lock().ok().and_then(|mut b| b.pop());
        Carrier::Buffer(reused.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice()))
    }

    /// Returns an *empty* carrier (a pipe with bytes left in it must be closed instead).
    pub(crate) fn give(&self, carrier: Carrier) {
        match carrier {
            Carrier::Pipe { read, write } => {
                if let Ok(mut p) = self.pipes.lock()
                    && p.len() < POOL_KEEP
                {
                    p.push((read, write));
                }
            }
            Carrier::Buffer(buf) => {
                if let Ok(mut b) = self.buffers.lock()
                    && b.len() < POOL_KEEP
                {
                    b.push(buf);
                }
            }
        }
    }
}

impl Default for Carriers {
    fn default() -> Self {
        Self::new(true)
    }
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pipe { .. } => "Pipe",
            Self::Buffer(_) => "Buffer",
        })
    }
}

fn new_pipe() -> Option<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?;
    let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
    Some((read, write))
}
