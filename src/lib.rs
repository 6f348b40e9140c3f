//! ccx
