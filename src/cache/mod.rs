//! What the mirror remembers besides blob bytes: the memory tier (manifests, tag answers,
//! auth decisions, in moka) and the per-blob index (size, last access, owning repositories).
//!
//! Speaks keys, digests and bytes only; no HTTP types.

mod index;
mod memory;

pub use index::{BlobIndex, Owner};
pub use memory::{AuthKey, Credential, ManifestEntry, Memory, TagEntry, TagKey};
