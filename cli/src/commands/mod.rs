//! The commands that reach resources: `pipe`, `ssh`/`scp`/`sftp`, `tcp` and `psql`.

pub mod pipe;
pub mod psql;
pub mod ssh;
pub mod tcp;

/// The exit status a parent shell would report for a child: its code, or 128 + signal.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from((128 + signal) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}
