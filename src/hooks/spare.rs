//! Spare instances: fresh, never-used instances of a loaded hook, made ahead of time in the
//! background so that a call (or an output hook's job-long instance) skips instantiation.
//! Each spare serves exactly one call (or one job's output) and is dropped with it, so the rule "every call gets a fresh instance" holds: nothing a call leaves
//! in globals, linear memory or tables reaches another call (the kv store is shared by design).
//!
//! Bounds, host-wide (`[sandbox] spare_instances` per hook, `spare_memory_mb` in all): a spare
//! holds one of [`MAX_SPARES`] slots reserved in the instance pool beside the call slots, and
//! is charged the size of its linear memories after instantiation (an upper bound on what it
//! can keep resident: with copy-on-write images most of it is never touched). A spare that does
//! not fit the memory budget is not made. A spare leaves the budget when a call takes it; a
//! refill for its pool starts at once, on the tokio runtime.
//!
//! Spares belong to one generation's [`HookSet`](super::HookSet): a reload retires the old
//! set's pools (their spares are dropped, no refill starts), and so does dropping the set.
//! Instantiation runs the guest's start code under the hook's fuel, deadline and memory
//! limits, as on the call path; a hook whose instantiation fails gets no more spares, and its
//! calls instantiate on the path, where the failure is reported as usual.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::HookHost;
use super::call::{self, CallState, HookIdentity, Limits};
use super::capture::Capture;

/// Most spare instances alive at once across all hooks: the instance pool reserves this many
/// component slots beside `max_concurrent_calls`.
pub const MAX_SPARES: u32 = 32;

/// The host-wide bounds of spares: pool slots and the memory budget.
pub(crate) struct SpareBudget {
    /// Spares kept ready per hook; 0 turns spares off.
    pub(crate) per_hook: u32,
    /// Largest total linear memory of all spares, in bytes.
    pub(crate) memory_cap: usize,
    memory_used: AtomicUsize,
    slots: Arc<Semaphore>,
}

