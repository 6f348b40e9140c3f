//! ccx
pub mod hooks;
