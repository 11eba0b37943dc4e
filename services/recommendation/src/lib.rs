//! The recommendation service's core, free of I/O: the catalog, the co-occurrence model that
//! learns only from consenting subjects and unlearns them exactly, and the personalization tiers.
//! The gRPC service (issue 4) wires these to the profile service's gated reads.

pub mod catalog;
pub mod model;
pub mod tier;
