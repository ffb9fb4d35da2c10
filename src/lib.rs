//! imgbuild: pre-baked OS images for the nodes of a k3s cluster.
//!
//! The modules follow the pipeline: [`profile`] -> [`render`] -> [`manifest`]
//! and [`image`] (the base image's layout) -> [`fs`] (FAT and ext4 edits) ->
//! [`output`]; [`bake`] walks it for one node and [`inspect`] reads results.

pub mod app;
pub mod bake;
pub mod bmc;
pub mod cleanup;
pub mod fetch;
pub mod fs;
pub mod image;
pub mod inspect;
pub mod io;
pub mod k3s;
pub mod manifest;
pub mod output;
pub mod profile;
pub mod progress;
pub mod render;
pub mod secrets;
pub mod tls;
