//! BAMF control plane (`bamf-api`).
//!
//! Placeholder crate laid down with the workspace. The control-plane issue fills it: the
//! internal CA, users, RBAC, join tokens, `/connect`, the session and audit store, and
//! presence. Nothing here is functional yet.