impl SpareBudget {
    pub(crate) fn new(per_hook: u32, memory_cap: usize) -> SpareBudget {
        SpareBudget {
            per_hook,
            memory_cap,
            memory_used: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(MAX_SPARES as usize)),
        }
    }

    /// Bytes of linear memory the living spares hold.
    pub(crate) fn memory_used(&self) -> usize {
        self.memory_used.load(Ordering::Relaxed)
    }

    fn fits(&self, bytes: usize) -> bool {
        self.memory_used().saturating_add(bytes) <= self.memory_cap
    }

    fn try_charge(&self, bytes: usize) -> bool {
        self.memory_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.checked_add(bytes)?;
                (total <= self.memory_cap).then_some(total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.memory_used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What a spare holds of the host's bounds; given back when the spare is taken or dropped.
struct Lease {
    host: Arc<HookHost>,
    bytes: usize,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.host.spares.release(self.bytes);
    }
}

/// A fresh instance in its own store, never called.
pub(crate) struct Spare {
    store: Store<CallState>,
    instance: Instance,
    stdout: Capture,
    stderr: Capture,
    _lease: Lease,
}

/// What a call gets of a spare: its store, its instance and the guest's captured stdout and
/// stderr. The spare's slot and memory are back in the budget by then (the call holds a call
/// slot instead).
pub(crate) type Taken = (Store<CallState>, Instance, Capture, Capture);

impl Spare {
    fn into_parts(self) -> Taken {
        (self.store, self.instance, self.stdout, self.stderr)
    }
}

/// A pool's counts as status pages show them (`spares` of a hook in `/hooks`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpareStats {
    /// Spares kept ready for this hook (`[sandbox] spare_instances`; 0: off).
    pub target: u32,
    /// Spares ready now.
    pub ready: usize,
    /// Linear memory of one spare (as last made), in bytes; 0 before the first.
    pub instance_bytes: usize,
    /// Calls that took a spare.
    pub served: u64,
    /// Calls that instantiated on the job's path (no spare was ready).
    pub cold: u64,
    /// Why no more spares are made for this hook, if so (its instantiation failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The spares of one hook in one generation.
pub(crate) struct SparePool {
    host: Arc<HookHost>,
    instance_pre: InstancePre<CallState>,
    ident: Arc<HookIdentity>,
    limits: Limits,
    ready: Mutex<Vec<Spare>>,
    /// A refill task is running.
    filling: AtomicBool,
    retired: AtomicBool,
    /// Linear memory of the last spare made, in bytes (0: none made yet).
    instance_bytes: AtomicUsize,
    served: AtomicU64,
    cold: AtomicU64,
    stopped: Mutex<Option<String>>,
}

impl SparePool {
    pub(crate) fn new(
        host: &Arc<HookHost>,
        instance_pre: &InstancePre<CallState>,
        ident: &Arc<HookIdentity>,
        limits: Limits,
    ) -> Arc<SparePool> {
        Arc::new(SparePool {
            host: host.clone(),
            instance_pre: instance_pre.clone(),
            ident: ident.clone(),
            limits,
            ready: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            instance_bytes: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            cold: AtomicU64::new(0),
            stopped: Mutex::new(None),
        })
    }

    fn target(&self) -> usize {
        self.host.spares.per_hook as usize
    }

    /// A spare for a call, if one is ready (counted as served, else as cold); starts a refill
    /// either way, after the taken spare's memory is back in the budget.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Taken> {
        let spare = call::lock(&self.ready).pop().map(Spare::into_parts);
        match spare {
            Some(_) => self.served.fetch_add(1, Ordering::Relaxed),
            None => self.cold.fetch_add(1, Ordering::Relaxed),
        };
        self.refill();
        spare
    }

    /// Drops every spare and makes no more (a reload replaced this generation).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        call::lock(&self.ready).clear();
    }

    // Each lock below is taken and released in a statement of its own: the pool's two mutexes
    // are never held together (a guard in a larger expression lives until the statement
    // ends, and two orders would deadlock).

    pub(crate) fn stats(&self) -> SpareStats {
        let ready = call::lock(&self.ready).len();
        let stopped = call::lock(&self.stopped).clone();
        SpareStats {
            target: self.target() as u32,
            ready,
            instance_bytes: self.instance_bytes.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            cold: self.cold.load(Ordering::Relaxed),
            stopped,
        }
    }

    fn wanted(&self) -> bool {
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        let stopped = call::lock(&self.stopped).is_some();
        let ready = call::lock(&self.ready).len();
        !stopped && ready < self.target()
    }

    /// Starts a background task that makes spares until the pool is full, the budget is
    /// spent, or the pool is retired. At most one runs per pool; outside a tokio runtime
    /// nothing happens (calls then instantiate on the path).
    pub(crate) fn refill(self: &Arc<Self>) {
        if !self.wanted() || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.filling.store(false, Ordering::Release);
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            loop {
                let takes = pool.takes();
                let mut short = false;
                while pool.wanted() {
                    match pool.make().await {
                        Ok(Some(spare)) => {
                            let mut ready = call::lock(&pool.ready);
                            // Retired while it was made: dropped here, not kept.
                            if !pool.retired.load(Ordering::Acquire) {
                                ready.push(spare);
                            }
                        }
                        Ok(None) => {
                            // No slot or no budget now; a later take retries.
                            short = true;
                            break;
                        }
                        Err(why) => {
                            tracing::warn!(hook = %pool.ident.name, "no spare instances for this hook: {why}");
                            *call::lock(&pool.stopped) = Some(why);
                            break;
                        }
                    }
                }
                // A swap, not a store: its acquire makes the count of a take that found
                // `filling` set (and then started nothing) visible below.
                pool.filling.swap(false, Ordering::AcqRel);
                // A take between the last check and the store above found `filling` set and
                // started nothing: look once more. After running short of slots or budget,
                // only if a take came meanwhile: `wanted` stays true then, and looking again
                // at once would spin without ever yielding.
                if short && pool.takes() == takes {
                    break;
                }
                if !pool.wanted() || pool.filling.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Calls that asked this pool for a spare so far (served and cold).
    fn takes(&self) -> u64 {
        self.served.load(Ordering::Acquire) + self.cold.load(Ordering::Acquire)
    }

    /// Makes one spare: `Ok(None)` when no slot is free or the budget has no room for it,
    /// `Err` when the hook cannot be instantiated within its limits.
    async fn make(&self) -> Result<Option<Spare>, String> {
        let spares = &self.host.spares;
        let known = self.instance_bytes.load(Ordering::Relaxed);
        if known > 0 && !spares.fits(known) {
            return Ok(None);
        }
        let Ok(slot) = spares.slots.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let (mut store, stdout, stderr) = call::new_store(&self.host, &self.ident, &self.limits);
        let fuel = if self.limits.fuel == 0 {
            u64::MAX
        } else {
            self.limits.fuel
        };
        let _ = store.set_fuel(fuel);
        let made = tokio::time::timeout(
            self.limits.timeout,
            self.instance_pre.instantiate_async(&mut store),
        )
        .await;
        let instance = match made {
            Err(_) => {
                return Err(format!(
                    "instantiation passed the deadline of {} ms",
                    self.limits.timeout.as_millis()
                ));
            }
            Ok(Err(e)) => return Err(format!("instantiation failed: {e:#}")),
            Ok(Ok(instance)) => instance,
        };
        let bytes = call::memory_bytes(&store);
        self.instance_bytes.store(bytes, Ordering::Relaxed);
        if !spares.try_charge(bytes) {
            return Ok(None);
        }
        Ok(Some(Spare {
            store,
            instance,
            stdout,
            stderr,
            _lease: Lease {
                host: self.host.clone(),
                bytes,
                _slot: slot,
            },
        }))
    }
}
