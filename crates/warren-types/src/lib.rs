//! Types that cross a boundary: the agent protocol and the sandbox specification.
#![forbid(unsafe_code)]

pub mod api;
mod b64;
pub mod egress;
pub mod mux;
pub mod proto;
pub mod random;
pub mod size;
pub mod spec;
