//! `bamf config ssh`: an `ssh_config` block so that plain OpenSSH (and everything built on
//! it: scp, rsync, git, Ansible, editors' remote modes) reaches resources as
//! `RESOURCE.SUFFIX`, with `bamf pipe` as the ProxyCommand.
//!
//! One `Host RESOURCE.SUFFIX` block per resource the user may reach sets `HostKeyAlias
//! RESOURCE` (the name `bamf ssh` records host keys under: `HostKeyAlias` takes no `%h`), then
//! `Host *.SUFFIX` sets the ProxyCommand for every name, resources added later included.
//! The suffix is stripped by `bamf pipe --strip-suffix` before the name reaches the API.

use crate::commands::ssh::shell_quote;
use crate::error::{Error, Result};
use crate::output;
use crate::session::Ctx;

/// The block for `profile` with `suffix`, naming `exe` (and `home` when `BAMF_HOME` was set)
/// in the ProxyCommand, with an alias block for each of `resources`.
fn render(
    exe: &str,
    home: Option<&str>,
    profile: &str,
    api: &str,
    suffix: &str,
    resources: &[String],
) -> String {
    let mut out = format!(
        "# BAMF: profile {profile} ({api}), written by `bamf config ssh`.\n\
         # Reach resources as RESOURCE.{suffix}: ssh user@web-1.{suffix}\n"
    );
    for name in resources {
        out.push_str(&format!("Host {name}.{suffix}\n    HostKeyAlias {name}\n"));
    }
    let env = home.map_or_else(String::new, |h| {
        format!("env BAMF_HOME={} ", shell_quote(h))
    });
    out.push_str(&format!(
        "Host *.{suffix}\n    ProxyCommand {env}{exe} --profile {profile} pipe \
         --strip-suffix .{suffix} %h\n",
        exe = shell_quote(exe),
    ));
    out
}

/// Whether `suffix` can follow `Host *.` in ssh_config: a DNS-like label sequence.
fn check_suffix(suffix: &str) -> Result<&str> {
    let suffix = suffix.trim_matches('.');
    let ok = !suffix.is_empty()
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(suffix)
    } else {
        Err(Error::usage(format!(
            "--suffix '{suffix}': use letters, digits, '.', '-' and '_'"
        )))
    }
}

/// `bamf config ssh`.
///
/// # Errors
///
/// A bad suffix, or the resource listing fails.
pub async fn print(ctx: &Ctx, suffix: Option<&str>, json: bool) -> Result<()> {
    let profile = ctx.profile.name().as_str();
    let suffix = check_suffix(suffix.unwrap_or(profile))?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::msg(format!("cannot find this program's path: {e}")))?;
    let exe = exe
        .to_str()
        .ok_or_else(|| Error::msg("the path of this program is not UTF-8"))?;
    let home = std::env::var("BAMF_HOME").ok().filter(|h| !h.is_empty());
    let mut resources: Vec<String> = ctx
        .user()
        .resources()
        .await
        .map_err(Error::api)?
        .items
        .into_iter()
        .map(|r| r.name)
        .collect();
    resources.sort();
    let text = render(
        exe,
        home.as_deref(),
        profile,
        &ctx.config.api,
        suffix,
        &resources,
    );
    if json {
        output::json(&serde_json::json!({
            "profile": profile,
            "suffix": suffix,
            "resources": resources,
            "ssh_config": text,
        }));
    } else {
        output::raw(&text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_aliases_each_resource_and_proxies_the_rest() {
        let text = render(
            "/opt/b a/bamf",
            Some("/home/x/.bamf"),
            "prod",
            "https://bamf.example.com",
            "prod",
            &["db-1".into(), "web-1".into()],
        );
        assert!(
            text.contains("Host web-1.prod\n    HostKeyAlias web-1\n"),
            "{text}"
        );
        assert!(
            text.contains("Host db-1.prod\n    HostKeyAlias db-1\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "Host *.prod\n    ProxyCommand env BAMF_HOME='/home/x/.bamf' '/opt/b a/bamf' \
                 --profile prod pipe --strip-suffix .prod %h\n"
            ),
            "{text}"
        );
        // Specific blocks first: ssh keeps the first value it finds for each option.
        assert!(text.find("Host web-1.prod").unwrap() < text.find("Host *.prod").unwrap());
        assert_eq!(check_suffix(".bamf.").unwrap(), "bamf");
        assert!(check_suffix("a b").is_err());
        assert!(check_suffix("").is_err());
    }
}
