//! BAMF control plane (`bamf-api`).
//!
//! The control plane is the only holder of the CA key, the only writer of the store and the
//! judge of who may reach what. This crate is being built up by the control-plane issue;
//! what exists so far:
//!
//! # Layout
//!
//! - [`ca`]: the internal certificate authority: generate or bring your own, issue
//!   certificates only from CSRs, with identities from `bamf_proto::san`.
//! - [`store`]: PostgreSQL or SQLite behind one set of queries; embedded migrations; the CA
//!   row and the append-only audit log so far.
//! - [`presence`]: liveness with TTLs (bridges, agents, API tokens) and agent command
//!   pub/sub, in Redis or in process.
//!
//! Still to come (control-plane issue): the hyper server and router, users and login, join
//! tokens, RBAC, the rest of the store's queries, and OpenAPI.

pub mod ca;
pub mod presence;
pub mod store;
