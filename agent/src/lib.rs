//! BAMF agent (`bamf-agent`).
//!
//! Placeholder crate laid down with the workspace. The tunnels issue fills it: join, heartbeat
//! the resource catalog, follow the command stream and dial bridges by SNI on command.
//! Nothing here is functional yet.
