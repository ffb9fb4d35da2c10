//! Artifacts and delivery, one binary: CI artifacts, sealing and
//! provenance (`seal`), bare-metal installers and USB sticks (`iso`), and
//! the Turing Pi BMC client against a fake BMC (`bmc`).

#[path = "../support/mod.rs"]
mod support;

mod bmc;
mod iso;
mod seal;
