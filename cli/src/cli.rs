//! The command line: every command, argument and flag (clap derive). `docs/cli.md` is
//! generated from this (`bamf docs-markdown`), and a test keeps the two equal.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::ProfileName;
use crate::trust::Fingerprint;

/// Secure access to SSH servers, databases and TCP services through BAMF.
#[derive(Debug, Parser)]
#[command(
    name = "bamf",
    version,
    propagate_version = true,
    after_help = "Log in first with `bamf login --api https://bamf.example.com`; \
                  see `bamf help <command>` for each command."
)]
pub struct Cli {
    /// Print JSON on stdout: listings, status, and what mutations did; errors become one
    /// JSON object on stderr
    #[arg(long, global = true)]
    pub json: bool,
    /// Use this profile (one per API; see `bamf profiles ls`) instead of the current one
    #[arg(
        long,
        global = true,
        env = "BAMF_PROFILE",
        hide_env_values = true,
        value_name = "NAME"
    )]
    pub profile: Option<ProfileName>,
    /// Print each API request's method, path, status and request id on stderr (never
    /// tokens or bodies)
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in: an API token and a user certificate, kept in the API's profile under ~/.bamf
    Login(LoginArgs),
    /// Log out: revoke the token and remove it, the key and the certificate
    Logout,
    /// Profiles, one per API: list, choose the current one, remove
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Who is logged in, with which roles, and until when
    Status,
    /// List the resources you may reach, with kind, labels and online state
    #[command(visible_alias = "resources")]
    Ls(LsArgs),
    /// Run ssh to a resource: bamf ssh [user@]RESOURCE [ssh args…]
    Ssh(PassThrough),
    /// Run scp with resources as hosts: bamf scp FILE [user@]RESOURCE:PATH
    Scp(PassThrough),
    /// Run sftp to a resource: bamf sftp [user@]RESOURCE
    Sftp(PassThrough),
    /// Carry stdin and stdout to a resource (ssh's ProxyCommand)
    Pipe(PipeArgs),
    /// Forward a local port on 127.0.0.1 to a resource
    Tcp(TcpArgs),
    /// Run psql against a PostgreSQL resource
    Psql(PsqlArgs),
    /// Manage users (admin)
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage roles and their rules (admin)
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Give a user a role (admin)
    Bind(BindArgs),
    /// Take a role from a user (admin)
    Unbind(BindArgs),
    /// Tokens with which agents and bridges join (admin)
    #[command(subcommand)]
    JoinTokens(JoinTokensCommand),
    /// Machine identities for automation: bots bound to roles (admin)
    #[command(subcommand)]
    Bots(BotsCommand),
    /// Agents (admin)
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Bridges (admin)
    #[command(subcommand)]
    Bridges(BridgesCommand),
    /// Sessions: list, and end live ones (admin)
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Audit events, newest first (admin)
    Audit(AuditArgs),
    /// Revoked certificates (admin)
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// Print configuration for other tools: `bamf config ssh` for OpenSSH
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (resource names complete too):
    /// bamf completions bash > /etc/bash_completion.d/bamf
    Completions(CompletionsArgs),
    /// Print the CLI reference (docs/cli.md) in Markdown
    #[command(hide = true)]
    DocsMarkdown,
    /// Print candidates for shell completion, one per line (used by the completion scripts)
    #[command(name = "__complete", hide = true)]
    Complete(CompleteArgs),
}

/// `bamf profiles …`.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List profiles: API, user, whether logged in; * marks the current one
    Ls,
    /// Make a profile the current one
    Use {
        /// Profile name
        name: ProfileName,
    },
    /// Log out of a profile and forget it, its pinned CA included
    Rm {
        /// Profile name
        name: ProfileName,
    },
}

/// `bamf config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print an ssh_config block so that plain ssh, scp, rsync, git and editors reach
    /// resources as RESOURCE.SUFFIX through BAMF: bamf config ssh >> ~/.ssh/config
    Ssh(SshConfigArgs),
}

/// `bamf config ssh`.
#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// The host name suffix that marks BAMF resources [default: the profile's name]
    #[arg(long, value_name = "SUFFIX")]
    pub suffix: Option<String>,
}

/// What `bamf __complete` lists.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompleteWhat {
    /// Resources the user may reach
    Resources,
    /// Profiles
    Profiles,
}

/// `bamf __complete`.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// What to list
    #[arg(value_enum)]
    pub what: CompleteWhat,
    /// Only candidates starting with this
    #[arg(default_value = "")]
    pub prefix: String,
}

