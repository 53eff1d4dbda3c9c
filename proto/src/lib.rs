//! BAMF wire formats and their parsers, with no I/O.
//!
//! Everything another component reads off the network or writes onto it is defined here once,
//! and every component uses this one definition. The parsers take the bytes received so far
//! and say what they are; the caller owns the socket, the buffer and the deadline.
//!
//! # Layout
//!
//! - [`sni`]: TLS ClientHello detection: server name (SNI) and ALPN, across any number of
//!   reads and records, under a size cap.
//! - [`hex`]: lower-case hex, for serials, fingerprints, hashes and ids.
//! - [`host`]: [`HostName`], a validated, lower-cased DNS host name used for routing.
//! - [`alert`]: the few TLS alert records the front door sends before closing.
//! - [`proxy_v2`]: the PROXY protocol v2 header the front door can send to upstreams.
//! - [`api`]: the API's contract, the JSON body of every request and answer.
//! - [`resource`]: resource kinds.
//! - [`rbac`]: roles' rules, and deciding access with them (deny wins, default deny).
//! - [`tunnel`]: what an agent says to a bridge, the handover, the dial command, session
//!   events.
//! - [`resume`]: the resumable stream's frames and offsets, inside the end-to-end session.
//! - [`san`]: identities in certificates (`bamf://kind/…` SAN URIs): users, agents, bridges
//!   and session clients, parsed strictly.
#![warn(missing_docs)]

pub mod alert;
pub mod api;
pub mod hex;
pub mod host;
pub mod proxy_v2;
pub mod rbac;
pub mod resource;
pub mod resume;
pub mod san;
pub mod sni;
pub mod tunnel;

pub use host::HostName;
