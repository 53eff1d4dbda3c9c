//! `bamf pipe RESOURCE`: stdin and stdout through a tunnel (ssh's ProxyCommand).

use crate::connect;
use crate::error::Result;
use crate::session::Ctx;

/// Opens one session to `resource` and carries stdin/stdout until the far side closes.
///
/// # Errors
///
/// The session cannot be opened, or the tunnel fails.
pub async fn run(ctx: &Ctx, resource: &str) -> Result<()> {
    connect::check_name(resource)?;
    let tunnel = connect::open(ctx, resource).await?;
    connect::splice_stdio(ctx, resource, tunnel).await
}