/// `bamf login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// API URL, e.g. https://bamf.example.com [default: the last login's]
    #[arg(long, env = "BAMF_API", hide_env_values = true, value_name = "URL")]
    pub api: Option<String>,
    /// User name [default: $USER]
    #[arg(
        long,
        short = 'u',
        env = "BAMF_USER",
        hide_env_values = true,
        value_name = "NAME"
    )]
    pub user: Option<String>,
    /// Read the password from stdin instead of asking on the terminal
    #[arg(long)]
    pub password_stdin: bool,
    /// Sign in with single sign-on (OpenID Connect) in a browser instead of a password:
    /// with the provider named, or the API's default provider
    #[arg(long, value_name = "PROVIDER", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "password_stdin")]
    pub sso: Option<String>,
    /// With --sso: sign in on another device (device authorization grant: a page and a code
    /// are printed), for machines without a browser
    #[arg(long, requires = "sso")]
    pub device: bool,
    /// Log in as a bot with the one-time join token in FILE (non-interactive); later
    /// commands renew the bot's short-lived credentials on their own
    #[arg(long, value_name = "FILE", conflicts_with_all = ["password_stdin", "sso"])]
    pub bot_token_file: Option<PathBuf>,
    /// Connect to this ip:port for the API and tunnels instead of resolving names (kept for
    /// later commands; BAMF_VIA overrides it) [default: 127.0.0.1:PORT for *.localhost]
    #[arg(long, env = "BAMF_VIA", hide_env_values = true, value_name = "ADDR")]
    pub via: Option<String>,
    /// The BAMF CA (PEM) to verify the API with (and to pin)
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Trust the CA the API serves only if its SHA-256 fingerprint is this (hex, colons
    /// allowed): a first contact without a question, or accepting a CA that changed
    #[arg(long, value_name = "SHA256")]
    pub ca_fingerprint: Option<Fingerprint>,
    /// Trust the CA of an API never seen before without asking (its fingerprint is still
    /// printed); never accepts a CA that changed
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `bamf ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only resources of this kind
    #[arg(long, short = 'k', value_name = "KIND")]
    pub kind: Option<String>,
    /// Only resources with this label (k=v; repeatable, all must match)
    #[arg(long, short = 'l', value_name = "K=V")]
    pub label: Vec<String>,
}

/// Arguments passed to an OpenSSH tool unchanged.
#[derive(Debug, Args)]
pub struct PassThrough {
    /// Arguments for the tool, in its own syntax
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

/// `bamf pipe`.
#[derive(Debug, Args)]
pub struct PipeArgs {
    /// Resource name (or a host name ending with --strip-suffix)
    pub resource: String,
    /// Remove this suffix from the name first (ssh_config's `%h` for RESOURCE.SUFFIX)
    #[arg(long, value_name = "SUFFIX")]
    pub strip_suffix: Option<String>,
}

/// `bamf tcp`.
#[derive(Debug, Args)]
pub struct TcpArgs {
    /// Resource name
    pub resource: String,
    /// Local port on 127.0.0.1 (0 picks a free one)
    #[arg(long, short = 'p', default_value_t = 0)]
    pub port: u16,
    /// Run this command with `sh -c` once listening ({port} and {host} are replaced), then
    /// exit with its status
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
}

/// `bamf psql`.
#[derive(Debug, Args)]
pub struct PsqlArgs {
    /// Resource name
    pub resource: String,
    /// Database user (psql -U)
    #[arg(long = "user", short = 'U', value_name = "USER")]
    pub user: Option<String>,
    /// Database name (psql -d)
    #[arg(long, short = 'd', value_name = "DB")]
    pub dbname: Option<String>,
    /// More psql arguments, after --
    #[arg(last = true, value_name = "PSQL ARGS")]
    pub args: Vec<String>,
}

/// `bamf users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users with their roles
    Ls,
    /// Create a user
    Add {
        /// User name
        name: String,
        /// Bind this role too (repeatable)
        #[arg(long = "role", short = 'r', value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the password from stdin instead of asking on the terminal
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user; their tokens stop working at once
    Rm {
        /// User name
        name: String,
    },
    /// Set a user's password
    Passwd {
        /// User name
        name: String,
        /// Read the password from stdin instead of asking on the terminal
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Rules of a role, from flags or a file. Flags make at most one allow rule and one deny
/// rule; every selector given in a rule must match.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Allow resources whose name matches one of these patterns (* matches any run;
    /// comma-separated, repeatable)
    #[arg(long, value_name = "GLOB", value_delimiter = ',')]
    pub allow_names: Vec<String>,
    /// Allow resources of these kinds: ssh, postgres, tcp (comma-separated, repeatable)
    #[arg(long, value_name = "KIND", value_delimiter = ',')]
    pub allow_kind: Vec<String>,
    /// Allow resources with this label; the value may be a pattern (repeatable)
    #[arg(long, value_name = "K=V")]
    pub allow_label: Vec<String>,
    /// Deny resources whose name matches one of these patterns (deny wins)
    #[arg(long, value_name = "GLOB", value_delimiter = ',')]
    pub deny_names: Vec<String>,
    /// Deny resources of these kinds
    #[arg(long, value_name = "KIND", value_delimiter = ',')]
    pub deny_kind: Vec<String>,
    /// Deny resources with this label
    #[arg(long, value_name = "K=V")]
    pub deny_label: Vec<String>,
    /// Rules as JSON, {"allow": [rule…], "deny": [rule…]}, rule = {"names", "kinds",
    /// "labels"}; - reads stdin
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["allow_names", "allow_kind", "allow_label", "deny_names", "deny_kind", "deny_label"]
    )]
    pub rules_file: Option<PathBuf>,
}

