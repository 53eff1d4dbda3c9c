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
//!
//! Still to come (control-plane issue): the hyper server and router, users and login, join
//! tokens, RBAC, the PostgreSQL/SQLite store, presence in Redis, audit and OpenAPI.

pub mod ca;
