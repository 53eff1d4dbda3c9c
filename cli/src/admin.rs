//! The administrators' commands: users, roles, bindings, join tokens, agents, bridges,
//! sessions, audit and revocations. Each is one or two API calls; listings print a table, or
//! the API's items as JSON with `--json`.

use std::collections::BTreeMap;

use bamf_client::api::UserApi;
use bamf_proto::api::{
    AuditQuery, JoinTokenRequest, PasswordRequest, RevocationRequest, RoleRequest, SessionQuery,
    UserRequest,
};
use bamf_proto::rbac::{Rule, Rules};
use serde::Serialize;

use crate::cli::{
    AgentsCommand, AuditArgs, BindArgs, BridgesCommand, JoinKind, JoinTokensCommand, LsArgs,
    RevocationsCommand, RolesCommand, RuleArgs, SessionState, SessionsCommand, UsersCommand,
};
use crate::error::{Error, Result, Status};
use crate::output::{self, Cell, Style, Table};
use crate::session::Ctx;

/// An optional value, or `-`.
fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Unix milliseconds as the seconds [`output::time`] shows.
fn secs(ms: Option<i64>) -> Option<i64> {
    ms.map(|t| t / 1000)
}

fn online(online: bool) -> Cell {
    if online {
        Cell::styled("online", Style::Green)
    } else {
        Cell::styled("offline", Style::Red)
    }
}

fn labels(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A listing as JSON on stdout (`--json`): the API's items, as the API names their fields.
fn print_json<T: Serialize>(items: &T) {
    output::json(&serde_json::to_value(items).unwrap_or_default());
}

/// What a mutation did: `value` as JSON on stdout with `--json`, else `note` on stderr.
fn done(json: bool, value: serde_json::Value, note: String) {
    if json {
        output::json(&value);
    } else {
        output::note(note);
    }
}

/// The API as the logged-in user.
fn api(ctx: &Ctx) -> UserApi<'_> {
    ctx.user()
}

/// `k=v` pairs from flags.
fn pairs(flag: &str, given: &[String]) -> Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::msg(format!("--{flag} '{p}': expected KEY=VALUE"))),
        })
        .collect()
}

/// `bamf ls`.
///
/// # Errors
///
/// The API call fails.
pub async fn resources(ctx: &Ctx, args: &LsArgs, json: bool) -> Result<()> {
    let wanted = pairs("label", &args.label)?;
    let listed = api(ctx).resources().await.map_err(Error::api)?.items;
    let shown: Vec<_> = listed
        .into_iter()
        .filter(|r| args.kind.as_deref().is_none_or(|k| r.kind.as_str() == k))
        .filter(|r| wanted.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
        .collect();
    if json {
        print_json(&shown);
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "KIND", "LABELS", "AGENT", "STATE"]);
    for r in &shown {
        table.row(vec![
            r.name.clone().into(),
            r.kind.as_str().into(),
            labels(&r.labels).into(),
            r.agent.clone().into(),
            online(r.online),
        ]);
    }
    table.print("no resources you may reach (an administrator grants them with roles)");
    Ok(())
}

/// Reads a new password: stdin with `--password-stdin`, else twice on the terminal.
fn new_password(user: &str, from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::msg(format!("reading the password from stdin: {e}")))?;
        let password = text.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(Error::msg("no password on stdin"));
        }
        return Ok(password);
    }
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt).map_err(|e| {
            Error::msg(format!(
                "cannot ask for the password ({e}): pass it on stdin with --password-stdin"
            ))
        })
    };
    let first = ask(format!("new password for {user}: "))?;
    let second = ask("again: ".to_owned())?;
    if first != second {
        return Err(Error::msg("the passwords differ"));
    }
    Ok(first)
}

