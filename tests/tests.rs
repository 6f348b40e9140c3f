//! The integration tests, as one crate: one binary links ccx and wasmtime once, and every test
//! shares one harness. `cargo test` runs them all; `cargo test --test integration mcp::` runs
//! one module.
//!
//! Layout:
//! - `heap`: the binary's global allocator, counting live heap bytes.
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
//! - `contract`: hook contract versions: a 0.1.0 hook beside 0.2.0 ones; what 0.2.0 hooks see
//!   and change (stdin mode, terminal, limits, labels, submitter).
//! - `containment`: escapees killed at every end and paused, in cgroup and process-group mode.
//! - `jobs`: detach, attach and replay, a bounded spool, the registry across a crash.
//! - `limits`: memory, pids, CPU, file size and open-file limits in both containment modes.
//! - `stdin`: `stdin` text, `stdin_open` with `input`, and `merge_stderr`.
//! - `terminal`: jobs on a pseudo-terminal: `pty` output, `resize`, typed input, Ctrl-C.
//! - `spool`: a short job's spool kept in its record; a spool that fails in mid-job.
//! - `jobs_admin`: idempotency keys, control from any connection, records, retention, the CLI.
//! - `mcp_jobs`: the MCP job-handle tools (run by `mcp` on each transport).
//! - `mcp_python`: the same tools driven by the official MCP Python SDK at both revisions.
//! - `mcp_tasks`: `execute` as an MCP task for clients of the Tasks extension.
//! - `output_hooks`: the output stage: what clients, records and replays see, `seq` gaps, line
//!   granularity with its flush and line limit, a hook ending the job.
//! - `output_hooks_failures`: output hooks that fail: a spinning hook cut at its deadline while
//!   another connection is served, the instance's memory limit, a hook that cannot start, the
//!   job's fuel budget under both policies.
//! - `audit`: the audit log for every kind of ending and refusal; `ccx audit verify` on
//!   edited, deleted, reordered and cut logs.
//! - `observability`: `/metrics` read by the Prometheus parser as jobs end; trace context.
//! - `policy`: matchers on the host's parse, `warn` and `dry-run` modes, the parse hooks see.
//! - `hooks_policy`: `ccx hooks test` on policy corpora, `ccx hooks replay` on a decision log.
//! - `secret_redact`: the example output hook for every kind of client, and 100 MB through it.
//! - `redact_core`: the same hook's redactor and prefilter, natively, with their own unit tests.
//! - `restructure`: `ccx exec` on a closed pipe and with several words, concurrent config
//!   edits, listening before hooks load, `/mcp` and `max_sessions`, restart-only settings.
//! - `dashboard`: the `/ui` dashboard in headless Chromium against a live server running jobs.
//! - `auth_attack`: bad tokens throttled with 429 and `Retry-After`, valid ones served, no
//!   token in the log.
//! - `soak`: 1,000 jobs over 50 connections ending every way there is: one terminal event each,
//!   no process or descriptor left, memory levelled off, the spool within retention.
//! - `spares`: spare hook instances: one call each, never reused; the memory budget; a reload
//!   dropping the old generation's spares.
//! - `frame_gen`: the hostile-frame generator `fuzz_frames` and the live fuzzer share.
//! - `fuzz_frames`: a few hundred generated hostile frames through one connection, each
//!   answered once, while another connection runs commands.
//! - `hook_boundary`: random well-typed answers from a real component, past every bound:
//!   accepted within bounds or refused as `invalid`, the host's memory levelled off.
//! - `exhaustion`: the built server under a connection storm, a flood of maximum-size frames,
//!   clients that never read, `ulimit -n 256` and a full disk: clear refusals, no crash,
//!   served again after.

mod heap;
mod util;

mod audit;
mod auth_attack;
mod cli;
mod cluster;
mod cluster_jobs;
mod containment;
mod contract;
mod dashboard;
mod examples;
mod executor_lifecycle;
mod exhaustion;
mod frame_gen;
mod fuzz_frames;
mod hook_boundary;
mod hooks_loading;
mod hooks_policy;
mod hooks_runtime;
mod hooks_server;
mod jobs;
mod jobs_admin;
mod limits;
mod mcp;
mod mcp_jobs;
mod mcp_python;
mod mcp_tasks;
mod observability;
mod output_hooks;
mod output_hooks_failures;
mod policy;
mod redact_core;
mod restructure;
mod secret_redact;
mod server;
mod soak;
mod spares;
mod spool;
mod stdin;
mod terminal;
