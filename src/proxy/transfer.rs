//! The task behind one shared blob download: pulls the upstream body into a spool file while
//! hashing it, resumes with `Range: bytes=<have>-` when the upstream connection breaks
//! (bounded retries, backoff, the same running hash), then verifies and publishes.
//!
//! It runs detached from any client; its only outputs are the spool, the progress broadcast
//! and, on success, a published blob.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::download::{Download, Downloads, Phase};
use crate::cache::BlobIndex;
use crate::reference::RepoName;
use crate::stats::Stats;
use crate::store::{BlobStore, Spool};
use crate::upstream::{Forward, Upstream};

/// Resumes tried after the upstream body breaks, before giving up.
const MAX_RESUMES: u32 = 3;
/// Largest batch written to the spool at once.
const BATCH: usize = 1024 * 1024;

/// Everything the task needs; see the module doc.
pub struct Transfer {
    pub dl: Arc<Download>,
    pub spool: Option<Spool>,
    pub body: Incoming,
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    /// The leader's credentials, reused to resume.
    pub fwd: Forward,
    pub total: Option<u64>,
    pub store: Arc<dyn BlobStore>,
    pub index: Arc<BlobIndex>,
    pub stats: Arc<Stats>,
    pub downloads: Downloads,
    pub finish_abandoned: bool,
}

/// Marks the download failed if the task ends (or panics) without finishing it.
struct FailOnDrop(Arc<Download>, Downloads);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        let p = self.0.progress();
        if p.phase == Phase::Running {
            self.0
                .update(|p| p.phase = Phase::Failed(Arc::from("transfer task ended")));
        }
        self.1.remove(&self.0);
    }
}

impl Transfer {
    /// Runs the transfer to its end.
    pub async fn run(mut self) {
        let _guard = FailOnDrop(self.dl.clone(), self.downloads.clone());
        Stats::add(&self.stats.inflight_downloads, 1);
        let result = self.pump().await;
        self.stats
            .inflight_downloads
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let digest = self.dl.digest.clone();
        match result {
            Ok(()) => match self
                .spool
                .take()
                .expect("spool present until finished")
                .finish(self.total)
                .await
            {
                Ok(verified) => {
                    let size = verified.size;
                    self.dl.update(|p| p.phase = Phase::Done);
                    match self.store.publish(verified).await {
                        Ok(()) => {
                            self.index.stored(&digest, size);
                            tracing::info!(%digest, size, upstream = %self.upstream.name, "blob cached");
                        }
                        Err(e) => {
                            tracing::error!(%digest, error = %e, "publishing a verified blob failed")
                        }
                    }
                }
                Err(e) => self.fail(e.to_string()),
            },
            Err(why) => self.fail(why),
        }
    }

    fn spool_mut(&mut self) -> &mut Spool {
        self.spool.as_mut().expect("spool present until finished")
    }

    fn fail(&self, why: String) {
        Stats::add(&self.stats.verify_failures, 1);
        tracing::warn!(digest = %self.dl.digest, upstream = %self.upstream.name, reason = %why, "blob download failed; nothing cached");
        self.dl
            .update(|p| p.phase = Phase::Failed(Arc::from(why.as_str())));
    }

    /// Copies the body into the spool, resuming on breaks.
    async fn pump(&mut self) -> Result<(), String> {
        let idle = self.upstream.config.idle_timeout;
        let mut resumes = 0;
        let mut skip = 0u64;
        loop {
            match next_batch(&mut self.body, idle).await {
                Ok(Some(mut data)) => {
                    if skip > 0 {
                        let n = skip.min(data.len() as u64);
                        skip -= n;
                        data = data.slice(n as usize..);
                    }
                    self.write(&data).await?;
                }
                Ok(None) if self.total.is_none_or(|t| self.spool_mut().written() >= t) => {
                    return Ok(())
                }
                Ok(None) => {
                    self.resume(&mut resumes, &mut skip, "upstream body ended early")
                        .await?
                }
                Err(e) => self.resume(&mut resumes, &mut skip, &e).await?,
            }
            if !self.finish_abandoned && self.dl.followers() == 0 {
                return Err("every client left and finish_abandoned_downloads is off".into());
            }
        }
    }

    async fn write(&mut self, data: &Bytes) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.total {
            if self.spool_mut().written() + data.len() as u64 > t {
                return Err(format!("upstream sent more than the announced {t} bytes"));
            }
        }
        let offset = self.spool_mut().written();
        self.spool_mut()
            .write(data.clone())
            .await
            .map_err(|e| format!("spool write: {e}"))?;
        Stats::add(&self.stats.bytes_upstream, data.len() as u64);
        self.dl.push_tail(offset, data.clone());
        let written = self.spool_mut().written();
        self.dl.update(|p| p.written = written);
        Ok(())
    }

    /// Re-requests the rest of the blob after a break.
    async fn resume(&mut self, resumes: &mut u32, skip: &mut u64, why: &str) -> Result<(), String> {
        let Some(total) = self.total else {
            return Err(format!("{why} (size unknown: cannot resume)"));
        };
        loop {
            if *resumes >= MAX_RESUMES {
                return Err(format!("{why}; gave up after {MAX_RESUMES} resumes"));
            }
            *resumes += 1;
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(*resumes - 1))).await;
            let have = self.spool_mut().written();
            tracing::info!(digest = %self.dl.digest, have, total, reason = %why, "resuming upstream transfer");
            let mut fwd = self.fwd.clone();
            fwd.range = HeaderValue::from_str(&format!("bytes={have}-")).ok();
            let resp = match self
                .upstream
                .blob(Method::GET, &self.repo, &self.dl.digest, &fwd)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "resume request failed");
                    continue;
                }
            };
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if range_start(resp.headers()) == Some(have) => {
                    *skip = 0
                }
                StatusCode::OK => *skip = have,
                s => {
                    tracing::warn!(status = %s, "resume refused");
                    continue;
                }
            }
            self.body = resp.into_body();
            return Ok(());
        }
    }
}

/// The start offset of a `Content-Range: bytes a-b/n` header.
fn range_start(h: &http::HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The next data frames that are ready now, up to [`BATCH`] bytes; waits (up to `idle`) for
/// the first. `Ok(None)` at the end of the body.
async fn next_batch(body: &mut Incoming, idle: Duration) -> Result<Option<Bytes>, String> {
    let first = loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(format!("no upstream data for {idle:?}")),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(format!("upstream body: {e}")),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        break d;
                    }
                }
            }
        }
    };
    if first.len() >= BATCH {
        return Ok(Some(first));
    }
    let mut buf = bytes::BytesMut::from(&first[..]);
    while buf.len() < BATCH {
        match body.frame().now_or_never() {
            Some(Some(Ok(f))) if f.is_data() => {
                buf.extend_from_slice(&f.into_data().unwrap_or_default());
            }
            // Dropping the batch is fine: a resume re-fetches from what the spool holds.
            Some(Some(Err(e))) => return Err(format!("upstream body: {e}")),
            Some(Some(Ok(_))) => {}
            // The end (reported again by the next call) or nothing ready yet.
            Some(None) | None => break,
        }
    }
    Ok(Some(buf.freeze()))
}
