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
//! - [`config`]: `~/.bamf` (or `$BAMF_HOME`): one profile per API, 0700 directories of 0600
//!   files; the single-profile layout of earlier versions is moved into a profile.
//! - [`session`]: login, logout, status, profiles, and [`session::Ctx`], the login every
//!   other command starts from.
//! - [`trust`]: first contact like ssh: which CA the API must chain to, decided before any
//!   credential is sent; [`tofu`]: fetching the CA the API serves, unverified.
//! - [`net`]: proxies from the environment, one kept connection per endpoint, `--debug`.
//! - [`connect`]: `/connect`, dialling the bridge, copying bytes with half-close.
//! - [`commands`]: `pipe`, `ssh`/`scp`/`sftp`, `tcp`, `psql`; [`sshconfig`]: `bamf config
//!   ssh`; [`complete`]: completion scripts and the candidates they ask for.
//! - [`admin`]: the administrators' commands.
//! - [`output`]: all printing: tables, JSON, colours (off with `NO_COLOR` or when stdout is
//!   not a terminal), notes and errors on stderr.
//! - [`error`]: failures as one line for a person, and their exit statuses (see there:
//!   distinct statuses for usage, authentication needed, denied, not found, offline, not
//!   trusted); commands that run a program exit with its status.

pub mod admin;
pub mod bot;
pub mod bot_login;
pub mod cli;
pub mod commands;
pub mod complete;
pub mod config;
pub mod connect;
pub mod docs;
pub mod error;
pub mod net;
pub mod output;
pub mod session;
pub mod sshconfig;
pub mod sso;
pub mod tofu;
pub mod trust;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::cli::{Cli, Command, ProfilesCommand};
use crate::commands::ssh::Tool;
use crate::config::{Home, ProfileName};
use crate::error::{Error, Result};
use crate::net::Net;
use crate::session::Ctx;

/// Parses the command line, runs the command, and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let code = match run(cli) {
        Ok(()) => 0,
        Err(Error::Exit(code)) => code,
        Err(e) => {
            output::failure(&e, json);
            e.status()
        }
    };
    ExitCode::from(code)
}

/// The flags every command takes.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--json`.
    pub json: bool,
    /// `--profile` / `BAMF_PROFILE`.
    pub profile: Option<ProfileName>,
    /// How to reach the API (proxies, `--debug`).
    pub net: Net,
}

fn run(cli: Cli) -> Result<()> {
    // Commands that need neither a login nor a runtime.
    match &cli.command {
        Command::Completions(args) => {
            output::raw(&complete::script(args.shell));
            return Ok(());
        }
        Command::DocsMarkdown => {
            output::raw(&docs::markdown());
            return Ok(());
        }
        _ => {}
    }
    let globals = Globals {
        json: cli.json,
        profile: cli.profile.clone(),
        net: Net::from_env(cli.debug)?,
    };
    match &cli.command {
        Command::Ssh(p) => return exec(&globals, Tool::Ssh, &p.args),
        Command::Scp(p) => return exec(&globals, Tool::Scp, &p.args),
        Command::Sftp(p) => return exec(&globals, Tool::Sftp, &p.args),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(dispatch(cli.command, globals));
    // A read of stdin blocked in a runtime thread must not hold the process open.
    runtime.shutdown_background();
    result
}

/// The OpenSSH tools replace this process; the login is checked first so that a missing one
/// is reported by us, not as an ssh connection failure.
fn exec(globals: &Globals, tool: Tool, args: &[String]) -> Result<()> {
    let profile = Home::locate()?.select(globals.profile.as_ref())?;
    let ctx = Ctx::load(profile, &globals.net)?;
    commands::ssh::exec(tool, ctx.profile.name(), args)
}

async fn dispatch(command: Command, globals: Globals) -> Result<()> {
    let home = Home::locate()?;
    let (json, net) = (globals.json, &globals.net);
    match command {
        Command::Login(args) => {
            let request = session::LoginRequest {
                api: args.api,
                user: args.user,
                via: args.via,
                profile: globals.profile.clone(),
                trust: trust::TrustArgs {
                    yes: args.yes,
                    ca_file: args.ca_file,
                    ca_fingerprint: args.ca_fingerprint,
                },
                password_stdin: args.password_stdin,
                sso: args.sso.map(|p| Some(p).filter(|p| !p.is_empty())),
                bot_token_file: args.bot_token_file,
                device: args.device,
            };
            session::login(home, net, request, json).await
        }
        Command::Logout => session::logout(home, net, globals.profile.as_ref(), json).await,
        Command::Profiles(ProfilesCommand::Ls) => session::profiles_ls(&home, json),
        Command::Profiles(ProfilesCommand::Use { name }) => {
            session::profiles_use(&home, &name, json)
        }
        Command::Profiles(ProfilesCommand::Rm { name }) => {
            session::profiles_rm(&home, net, &name, json).await
        }
        Command::Complete(args) => complete::candidates(&home, &globals, &args).await,
        command => {
            let profile = home.select(globals.profile.as_ref())?;
            let ctx = Arc::new(bot::renewed(Ctx::load(profile, net)?, net).await?);
            logged_in(ctx, command, json).await
        }
    }
}

async fn logged_in(ctx: Arc<Ctx>, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Status => session::status(&ctx, json).await,
        Command::Ls(args) => admin::resources(&ctx, &args, json).await,
        Command::Pipe(args) => {
            let resource = commands::pipe::resource_name(&args);
            commands::pipe::run(&ctx, &resource).await
        }
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
        Command::Bind(args) => admin::bind(&ctx, &args, true, json).await,
        Command::Unbind(args) => admin::bind(&ctx, &args, false, json).await,
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
        Command::Config(cli::ConfigCommand::Ssh(args)) => {
            sshconfig::print(&ctx, args.suffix.as_deref(), json).await
        }
        Command::Login(_)
        | Command::Logout
        | Command::Profiles(_)
        | Command::Ssh(_)
        | Command::Scp(_)
        | Command::Sftp(_)
        | Command::Completions(_)
        | Command::Complete(_)
        | Command::DocsMarkdown => Err(Error::msg("unreachable command dispatch")),
    }
}
