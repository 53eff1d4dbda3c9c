//! `docs/cli.md`, generated from the command definitions (`bamf docs-markdown`), so the
//! reference cannot drift from `bamf <command> --help`.

use clap::CommandFactory;

use crate::cli::Cli;

/// What the reference says before the commands.
const PREAMBLE: &str = r#"`bamf` is the BAMF command-line client: it logs you in, lists what you may reach, opens
tunnels to SSH servers, databases and TCP services through the bridges, and administers
users, roles, join tokens, agents, sessions and the audit log. Coming from Teleport's `tsh`?
See [BAMF for tsh users](tsh-users.md).

## Getting started

```sh
bamf login --api https://bamf.example.com --user alice   # asks for the password
bamf ls                                                  # what your roles allow
bamf ssh alice@web-1                                     # native ssh, via BAMF
bamf psql orders-db -U app -d orders                     # psql via a local port
bamf tcp redis-1 -p 6379                                 # forward 127.0.0.1:6379
bamf config ssh >> ~/.ssh/config                         # then: ssh alice@web-1.bamf.example.com
```

On a single node (`bamf-bridge` on 127.0.0.1:8443 serving the API as `localhost` and the
tunnels as `0.bridge.tunnel.localhost`), `bamf login --api https://localhost:8443` is
enough: for an API under `localhost` the CLI connects to 127.0.0.1 for the API and for
tunnels (`--via`), because not every resolver answers for `*.localhost` names.

## How it works

- **Login** sends the user name, the password and a CSR for a key made on this machine; the
  API answers with an API token (12 h) and a user certificate. The key never leaves the
  machine. Logging in again to the same API replaces that login (the old token is revoked).
- **First contact, like ssh.** Nothing carrying a credential is sent before the API's CA is
  trusted. An API whose certificate the system's trust store verifies (`SSL_CERT_FILE` /
  `SSL_CERT_DIR` name another store) is trusted as is, and its BAMF CA fetched over that
  verified connection. Otherwise `bamf login` shows the SHA-256 fingerprint of the CA the
  API serves and asks `Trust this CA and continue (yes/no)?` on the terminal; compare it
  with the one your administrator gives you (`openssl x509 -noout -fingerprint -sha256 -in
  ca.pem`). Scripts pass `--ca-fingerprint SHA256` (trusted only if equal), `--ca-file
  ca.pem`, or `--yes` (trust without checking); without a terminal and without one of those
  the login is refused (status 7) and nothing is sent. The CA is then **pinned** in the
  profile. If a known API later presents another CA, the login is refused loudly, showing
  both fingerprints: log in with `--ca-fingerprint NEW` (or `--ca-file`) once your
  administrator confirms the change, or `bamf profiles rm` the profile. Bridges and agents
  are only ever verified against the BAMF CA.
- **Profiles.** Each API has its own profile: its pin, key, certificate and token. `bamf
  login --api URL` adds one (named after the API's host, `-PORT` appended when not 443, or
  `--profile NAME`) or refreshes it, and makes it current; `bamf profiles ls|use|rm` list,
  switch and remove them; `--profile NAME` or `BAMF_PROFILE` choose one for a command.
- **Sessions.** Every TCP connection is its own session: the CLI asks the API
  (`POST /api/v1/connect`) with a CSR for a fresh key, receives a session certificate valid
  for 60 s to *establish* the tunnel, and dials the bridge the API chose. The agent next to
  the resource dials the same bridge, which pairs the two. Established tunnels are not cut
  when that certificate expires.
