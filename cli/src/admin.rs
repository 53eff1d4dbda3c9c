//! The administrators' commands: users, roles, bindings, join tokens, agents, bridges,
//! sessions, audit and revocations. Each is one or two API calls; listings print a table, or
//! the API's items as JSON with `--json`.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{Value, json};

use crate::cli::{
    AgentsCommand, AuditArgs, BindArgs, BridgesCommand, JoinKind, JoinTokensCommand, LsArgs,
    RevocationsCommand, RolesCommand, RuleArgs, SessionState, SessionsCommand, UsersCommand,
};
use crate::error::{Error, Result};
use crate::output::{self, Cell, Style, Table};
use crate::session::Ctx;

/// `items` of a listing.
fn items(answer: &Value) -> Vec<Value> {
    answer["items"].as_array().cloned().unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Path segments are names and ids; anything else is escaped.
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn online(v: &Value) -> Cell {
    if v == &Value::Bool(true) {
        Cell::styled("online", Style::Green)
    } else {
        Cell::styled("offline", Style::Red)
    }
}

fn labels(v: &Value) -> String {
    let Some(map) = v.as_object().filter(|m| !m.is_empty()) else {
        return "-".into();
    };
    map.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
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
    let listed = items(&ctx.call(Method::GET, "/api/v1/resources", None).await?);
    let shown: Vec<Value> = listed
        .into_iter()
        .filter(|r| args.kind.as_deref().is_none_or(|k| r["kind"] == k))
        .filter(|r| wanted.iter().all(|(k, v)| r["labels"][k] == v.as_str()))
        .collect();
    if json {
        output::json(&Value::Array(shown));
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "KIND", "LABELS", "AGENT", "STATE"]);
    for r in &shown {
        table.row(vec![
            text(&r["name"]).into(),
            text(&r["kind"]).into(),
            labels(&r["labels"]).into(),
            text(&r["agent"]).into(),
            online(&r["online"]),
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
            let listed = items(&ctx.call(Method::GET, "/api/v1/users", None).await?);
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ROLES", "CREATED"]);
            for u in &listed {
                let roles = u["roles"]
                    .as_array()
                    .map(|r| r.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                table.row(vec![
                    text(&u["name"]).into(),
                    roles.into(),
                    output::time(u["created_at"].as_i64()).into(),
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
            let body = json!({"name": name, "password": password, "roles": roles});
            ctx.call(Method::POST, "/api/v1/users", Some(&body)).await?;
            output::note(format!("created user {name}"));
        }
        UsersCommand::Rm { name } => {
            let path = format!("/api/v1/users/{}", segment(&name));
            ctx.call(Method::DELETE, &path, None).await?;
            output::note(format!("deleted user {name}"));
        }
        UsersCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = new_password(&name, password_stdin)?;
            let path = format!("/api/v1/users/{}/password", segment(&name));
            ctx.call(Method::PUT, &path, Some(&json!({"password": password})))
                .await?;
            output::note(format!("set the password of {name}"));
        }
    }
    Ok(())
}

/// One rule from flags, or `None` when no selector was given.
fn rule(
    names: &[String],
    kinds: &[String],
    labels: &[String],
    side: &str,
) -> Result<Option<Value>> {
    let labels = pairs(&format!("{side}-label"), labels)?;
    if names.is_empty() && kinds.is_empty() && labels.is_empty() {
        return Ok(None);
    }
    let mut rule = serde_json::Map::new();
    if !names.is_empty() {
        rule.insert("names".into(), json!(names));
    }
    if !kinds.is_empty() {
        rule.insert("kinds".into(), json!(kinds));
    }
    if !labels.is_empty() {
        rule.insert("labels".into(), json!(labels));
    }
    Ok(Some(Value::Object(rule)))
}

/// `{"allow": […], "deny": […]}` from flags or the rules file.
fn rules(args: &RuleArgs) -> Result<Value> {
    if let Some(path) = &args.rules_file {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::msg(format!("reading rules from stdin: {e}")))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
        };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: not JSON: {e}", path.display())))?;
        let Some(object) = v.as_object() else {
            return Err(Error::msg(format!(
                "{}: expected {{\"allow\": [...], \"deny\": [...]}}",
                path.display()
            )));
        };
        return Ok(json!({
            "allow": object.get("allow").cloned().unwrap_or_else(|| json!([])),
            "deny": object.get("deny").cloned().unwrap_or_else(|| json!([])),
        }));
    }
    let allow = rule(
        &args.allow_names,
        &args.allow_kind,
        &args.allow_label,
        "allow",
    )?;
    let deny = rule(&args.deny_names, &args.deny_kind, &args.deny_label, "deny")?;
    Ok(json!({
        "allow": allow.into_iter().collect::<Vec<_>>(),
        "deny": deny.into_iter().collect::<Vec<_>>(),
    }))
}

/// A rule in one line: `names=db-*,web-* kinds=postgres labels=env=dev`.
fn rule_text(rule: &Value) -> String {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let mut parts = Vec::new();
    if rule["names"].is_array() {
        parts.push(format!("names={}", list(&rule["names"])));
    }
    if rule["kinds"].is_array() {
        parts.push(format!("kinds={}", list(&rule["kinds"])));
    }
    if rule["labels"].is_object() {
        parts.push(format!("labels={}", labels(&rule["labels"])));
    }
    parts.join(" ")
}

fn rules_text(rules: &Value) -> String {
    match rules.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(rule_text).collect::<Vec<_>>().join(" | "),
        _ => "-".into(),
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
            let listed = items(&ctx.call(Method::GET, "/api/v1/roles", None).await?);
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ALLOW", "DENY", "BUILT-IN"]);
            for r in &listed {
                table.row(vec![
                    text(&r["name"]).into(),
                    rules_text(&r["allow"]).into(),
                    rules_text(&r["deny"]).into(),
                    if r["builtin"] == true { "yes" } else { "no" }.into(),
                ]);
            }
            table.print("no roles");
        }
        RolesCommand::Add { name, rules: args } => {
            let mut body = rules(&args)?;
            body["name"] = json!(name);
            ctx.call(Method::POST, "/api/v1/roles", Some(&body)).await?;
            output::note(format!("created role {name}"));
        }
        RolesCommand::Set { name, rules: args } => {
            let body = rules(&args)?;
            let path = format!("/api/v1/roles/{}", segment(&name));
            ctx.call(Method::PUT, &path, Some(&body)).await?;
            output::note(format!("replaced the rules of role {name}"));
        }
        RolesCommand::Rm { name } => {
            let path = format!("/api/v1/roles/{}", segment(&name));
            ctx.call(Method::DELETE, &path, None).await?;
            output::note(format!("deleted role {name}"));
        }
    }
    Ok(())
}

