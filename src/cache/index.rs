//! Per-blob metadata: size when stored, last access, and the (upstream, repository) pairs the
//! blob is known to belong to upstream. The auth gate serves a cached blob under repository R
//! only when R is among its owners, so knowing a private layer's digest does not let anyone
//! read it through a public repository's name.
//!
//! Kept in one map under a short lock, plain data so it can be persisted later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use crate::reference::{Digest, RepoName};
use crate::store::StoredBlob;

/// A repository of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub upstream: Arc<str>,
    pub repo: RepoName,
}

/// What we know of one digest.
#[derive(Debug, Default)]
struct BlobMeta {
    /// Size in the store; `None` while only its ownership is known (listed in a manifest).
    size: Option<u64>,
    /// Seconds since the epoch of the last serve (for LRU eviction).
    last_access: u64,
    /// Repositories upstream would serve it from.
    owners: Vec<Owner>,
}

/// The index; see the module doc.
#[derive(Default)]
pub struct BlobIndex {
    map: RwLock<HashMap<Digest, BlobMeta>>,
    count: AtomicU64,
    bytes: AtomicU64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An owner list never grows past this; older entries fall back to an upstream check.
const MAX_OWNERS: usize = 64;

impl BlobIndex {
    /// Builds the index from a store scan (owners are not persisted yet: they are relearned
    /// through upstream checks).
    pub fn from_scan(blobs: Vec<StoredBlob>) -> BlobIndex {
        let idx = BlobIndex::default();
        {
            let mut map = idx.map.write().unwrap();
            for b in blobs {
                idx.count.fetch_add(1, Relaxed);
                idx.bytes.fetch_add(b.size, Relaxed);
                map.insert(
                    b.digest,
                    BlobMeta {
                        size: Some(b.size),
                        last_access: b.mtime,
                        owners: Vec::new(),
                    },
                );
            }
        }
        idx
    }

    /// Size of a stored blob, touching its last access.
    pub fn stored_size(&self, d: &Digest) -> Option<u64> {
        let mut map = self.map.write().unwrap();
        let meta = map.get_mut(d)?;
        meta.size?;
        meta.last_access = now_secs();
        meta.size
    }

    /// Whether `owner` is known to hold `d` upstream.
    pub fn owns(&self, d: &Digest, owner: &Owner) -> bool {
        self.map
            .read()
            .unwrap()
            .get(d)
            .is_some_and(|m| m.owners.contains(owner))
    }

    /// Records that `owner` holds every digest in `ds` upstream.
    pub fn add_owner<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>, owner: &Owner) {
        let mut map = self.map.write().unwrap();
        for d in ds {
            let meta = map.entry(d.clone()).or_default();
            if !meta.owners.contains(owner) {
                if meta.owners.len() >= MAX_OWNERS {
                    meta.owners.remove(0);
                }
                meta.owners.push(owner.clone());
            }
        }
    }

    /// Records a newly published blob.
    pub fn stored(&self, d: &Digest, size: u64) {
        let mut map = self.map.write().unwrap();
        let meta = map.entry(d.clone()).or_default();
        if meta.size.is_none() {
            self.count.fetch_add(1, Relaxed);
            self.bytes.fetch_add(size, Relaxed);
        }
        meta.size = Some(size);
        meta.last_access = now_secs();
    }

    /// Blobs and bytes stored.
    pub fn totals(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.bytes.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;

    #[test]
    fn ownership_is_per_upstream_and_repo() {
        let idx = BlobIndex::default();
        let d = Digest::of(Algorithm::Sha256, b"x");
        let a = Owner {
            upstream: "u".into(),
            repo: "team/private".parse().unwrap(),
        };
        let b = Owner {
            upstream: "u".into(),
            repo: "team/public".parse().unwrap(),
        };
        let c = Owner {
            upstream: "v".into(),
            repo: "team/private".parse().unwrap(),
        };
        idx.add_owner([&d], &a);
        assert!(idx.owns(&d, &a));
        assert!(!idx.owns(&d, &b));
        assert!(!idx.owns(&d, &c));
        assert_eq!(idx.stored_size(&d), None);
        idx.stored(&d, 1);
        idx.stored(&d, 1);
        assert_eq!(idx.stored_size(&d), Some(1));
        assert_eq!(idx.totals(), (1, 1));
    }
}
