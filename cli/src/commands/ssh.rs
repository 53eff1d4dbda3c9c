//! `bamf ssh|scp|sftp …`: the native OpenSSH tools with `bamf pipe` as their ProxyCommand.
//!
//! Every argument is passed through in order. The ssh destination (`[user@]resource`) is
//! found the way ssh finds it (the first argument that is not an option or an option's
//! value), so `bamf ssh alice@box -i key echo hi` works as ssh would. The user's ssh talks
//! end to end with the target's sshd: host keys are checked by ssh, recorded under the
//! resource's name (`HostKeyAlias`).

use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::config::ProfileName;
use crate::connect;
use crate::error::{Error, Result};

/// Which OpenSSH tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `ssh`.
    Ssh,
    /// `scp`.
    Scp,
    /// `sftp`.
    Sftp,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Self::Ssh => "ssh",
            Self::Scp => "scp",
            Self::Sftp => "sftp",
        }
    }

    /// Options that take a value (the next argument, or the rest of this one).
    fn takes_value(self, flag: char) -> bool {
        let with_value = match self {
            Self::Ssh => "BbcDEeFIiJLlmOoPpQRSWw",
            Self::Scp => "cDFiJloPSX",
            Self::Sftp => "BbcDFiJloPRSsX",
        };
        with_value.contains(flag)
    }
}

/// The arguments that are not options or option values, in order.
fn operands(tool: Tool, args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.extend(iter.by_ref().cloned());
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            out.push(arg.clone());
            // ssh: after the destination come the remote command's words, not options.
            if tool == Tool::Ssh {
                out.extend(iter.by_ref().cloned());
                break;
            }
            continue;
        };
        for (i, flag) in flags.char_indices() {
            if tool.takes_value(flag) {
                if i + flag.len_utf8() == flags.len() {
                    iter.next();
                }
                break;
            }
        }
    }
    out
}

/// The host of an ssh destination: `[user@]host`, or `ssh://[user@]host[:port]`.
fn ssh_host(destination: &str) -> &str {
    let (rest, url) = match destination.strip_prefix("ssh://") {
        Some(rest) => (rest, true),
        None => (destination, false),
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if url {
        host.split([':', '/']).next().unwrap_or(host)
    } else {
        host
    }
}

/// The remote hosts of scp/sftp operands: `[user@]host:path`, `scp://` / `sftp://` URLs,
/// and (sftp) a bare `[user@]host`.
fn remote_hosts(tool: Tool, operands: &[String]) -> Vec<String> {
    let mut hosts = Vec::new();
    for operand in operands {
        let host = if let Some(rest) = operand
            .strip_prefix("scp://")
            .or_else(|| operand.strip_prefix("sftp://"))
        {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            rest.split([':', '/']).next().unwrap_or(rest)
        } else if let Some((before, _)) = operand.split_once(':')
            && !before.contains('/')
        {
            before.rsplit_once('@').map_or(before, |(_, h)| h)
        } else if tool == Tool::Sftp && hosts.is_empty() {
            operand
                .rsplit_once('@')
                .map_or(operand.as_str(), |(_, h)| h)
        } else {
            continue;
        };
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
    }
    hosts
}

/// `text` quoted for `sh -c` (ssh runs ProxyCommand through the shell), with `%` doubled
/// (ssh expands `%` tokens in ProxyCommand).
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''").replace('%', "%%"))
}

