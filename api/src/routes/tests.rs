use std::collections::BTreeSet;

use super::*;

#[test]
fn paths_resolve_to_their_route_with_parameters() {
    let (route, params) = resolve(&Method::PUT, "/api/v1/users/alice/roles/dba").expect("route");
    assert_eq!(route.path, "/api/v1/users/{name}/roles/{role}");
    assert_eq!(params, ["alice", "dba"]);
    let (route, _) = resolve(&Method::POST, "/api/v1/agents/join").expect("route");
    assert_eq!(route.path, "/api/v1/agents/join");
    let (route, params) = resolve(&Method::DELETE, "/api/v1/agents/join").expect("route");
    assert_eq!((route.path, params), ("/api/v1/agents/{id}", vec!["join"]));
    for (method, path, want) in [
        (Method::GET, "/nope", ApiError::NotFound),
        (Method::GET, "/api/v1/users/", ApiError::NotFound),
        (Method::GET, "/api/v1/users/a/b", ApiError::NotFound),
        (Method::GET, "//health", ApiError::NotFound),
        (Method::GET, "/health/", ApiError::NotFound),
        (Method::DELETE, "/health", ApiError::MethodNotAllowed),
        (
            Method::GET,
            "/api/v1/users/alice",
            ApiError::MethodNotAllowed,
        ),
    ] {
        assert_eq!(
            resolve(&method, path).map(|(r, _)| r.path),
            Err(want),
            "{method} {path}"
        );
    }
}

#[test]
fn no_two_routes_overlap() {
    let mut seen = BTreeSet::new();
    for route in ROUTES {
        assert!(
            seen.insert((route.method.as_str(), route.path)),
            "{} {} twice",
            route.method,
            route.path
        );
        // Each route is reachable: its own template, with parameters filled in, resolves to it
        // (an earlier template would shadow it otherwise).
        let path = route
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let (found, _) = resolve(&route.method, &path).expect("resolves");
        assert_eq!(found.path, route.path, "{path} is shadowed");
    }
}

/// `docs/openapi.yaml` is exactly the document generated from [`ROUTES`] and the contract
/// types: a route added, a field renamed, added or removed in a request or answer type, or
/// an access changed, and this fails until the document is regenerated with
/// `BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi`.
#[test]
fn the_openapi_document_is_generated_from_the_routes_and_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let generated = crate::openapi::document();
    if std::env::var_os("BAMF_WRITE_OPENAPI").is_some() {
        let text = serde_yaml_ng::to_string(&generated).expect("yaml");
        std::fs::write(path, format!("# Generated from api/src/routes.rs and bamf_proto::api: do not edit.\n# BAMF_WRITE_OPENAPI=1 cargo test -p bamf-api openapi\n{text}")).expect("write");
    }
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    let committed: serde_json::Value = serde_yaml_ng::from_str(&text).expect("openapi.yaml parses");
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
    let generated = crate::openapi::document();
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

/// Every route's access appears in the document with matching security requirements.
#[test]
fn the_document_states_each_routes_access() {
    let doc = crate::openapi::document();
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert_eq!(
            op["x-bamf-access"],
            crate::openapi::access_name(route.access),
            "{} {}",
            route.method,
            route.path
        );
        let security = op["security"].as_array().expect("security").len();
        let want = match route.access {
            Access::Public | Access::JoinToken => 0,
            Access::UserOrCertificate => 2,
            _ => 1,
        };
        assert_eq!(security, want, "{} {}", route.method, route.path);
    }
}
