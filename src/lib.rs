//! imgbuild: pre-baked OS images for the nodes of a k3s cluster.
//!
//! The modules are the stages of a pipeline, and a stage may use the ones
//! before it (and the shared utilities), never the ones after it:
//!
//! [`config`] -> [`secrets`] -> [`source`] -> [`plan`] -> [`bake`] / [`installer`]
//! (on [`image`] / [`fs`]) -> [`artifact`] -> [`readback`] -> [`deliver`] -> [`kube`];
//! [`commands`] sequences them and the binary's `cli` only parses, resolves
//! settings and reports.
//! Shared utilities: [`io`] (digests, hashing, sparse files, progress) and
//! [`util`] (clean-up on interrupt, TLS provider, dates, error chains).
//! ARCHITECTURE.md says what each module owns.

pub mod io;
pub mod util;

pub mod artifact;
pub mod bake;
pub mod config;
pub mod deliver;
pub mod fs;
pub mod image;
pub mod installer;
pub mod kube;
pub mod plan;
pub mod readback;
pub mod secrets;
pub mod source;

pub mod commands;
