//! What the merged test binaries (`tests/<area>/main.rs`) share; each
//! includes this file as its `support` module.

pub mod bmc;
pub mod bytes;
pub mod chart;
pub mod fixtures;
pub mod harness;
pub mod http;
pub mod mirror;
pub mod project;
pub mod registry;