- **ssh, scp, sftp** run the native OpenSSH tools with
  `-o ProxyCommand='bamf --profile P pipe RESOURCE'` and `-o HostKeyAlias=RESOURCE`; every
  other argument is passed through, so ssh keys, options and host-key checking work as
  usual. **`bamf config ssh`** prints the same as an `ssh_config` block (`Host
  *.SUFFIX`, the suffix being the profile's name unless `--suffix`), so plain `ssh`, `scp`,
  `rsync`, `git`, Ansible and editors reach `RESOURCE.SUFFIX` with no wrapper; the suffix
  is stripped before the name reaches the API.
- **tcp and psql** listen on 127.0.0.1; each accepted connection opens its own session.
- **The network.** `HTTPS_PROXY` (or `ALL_PROXY`) and `NO_PROXY` are honoured for API calls
  and tunnels to bridges, as curl reads them (an `http://[user:password@]host:port` proxy,
  asked to `CONNECT`; TLS runs end to end inside); each command keeps one connection to the
  API for all its requests.

## Files

`~/.bamf/` (or `$BAMF_HOME`), mode 0700; every file 0600, written atomically:

| file | contents |
|---|---|
| `current-profile` | the name of the profile commands use by default |
| `profiles/NAME/config.json` | API URL, `via` address, user of the last login |
| `profiles/NAME/token.json` | API token, its user and expiry |
| `profiles/NAME/user-key.pem` | the user's private key (made locally) |
| `profiles/NAME/user-cert.pem` | the user certificate for that key |
| `profiles/NAME/ca.pem` | the BAMF CA the API is verified against (pinned at the first login) |

The files of earlier versions (directly in `~/.bamf/`) are moved into a profile when the
CLI first runs. `bamf logout` removes the token, key and certificate, and keeps the API URL
and the pinned CA; `bamf profiles rm` forgets them too.

## Environment

| variable | meaning |
|---|---|
| `BAMF_HOME` | the CLI's directory instead of `~/.bamf` |
| `BAMF_PROFILE` | `--profile`: the profile to use instead of the current one |
| `BAMF_API` | `--api` of `bamf login` |
| `BAMF_USER` | `--user` of `bamf login` |
| `BAMF_VIA` | `ip:port` to connect to for the API and tunnels; overrides the login's `--via` |
| `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY` | the HTTP proxy for API calls and tunnels, and the hosts reached directly (lower-case names too) |
| `SSL_CERT_FILE`, `SSL_CERT_DIR` | the system trust store, for publicly certified APIs |
| `NO_COLOR` | no colours (also off when stdout is not a terminal) |
| `CLICOLOR_FORCE` | colours even when stdout is not a terminal (`NO_COLOR` wins) |
| `BAMF_SSH`, `BAMF_SCP`, `BAMF_SFTP`, `BAMF_PSQL` | the program to run instead of `ssh`, `scp`, `sftp`, `psql` |

## Exit status

| status | meaning |
|---|---|
| 0 | success |
| 1 | any other failure (a conflict, a server error, a file that cannot be written) |
| 2 | usage: a bad argument, flag or value |
| 3 | authentication needed: not logged in, the login expired, wrong user name or password |
| 4 | denied: the login may not do this (not an administrator, too many login attempts) |
| 5 | not found: no resource by that name you may reach, no such user, role, agent, profile |
| 6 | offline: the API, the bridge or the resource cannot be reached now |
| 7 | not trusted: the API's CA was not confirmed, does not match `--ca-fingerprint`, or changed |

`bamf ssh|scp|sftp`, `bamf psql` and `bamf tcp --exec` exit with the status of the program
they ran (ssh's own failures are its 255).

## Scripting

Every command takes `--json`: listings print the API's items, `status` and `profiles ls`
their fields, and mutations what they did (`{"created": "user", "user": {…}}`, `{"deleted":
"role", "name": "dev"}`, …); `bamf audit --json` prints `{"items": […], "next_cursor": …}`.
Errors carry the API's request id (`error: … (request id 9f2c…)`, also in the API's logs);
with `--json` an error is one object on stderr, `{"error": {"kind", "message",
"exit_status", "request_id"}}`. `--debug` prints each API request's method, path, status,
duration and request id on stderr, never a token or a body. Progress and notes go to
stderr, so stdout stays parseable: `bamf join-tokens create` prints only the token, `bamf
tcp` only the address it listens on.

## Shell completion

`bamf completions bash|zsh|fish` prints a script that completes commands, flags, and
resource names (after `ssh`, `pipe`, `tcp`, `psql`, `sftp`) and profile names (after
`profiles use|rm`), asked of the API when you press Tab:

```sh
bamf completions bash > /etc/bash_completion.d/bamf      # or: source <(bamf completions bash)
bamf completions zsh > "${fpath[1]}/_bamf"
bamf completions fish > ~/.config/fish/completions/bamf.fish
```
"#;

/// The whole reference.
pub fn markdown() -> String {
    let mut root = Cli::command();
    root.build();
    let mut commands = Vec::new();
    collect(&root, &mut commands);
    let mut out = String::from(
        "# `bamf` command reference\n\n\
         <!-- Generated by `bamf docs-markdown > docs/cli.md` from cli/src/cli.rs and \
         cli/src/docs.rs; tests/tests/cli.rs keeps it equal. Do not edit by hand. -->\n\n",
    );
    out.push_str(PREAMBLE);
    out.push_str("\n## Commands\n\n");
    for cmd in &commands {
        let name = cmd.get_bin_name().unwrap_or("bamf");
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.push_str(&format!("- [`{name}`](#{}) — {about}\n", anchor(name)));
    }
    for cmd in &commands {
        let name = cmd.get_bin_name().unwrap_or("bamf");
        let mut cmd = (*cmd).clone();
        // As `--help` prints it, without trailing blanks (Markdown files should have none).
        let help: Vec<String> = cmd
            .render_help()
            .to_string()
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect();
        let help = help.join("\n");
        out.push_str(&format!(
            "\n### `{name}`\n\n```text\n{}\n```\n",
            help.trim_end()
        ));
    }
    out
}

/// GitHub's anchor for a heading `` `bamf join-tokens create` ``.
fn anchor(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// Every visible command below `cmd`, depth first (not `cmd` itself, not `help`).
fn collect<'a>(cmd: &'a clap::Command, into: &mut Vec<&'a clap::Command>) {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        into.push(sub);
        collect(sub, into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_documented_with_its_usage() {
        let doc = markdown();
        for heading in [
            "### `bamf login`",
            "### `bamf ssh`",
            "### `bamf roles add`",
            "### `bamf join-tokens create`",
            "### `bamf audit`",
        ] {
            assert!(doc.contains(heading), "{heading}");
        }
        assert!(doc.contains("Usage: bamf tcp [OPTIONS] <RESOURCE>"));
        assert!(
            !doc.contains("docs-markdown\n"),
            "hidden commands stay hidden"
        );
        assert!(doc.contains("(#bamf-join-tokens-create)"));
    }
}
