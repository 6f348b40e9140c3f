//! The `secret-redact` guest's core (`hooks/secret-redact/src/{prefilter,redact}.rs`) built
//! natively, so its unit tests run with the host's: chunking never changes the output, the
//! hold-back rule, every built-in pattern, the prefilter's candidates. (Inside the component,
//! the prefilter's WebAssembly SIMD path is what runs; `secret_redact` tests that through the
//! server, byte for byte.)

#[path = "../hooks/secret-redact/src/prefilter.rs"]
#[allow(dead_code)]
mod prefilter;
#[path = "../hooks/secret-redact/src/redact.rs"]
#[allow(dead_code)]
mod redact;
