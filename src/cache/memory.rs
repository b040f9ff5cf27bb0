//! The memory tier (moka): verified manifests by digest (weighed by size, within the
//! configured budget), tag answers, and short-lived auth decisions.
//!
//! Tag entries outlive `tag_ttl` on purpose: freshness is checked by the caller, so a stale
//! answer stays available for stale-if-error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;

use crate::reference::{Digest, RepoName, Tag};

/// A verified manifest.
#[derive(Debug)]
pub struct ManifestEntry {
    pub bytes: Bytes,
    pub media_type: String,
}

/// A tag as asked by one kind of client (the normalized `Accept` is part of the key, since
/// the upstream's answer depends on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: Arc<str>,
    pub repo: RepoName,
    pub tag: Tag,
    pub accept: Arc<str>,
}

/// The upstream's answer for a tag (the media type is the manifest's own, in its entry).
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub digest: Digest,
    pub fetched: Instant,
}

/// Who is asking: nobody, or a hash of their `Authorization` header (never the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    Anonymous,
    Hashed([u8; 16]),
}

/// "This requester may pull this repository of this upstream."
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthKey {
    pub upstream: Arc<str>,
    pub repo: RepoName,
    pub credential: Credential,
}

/// Tag answers kept at most (they are small).
const MAX_TAGS: u64 = 100_000;
/// Auth decisions kept at most.
const MAX_AUTH: u64 = 100_000;
/// How long an unused tag answer is kept for stale-if-error.
const TAG_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The memory tier.
pub struct Memory {
    pub manifests: Cache<Digest, Arc<ManifestEntry>>,
    pub tags: Cache<TagKey, TagEntry>,
    pub auth: Cache<AuthKey, ()>,
}

impl Memory {
    pub fn new(budget_bytes: u64, auth_ttl: Duration) -> Memory {
        Memory {
            manifests: Cache::builder()
                .max_capacity(budget_bytes)
                .weigher(|_, v: &Arc<ManifestEntry>| {
                    u32::try_from(v.bytes.len() + v.media_type.len() + 128).unwrap_or(u32::MAX)
                })
                .build(),
            tags: Cache::builder()
                .max_capacity(MAX_TAGS)
                .time_to_idle(TAG_KEEP)
                .build(),
            auth: Cache::builder()
                .max_capacity(MAX_AUTH)
                .time_to_live(auth_ttl)
                .build(),
        }
    }
}
