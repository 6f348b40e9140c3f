//! The integration tests, as one crate: one binary links ccx and wasmtime once, and every test
//! shares one harness. `cargo test` runs them all; `cargo test --test integration mcp::` runs
//! one module.
//!
//! Layout:
//! - `util`: the shared harness (hook builds, scratch dirs, configs, servers, clients).
//! - `server`: the server through a real WebSocket, with real child processes.
//! - `cli`: the built `ccx` binary as a user runs it (`serve`, `exec`, `hooks new`).
//! - `hooks_runtime`: the hook runtime with real components: decisions, limits, policies, cache.
//! - `hooks_server`: hooks through the whole server: config, `hook_status`, reload, `ccx hooks`.
//! - `examples`: the example hooks in `hooks/` and the example `ccx.toml`; scaffolded hooks.
//! - `mcp`: the MCP tools through a real MCP client, per transport.
//! - `executor_lifecycle`: the executor's job lifecycle with plain-Rust hooks: panics, waiting
//!   for hooks, one terminal event.
//! - `hooks_loading`: hook sets loading in parallel; the size-capped artifact cache.
//! - `containment`: escapees killed at every end and paused, in cgroup and process-group mode.
//! - `jobs`: detach, attach and replay, a bounded spool, the registry across a crash.
//! - `stdin`: `stdin` text and `merge_stderr`.
//! - `spool`: a short job's spool kept in its record; a spool that fails in mid-job.
//! - `jobs_admin`: idempotency keys, control from any connection, records, retention, the CLI.
//! - `mcp_jobs`: the MCP job-handle tools (run by `mcp` on each transport).
//! - `mcp_python`: the same tools driven by the official MCP Python SDK at both revisions.
//! - `mcp_tasks`: `execute` as an MCP task for clients of the Tasks extension.
//! - `restructure`: `ccx exec` on a closed pipe and with several words, concurrent config
//!   edits, listening before hooks load, `/mcp` and `max_sessions`, restart-only settings.

mod util;

mod cli;
mod containment;
mod examples;
mod executor_lifecycle;
mod hooks_loading;
mod hooks_runtime;
mod hooks_server;
mod jobs;
mod jobs_admin;
mod mcp;
mod mcp_jobs;
mod mcp_python;
mod mcp_tasks;
mod restructure;
mod server;
mod spool;
mod stdin;
