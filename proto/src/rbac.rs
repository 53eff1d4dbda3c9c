//! Role-based access control: which resources a user may reach.
//!
//! A role holds `allow` and `deny` rules. A rule selects resources by name patterns, kinds
//! and labels; every selector it gives must match. A user may reach a resource when some
//! rule of one of their roles allows it and no rule of any of their roles denies it: deny
//! wins, and without an allowing rule the answer is no (default deny). Every user holds the
//! built-in role [`EVERYONE`]; the built-in role [`ADMIN`] also grants the administrative
//! routes.
//!
//! Rules are parsed strictly at the edge (unknown fields, empty rules and malformed patterns
//! are refused), so evaluation cannot fail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resource::ResourceKind;

/// The built-in administrator role: every resource, and the admin routes.
pub const ADMIN: &str = "admin";
/// The built-in role every user holds, bound or not.
pub const EVERYONE: &str = "everyone";

/// A role's rules, as stored and as in the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Rules that grant access.
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Rules that take it away again; they win over `allow`.
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// One rule: it selects the resources that match every selector it gives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name patterns (`*` matches any run of characters); any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Resource kinds; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Label patterns; all must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Why rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Not the JSON shape of [`Rules`].
    #[error("rules: {0}")]
    Shape(String),
    /// A rule with no selector would match everything by accident; say `names: ["*"]`.
    #[error("rules: every rule needs names, kinds or labels (use names: [\"*\"] for all)")]
    EmptyRule,
    /// A kind other than [`ResourceKind::ALL`].
    #[error("rules: unknown kind {0:?} (expected ssh, postgres or tcp)")]
    Kind(String),
    /// An empty or overlong pattern or label key.
    #[error("rules: patterns and label keys must be 1-253 characters")]
    Pattern,
    /// More rules or selectors than a role may hold.
    #[error("rules: at most {MAX_RULES} rules with {MAX_SELECTORS} selectors each")]
    TooMany,
}

/// Most rules (allow + deny) in one role.
pub const MAX_RULES: usize = 256;
/// Most names, kinds or labels in one rule.
pub const MAX_SELECTORS: usize = 64;

impl Rules {
    /// Parses and checks rules from JSON.
    ///
    /// # Errors
    ///
    /// [`RulesError`].
    pub fn from_json(text: &str) -> Result<Self, RulesError> {
        let rules: Self =
            serde_json::from_str(text).map_err(|e| RulesError::Shape(schema_error(&e)))?;
        rules.check()?;
        Ok(rules)
    }

    /// Checks rules that arrived as a value.
    ///
    /// # Errors
    ///
    /// [`RulesError`].
    pub fn check(&self) -> Result<(), RulesError> {
        if self.allow.len() + self.deny.len() > MAX_RULES {
            return Err(RulesError::TooMany);
        }
        for rule in self.allow.iter().chain(&self.deny) {
            rule.check()?;
        }
        Ok(())
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// A serde error without the input's values (they are echoed in some messages).
fn schema_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("unknown field") || text.starts_with("missing field") {
        text.split(" at line").next().unwrap_or_default().to_owned()
    } else {
        format!("invalid at line {} column {}", e.line(), e.column())
    }
}

impl Rule {
    fn check(&self) -> Result<(), RulesError> {
        if self.names.is_empty() && self.kinds.is_empty() && self.labels.is_empty() {
            return Err(RulesError::EmptyRule);
        }
        if self.names.len() > MAX_SELECTORS
            || self.kinds.len() > MAX_SELECTORS
            || self.labels.len() > MAX_SELECTORS
        {
            return Err(RulesError::TooMany);
        }
        let ok = |s: &String| (1..=253).contains(&s.len());
        if !self.names.iter().all(ok)
            || !self.labels.keys().all(ok)
            || !self.labels.values().all(ok)
        {
            return Err(RulesError::Pattern);
        }
        if let Some(k) = self
            .kinds
            .iter()
            .find(|k| k.parse::<ResourceKind>().is_err())
        {
            return Err(RulesError::Kind(k.clone()));
        }
        Ok(())
    }

    /// Whether this rule selects `resource`.
    pub fn matches(&self, resource: &Resource<'_>) -> bool {
        (self.names.is_empty() || self.names.iter().any(|p| glob(p, resource.name)))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == resource.kind))
            && self.labels.iter().all(|(key, pattern)| {
                resource
                    .labels
                    .get(key)
                    .is_some_and(|value| glob(pattern, value))
            })
    }
}

/// What RBAC looks at.
#[derive(Debug, Clone, Copy)]
pub struct Resource<'a> {
    /// Its unique name.
    pub name: &'a str,
    /// `ssh`, `postgres` or `tcp`.
    pub kind: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The answer, with the role that decided it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `role` allows it and no role denies it.
    Allowed {
        /// The first role with an allowing rule.
        role: String,
    },
    /// `role` denies it (deny wins).
    Denied {
        /// The first role with a denying rule.
        role: String,
    },
    /// No role allows it.
    NoRule,
}

