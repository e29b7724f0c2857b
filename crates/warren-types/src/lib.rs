//! Types that cross a boundary: the agent protocol and the sandbox specification.
#![forbid(unsafe_code)]

pub mod api;
pub mod proto;
pub mod random;
pub mod spec;
