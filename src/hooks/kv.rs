//! The per-hook key/value store behind `host.kv-get` / `host.kv-set`.
//!
//! One store per hook *name*, owned by the [`super::HookHost`], so values survive across calls
//! and across reloads of the hook set; with [`super::HookHost::persist_kv`] (as `ccx serve`
//! sets up, in the job registry's database) they survive restarts too, so a hook can learn
//! from past runs. Bounds keep a hook from growing
//! the server's memory without end; a `kv-set` past a bound is ignored with a warning in the log
//! rather than trapping, so a hook that over-stores degrades (it reads back an older value or
//! none) instead of failing every call that touches the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most keys one hook may store.
pub const KV_MAX_KEYS: usize = 1024;
/// Longest key, in bytes.
pub const KV_MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
pub const KV_MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes (keys plus values) one hook may store in total.
pub const KV_MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;

/// Where a store's writes are kept beyond the process: called with (hook, key, value) after
/// each accepted `kv-set`; it must not block (the registry queues the write).
pub type KvPersist = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// One hook's values. Guarded by a std `Mutex`: every operation is a short map access that
/// never awaits, so an async mutex would only add cost.
#[derive(Default)]
pub(crate) struct KvStore {
    map: HashMap<String, String>,
    bytes: usize,
    /// The hook's name and where its writes persist, if they do.
    persist: Option<(String, KvPersist)>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("keys", &self.map.len())
            .field("bytes", &self.bytes)
            .field("persistent", &self.persist.is_some())
            .finish()
    }
}

/// Shared handle to one hook's store.
pub(crate) type SharedKv = Arc<Mutex<KvStore>>;

impl KvStore {
    /// A store whose accepted writes go to `persist` too.
    pub(crate) fn persistent(hook: &str, persist: KvPersist) -> KvStore {
        KvStore {
            persist: Some((hook.to_string(), persist)),
            ..KvStore::default()
        }
    }

    /// Loads a persisted value (no write-back); values past the bounds are skipped.
    pub(crate) fn seed(&mut self, key: String, value: String) {
        let persist = self.persist.take();
        let _ = self.set(key, value);
        self.persist = persist;
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }

    /// Stores `value` under `key`, or explains which bound refused it.
    pub(crate) fn set(&mut self, key: String, value: String) -> Result<(), String> {
        if key.len() > KV_MAX_KEY_BYTES {
            return Err(format!(
                "key is {} bytes (limit {KV_MAX_KEY_BYTES})",
                key.len()
            ));
        }
        if value.len() > KV_MAX_VALUE_BYTES {
            return Err(format!(
                "value is {} bytes (limit {KV_MAX_VALUE_BYTES})",
                value.len()
            ));
        }
        let old = self.map.get(&key).map(|v| key.len() + v.len()).unwrap_or(0);
        if old == 0 && !self.map.contains_key(&key) && self.map.len() >= KV_MAX_KEYS {
            return Err(format!("store holds {KV_MAX_KEYS} keys (limit)"));
        }
        let new_total = self.bytes - old + key.len() + value.len();
        if new_total > KV_MAX_TOTAL_BYTES {
            return Err(format!(
                "store would hold {new_total} bytes (limit {KV_MAX_TOTAL_BYTES})"
            ));
        }
        self.bytes = new_total;
        if let Some((hook, persist)) = &self.persist {
            persist(hook, &key, &value);
        }
        self.map.insert(key, value);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced_and_overwrite_is_counted_once() {
        let mut kv = KvStore::default();
        kv.set("a".into(), "1".into()).unwrap();
        kv.set("a".into(), "22".into()).unwrap();
        assert_eq!(kv.get("a").as_deref(), Some("22"));
        assert_eq!(kv.bytes, 3);
        assert!(
            kv.set("k".repeat(KV_MAX_KEY_BYTES + 1), String::new())
                .is_err()
        );
        assert!(
            kv.set("b".into(), "v".repeat(KV_MAX_VALUE_BYTES + 1))
                .is_err()
        );
        for i in 1..KV_MAX_KEYS {
            kv.set(format!("k{i}"), String::new()).unwrap();
        }
        assert!(kv.set("one-too-many".into(), String::new()).is_err());
        kv.set("a".into(), "overwrite still works".into()).unwrap();
        assert_eq!(kv.len(), KV_MAX_KEYS);
    }
}
