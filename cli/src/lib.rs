//! The `bamf` command-line client.
//!
//! `bamf login` obtains an API token and a user certificate (for a key made here); `bamf ls`
//! lists what the user's roles allow; `bamf ssh|scp|sftp|pipe|tcp|psql` open tunnels, one
//! session per TCP connection, through the bridge the API chooses; the admin commands manage
//! users, roles, join tokens, agents, bridges, sessions, revocations and read the audit log.
//! The reference is `docs/cli.md`, generated from [`cli`] by `bamf docs-markdown`.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap derive); [`docs`]: the Markdown reference from it.
//! - [`config`]: `~/.bamf` (or `$BAMF_HOME`): a 0700 directory of 0600 files.
//! - [`session`]: login, logout, status, and [`session::Ctx`], the login every other command
//!   starts from; [`tofu`]: fetching the CA on a first login without `--ca-file`.
//! - [`connect`]: `/connect`, dialling the bridge, copying bytes with half-close.
//! - [`commands`]: `pipe`, `ssh`/`scp`/`sftp`, `tcp`, `psql`.
//! - [`admin`]: the administrators' commands.
//! - [`output`]: all printing: tables, JSON, colours (off with `NO_COLOR` or when stdout is
//!   not a terminal), notes and errors on stderr.
//! - [`error`]: failures as one line for a person, and exit statuses.
//!
//! Exit status: 0 success, 1 failure, 2 usage (clap); commands that run a program exit with
//! its status.

pub mod admin;
pub mod bot;
pub mod bot_login;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connect;
pub mod docs;
pub mod error;
pub mod output;
pub mod session;
pub mod sso;
pub mod tofu;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::commands::ssh::Tool;
use crate::config::Home;
use crate::error::{Error, Result};
use crate::session::Ctx;

/// Parses the command line, runs the command, and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(Error::Exit(code)) => code,
        Err(e) => {
            output::error(&e);
            1
        }
    };
    ExitCode::from(code)
}

fn run(cli: Cli) -> Result<()> {
    // Commands that need neither a login nor a runtime.
    match &cli.command {
        Command::Completions(args) => {
            let mut out = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "bamf", &mut out);
            output::raw(&String::from_utf8_lossy(&out));
            return Ok(());
        }
        Command::DocsMarkdown => {
            output::raw(&docs::markdown());
            return Ok(());
        }
        Command::Ssh(p) => return exec(Tool::Ssh, &p.args),
        Command::Scp(p) => return exec(Tool::Scp, &p.args),
        Command::Sftp(p) => return exec(Tool::Sftp, &p.args),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(dispatch(cli));
    // A read of stdin blocked in a runtime thread must not hold the process open.
    runtime.shutdown_background();
    result
}

/// The OpenSSH tools replace this process; the login is checked first so that a missing one
/// is reported by us, not as an ssh connection failure.
fn exec(tool: Tool, args: &[String]) -> Result<()> {
    Ctx::load(Home::locate()?)?;
    commands::ssh::exec(tool, args)
}

async fn dispatch(cli: Cli) -> Result<()> {
    let home = Home::locate()?;
    let json = cli.json;
    match cli.command {
        Command::Login(args) => {
            session::login(
                home,
                session::LoginRequest {
                    api: args.api,
                    user: args.user,
                    via: args.via,
                    ca_file: args.ca_file,
                    password_stdin: args.password_stdin,
                    sso: args.sso.map(|p| Some(p).filter(|p| !p.is_empty())),
                    bot_token_file: args.bot_token_file,
                    device: args.device,
                },
            )
            .await
        }
        Command::Logout => session::logout(home).await,
        Command::Status => session::status(home, json).await,
        command => {
            let ctx = Arc::new(bot::renewed(Ctx::load(home)?).await?);
            logged_in(ctx, command, json).await
        }
    }
}

async fn logged_in(ctx: Arc<Ctx>, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Ls(args) => admin::resources(&ctx, &args, json).await,
        Command::Pipe(args) => commands::pipe::run(&ctx, &args.resource).await,
        Command::Tcp(args) => {
            commands::tcp::run(ctx, &args.resource, args.port, args.exec.as_deref(), json).await
        }
        Command::Psql(args) => {
            commands::psql::run(
                ctx,
                &args.resource,
                args.user.as_deref(),
                args.dbname.as_deref(),
                &args.args,
            )
            .await
        }
        Command::Users(c) => admin::users(&ctx, c, json).await,
        Command::Roles(c) => admin::roles(&ctx, c, json).await,
        Command::Bind(args) => admin::bind(&ctx, &args, true).await,
        Command::Unbind(args) => admin::bind(&ctx, &args, false).await,
        Command::JoinTokens(c) => admin::join_tokens(&ctx, c, json).await,
        Command::Bots(cli::BotsCommand::Add {
            name,
            roles,
            token_ttl,
        }) => bot::add(&ctx, name, roles, token_ttl).await,
        Command::Agents(c) => admin::agents(&ctx, c, json).await,
        Command::Bridges(c) => admin::bridges(&ctx, c, json).await,
        Command::Sessions(c) => admin::sessions(&ctx, c, json).await,
        Command::Audit(args) => admin::audit(&ctx, args, json).await,
        Command::Revocations(c) => admin::revocations(&ctx, c, json).await,
        Command::Login(_)
        | Command::Logout
        | Command::Status
        | Command::Ssh(_)
        | Command::Scp(_)
        | Command::Sftp(_)
        | Command::Completions(_)
        | Command::DocsMarkdown => Err(Error::msg("unreachable command dispatch")),
    }
}
