//! Configuration: profiles (cluster and nodes), board manifests and k3s
//! release facts. Reads files and parses them into types; writes nothing.

pub mod ansible;
pub mod bootstrap;
pub mod images;
pub mod k3s;
pub mod layered;
pub mod manifest;
mod problem;
pub mod profile;
pub mod read;
pub mod vip;

pub use problem::Problem;
