//! Reading images back: what an image imgbuild wrote holds (`inspect`:
//! partition table, file systems, provenance record, seed) and how two
//! images differ (`diff`). Only reads; the same readers serve `seal`,
//! `flash`, `verify`, `wait`, `inspect` and `diff`.

pub mod diff;
pub mod inspect;
