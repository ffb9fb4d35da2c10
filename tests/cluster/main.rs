//! Clusters, one binary: the example cluster's identity, k3s configuration
//! and secrets (`cluster`), the three-server HA example with kube-vip,
//! GitOps bootstrap and air-gapped images (`ha`), and its offline builds
//! after `imgbuild fetch` (`ha_offline`).

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod ha;
mod ha_offline;