/// `bamf users …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn users(ctx: &Ctx, command: UsersCommand, json: bool) -> Result<()> {
    match command {
        UsersCommand::Ls => {
            let listed = api(ctx).users().await.map_err(Error::api)?.items;
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ROLES", "CREATED"]);
            for u in &listed {
                table.row(vec![
                    u.name.clone().into(),
                    u.roles.join(",").into(),
                    output::time(secs(Some(u.created_at_ms))).into(),
                ]);
            }
            table.print("no users");
        }
        UsersCommand::Add {
            name,
            roles,
            password_stdin,
        } => {
            let password = new_password(&name, password_stdin)?;
            let request = UserRequest {
                name: name.clone(),
                password,
                roles,
            };
            let created = api(ctx).create_user(&request).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"created": "user", "user": created}),
                format!("created user {name}"),
            );
        }
        UsersCommand::Rm { name } => {
            api(ctx).delete_user(&name).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"deleted": "user", "name": name}),
                format!("deleted user {name}"),
            );
        }
        UsersCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = new_password(&name, password_stdin)?;
            api(ctx)
                .set_password(&name, &PasswordRequest { password })
                .await
                .map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"updated": "password", "name": name}),
                format!("set the password of {name}"),
            );
        }
    }
    Ok(())
}

/// One rule from flags, or `None` when no selector was given.
fn rule(names: &[String], kinds: &[String], labels: &[String], side: &str) -> Result<Option<Rule>> {
    let labels = pairs(&format!("{side}-label"), labels)?;
    if names.is_empty() && kinds.is_empty() && labels.is_empty() {
        return Ok(None);
    }
    Ok(Some(Rule {
        names: names.to_vec(),
        kinds: kinds.to_vec(),
        labels,
    }))
}

/// The rules from flags or the rules file (`-` for stdin), checked as the API checks them.
fn rules(args: &RuleArgs) -> Result<Rules> {
    let rules = if let Some(path) = &args.rules_file {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::msg(format!("reading rules from stdin: {e}")))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
        };
        return Rules::from_json(&text).map_err(|e| {
            Error::msg(format!(
                "{}: {e} (expected {{\"allow\": [...], \"deny\": [...]}})",
                path.display()
            ))
        });
    } else {
        let allow = rule(
            &args.allow_names,
            &args.allow_kind,
            &args.allow_label,
            "allow",
        )?;
        let deny = rule(&args.deny_names, &args.deny_kind, &args.deny_label, "deny")?;
        Rules {
            allow: allow.into_iter().collect(),
            deny: deny.into_iter().collect(),
        }
    };
    rules.check().map_err(|e| Error::msg(e.to_string()))?;
    Ok(rules)
}

/// A rule in one line: `names=db-*,web-* kinds=postgres labels=env=dev`.
fn rule_text(rule: &Rule) -> String {
    let mut parts = Vec::new();
    if !rule.names.is_empty() {
        parts.push(format!("names={}", rule.names.join(",")));
    }
    if !rule.kinds.is_empty() {
        parts.push(format!("kinds={}", rule.kinds.join(",")));
    }
    if !rule.labels.is_empty() {
        parts.push(format!("labels={}", labels(&rule.labels)));
    }
    parts.join(" ")
}

fn rules_text(rules: &[Rule]) -> String {
    if rules.is_empty() {
        return "-".into();
    }
    rules.iter().map(rule_text).collect::<Vec<_>>().join(" | ")
}

fn role_request(name: Option<String>, rules: Rules) -> RoleRequest {
    RoleRequest {
        name,
        allow: rules.allow,
        deny: rules.deny,
    }
}

/// `bamf roles …`.
///
/// # Errors
///
/// Bad rule flags, or the API refuses or fails.
pub async fn roles(ctx: &Ctx, command: RolesCommand, json: bool) -> Result<()> {
    match command {
        RolesCommand::Ls => {
            let listed = api(ctx).roles().await.map_err(Error::api)?.items;
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ALLOW", "DENY", "BUILT-IN"]);
            for r in &listed {
                table.row(vec![
                    r.name.clone().into(),
                    rules_text(&r.allow).into(),
                    rules_text(&r.deny).into(),
                    if r.builtin { "yes" } else { "no" }.into(),
                ]);
            }
            table.print("no roles");
        }
        RolesCommand::Add { name, rules: args } => {
            let request = role_request(Some(name.clone()), rules(&args)?);
            let created = api(ctx).create_role(&request).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"created": "role", "role": created}),
                format!("created role {name}"),
            );
        }
        RolesCommand::Set { name, rules: args } => {
            let request = role_request(None, rules(&args)?);
            let updated = api(ctx)
                .update_role(&name, &request)
                .await
                .map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"updated": "role", "role": updated}),
                format!("replaced the rules of role {name}"),
            );
        }
        RolesCommand::Rm { name } => {
            api(ctx).delete_role(&name).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"deleted": "role", "name": name}),
                format!("deleted role {name}"),
            );
        }
    }
    Ok(())
}

