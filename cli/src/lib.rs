//! The `bamf` command-line client.
//!
//! Placeholder crate laid down with the workspace. The CLI issue fills it: `login`, `ls`,
//! `ssh`, `tcp`, `psql`, `pipe` and the admin commands. Nothing here is functional yet.
