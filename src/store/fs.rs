//! The local-disk [`BlobStore`]: `<dir>/blobs/<algo>/<hex[..2]>/<hex>`, spool files in
//! `<dir>/tmp`. Publishing is a rename on one file system, so readers see whole blobs only,
//! and a kill -9 at any point leaves either nothing or a complete, verified file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{BlobRead, BlobStore, StoreError, StoredBlob, Verified};
use crate::reference::{Algorithm, Digest};

/// Blobs on local disk.
pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl FsStore {
    /// Opens (creating directories) the store at `root`, deleting leftover spool files of a
    /// previous run: they were never verified.
    pub fn open(root: &Path) -> Result<FsStore, StoreError> {
        let tmp = root.join("tmp");
        for d in [root.join("blobs"), tmp.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| StoreError::io(d.display(), e))?;
        }
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(FsStore {
            root: root.to_owned(),
            tmp,
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn scan(&self) -> Result<Vec<StoredBlob>, StoreError> {
        let mut out = Vec::new();
        for algo in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(algo.as_str());
            let Ok(fans) = std::fs::read_dir(&dir) else {
                continue;
            };
            for fan in fans.flatten() {
                let Ok(files) = std::fs::read_dir(fan.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let Ok(digest) = format!("{}:{name}", algo.as_str()).parse::<Digest>() else {
                        continue;
                    };
                    let Ok(meta) = f.metadata() else { continue };
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    out.push(StoredBlob {
                        digest,
                        size: meta.len(),
                        mtime,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn not_found_is_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl BlobStore for FsStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        async move {
            let p = self.path(digest);
            not_found_is_none(tokio::fs::metadata(&p).await)
                .map(|m| m.map(|m| m.len()))
                .map_err(|e| StoreError::io(p.display(), e))
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        digest: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<BlobRead>, StoreError>> {
        async move {
            let p = self.path(digest);
            let err = |e| StoreError::io(p.display(), e);
            let opened = tokio::task::spawn_blocking({
                let p = p.clone();
                move || {
                    let f = std::fs::File::open(&p)?;
                    let len = f.metadata()?.len();
                    Ok::<_, std::io::Error>((f, len))
                }
            })
            .await
            .map_err(|e| err(std::io::Error::other(e)))?;
            let Some((file, size)) = not_found_is_none(opened).map_err(err)? else {
                return Ok(None);
            };
            let start = range.start.min(size);
            let end = range.end.min(size).max(start);
            let stream = super::mmap::map_stream(file, start..end);
            Ok(Some(BlobRead { size, stream }))
        }
        .boxed()
    }

    fn read_small<'a>(
        &'a self,
        digest: &'a Digest,
        max: u64,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move {
            let p = self.path(digest);
            let err = |e| StoreError::io(p.display(), e);
            match not_found_is_none(tokio::fs::metadata(&p).await).map_err(err)? {
                Some(m) if m.len() <= max => {}
                _ => return Ok(None),
            }
            let data = not_found_is_none(tokio::fs::read(&p).await).map_err(err)?;
            Ok(data.map(Bytes::from))
        }
        .boxed()
    }

    fn publish(&self, mut verified: Verified) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let dest = self.path(&verified.digest);
            let parent = dest.parent().expect("blob path has a parent");
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(parent.display(), e))?;
            verified
                .sync()
                .await
                .map_err(|e| StoreError::io(verified.path().display(), e))?;
            tokio::fs::rename(verified.path(), &dest)
                .await
                .map_err(|e| StoreError::io(dest.display(), e))?;
            verified.published();
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let p = self.path(digest);
            not_found_is_none(tokio::fs::remove_file(&p).await)
                .map(|r| r.is_some())
                .map_err(|e| StoreError::io(p.display(), e))
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredBlob>, StoreError>> {
        async move { tokio::task::block_in_place(|| self.scan()) }.boxed()
    }

    fn spool_dir(&self) -> &Path {
        &self.tmp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Spool;

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_open_range_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let data = b"0123456789";
        let d = Digest::of(Algorithm::Sha256, data);
        assert!(store.stat(&d).await.unwrap().is_none());
        let v = Spool::from_bytes(store.spool_dir(), &d, data)
            .await
            .unwrap();
        store.publish(v).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(10));
        let r = store.open(&d, 2..5).await.unwrap().unwrap();
        use futures_util::StreamExt;
        let chunks: Vec<_> = r.stream.collect().await;
        let buf: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!((r.size, buf.as_slice()), (10, &b"234"[..]));
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert!(store.remove(&d).await.unwrap());
        assert_eq!(std::fs::read_dir(store.spool_dir()).unwrap().count(), 0);
    }
}
