//! `bamf pipe RESOURCE`: stdin and stdout through a tunnel (ssh's ProxyCommand).

use crate::cli::PipeArgs;
use crate::connect;
use crate::error::Result;
use crate::session::Ctx;

/// The resource `args` name: with `--strip-suffix`, the host name without it (ssh passes
/// `RESOURCE.SUFFIX` as `%h`; the API only ever sees `RESOURCE`). The comparison ignores
/// case, as host names do.
pub fn resource_name(args: &PipeArgs) -> String {
    let name = args.resource.trim_end_matches('.');
    let Some(suffix) = args
        .strip_suffix
        .as_deref()
        .map(|s| s.trim_matches('.'))
        .filter(|s| !s.is_empty())
    else {
        return name.to_owned();
    };
    // `web-1.bamf` with the suffix `bamf` or `.bamf` alike; never `webbamf`.
    let suffix = format!(".{suffix}");
    match name.len().checked_sub(suffix.len()) {
        Some(cut)
            if cut > 0
                && name.is_char_boundary(cut)
                && name[cut..].eq_ignore_ascii_case(&suffix) =>
        {
            name[..cut].to_owned()
        }
        _ => name.to_owned(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(resource: &str, suffix: Option<&str>) -> String {
        resource_name(&PipeArgs {
            resource: resource.into(),
            strip_suffix: suffix.map(Into::into),
        })
    }

    #[test]
    fn the_alias_suffix_is_stripped() {
        assert_eq!(name("web-1.bamf", Some(".bamf")), "web-1");
        assert_eq!(name("web-1.bamf", Some("bamf")), "web-1");
        assert_eq!(name("WEB-1.BAMF", Some(".bamf")), "WEB-1");
        assert_eq!(name("db.prod.bamf", Some(".bamf")), "db.prod");
        assert_eq!(name("web-1", Some(".bamf")), "web-1");
        assert_eq!(name(".bamf", Some(".bamf")), ".bamf");
        assert_eq!(name("webbamf", Some("bamf")), "webbamf");
        assert_eq!(name("web-1.bamf", None), "web-1.bamf");
    }
}