/// `bamf bind` (`bind = true`) and `bamf unbind`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn bind(ctx: &Ctx, args: &BindArgs, bind: bool, json: bool) -> Result<()> {
    let answered = if bind {
        api(ctx).bind_role(&args.user, &args.role).await
    } else {
        api(ctx).unbind_role(&args.user, &args.role).await
    };
    answered.map_err(Error::api)?;
    let pair = serde_json::json!({"user": args.user, "role": args.role});
    let value = if bind {
        serde_json::json!({ "bound": pair })
    } else {
        serde_json::json!({ "unbound": pair })
    };
    if bind {
        done(
            json,
            value,
            format!("{} now has role {}", args.user, args.role),
        );
    } else {
        done(
            json,
            value,
            format!("{} no longer has role {}", args.user, args.role),
        );
    }
    Ok(())
}

/// `bamf join-tokens …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn join_tokens(ctx: &Ctx, command: JoinTokensCommand, json: bool) -> Result<()> {
    match command {
        JoinTokensCommand::Create {
            kind,
            ttl,
            max_uses,
        } => {
            let kind = match kind {
                JoinKind::Agent => bamf_proto::api::JoinKind::Agent,
                JoinKind::Bridge => bamf_proto::api::JoinKind::Bridge,
            };
            let request = JoinTokenRequest {
                kind,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                max_uses: max_uses.into(),
            };
            let answer = api(ctx)
                .create_join_token(&request)
                .await
                .map_err(Error::api)?;
            if json {
                print_json(&answer);
                return Ok(());
            }
            output::line(&answer.token);
            let expires = answer.expires_at_ms / 1000;
            output::note(format!(
                "join token {} for {}s: {} use(s), expires {} ({}); it is shown only once",
                answer.id,
                kind.as_str(),
                answer.max_uses,
                output::time(Some(expires)),
                output::relative(expires),
            ));
        }
        JoinTokensCommand::Ls => {
            let listed = api(ctx).join_tokens().await.map_err(Error::api)?.items;
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["ID", "KIND", "USES", "EXPIRES", "STATE", "CREATED BY"]);
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            for t in &listed {
                let expires = t.expires_at_ms / 1000;
                let state = if t.revoked {
                    Cell::styled("revoked", Style::Red)
                } else if expires <= now {
                    Cell::styled("expired", Style::Dim)
                } else if t.uses >= t.max_uses {
                    Cell::styled("used up", Style::Dim)
                } else {
                    Cell::styled("valid", Style::Green)
                };
                table.row(vec![
                    t.id.clone().into(),
                    t.kind.as_str().into(),
                    uses(t.uses, t.max_uses).into(),
                    output::time(Some(expires)).into(),
                    state,
                    t.created_by.clone().into(),
                ]);
            }
            table.print("no join tokens");
        }
        JoinTokensCommand::Rm { id } => {
            api(ctx).revoke_join_token(&id).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"revoked": "join_token", "id": id}),
                format!("revoked join token {id}"),
            );
        }
    }
    Ok(())
}

/// `used/max`, with a standing token's huge maximum shown as unlimited.
fn uses(used: i64, max: i64) -> String {
    if max > i64::from(u32::MAX) {
        format!("{used}/unlimited")
    } else {
        format!("{used}/{max}")
    }
}

/// `bamf agents …`.
///
/// # Errors
///
/// An unknown agent, or the API refuses or fails.
pub async fn agents(ctx: &Ctx, command: AgentsCommand, json: bool) -> Result<()> {
    let listed = api(ctx).agents().await.map_err(Error::api)?.items;
    match command {
        AgentsCommand::Ls => {
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["ID", "NAME", "STATE", "JOINED", "LAST SEEN"]);
            for a in &listed {
                table.row(vec![
                    a.id.clone().into(),
                    a.name.clone().into(),
                    online(a.online),
                    output::time(secs(Some(a.joined_at_ms))).into(),
                    output::time(secs(a.last_seen_at_ms)).into(),
                ]);
            }
            table.print("no agents");
        }
        AgentsCommand::Rm { agent } => {
            let found = listed
                .iter()
                .find(|a| a.id == agent || a.name == agent)
                .ok_or_else(|| {
                    Error::of(Status::NotFound, format!("there is no agent '{agent}'"))
                })?;
            api(ctx).delete_agent(&found.id).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"deleted": "agent", "id": found.id, "name": found.name}),
                format!(
                    "deleted agent {} ({}); its certificates are revoked",
                    found.name, found.id
                ),
            );
        }
    }
    Ok(())
}

