//! Routing: from the server name in a hello to where the connection goes.
//!
//! Order, first match wins:
//! 1. `<n>.bridge.<tunnel_domain>`: this bridge when `n` is its ordinal (local), else peer `n`;
//!    a malformed name inside that namespace is refused, never passed on;
//! 2. an exact host name;
//! 3. a `*.suffix` wildcard, matching any name with one or more labels before `.suffix`; the
//!    longest suffix wins;
//! 4. the default: reject, or a default backend.
//!
//! The table is built here, from the route specs the configuration checked
//! ([`RouteSpecs`]); the configuration knows nothing of how it is looked up.

use std::collections::HashMap;

use bamf_proto::HostName;

use crate::config::{BridgeIdentity, DefaultRoute, HostPattern, RouteSpecs, Upstream};

/// A `*.suffix` route, as looked up.
#[derive(Debug, Clone)]
struct Wildcard {
    /// The part after `*.`.
    suffix: HostName,
    /// Where matching names go.
    upstream: Upstream,
}

/// The routing table, immutable once built.
#[derive(Debug, Clone)]
pub struct Router {
    identity: Option<BridgeIdentity>,
    local: Option<Upstream>,
    /// This bridge's own name is served by the tunnel relay.
    tunnel: bool,
    exact: HashMap<HostName, Upstream>,
    /// Sorted longest suffix first, so the first match is the most specific.
    wildcards: Vec<Wildcard>,
    default: DefaultRoute,
}

/// The decision for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This bridge's own name, without a tunnel relay: the local backend.
    Local(Upstream),
    /// This bridge's own name: terminate mTLS and pair a tunnel here.
    Tunnel,
    /// Another bridge's name: splice to that peer's peer port.
    Peer {
        /// The peer's ordinal.
        ordinal: u32,
        /// Where it listens for forwarded connections.
        upstream: Upstream,
    },
    /// A static route.
    Static(Upstream),
    /// No route matched; the default backend takes it.
    Default(Upstream),
    /// Refuse with a TLS `unrecognized_name` alert.
    Reject,
}

impl Route {
    /// Low-cardinality label for metrics and logs: never the host name itself, which is
    /// attacker-chosen.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Tunnel => "tunnel",
            Self::Peer { .. } => "peer",
            Self::Static(_) => "static",
            Self::Default(_) => "default",
            Self::Reject => "reject",
        }
    }
}

/// Where a connection arrived, which limits where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The public front door: every route.
    Front,
    /// The peer port: only this bridge's own name, so forwarding can never loop.
    Peer,
}

impl Entry {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Front => "front",
            Self::Peer => "peer",
        }
    }
}