/// `bamf roles …`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List roles with their rules
    Ls,
    /// Create a role
    Add {
        /// Role name
        name: String,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Replace a role's rules
    Set {
        /// Role name
        name: String,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Delete a role and its bindings
    Rm {
        /// Role name
        name: String,
    },
}

/// `bamf bind` / `bamf unbind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// User name
    pub user: String,
    /// Role name
    pub role: String,
}

/// What a join token admits.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum JoinKind {
    /// An agent
    Agent,
    /// A bridge
    Bridge,
}

/// `bamf join-tokens …`.
#[derive(Debug, Subcommand)]
pub enum JoinTokensCommand {
    /// Create a token; it is printed once, on stdout
    Create {
        /// Who may join with it
        #[arg(long, value_enum, default_value_t = JoinKind::Agent)]
        kind: JoinKind,
        /// How long it stays valid (e.g. 30m, 1h, 7d)
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many joins it allows
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
    },
    /// List tokens (never their secrets)
    Ls,
    /// Revoke a token
    Rm {
        /// Token id
        id: String,
    },
}

/// `bamf bots …`.
#[derive(Debug, Subcommand)]
pub enum BotsCommand {
    /// Create a bot bound to roles; its one-time join token is printed once, on stdout (the
    /// bot logs in with `bamf login --bot-token-file FILE`; delete it with `bamf users rm`)
    Add {
        /// The bot's user name
        name: String,
        /// Bind this role (repeatable)
        #[arg(long = "role", short = 'r', value_name = "ROLE")]
        roles: Vec<String>,
        /// How long the join token stays valid (e.g. 30m, 1h, 7d)
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_ttl: std::time::Duration,
    },
}

/// `bamf agents …`.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents with online state
    Ls,
    /// Delete an agent: its resources go and its certificates are revoked
    Rm {
        /// Agent id or name
        agent: String,
    },
}

/// `bamf bridges …`.
#[derive(Debug, Subcommand)]
pub enum BridgesCommand {
    /// List bridges with load, draining and online state
    Ls,
}

/// A session state.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SessionState {
    /// Issued, not yet paired
    Pending,
    /// Carrying bytes
    Active,
    /// Finished
    Ended,
}

/// `bamf sessions …`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first
    Ls {
        /// Only sessions in this state
        #[arg(long, value_enum)]
        state: Option<SessionState>,
        /// Only this user's sessions
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// End a session; its bridge closes the live tunnel within a heartbeat
    Kill {
        /// Session id
        id: String,
    },
}

/// `bamf audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events by this actor, e.g. user:alice
    #[arg(long, value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Only events of this kind, e.g. auth.login, connect
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events since: a duration ago (1h, 2d), a date-time (2025-01-31T12:00:00Z) or Unix
    /// seconds
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events before (same forms as --since)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Events per page (1-500)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue from a previous page's cursor
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Follow every page to the end
    #[arg(long)]
    pub all: bool,
}

/// `bamf revocations …`.
#[derive(Debug, Subcommand)]
pub enum RevocationsCommand {
    /// List revoked certificates
    Ls,
    /// Revoke a certificate by serial and/or SHA-256 fingerprint (lower-case hex)
    Add {
        /// Serial number
        #[arg(long, required_unless_present = "fingerprint")]
        serial: Option<String>,
        /// SHA-256 fingerprint of the certificate
        #[arg(long)]
        fingerprint: Option<String>,
        /// Why (kept in the audit log)
        #[arg(long)]
        reason: String,
    },
}

/// `bamf completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ssh_arguments_pass_through_untouched() {
        let cli = Cli::try_parse_from([
            "bamf",
            "ssh",
            "alice@box",
            "-i",
            "key",
            "-o",
            "A=b",
            "--",
            "ls",
            "--json",
        ]);
        let Ok(Cli {
            command: Command::Ssh(p),
            json: false,
            ..
        }) = cli
        else {
            panic!("{cli:?}");
        };
        assert_eq!(
            p.args,
            ["alice@box", "-i", "key", "-o", "A=b", "--", "ls", "--json"]
        );
        let cli = Cli::try_parse_from(["bamf", "ssh", "-v", "box"]);
        assert!(
            matches!(&cli, Ok(Cli { command: Command::Ssh(p), .. }) if p.args == ["-v", "box"]),
            "{cli:?}"
        );
    }

    #[test]
    fn psql_takes_its_arguments_after_the_separator() {
        let cli = Cli::try_parse_from([
            "bamf", "psql", "pg", "--", "-U", "postgres", "-c", "select 1",
        ]);
        assert!(
            matches!(&cli, Ok(Cli { command: Command::Psql(p), .. })
                if p.resource == "pg" && p.args == ["-U", "postgres", "-c", "select 1"]),
            "{cli:?}"
        );
    }
}