/// `bamf bridges …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn bridges(ctx: &Ctx, command: BridgesCommand, json: bool) -> Result<()> {
    let BridgesCommand::Ls = command;
    let listed = api(ctx).bridges().await.map_err(Error::api)?.items;
    if json {
        print_json(&listed);
        return Ok(());
    }
    let mut table = Table::new(&["ORDINAL", "HOST", "STATE", "LOAD", "LAST SEEN"]);
    for b in &listed {
        let state = if !b.online {
            Cell::styled("offline", Style::Red)
        } else if b.draining {
            Cell::styled("draining", Style::Yellow)
        } else {
            Cell::styled("online", Style::Green)
        };
        table.row(vec![
            b.ordinal.to_string().into(),
            b.host.clone().into(),
            state,
            or_dash(b.load).into(),
            output::time(secs(b.last_seen_at_ms)).into(),
        ]);
    }
    table.print("no bridges");
    Ok(())
}

/// `bamf sessions …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn sessions(ctx: &Ctx, command: SessionsCommand, json: bool) -> Result<()> {
    match command {
        SessionsCommand::Ls { state, user, limit } => {
            use bamf_proto::api::SessionState as S;
            let query = SessionQuery {
                state: state.map(|s| match s {
                    SessionState::Pending => S::Pending,
                    SessionState::Active => S::Active,
                    SessionState::Ended => S::Ended,
                }),
                user,
                cursor: None,
                limit: Some(limit),
            };
            let listed = api(ctx).sessions(&query).await.map_err(Error::api)?.items;
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&[
                "ID", "USER", "RESOURCE", "STATE", "BRIDGE", "CREATED", "UP", "DOWN", "END",
            ]);
            for s in &listed {
                let state = match s.state {
                    S::Active => Cell::styled("active", Style::Green),
                    S::Pending => Cell::styled("pending", Style::Yellow),
                    S::Ended => Cell::new("ended"),
                };
                let size = |n: i64| output::bytes(u64::try_from(n).unwrap_or(0));
                table.row(vec![
                    s.id.clone().into(),
                    s.user.clone().into(),
                    s.resource.clone().into(),
                    state,
                    s.bridge.to_string().into(),
                    output::time(secs(Some(s.created_at_ms))).into(),
                    size(s.bytes_up).into(),
                    size(s.bytes_down).into(),
                    or_dash(s.end_reason.as_ref()).into(),
                ]);
            }
            table.print("no sessions");
        }
        SessionsCommand::Kill { id } => {
            api(ctx).kill_session(&id).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"killed": "session", "id": id}),
                format!("ended session {id}; its bridge closes the tunnel within a heartbeat"),
            );
        }
    }
    Ok(())
}

/// `--since`/`--until`: a duration ago, an RFC 3339 date-time, or Unix seconds; as the
/// API's Unix milliseconds.
fn when(flag: &str, text: &str) -> Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1000));
    }
    let now = std::time::SystemTime::now();
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago)
    } else {
        humantime::parse_rfc3339_weak(text).ok()
    };
    at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .ok_or_else(|| {
            Error::msg(format!(
                "--{flag} '{text}': expected a duration (1h), a date-time \
                 (2025-01-31T12:00:00Z) or Unix seconds"
            ))
        })
}