/// `bamf bind` (`bind = true`) and `bamf unbind`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn bind(ctx: &Ctx, args: &BindArgs, bind: bool) -> Result<()> {
    let path = format!(
        "/api/v1/users/{}/roles/{}",
        segment(&args.user),
        segment(&args.role)
    );
    let method = if bind { Method::PUT } else { Method::DELETE };
    ctx.call(method, &path, None).await?;
    if bind {
        output::note(format!("{} now has role {}", args.user, args.role));
    } else {
        output::note(format!("{} no longer has role {}", args.user, args.role));
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
                JoinKind::Agent => "agent",
                JoinKind::Bridge => "bridge",
            };
            let body = json!({"kind": kind, "ttl_seconds": ttl.as_secs(), "max_uses": max_uses});
            let answer = ctx
                .call(Method::POST, "/api/v1/join-tokens", Some(&body))
                .await?;
            if json {
                output::json(&answer);
                return Ok(());
            }
            output::line(text(&answer["token"]));
            output::note(format!(
                "join token {} for {kind}s: {} use(s), expires {} ({}); it is shown only once",
                text(&answer["id"]),
                text(&answer["max_uses"]),
                output::time(answer["expires_at"].as_i64()),
                output::relative(answer["expires_at"].as_i64().unwrap_or(0)),
            ));
        }
        JoinTokensCommand::Ls => {
            let listed = items(&ctx.call(Method::GET, "/api/v1/join-tokens", None).await?);
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&["ID", "KIND", "USES", "EXPIRES", "STATE", "CREATED BY"]);
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            for t in &listed {
                let expires = t["expires_at"].as_i64();
                let state = if t["revoked"] == true {
                    Cell::styled("revoked", Style::Red)
                } else if expires.is_some_and(|e| e <= now) {
                    Cell::styled("expired", Style::Dim)
                } else if t["uses"].as_i64() >= t["max_uses"].as_i64() {
                    Cell::styled("used up", Style::Dim)
                } else {
                    Cell::styled("valid", Style::Green)
                };
                table.row(vec![
                    text(&t["id"]).into(),
                    text(&t["kind"]).into(),
                    uses(&t["uses"], &t["max_uses"]).into(),
                    output::time(expires).into(),
                    state,
                    text(&t["created_by"]).into(),
                ]);
            }
            table.print("no join tokens");
        }
        JoinTokensCommand::Rm { id } => {
            let path = format!("/api/v1/join-tokens/{}", segment(&id));
            ctx.call(Method::DELETE, &path, None).await?;
            output::note(format!("revoked join token {id}"));
        }
    }
    Ok(())
}