impl Decision {
    /// Whether access is granted.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }
}

/// Decides whether a holder of `roles` (name and rules) may reach `resource`.
pub fn decide<'r>(
    roles: impl IntoIterator<Item = (&'r str, &'r Rules)> + Clone,
    resource: &Resource<'_>,
) -> Decision {
    let first = |deny: bool| {
        roles.clone().into_iter().find_map(|(name, rules)| {
            let list = if deny { &rules.deny } else { &rules.allow };
            list.iter()
                .any(|r| r.matches(resource))
                .then(|| name.to_owned())
        })
    };
    if let Some(role) = first(true) {
        return Decision::Denied { role };
    }
    first(false).map_or(Decision::NoRule, |role| Decision::Allowed { role })
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(head) = parts.next() else {
        return false;
    };
    let Some(mut rest) = text.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((tail, middle)) = parts.split_last() else {
        // No `*` at all: exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= tail.len() && rest.ends_with(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("web", "web", true),
            ("web", "web1", false),
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*-prod", "db-prod", true),
            ("*-prod", "db-prod2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("ab*ba", "aba", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn deny_wins_and_default_is_deny() {
        let dev = labels(&[("env", "dev")]);
        let prod = labels(&[("env", "prod"), ("team", "db")]);
        let web = Resource {
            name: "web-1",
            kind: "ssh",
            labels: &dev,
        };
        let db = Resource {
            name: "db-1",
            kind: "postgres",
            labels: &prod,
        };
        let devs = Rules::from_json(
            r#"{"allow":[{"labels":{"env":"dev"}},{"kinds":["postgres"]}],
                "deny":[{"labels":{"env":"prod"}}]}"#,
        )
        .expect("valid");
        let dba = Rules::from_json(r#"{"allow":[{"names":["db-*"]}]}"#).expect("valid");
        let none = Rules::default();

        assert!(decide([("devs", &devs)], &web).allowed());
        // devs allow postgres but deny prod: deny wins.
        assert_eq!(
            decide([("devs", &devs)], &db),
            Decision::Denied {
                role: "devs".into()
            }
        );
        // A deny in one role beats an allow in another.
        assert_eq!(
            decide([("dba", &dba), ("devs", &devs)], &db),
            Decision::Denied {
                role: "devs".into()
            }
        );
        assert_eq!(
            decide([("dba", &dba)], &db),
            Decision::Allowed { role: "dba".into() }
        );
        // No role, or no rule that selects it: denied.
        assert_eq!(decide([], &web), Decision::NoRule);
        assert_eq!(decide([("none", &none)], &web), Decision::NoRule);
        assert_eq!(decide([("dba", &dba)], &web), Decision::NoRule);
    }

    #[test]
    fn every_selector_of_a_rule_must_match() {
        let l = labels(&[("env", "dev"), ("team", "web")]);
        let r = Resource {
            name: "web-1",
            kind: "ssh",
            labels: &l,
        };
        let rule = |json: &str| {
            Rules::from_json(&format!(r#"{{"allow":[{json}]}}"#))
                .expect("valid")
                .allow
                .remove(0)
        };
        assert!(rule(r#"{"names":["web-*"],"kinds":["ssh"],"labels":{"env":"dev"}}"#).matches(&r));
        assert!(!rule(r#"{"names":["web-*"],"kinds":["tcp"]}"#).matches(&r));
        assert!(!rule(r#"{"labels":{"env":"dev","team":"db"}}"#).matches(&r));
        assert!(rule(r#"{"labels":{"team":"*"}}"#).matches(&r));
        // A missing label never matches, not even `*`.
        assert!(!rule(r#"{"labels":{"owner":"*"}}"#).matches(&r));
    }

    #[test]
    fn malformed_rules_are_refused() {
        for (json, want) in [
            (r#"{"allow":[{}]}"#, RulesError::EmptyRule),
            (
                r#"{"allow":[{"kinds":["http"]}]}"#,
                RulesError::Kind("http".into()),
            ),
            (r#"{"deny":[{"names":[""]}]}"#, RulesError::Pattern),
        ] {
            assert_eq!(Rules::from_json(json), Err(want), "{json}");
        }
        assert!(matches!(
            Rules::from_json(r#"{"allow":[{"name":["x"]}]}"#),
            Err(RulesError::Shape(m)) if m.starts_with("unknown field `name`")
        ));
        assert!(matches!(
            Rules::from_json(r#"{"allow":"#),
            Err(RulesError::Shape(_))
        ));
        let many = format!(
            r#"{{"allow":[{}]}}"#,
            vec![r#"{"names":["*"]}"#; 300].join(",")
        );
        assert_eq!(Rules::from_json(&many), Err(RulesError::TooMany));
    }
}
