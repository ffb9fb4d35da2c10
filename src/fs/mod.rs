//! File systems: put files into a partition region. Knows nothing of nodes.

pub mod ext4;
pub mod fat;