/// `used/max`, with a standing token's huge maximum shown as unlimited.
fn uses(used: &Value, max: &Value) -> String {
    match max.as_u64() {
        Some(m) if m > u64::from(u32::MAX) => format!("{}/unlimited", text(used)),
        _ => format!("{}/{}", text(used), text(max)),
    }
}

/// `bamf agents …`.
///
/// # Errors
///
/// An unknown agent, or the API refuses or fails.
pub async fn agents(ctx: &Ctx, command: AgentsCommand, json: bool) -> Result<()> {
    let listed = items(&ctx.call(Method::GET, "/api/v1/agents", None).await?);
    match command {
        AgentsCommand::Ls => {
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&["ID", "NAME", "STATE", "JOINED", "LAST SEEN"]);
            for a in &listed {
                table.row(vec![
                    text(&a["id"]).into(),
                    text(&a["name"]).into(),
                    online(&a["online"]),
                    output::time(a["joined_at"].as_i64()).into(),
                    output::time(a["last_seen_at"].as_i64()).into(),
                ]);
            }
            table.print("no agents");
        }
        AgentsCommand::Rm { agent } => {
            let found = listed
                .iter()
                .find(|a| a["id"] == agent.as_str() || a["name"] == agent.as_str())
                .ok_or_else(|| Error::msg(format!("there is no agent '{agent}'")))?;
            let id = text(&found["id"]);
            ctx.call(
                Method::DELETE,
                &format!("/api/v1/agents/{}", segment(&id)),
                None,
            )
            .await?;
            output::note(format!(
                "deleted agent {} ({id}); its certificates are revoked",
                text(&found["name"])
            ));
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
    let listed = items(&ctx.call(Method::GET, "/api/v1/bridges", None).await?);
    if json {
        output::json(&Value::Array(listed));
        return Ok(());
    }
    let mut table = Table::new(&["ORDINAL", "HOST", "STATE", "LOAD", "LAST SEEN"]);
    for b in &listed {
        let state = if b["online"] != true {
            Cell::styled("offline", Style::Red)
        } else if b["draining"] == true {
            Cell::styled("draining", Style::Yellow)
        } else {
            Cell::styled("online", Style::Green)
        };
        table.row(vec![
            text(&b["ordinal"]).into(),
            text(&b["host"]).into(),
            state,
            text(&b["load"]).into(),
            output::time(b["last_seen_at"].as_i64()).into(),
        ]);
    }
    table.print("no bridges");
    Ok(())
}

/// A query string from the pairs whose value is present.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// `bamf sessions …`.
///
/// # Errors
///
/// The API refuses or fails.
pub async fn sessions(ctx: &Ctx, command: SessionsCommand, json: bool) -> Result<()> {
    match command {
        SessionsCommand::Ls { state, user, limit } => {
            let state = state.map(|s| {
                match s {
                    SessionState::Pending => "pending",
                    SessionState::Active => "active",
                    SessionState::Ended => "ended",
                }
                .to_owned()
            });
            let path = format!(
                "/api/v1/sessions{}",
                query(&[
                    ("state", state),
                    ("user", user),
                    ("limit", Some(limit.to_string()))
                ])
            );
            let listed = items(&ctx.call(Method::GET, &path, None).await?);
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&[
                "ID", "USER", "RESOURCE", "STATE", "BRIDGE", "CREATED", "UP", "DOWN", "END",
            ]);
            for s in &listed {
                let state = match s["state"].as_str() {
                    Some("active") => Cell::styled("active", Style::Green),
                    Some("pending") => Cell::styled("pending", Style::Yellow),
                    other => Cell::new(other.unwrap_or("-")),
                };
                let size = |v: &Value| output::bytes(v.as_u64().unwrap_or(0));
                table.row(vec![
                    text(&s["id"]).into(),
                    text(&s["user"]).into(),
                    text(&s["resource"]).into(),
                    state,
                    text(&s["bridge"]).into(),
                    output::time(s["created_at_ms"].as_i64().map(|t| t / 1000)).into(),
                    size(&s["bytes_up"]).into(),
                    size(&s["bytes_down"]).into(),
                    text(&s["end_reason"]).into(),
                ]);
            }
            table.print("no sessions");
        }
        SessionsCommand::Kill { id } => {
            let path = format!("/api/v1/sessions/{}", segment(&id));
            ctx.call(Method::DELETE, &path, None).await?;
            output::note(format!(
                "ended session {id}; its bridge closes the tunnel within a heartbeat"
            ));
        }
    }
    Ok(())
}