/// The full command line: our options first (ssh keeps the first value of an option, so
/// the ProxyCommand cannot be overridden by accident), then the user's arguments.
fn command_line(
    tool: Tool,
    exe: &Path,
    profile: &ProfileName,
    args: &[String],
) -> Result<Vec<String>> {
    let ops = operands(tool, args);
    let (target, alias) = match tool {
        Tool::Ssh => {
            let destination = ops.first().ok_or_else(|| {
                Error::usage("which resource? usage: bamf ssh [user@]RESOURCE [ssh args…]")
            })?;
            let host = ssh_host(destination);
            connect::check_name(host)?;
            (host.to_owned(), Some(host.to_owned()))
        }
        Tool::Scp | Tool::Sftp => {
            let hosts = remote_hosts(tool, &ops);
            for host in &hosts {
                connect::check_name(host)?;
            }
            let alias = match hosts.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            };
            // ssh substitutes %h with each connection's host.
            ("%h".to_owned(), alias)
        }
    };
    let exe = exe
        .to_str()
        .ok_or_else(|| Error::msg("the path of this program is not UTF-8"))?;
    // The profile is named: the ProxyCommand must use the login this command checked.
    let mut line = vec![
        "-o".to_owned(),
        format!(
            "ProxyCommand={} --profile {profile} pipe {target}",
            shell_quote(exe)
        ),
    ];
    let user_sets_alias = args
        .iter()
        .any(|a| a.to_ascii_lowercase().contains("hostkeyalias"));
    if let Some(alias) = alias.filter(|_| !user_sets_alias) {
        line.extend(["-o".to_owned(), format!("HostKeyAlias={alias}")]);
    }
    line.extend(args.iter().cloned());
    Ok(line)
}

/// Replaces this process with the tool (its exit status becomes ours).
///
/// # Errors
///
/// Not logged in (checked first, so the message is ours, not ssh's), a destination that is
/// not a resource name, or the tool cannot be run.
pub fn exec(tool: Tool, profile: &ProfileName, args: &[String]) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::msg(format!("cannot find this program's path: {e}")))?;
    let line = command_line(tool, &exe, profile, args)?;
    let program = std::env::var(format!("BAMF_{}", tool.program().to_ascii_uppercase()))
        .unwrap_or_else(|_| tool.program().to_owned());
    let e = std::process::Command::new(&program).args(&line).exec();
    Err(Error::msg(format!(
        "cannot run {program}: {e} (install the OpenSSH client)"
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p() -> ProfileName {
        "prod".parse().unwrap()
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_destination_is_found_as_ssh_finds_it() {
        let args = strings(&["-i", "key", "-p22", "-vv", "alice@box", "-o", "X=y", "ls"]);
        assert_eq!(operands(Tool::Ssh, &args)[0], "alice@box");
        let args = strings(&["box", "-i", "key", "echo", "hello"]);
        assert_eq!(operands(Tool::Ssh, &args)[0], "box");
        assert_eq!(ssh_host("ssh://bob@db-1:2222"), "db-1");
        assert_eq!(ssh_host("bob@box"), "box");
        let line = command_line(Tool::Ssh, Path::new("/opt/it's/bamf"), &p(), &args).unwrap();
        assert_eq!(
            line[..4],
            strings(&[
                "-o",
                r"ProxyCommand='/opt/it'\''s/bamf' --profile prod pipe box",
                "-o",
                "HostKeyAlias=box"
            ])
        );
        assert_eq!(line[4..], args[..]);
        assert!(command_line(Tool::Ssh, Path::new("/b"), &p(), &strings(&["-v"])).is_err());
        assert!(command_line(Tool::Ssh, Path::new("/b"), &p(), &strings(&["Box;rm"])).is_err());
    }

    #[test]
    fn scp_and_sftp_use_the_host_of_each_remote_operand() {
        let args = strings(&["-P", "22", "-r", "local/dir", "alice@box:/tmp/x"]);
        assert_eq!(
            remote_hosts(Tool::Scp, &operands(Tool::Scp, &args)),
            ["box"]
        );
        let line = command_line(Tool::Scp, Path::new("/b"), &p(), &args).unwrap();
        assert_eq!(line[1], "ProxyCommand='/b' --profile prod pipe %h");
        assert_eq!(line[3], "HostKeyAlias=box");
        let two = strings(&["a:/x", "b:/y"]);
        let line = command_line(Tool::Scp, Path::new("/b"), &p(), &two).unwrap();
        assert_eq!(line.len(), 4, "no alias for two hosts: {line:?}");
        let sftp = strings(&["-b", "batch", "bob@box"]);
        assert_eq!(
            remote_hosts(Tool::Sftp, &operands(Tool::Sftp, &sftp)),
            ["box"]
        );
    }
}
