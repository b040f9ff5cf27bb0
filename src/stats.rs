//! Counters read by `/stats` (and later `/metrics`) without locks: plain atomics, bumped on
//! the hot path with relaxed ordering. What the store holds is counted by the blob index.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Every counter the mirror keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received on the /v2/ API.
    pub requests: AtomicU64,
    /// Manifest or blob requests answered from the cache.
    pub hits: AtomicU64,
    /// Manifest or blob requests that had to fetch content upstream.
    pub misses: AtomicU64,
    /// Body bytes sent to clients (blobs and manifests).
    pub bytes_served: AtomicU64,
    /// Body bytes received from upstreams for content (blobs and manifests).
    pub bytes_upstream: AtomicU64,
    /// Blob requests that joined a download already in flight.
    pub coalesced: AtomicU64,
    /// Bytes those joiners received without any extra upstream transfer.
    pub bytes_saved: AtomicU64,
    /// Downloads running now.
    pub inflight_downloads: AtomicU64,
    /// Upstream content rejected for a digest or size mismatch or a cut body.
    pub verify_failures: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
}

/// The `/stats` JSON document.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_served: u64,
    pub bytes_upstream: u64,
    pub coalesced: u64,
    pub bytes_saved: u64,
    pub inflight_downloads: u64,
    pub verify_failures: u64,
    pub errors: u64,
    /// Objects (blobs and manifests) in the store now.
    pub cached_blobs: u64,
    /// Their bytes.
    pub cached_bytes: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The counters, with the store's `(objects, bytes)` (kept by the blob index).
    pub fn snapshot(&self, (cached_blobs, cached_bytes): (u64, u64)) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        Snapshot {
            requests: g(&self.requests),
            hits: g(&self.hits),
            misses: g(&self.misses),
            bytes_served: g(&self.bytes_served),
            bytes_upstream: g(&self.bytes_upstream),
            coalesced: g(&self.coalesced),
            bytes_saved: g(&self.bytes_saved),
            inflight_downloads: g(&self.inflight_downloads),
            verify_failures: g(&self.verify_failures),
            errors: g(&self.errors),
            cached_blobs,
            cached_bytes,
        }
    }
}