/// `bamf audit`.
///
/// # Errors
///
/// Bad time flags, or the API refuses or fails.
pub async fn audit(ctx: &Ctx, args: AuditArgs, json: bool) -> Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|t| when("since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| when("until", t))
        .transpose()?;
    let mut query = AuditQuery {
        actor: args.actor.clone(),
        kind: args.kind.clone(),
        since_ms: since,
        until_ms: until,
        cursor: args.cursor.clone(),
        limit: Some(args.limit),
    };
    let mut all = Vec::new();
    let next = loop {
        let page = api(ctx).audit(&query).await.map_err(Error::api)?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) if args.all => query.cursor = Some(next),
            other => break other,
        }
    };
    if json {
        // The cursor belongs to the answer: a script pages on with it.
        output::json(&serde_json::json!({"items": all, "next_cursor": next}));
        return Ok(());
    } else {
        let mut table = Table::new(&["TIME", "ACTOR", "KIND", "OUTCOME", "DETAIL"]);
        for e in &all {
            let outcome = match e.outcome.as_str() {
                "allowed" => Cell::styled("allowed", Style::Green),
                o @ ("denied" | "rate_limited" | "failed") => Cell::styled(o, Style::Red),
                other => Cell::new(other),
            };
            table.row(vec![
                output::time(secs(Some(e.at_ms))).into(),
                e.actor.clone().into(),
                e.kind.clone().into(),
                outcome,
                e.detail.to_string().into(),
            ]);
        }
        table.print("no audit events");
    }
    if let Some(next) = next {
        output::note(format!("more: bamf audit --cursor {next} (or --all)"));
    }
    Ok(())
}

/// `bamf revocations …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn revocations(ctx: &Ctx, command: RevocationsCommand, json: bool) -> Result<()> {
    match command {
        RevocationsCommand::Ls => {
            let listed = api(ctx).revocations().await.map_err(Error::api)?.items;
            if json {
                print_json(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["SERIAL", "FINGERPRINT", "REASON", "BY", "AT"]);
            for r in &listed {
                let fp = or_dash(r.fingerprint.as_ref());
                let short = fp.get(..16).map_or(fp.clone(), |s| format!("{s}…"));
                table.row(vec![
                    or_dash(r.serial.as_ref()).into(),
                    short.into(),
                    r.reason.clone().into(),
                    r.revoked_by.clone().into(),
                    output::time(secs(Some(r.revoked_at_ms))).into(),
                ]);
            }
            table.print("no revocations");
        }
        RevocationsCommand::Add {
            serial,
            fingerprint,
            reason,
        } => {
            let request = RevocationRequest {
                serial,
                fingerprint,
                reason,
            };
            let answer = api(ctx).revoke(&request).await.map_err(Error::api)?;
            done(
                json,
                serde_json::json!({"revoked": "certificate", "revocation": answer}),
                "revoked".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn role_rules(args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["bamf", "roles", "add", "r"];
        all.extend_from_slice(args);
        let Command::Roles(RolesCommand::Add { rules: r, .. }) =
            Cli::try_parse_from(all).unwrap().command
        else {
            panic!("not roles add");
        };
        rules(&r).map(|r| serde_json::to_value(r).unwrap())
    }

    #[test]
    fn rule_flags_make_one_allow_and_one_deny_rule() {
        let v = role_rules(&[
            "--allow-names",
            "db-*,web-*",
            "--allow-kind",
            "postgres",
            "--allow-label",
            "env=dev",
            "--deny-label",
            "tier=prod",
        ])
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "allow": [{"names": ["db-*", "web-*"], "kinds": ["postgres"], "labels": {"env": "dev"}}],
                "deny": [{"labels": {"tier": "prod"}}],
            })
        );
        assert_eq!(
            role_rules(&[]).unwrap(),
            serde_json::json!({"allow": [], "deny": []})
        );
        assert!(role_rules(&["--allow-label", "novalue"]).is_err());
        let typed: Rules = serde_json::from_value(v).unwrap();
        assert_eq!(
            rules_text(&typed.allow),
            "names=db-*,web-* kinds=postgres labels=env=dev"
        );
        // Checked before anything is sent, as the API checks them.
        assert!(role_rules(&["--allow-kind", "ftp"]).is_err());
    }

    #[test]
    fn times_for_audit_filters() {
        assert_eq!(when("since", "1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            when("since", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        let hour_ago = when("since", "1h").unwrap() / 1000;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 3601..=now - 3599).contains(&hour_ago));
        assert!(when("since", "yesterday-ish").is_err());
    }
}
