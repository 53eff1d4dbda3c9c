//! `bamf psql RESOURCE [-U USER] [-d DB] [-- PSQL ARGS…]`: psql against a local listener
//! that tunnels each connection to the resource; exits with psql's status.

use bamf_proto::api::ResourceKind;

use crate::commands::tcp;
use crate::connect;
use crate::error::{Error, Result};
use crate::output;
use crate::session::SharedCtx;

/// `bamf psql`.
///
/// # Errors
///
/// The resource is unknown, denied or offline; psql cannot be run or exits non-zero
/// ([`Error::Exit`] with its status).
pub async fn run(
    ctx: SharedCtx,
    resource: &str,
    user: Option<&str>,
    dbname: Option<&str>,
    args: &[String],
) -> Result<()> {
    let item = connect::preflight(&ctx, resource).await?;
    if let Some(kind) = item.map(|r| r.kind)
        && kind != ResourceKind::Postgres
    {
        output::warn(format!("'{resource}' is a {kind} resource, not postgres"));
    }
    let forward = tcp::listen(ctx, resource, 0).await?;
    let program = std::env::var("BAMF_PSQL").unwrap_or_else(|_| "psql".into());
    let mut psql = tokio::process::Command::new(&program);
    psql.args(["-h", "127.0.0.1", "-p", &forward.addr.port().to_string()]);
    if let Some(user) = user {
        psql.args(["-U", user]);
    }
    if let Some(dbname) = dbname {
        psql.args(["-d", dbname]);
    }
    psql.args(args);
    let code = tcp::run_child(psql).await.map_err(|e| {
        Error::msg(format!(
            "cannot run {program}: {e} (install the PostgreSQL client, e.g. postgresql-client)"
        ))
    })?;
    forward.close().await;
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Exit(code))
    }
}
