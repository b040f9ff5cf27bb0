//! The content-addressed blob store, behind a small trait so a shared S3-compatible backend
//! can replace the local disk later.
//!
//! The store speaks digests, byte ranges and verified spool files only: no HTTP types, no
//! repositories, no policy. Content is staged and verified in a [`Spool`] on local disk;
//! [`BlobStore::publish`] makes a verified spool visible under its digest.

mod fs;
mod mmap;
mod spool;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::reference::Digest;

pub use fs::FsStore;
pub use spool::{Spool, SpoolError, Verified};

/// Store failures (always our side: they become 500s).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// A readable byte range of a stored blob.
pub struct BlobRead {
    /// Size of the whole blob.
    pub size: u64,
    /// The requested range's bytes, in chunks.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Bytes per chunk read from a file (in-flight downloads).
pub const READ_CHUNK: u64 = 512 * 1024;

/// Reads `n` bytes at `pos` with `pread` on the blocking pool (the file may be renamed or
/// unlinked meanwhile: the handle stays valid).
pub async fn read_chunk(file: Arc<std::fs::File>, pos: u64, n: u64) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// One stored blob, as listed at start-up.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    /// Last modification (publication) time, seconds since the epoch.
    pub mtime: u64,
}

/// Where verified content lives.
pub trait BlobStore: Send + Sync + 'static {
    /// Size of the blob if present.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// Opens `range` (clamped to the blob) of a stored blob; `None` if absent.
    fn open<'a>(
        &'a self,
        digest: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<BlobRead>, StoreError>>;

    /// Reads a small stored object whole (manifests); `None` if absent or over `max` bytes.
    fn read_small<'a>(
        &'a self,
        digest: &'a Digest,
        max: u64,
    ) -> BoxFuture<'a, Result<Option<bytes::Bytes>, StoreError>>;

    /// Makes verified content visible under its digest (atomic: readers see all or nothing).
    fn publish(&self, verified: Verified) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes a blob; `false` if it was not there.
    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every stored blob (start-up scan).
    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredBlob>, StoreError>>;

    /// Directory for spool files: on the same file system as the store so publishing is a
    /// rename, and cleared of leftovers at start-up.
    fn spool_dir(&self) -> &Path;
}