impl Router {
    /// Builds the table from checked specs (each host pattern appears once; were one listed
    /// twice, the later would win).
    pub fn new(specs: RouteSpecs) -> Self {
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for route in specs.statics {
            match route.host {
                HostPattern::Exact(host) => {
                    exact.insert(host, route.upstream);
                }
                HostPattern::Wildcard(suffix) => wildcards.push(Wildcard {
                    suffix,
                    upstream: route.upstream,
                }),
            }
        }
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.suffix.as_str().len()));
        Self {
            identity: specs.identity,
            local: specs.local,
            tunnel: specs.tunnel,
            exact,
            wildcards,
            default: specs.default,
        }
    }

    /// Decides where a connection with this server name goes.
    pub fn route(&self, entry: Entry, name: Option<&HostName>) -> Route {
        if let (Some(name), Some(id)) = (name, &self.identity)
            && let Some(ordinal) = id.bridge_ordinal(name)
        {
            return match ordinal {
                Some(n) if n == id.ordinal && self.tunnel => Route::Tunnel,
                Some(n) if n == id.ordinal => {
                    self.local.clone().map_or(Route::Reject, Route::Local)
                }
                Some(n) if entry == Entry::Front => match &id.peers {
                    Some(template) => Route::Peer {
                        ordinal: n,
                        upstream: Upstream {
                            addr: template.address(n),
                            proxy_protocol: false,
                        },
                    },
                    None => Route::Reject,
                },
                _ => Route::Reject,
            };
        }
        if entry == Entry::Peer {
            return Route::Reject;
        }
        if let Some(name) = name {
            if let Some(upstream) = self.exact.get(name) {
                return Route::Static(upstream.clone());
            }
            let text = name.as_str();
            for w in &self.wildcards {
                let suffix = w.suffix.as_str();
                if text.len() > suffix.len() + 1
                    && text.ends_with(suffix)
                    && text.as_bytes()[text.len() - suffix.len() - 1] == b'.'
                {
                    return Route::Static(w.upstream.clone());
                }
            }
        }
        match &self.default {
            DefaultRoute::Reject => Route::Reject,
            DefaultRoute::Backend(upstream) => Route::Default(upstream.clone()),
        }
    }

    /// Every upstream address this table can send to, for start-up logging.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .exact
            .iter()
            .map(|(h, u)| (h.to_string(), u.addr.to_string()))
            .collect();
        out.sort();
        out.extend(
            self.wildcards
                .iter()
                .map(|w| (format!("*.{}", w.suffix), w.upstream.addr.to_string())),
        );
        if let Some(id) = &self.identity {
            let local = match (&self.local, self.tunnel) {
                (_, true) => "tunnel relay".to_owned(),
                (Some(u), false) => u.addr.to_string(),
                (None, false) => "reject".to_owned(),
            };
            let own = HostName::bridge(id.ordinal, &id.tunnel_domain)
                .map_or_else(|e| e.to_string(), |h| h.to_string());
            out.push((own, local));
            if let Some(t) = &id.peers {
                out.push((format!("<n>.bridge.{}", id.tunnel_domain), t.to_string()));
            }
        }
        let default = match &self.default {
            DefaultRoute::Reject => "reject".to_owned(),
            DefaultRoute::Backend(u) => u.addr.to_string(),
        };
        out.push(("(default)".to_owned(), default));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPort, PeerTemplate, StaticRoute};

    fn up(addr: &str) -> Upstream {
        Upstream {
            addr: HostPort::parse(addr).unwrap(),
            proxy_protocol: false,
        }
    }

    fn name(s: &str) -> HostName {
        s.parse().unwrap()
    }

    fn router(default: DefaultRoute) -> Router {
        let identity = BridgeIdentity {
            ordinal: 1,
            tunnel_domain: name("tunnel.test"),
            peers: Some(PeerTemplate::parse("bamf-bridge-{n}.headless:8443").unwrap()),
        };
        let route = |host: HostPattern, to: &str| StaticRoute {
            host,
            upstream: up(to),
        };
        Router::new(RouteSpecs {
            identity: Some(identity),
            local: Some(up("127.0.0.1:9")),
            tunnel: false,
            statics: vec![
                route(HostPattern::Exact(name("api.test")), "127.0.0.1:1"),
                route(HostPattern::Wildcard(name("test")), "127.0.0.1:2"),
                route(HostPattern::Wildcard(name("apps.test")), "127.0.0.1:3"),
            ],
            default,
        })
    }

    #[test]
    fn bridge_names_go_local_or_to_the_peer() {
        let r = router(DefaultRoute::Reject);
        assert_eq!(
            r.route(Entry::Front, Some(&name("1.bridge.tunnel.test"))),
            Route::Local(up("127.0.0.1:9"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("12.bridge.tunnel.test"))),
            Route::Peer {
                ordinal: 12,
                upstream: up("bamf-bridge-12.headless:8443")
            }
        );
        // The peer port never forwards again.
        assert_eq!(
            r.route(Entry::Peer, Some(&name("12.bridge.tunnel.test"))),
            Route::Reject
        );
        assert_eq!(
            r.route(Entry::Peer, Some(&name("1.bridge.tunnel.test"))),
            Route::Local(up("127.0.0.1:9"))
        );
        assert_eq!(r.route(Entry::Peer, Some(&name("api.test"))), Route::Reject);
        for bad in [
            "01.bridge.tunnel.test",
            "x.bridge.tunnel.test",
            "1.2.bridge.tunnel.test",
            "99999999999.bridge.tunnel.test",
        ] {
            assert_eq!(
                r.route(Entry::Front, Some(&name(bad))),
                Route::Reject,
                "{bad}"
            );
        }
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let r = router(DefaultRoute::Backend(up("127.0.0.1:7")));
        assert_eq!(
            r.route(Entry::Front, Some(&name("api.test"))),
            Route::Static(up("127.0.0.1:1"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("x.apps.test"))),
            Route::Static(up("127.0.0.1:3"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("a.b.apps.test"))),
            Route::Static(up("127.0.0.1:3"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("apps.test"))),
            Route::Static(up("127.0.0.1:2"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("xtest"))),
            Route::Default(up("127.0.0.1:7"))
        );
        assert_eq!(
            r.route(Entry::Front, Some(&name("test"))),
            Route::Default(up("127.0.0.1:7"))
        );
        assert_eq!(
            r.route(Entry::Front, None),
            Route::Default(up("127.0.0.1:7"))
        );
        let r = router(DefaultRoute::Reject);
        assert_eq!(
            r.route(Entry::Front, Some(&name("example.org"))),
            Route::Reject
        );
        assert_eq!(r.route(Entry::Front, None), Route::Reject);
    }
}