/// `--since`/`--until`: a duration ago, an RFC 3339 date-time, or Unix seconds.
fn when(flag: &str, text: &str) -> Result<String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.to_string());
    }
    let now = std::time::SystemTime::now();
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago)
    } else {
        humantime::parse_rfc3339_weak(text).ok()
    };
    at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().to_string())
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
    let mut cursor = args.cursor.clone();
    let mut all = Vec::new();
    let next = loop {
        let path = format!(
            "/api/v1/audit{}",
            query(&[
                ("actor", args.actor.clone()),
                ("kind", args.kind.clone()),
                ("since", since.clone()),
                ("until", until.clone()),
                ("cursor", cursor.clone()),
                ("limit", Some(args.limit.to_string())),
            ])
        );
        let page = ctx.call(Method::GET, &path, None).await?;
        all.extend(items(&page));
        let next = page["next_cursor"].as_str().map(str::to_owned);
        match next {
            Some(next) if args.all => cursor = Some(next),
            other => break other,
        }
    };
    if json {
        output::json(&Value::Array(all));
    } else {
        let mut table = Table::new(&["TIME", "ACTOR", "KIND", "OUTCOME", "DETAIL"]);
        for e in &all {
            let outcome = match e["outcome"].as_str() {
                Some("allowed") => Cell::styled("allowed", Style::Green),
                Some(o @ ("denied" | "rate_limited" | "failed")) => Cell::styled(o, Style::Red),
                other => Cell::new(other.unwrap_or("-")),
            };
            table.row(vec![
                output::time(e["at_ms"].as_i64().map(|t| t / 1000)).into(),
                text(&e["actor"]).into(),
                text(&e["kind"]).into(),
                outcome,
                e["detail"].to_string().into(),
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
            let listed = items(&ctx.call(Method::GET, "/api/v1/revocations", None).await?);
            if json {
                output::json(&Value::Array(listed));
                return Ok(());
            }
            let mut table = Table::new(&["SERIAL", "FINGERPRINT", "REASON", "BY", "AT"]);
            for r in &listed {
                let fp = text(&r["fingerprint"]);
                let short = fp.get(..16).map_or(fp.clone(), |s| format!("{s}…"));
                table.row(vec![
                    text(&r["serial"]).into(),
                    short.into(),
                    text(&r["reason"]).into(),
                    text(&r["revoked_by"]).into(),
                    output::time(r["revoked_at"].as_i64()).into(),
                ]);
            }
            table.print("no revocations");
        }
        RevocationsCommand::Add {
            serial,
            fingerprint,
            reason,
        } => {
            let mut body = json!({"reason": reason});
            if let Some(serial) = serial {
                body["serial"] = json!(serial);
            }
            if let Some(fingerprint) = fingerprint {
                body["fingerprint"] = json!(fingerprint);
            }
            let answer = ctx
                .call(Method::POST, "/api/v1/revocations", Some(&body))
                .await?;
            if json {
                output::json(&answer);
            } else {
                output::note("revoked");
            }
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

    fn role_rules(args: &[&str]) -> Result<Value> {
        let mut all = vec!["bamf", "roles", "add", "r"];
        all.extend_from_slice(args);
        let Command::Roles(RolesCommand::Add { rules: r, .. }) =
            Cli::try_parse_from(all).unwrap().command
        else {
            panic!("not roles add");
        };
        rules(&r)
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
            json!({
                "allow": [{"names": ["db-*", "web-*"], "kinds": ["postgres"], "labels": {"env": "dev"}}],
                "deny": [{"labels": {"tier": "prod"}}],
            })
        );
        assert_eq!(role_rules(&[]).unwrap(), json!({"allow": [], "deny": []}));
        assert!(role_rules(&["--allow-label", "novalue"]).is_err());
        assert_eq!(
            rules_text(&v["allow"]),
            "names=db-*,web-* kinds=postgres labels=env=dev"
        );
    }

    #[test]
    fn times_for_audit_filters() {
        assert_eq!(when("since", "1700000000").unwrap(), "1700000000");
        assert_eq!(when("since", "2023-11-14T22:13:20Z").unwrap(), "1700000000");
        let hour_ago: i64 = when("since", "1h").unwrap().parse().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 3601..=now - 3599).contains(&hour_ago));
        assert!(when("since", "yesterday-ish").is_err());
        assert_eq!(
            query(&[("a", None), ("user", Some("a b".into()))]),
            "?user=a+b"
        );
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
