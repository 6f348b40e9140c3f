//! The long soak: the soak of `tests/soak.rs` (included as is) against the release build,
//! 10,000 jobs over 50 connections by default, each ending one of seven ways; every job must
//! end exactly once, nothing may be left behind, memory may grow at most 20% after the
//! warm-up, and after a restart the spool must be within its retention. It panics (exit
//! non-zero) on the first broken promise and prints its figures.
//!
//! `cargo bench --bench soak`; `CCX_SOAK_JOBS` and `CCX_SOAK_CONNECTIONS` change the 10,000
//! and the 50.

#[path = "../tests/soak.rs"]
mod soak;
#[path = "../tests/util.rs"]
mod util;

#[path = "support/common.rs"]
mod common;

fn main() {
    let (jobs, conns) = soak::sizes(10_000);
    common::multi_thread_runtime().block_on(soak::soak(jobs, conns));
}
