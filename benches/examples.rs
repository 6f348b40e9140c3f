//! Per-language cost of the example hooks (filled in with the example hooks).
fn main() {}
