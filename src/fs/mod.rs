//! File systems: read and put files into a partition region. Knows nothing
//! of nodes or profiles.

pub mod ext4;
pub mod extents;
pub mod fat;
mod probe;
pub mod resize;

pub use probe::{FsProbe, probe};
