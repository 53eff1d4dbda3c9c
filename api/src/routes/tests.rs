use std::collections::BTreeSet;

use super::*;

#[test]
fn paths_resolve_to_their_route_with_parameters() {
    let (route, params) = resolve(&Method::PUT, "/api/v1/users/alice/roles/dba").expect("route");
    assert_eq!(route.endpoint, E::BindRole);
    assert_eq!(params, ["alice", "dba"]);
    let (route, _) = resolve(&Method::POST, "/api/v1/agents/join").expect("route");
    assert_eq!(route.endpoint, E::JoinAgent);
    let (route, params) = resolve(&Method::DELETE, "/api/v1/agents/join").expect("route");
    assert_eq!((route.endpoint, params), (E::DeleteAgent, vec!["join"]));
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
        assert_eq!(found.endpoint, route.endpoint, "{path} is shadowed");
    }
}

/// Follows a local `$ref` (`#/a/b/c`).
fn resolve_ref<'d>(doc: &'d serde_json::Value, v: &'d serde_json::Value) -> &'d serde_json::Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).expect("$ref resolves"),
        None => v,
    }
}

fn access_name(access: Access) -> &'static str {
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

/// `docs/openapi.yaml` and [`ROUTES`] describe the same API: the same operations, each with
/// the same access (`x-bamf-access`) and security requirements that match it.
#[test]
fn the_openapi_document_and_the_router_agree() {
    let text = include_str!("../../../docs/openapi.yaml");
    let doc: serde_json::Value = serde_yaml_ng::from_str(text).expect("openapi.yaml parses");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let mut documented = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if method == "parameters" {
                continue;
            }
            let access = op["x-bamf-access"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: x-bamf-access missing"));
            let security: BTreeSet<String> = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: security missing"))
                .iter()
                .flat_map(|req| req.as_object().into_iter().flat_map(|o| o.keys().cloned()))
                .collect();
            let want: BTreeSet<String> = match access {
                "public" | "join-token" => BTreeSet::new(),
                "user" | "admin" => ["bearer".to_owned()].into(),
                "agent" | "bridge" => ["mtls".to_owned()].into(),
                "user-or-certificate" => ["bearer".to_owned(), "mtls".to_owned()].into(),
                other => panic!("{method} {path}: unknown x-bamf-access {other}"),
            };
            assert_eq!(security, want, "{method} {path}: security vs access");
            // Every parameter in the path is declared.
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .chain(item["parameters"].as_array())
                    .flatten()
                    .map(|p| resolve_ref(&doc, p))
                    .any(|p| p["name"] == name && p["in"] == "path");
                assert!(
                    declared,
                    "{method} {path}: path parameter {name} undeclared"
                );
            }
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: responses"
            );
            documented.insert((method.to_uppercase(), path.clone(), access.to_owned()));
        }
    }
    let routed: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.as_str().to_owned(),
                r.path.to_owned(),
                access_name(r.access).to_owned(),
            )
        })
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not documented: {missing:?}\ndocumented but not routed (or with another access): {extra:?}"
    );
}
