//! The OpenAPI document, generated from the route table ([`crate::routes::ROUTES`]) and the
//! contract types' schemas (`bamf_proto::api`), so it cannot drift from what the handlers
//! parse and answer. The API serves it at `/api/v1/openapi.json`; `docs/openapi.yaml` is the
//! same document, and a test fails when the committed file is not what this module makes
//! (`BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi` rewrites it).

use std::sync::OnceLock;

use bamf_proto::api::ErrorBody;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::routes::{Access, Answer, ROUTES, Route};

const DESCRIPTION: &str = "\
The `bamf-api` HTTPS API. Users authenticate with an API token from login \
(`Authorization: Bearer bamf_…`); agents and bridges with their client certificate in the \
TLS handshake (never a header). `x-bamf-access` names who may call each operation, as in the \
router's table (`api/src/routes.rs`), from which this document is generated.

Times are Unix milliseconds and durations milliseconds, in fields named `*_ms`. Listings \
answer `{\"items\": [...], \"next_cursor\": ...}`; ask again with `?cursor=<next_cursor>` for \
the next page. Requests refuse unknown fields; answers may gain fields, which clients ignore.

Every error is `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable `code`: \
`unauthenticated` (401), `forbidden` (403), `not_found` (404), `method_not_allowed` (405), \
`conflict` (409), `bad_request` (400), `payload_too_large` (413, bodies over 64 KiB), \
`rate_limited` (429, with `Retry-After`), `not_ready` (503: store or presence down), \
`offline` (503: the agent is offline or no bridge is live), `gone` (410), `internal` (500); \
for signing in: `local_login_disabled` (403: password login is off, use single sign-on), \
`unknown_provider` (404), `sso_refused` (401, with the reason: `unknown_flow`, `nonce`, \
`audience`, …), `provider_unavailable` (502: the identity provider failed).
";

/// The access names of `x-bamf-access`.
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::JoinToken => "join-token",
        Access::User => "user",
        Access::Admin => "admin",
        Access::Agent => "agent",
        Access::Bridge => "bridge",
        Access::UserOrCertificate => "user-or-certificate",
    }
}

fn security(access: Access) -> Value {
    match access {
        Access::Public | Access::JoinToken => json!([]),
        Access::User | Access::Admin => json!([{"bearer": []}]),
        Access::Agent | Access::Bridge => json!([{"mtls": []}]),
        Access::UserOrCertificate => json!([{"bearer": []}, {"mtls": []}]),
    }
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn operation(route: &Route, generator: &mut schemars::SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), route.summary.into());
    op.insert("x-bamf-access".into(), access_name(route.access).into());
    op.insert("security".into(), security(route.access));
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(
        route
            .query
            .iter()
            .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string"}})),
    );
    if !parameters.is_empty() {
        op.insert("parameters".into(), parameters.into());
    }
    if let Some(request) = route.request {
        let schema = serde_json::to_value(request(generator)).unwrap_or_default();
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": json_content(schema)}),
        );
    }
    let mut responses = Map::new();
    match route.answer {
        Answer::Json {
            status,
            also,
            schema,
        } => {
            let schema = serde_json::to_value(schema(generator)).unwrap_or_default();
            for status in std::iter::once(status).chain(also) {
                responses.insert(
                    status.as_str().to_owned(),
                    json!({"description": status.canonical_reason().unwrap_or("OK"),
                        "content": json_content(schema.clone())}),
                );
            }
        }
        Answer::NoContent => {
            responses.insert("204".into(), json!({"description": "Done."}));
        }
        Answer::Raw(media) => {
            responses.insert(
                "200".into(),
                json!({"description": "OK", "content": {media: {"schema": {"type": "string"}}}}),
            );
        }
    }
    responses.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    op.insert("responses".into(), responses.into());
    op.into()
}

/// The document, as a JSON value.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(item) = item.as_object_mut() {
            item.insert(
                route.method.as_str().to_ascii_lowercase(),
                operation(route, &mut generator),
            );
        }
    }
    let error = serde_json::to_value(generator.subschema_for::<ErrorBody>()).unwrap_or_default();
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "BAMF control plane API", "version": "1", "description": DESCRIPTION},
        "servers": [{"url": "https://localhost:8443"}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                    "description": "API token from `POST /api/v1/auth/login`."},
                "mtls": {"type": "mutualTLS",
                    "description": "Client certificate issued by the BAMF CA (agent or bridge, as the access says)."},
            },
            "responses": {
                "Error": {"description": "A refusal or failure.", "content": json_content(error)},
            },
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// The document as JSON text, made once.
pub fn document_json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| document().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `docs/openapi.yaml` is exactly the document generated from [`crate::routes::ROUTES`] and the contract
    /// types: a route added, a field renamed, added or removed in a request or answer type, or
    /// an access changed, and this fails until the document is regenerated with
    /// `BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi`.
    #[test]
    fn the_openapi_document_is_generated_from_the_routes_and_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
        let generated = document();
        if std::env::var_os("BAMF_WRITE_OPENAPI").is_some() {
            let text = serde_yaml_ng::to_string(&generated).expect("yaml");
            std::fs::write(path, format!("# Generated from api/src/routes.rs and bamf_proto::api: do not edit.\n# BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi\n{text}")).expect("write");
        }
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
        let committed: serde_json::Value =
            serde_yaml_ng::from_str(&text).expect("openapi.yaml parses");
        let mut differences = Vec::new();
        differ("", &committed, &generated, &mut differences);
        assert!(
            differences.is_empty(),
            "docs/openapi.yaml disagrees with the routes and contract types \
             (regenerate: BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi):\n{}",
            differences.join("\n")
        );
    }

    /// Where two JSON values differ, as JSON pointers.
    fn differ(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for key in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                    let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                    match (x.get(key), y.get(key)) {
                        (Some(p), Some(q)) => differ(&here, p, q, out),
                        (Some(_), None) => out.push(format!("{here}: only in docs/openapi.yaml")),
                        (None, _) => out.push(format!("{here}: missing from docs/openapi.yaml")),
                    }
                }
            }
            _ if a == b => {}
            _ => out.push(format!("{at}: documented {a}, generated {b}")),
        }
    }

    /// The check sees a single field: a renamed answer field is a difference.
    #[test]
    fn a_renamed_field_is_a_difference() {
        let generated = document();
        let mut changed = generated.clone();
        let schemas = changed
            .pointer_mut("/components/schemas")
            .and_then(|v| v.as_object_mut())
            .expect("schemas");
        let login = schemas
            .values_mut()
            .find(|s| s.pointer("/properties/token_expires_at_ms").is_some())
            .expect("the login answer's schema");
        let props = login["properties"].as_object_mut().expect("properties");
        let field = props.remove("token_expires_at_ms").expect("field");
        props.insert("token_expires_at".into(), field);
        let mut differences = Vec::new();
        differ("", &changed, &generated, &mut differences);
        assert_eq!(differences.len(), 2, "{differences:?}");
    }

    /// Every route is in the document, and each operation's security schemes are the ones
    /// its `x-bamf-access` means (read from the document's own words, so a drift between
    /// `access_name` and `security` fails here).
    #[test]
    fn each_operations_security_matches_its_access() {
        let doc = document();
        for route in ROUTES {
            let at = format!("{} {}", route.method, route.path);
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            let access = op["x-bamf-access"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}"));
            let schemes: BTreeSet<&str> = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: security"))
                .iter()
                .flat_map(|req| req.as_object().into_iter().flat_map(|o| o.keys()))
                .map(String::as_str)
                .collect();
            let want: BTreeSet<&str> = match access {
                "public" | "join-token" => BTreeSet::new(),
                "user" | "admin" => ["bearer"].into(),
                "agent" | "bridge" => ["mtls"].into(),
                "user-or-certificate" => ["bearer", "mtls"].into(),
                other => panic!("{at}: unknown x-bamf-access {other}"),
            };
            assert_eq!(schemes, want, "{at}");
        }
    }
}
