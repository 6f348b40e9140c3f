//! `bindgen!` output for the hook contract, one binding per version: `wit/hooks.wit`
//! (`ccx:hooks@0.2.0`, the modules at this level) and `wit/v0.1.0/hooks.wit` (`ccx:hooks@0.1.0`,
//! [`v1`]). A component is bound with the newest version whose export types match (see
//! `load`); 0.1.0 answers are converted to 0.2.0 ones (`types`), so the rest of the runtime
//! speaks one version (as zed's extension host keeps a module per API version).
//!
//! A hook may export `pre-execute`, `post-execute`, `check-input`, the output stage or several, so the host binds
//! the single-stage worlds rather than the `hook` world (whose bindings would refuse a component
//! lacking an export). `pre-hook` owns the shared `types` and `host` interfaces; the other
//! worlds reuse them through `with`, so every stage speaks the same Rust types. Each world's
//! `…Indices::new` finds and type-checks its export at load time, which tells which stages a
//! component has, and in which version.

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

pub(crate) mod input {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "input-hook",
        exports: { default: async },
        with: {
            "ccx:hooks/types": super::pre::ccx::hooks::types,
            "ccx:hooks/host": super::pre::ccx::hooks::host,
        },
    });
}

pub(crate) mod output {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "output-hook",
        exports: { default: async },
        with: {
            "ccx:hooks/types": super::pre::ccx::hooks::types,
            "ccx:hooks/host": super::pre::ccx::hooks::host,
        },
    });
}

/// `ccx:hooks@0.1.0`: hooks built before 0.2.0.
pub(crate) mod v1 {
    pub(crate) mod pre {
        wasmtime::component::bindgen!({
            path: "wit/v0.1.0",
            world: "pre-hook",
            exports: { default: async },
        });
    }

    pub(crate) mod post {
        wasmtime::component::bindgen!({
            path: "wit/v0.1.0",
            world: "post-hook",
            exports: { default: async },
            with: {
                "ccx:hooks/types": super::pre::ccx::hooks::types,
                "ccx:hooks/host": super::pre::ccx::hooks::host,
            },
        });
    }

    pub(crate) use pre::ccx::hooks::{host, types};
}

pub(crate) use pre::ccx::hooks::{host, types};
