//! ccx: a command-execution server whose pre/post hooks are sandboxed WebAssembly components.
//!
//! Clients send JSON-RPC 2.0 requests over a WebSocket; ccx runs each command as a child
//! process in its own process group, streams its output back, and ends every job with exactly
//! one terminal event.
//!
//! # Layout
//! Data flows one way: `faces → executor → (hooks, jobs) → events → (registry, faces)`.
//! - [`protocol`]: every wire message as a type, both directions (requests, replies,
//!   notifications), the error enum with its code table, and the JSON Schema generated from
//!   them (`docs/protocol.schema.json`). Pure data and parsing, no I/O.
//! - [`config`]: the TOML file, parsed strictly and validated into [`Config`].
//! - [`events`]: what a job reports ([`Event`]: the notification types themselves); the
//!   executor's output, anyone's input.
//! - [`jobs`]: child processes — spawn, stream, signal, timeout, reap. Never touches a socket,
//!   the registry or hooks (its output goes through an `OutputStage`, then an `OutputTap`, both
//!   supplied by the executor).
//! - [`containment`]: holds each job's processes together and ends them together — a cgroup
//!   v2 per job, or a process group with the server as child subreaper. Used by `jobs`.
//! - [`registry`]: the job registry (SQLite) and the output spools under `[state] dir`;
//!   `attach` replays from it; after a crash it kills what a previous run's jobs left and
//!   records them `lost`. Knows events and records, not sockets.
//! - [`hooks`]: the wasmtime host — engine, hook set generations, per-call sandbox with fuel,
//!   deadline and memory limits (and the output stage's job-long instances), the host's shell
//!   parse, matchers, counters, kv store, decision log, compiled-artifact cache. Never touches
//!   processes.
//! - [`executor`]: the one place a job's lifecycle lives: per-session queue, one generation
//!   (config + hooks) per job, hook points, spawn, exactly one terminal event, every event
//!   recorded in the registry; detached jobs, and `control`/`detach` of any job by id. Every
//!   face drives it; none re-implements it.
//! - observers, which nothing waits on: [`metrics`] (the `/metrics` counters the executor and
//!   faces bump, and what a scrape reads), [`audit`] (the hash-chained audit log: a writer
//!   thread behind a bounded queue, fed each job's final record by the registry and each
//!   refusal by the executor and the faces; `ccx audit verify`), [`trace`] (W3C trace
//!   context: a job joins its client's trace; the binary may export spans over OTLP).
//! - faces: [`server`] (axum router, auth, one session per WebSocket, the `/ui` dashboard's
//!   page and script) and [`mcp`] (the MCP tools over stdio and Streamable HTTP). They turn
//!   requests into executor calls and events into messages; they know nothing of processes or
//!   wasm.
//! - [`cluster`]: NATS JetStream glue for many machines — `ccx worker` takes jobs from a
//!   work queue and runs them with its own executor, publishing their events to a stream;
//!   the gateway (`ccx serve --nats`) puts a WebSocket session's jobs on that queue and
//!   relays their events. The worker drives the executor like any face; the gateway is
//!   driven by the WebSocket face and never touches processes or wasm.
//! - [`client`]: the one WebSocket client (typed job stream + cancel handle) behind
//!   `ccx exec`, `ccx attach`, `ccx logs`, `ccx jobs`, `ccx mcp --url` and the tests.
//! - [`app`]: the composition root — builds the hook host, the executor, the reload loop and
//!   the faces for `ccx serve` and `ccx mcp`. Only the CLI imports it.
//! - [`scaffold`]: the project templates behind `ccx hooks new`.
//!
//! No module imports one that imports it back, and none of the arrows
//! `shared/ARCHITECTURE.md` forbids exists: `src/layout.rs` checks both over the source.

pub mod app;
pub mod audit;
pub mod client;
pub mod cluster;
pub mod config;
pub mod containment;
pub mod events;
pub mod executor;
pub mod hooks;
pub mod jobs;
#[cfg(test)]
mod layout;
pub mod mcp;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod scaffold;
pub mod server;
pub mod trace;

// Property-based tests of the frame parser and every method's params (they use the
// executor's request checks, so they sit above `protocol`, not in it).
#[cfg(test)]
mod fuzz_tests;

pub use config::Config;
pub use events::{Event, JobStatus};
pub use executor::{Executor, Session};
