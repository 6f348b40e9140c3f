//! `bindgen!` output for `wit/hooks.wit`.
//!
//! A hook may export `pre-execute`, `post-execute` or both, so the host binds the two
//! single-stage worlds rather than the `hook` world (whose bindings would refuse a component
//! lacking either export). `pre-hook` owns the shared `types` and `host` interfaces; `post-hook`
//! reuses them through `with`, so both stages speak the same Rust types. Each world's
//! `…Indices::new` finds and type-checks its export at load time, which tells which stages a
//! component has.

pub(crate) mod pre {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "pre-hook",
        exports: { default: async },
    });
}

pub(crate) mod post {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "post-hook",
        exports: { default: async },
        with: {
            "ccx:hooks/types": super::pre::ccx::hooks::types,
            "ccx:hooks/host": super::pre::ccx::hooks::host,
        },
    });
}

pub(crate) use pre::ccx::hooks::{host, types};
