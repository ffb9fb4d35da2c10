//! Image-level tests, one binary: bakes of the stock layouts through the CLI
//! (`bake`), the ext4 and FAT writers (`ext4`, `fat`), shrunk outputs
//! (`shrink`) and data disks (`storage`).

#[path = "../support/mod.rs"]
mod support;

mod bake;
mod ext4;
mod fat;
mod shrink;
mod storage;
