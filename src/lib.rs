//! ccx: a command-execution server whose pre/post hooks are sandboxed WebAssembly components.
//!
//! Clients send JSON-RPC 2.0 requests over a WebSocket; ccx runs each command as a child
//! process in its own process group, streams its output back, and ends every job with exactly
//! one terminal event.
//!
//! # Layout
//! Data flows one way: `server → executor → (hooks, jobs) → events → server`.
//! - [`protocol`]: JSON-RPC messages, method params and the error enum with its wire codes.
//!   Pure data, no I/O.
//! - [`config`]: the TOML file, parsed strictly and validated into [`Config`].
//! - [`events`]: what a job reports ([`Event`]); the executor's output, anyone's input.
//! - [`jobs`]: child processes — spawn, stream, signal, timeout, reap.
//! - [`executor`]: the one place a job's lifecycle lives: per-session queue, hook points,
//!   spawn, terminal event. The WebSocket server, `ccx mcp` and tests all drive it.
//! - [`server`]: the axum router and one session (receive task + send task) per connection.
//!   It never touches processes.
//! - [`hooks`]: the wasmtime host — engine, hook set generations, per-call sandbox with fuel,
//!   deadline and memory limits, counters, kv store, compiled-artifact cache.
//! - [`client`]: the WebSocket client behind `ccx exec`.
//! - [`app`]: wires one process (hook host, executor, reload loop) for `ccx serve` and
//!   `ccx mcp` alike.
//! - [`mcp`]: the Model Context Protocol tools (`execute`, `execute_task_list`,
//!   `hook_status`) over stdio and Streamable HTTP, driving the executor (or a remote server).
//! - [`scaffold`]: the project templates behind `ccx hooks new`.
//!
//! The core (`jobs`, `executor`) never depends on `server`, and `jobs` never on hooks.

pub mod app;
pub mod client;
pub mod config;
pub mod events;
pub mod executor;
pub mod hooks;
pub mod jobs;
pub mod mcp;
pub mod protocol;
pub mod scaffold;
pub mod server;

pub use config::Config;
pub use events::{Event, JobStatus};
pub use executor::{Executor, Session};
