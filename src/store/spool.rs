//! A spool file: content being downloaded, hashed as it is written, deleted unless verified
//! and published. Dropping a spool (or an unpublished [`Verified`]) removes its file, so an
//! aborted download can never leave partial content behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;

use crate::reference::{Digest, Hasher};

/// Why a spool could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes)")]
    Mismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
}

/// Content being written; see the module doc.
pub struct Spool {
    path: PathBuf,
    /// Written (and hashed) on the blocking pool, straight from the caller's `Bytes`.
    file: Arc<std::fs::File>,
    /// `None` only while a write is in progress.
    hasher: Option<Hasher>,
    written: u64,
    expected: Digest,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Spool {
    /// Creates an empty spool file in `dir` for content that must hash to `expected`.
    pub async fn create(dir: &Path, expected: &Digest) -> std::io::Result<Spool> {
        let name = format!(
            "{}-{}-{}.part",
            expected.hex().get(..16).unwrap_or(expected.hex()),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        Ok(Spool {
            path,
            file: Arc::new(file),
            hasher: Some(Hasher::new(expected.algorithm())),
            written: 0,
            expected: expected.clone(),
        })
    }

    /// Path of the partial file, for readers that follow the download.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends and hashes `data` off the async workers; when it returns, readers of the
    /// file see the bytes.
    pub async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        let file = self.file.clone();
        let mut hasher = self.hasher.take().expect("spool write in progress");
        let len = data.len() as u64;
        let (hasher, result) = tokio::task::spawn_blocking(move || {
            let r = (&*file).write_all(&data);
            hasher.update(&data);
            (hasher, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.hasher = Some(hasher);
        result?;
        self.written += len;
        Ok(())
    }

    /// Flushes and compares the hash (and the size, when known) with what was asked for.
    pub async fn finish(mut self, expected_size: Option<u64>) -> Result<Verified, SpoolError> {
        if let Some(expected) = expected_size {
            if expected != self.written {
                return Err(SpoolError::Size {
                    expected,
                    actual: self.written,
                });
            }
        }
        let actual = self
            .hasher
            .take()
            .expect("spool write in progress")
            .finish();
        if actual != self.expected {
            return Err(SpoolError::Mismatch {
                expected: self.expected.clone(),
                actual,
                size: self.written,
            });
        }
        let path = std::mem::take(&mut self.path);
        Ok(Verified {
            path,
            digest: self.expected.clone(),
            size: self.written,
            file: Some(self.file.clone()),
        })
    }

    /// Writes a whole in-memory buffer (manifests) and verifies it.
    pub async fn from_bytes(
        dir: &Path,
        expected: &Digest,
        data: &[u8],
    ) -> Result<Verified, SpoolError> {
        let mut spool = Spool::create(dir, expected).await?;
        spool.write(Bytes::copy_from_slice(data)).await?;
        spool.finish(Some(data.len() as u64)).await
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A spool whose content matched its digest, waiting to be published.
pub struct Verified {
    path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    file: Option<Arc<std::fs::File>>,
}

impl Verified {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forces the content to stable storage (before a publishing rename).
    pub async fn sync(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file.take() {
            tokio::task::spawn_blocking(move || f.sync_data())
                .await
                .map_err(std::io::Error::other)??;
        }
        Ok(())
    }

    /// Called by a store once the file has been moved into place: nothing left to delete.
    pub(crate) fn published(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;

    #[tokio::test]
    async fn mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let want = Digest::of(Algorithm::Sha256, b"hello");
        let mut s = Spool::create(dir.path(), &want).await.unwrap();
        s.write(Bytes::from_static(b"hellO")).await.unwrap();
        assert!(matches!(
            s.finish(None).await,
            Err(SpoolError::Mismatch { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn dropped_spool_is_removed_and_verified_kept_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let want = Digest::of(Algorithm::Sha256, b"hello");
        let mut s = Spool::create(dir.path(), &want).await.unwrap();
        s.write(Bytes::from_static(b"hel")).await.unwrap();
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let v = Spool::from_bytes(dir.path(), &want, b"hello")
            .await
            .unwrap();
        assert_eq!(v.size, 5);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(v);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
