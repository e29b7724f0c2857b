//! One module per CLI verb.

pub mod doctor;
pub mod run;
