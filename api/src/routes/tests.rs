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
