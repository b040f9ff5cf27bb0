//! Blobs: served from the store when cached (after the auth gate), else fetched once
//! upstream and streamed to every requester from the shared download (see `download`).

use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use http::{header, request::Parts, HeaderValue, Method, Response, StatusCode};

use super::download::{self, Claim, Download, Leader, Phase};
use super::manifest::content_length;
use super::multipart;
use super::range::{self, ByteRange, RangeRequest};
use super::respond::{self, CacheStatus};
use super::transfer::Transfer;
use super::{relay_status, Proxy, ProxyError, Requester, Target};
use crate::body::{self, Body};
use crate::error::{oci_error, OciCode};
use crate::reference::Digest;
use crate::stats::Stats;
use crate::store::Spool;

/// Most ranges answered as multipart; more get the whole blob (RFC 9110 allows ignoring Range).
const MAX_PARTS: usize = 64;
/// Times a request re-tries joining when the leader's upstream request was refused.
const MAX_CLAIMS: usize = 4;

impl Proxy {
    pub(super) async fn blob(
        &self,
        t: &Target,
        d: &Digest,
        parts: &Parts,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        for _ in 0..MAX_CLAIMS {
            if let Some(size) = self.index.stored_size(d) {
                self.gate_blob(t, d, who).await?;
                if let Some(resp) = self.serve_stored(d, size, parts).await? {
                    return Ok(resp);
                }
            }
            if parts.method == Method::HEAD {
                return self.head_miss(t, d, who).await;
            }
            match self.downloads.claim(d) {
                Claim::Leader(lead) => return self.lead(t, d, parts, who, lead).await,
                Claim::Follower(dl) => {
                    // A download that never started, or already failed (and is about to be
                    // forgotten), is no use: try again, leading a new one if need be.
                    if matches!(dl.started().await.phase, Phase::Refused | Phase::Failed(_)) {
                        self.downloads.remove(&dl);
                        continue;
                    }
                    self.gate_blob(t, d, who).await?;
                    Stats::add(&self.stats.coalesced, 1);
                    return Ok(self.serve_download(dl, parts, CacheStatus::Joined));
                }
            }
        }
        Err(ProxyError::Internal(format!(
            "could not start a download of {d}"
        )))
    }

    /// Ensures `who` may read `d` through `t.repo`: known from recent upstream answers, or
    /// asked now with a HEAD carrying the requester's credentials.
    async fn gate_blob(&self, t: &Target, d: &Digest, who: &Requester) -> Result<(), ProxyError> {
        if self.gate_allows(t, who) && self.index.owns(d, &self.owner(t)) {
            return Ok(());
        }
        self.head_upstream(t, d, who).await.map(|_| ())
    }

    /// HEADs `d` in `t.repo` upstream as `who`, recording a success for the auth gate;
    /// returns the upstream's Content-Length.
    async fn head_upstream(
        &self,
        t: &Target,
        d: &Digest,
        who: &Requester,
    ) -> Result<Option<u64>, ProxyError> {
        let head = t
            .upstream
            .blob(Method::HEAD, &t.repo, d, &who.forward())
            .await?;
        if !head.status().is_success() {
            return Err(relay_status(head).await);
        }
        self.gate_record(t, who).await;
        self.index.add_owner([d], &self.owner(t));
        Ok(content_length(head.headers()))
    }

    /// HEAD for a blob we do not have: the upstream's answer, without fetching.
    async fn head_miss(
        &self,
        t: &Target,
        d: &Digest,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        let len = self.head_upstream(t, d, who).await?;
        Ok(respond::blob(
            body::empty(),
            d,
            len,
            None,
            CacheStatus::Miss,
        ))
    }

    /// Starts the one upstream transfer for `d` and follows it.
    async fn lead(
        &self,
        t: &Target,
        d: &Digest,
        parts: &Parts,
        who: &Requester,
        lead: Leader,
    ) -> Result<Response<Body>, ProxyError> {
        let fwd = who.forward();
        let resp = t.upstream.blob(Method::GET, &t.repo, d, &fwd).await?;
        if !resp.status().is_success() {
            return Err(relay_status(resp).await);
        }
        self.gate_record(t, who).await;
        self.index.add_owner([d], &self.owner(t));
        let total = content_length(resp.headers());
        let spool = Spool::create(self.store.spool_dir(), d)
            .await
            .map_err(|e| ProxyError::Internal(format!("creating a spool file: {e}")))?;
        let reader = std::fs::File::open(spool.path())
            .map_err(|e| ProxyError::Internal(format!("opening the spool file: {e}")))?;
        let dl = lead.start(reader, total);
        let transfer = Transfer {
            dl: dl.clone(),
            spool: Some(spool),
            body: resp.into_body(),
            upstream: t.upstream.clone(),
            repo: t.repo.clone(),
            fwd,
            total,
            store: self.store.clone(),
            index: self.index.clone(),
            stats: self.stats.clone(),
            downloads: self.downloads.clone(),
            finish_abandoned: self.config.cache.finish_abandoned_downloads,
        };
        // The leader's stream exists before the transfer starts, so an abandoned-download
        // check never sees zero readers while the leader is still there.
        let resp = self.serve_download(dl, parts, CacheStatus::Miss);
        tokio::spawn(transfer.run());
        Stats::add(&self.stats.misses, 1);
        Ok(resp)
    }

    /// Serves a download in flight: whole, one range, or several (multipart).
    fn serve_download(
        &self,
        dl: Arc<Download>,
        parts: &Parts,
        cache: CacheStatus,
    ) -> Response<Body> {
        tracing::Span::current().record("cache", cache.as_str());
        let digest = dl.digest.clone();
        let Some(total) = dl.progress().total else {
            // Size unknown (chunked upstream): ranges cannot be resolved yet; send it all.
            let s = self.count_served(download::follow(dl, 0, None), cache);
            return respond::blob(body::stream(s), &digest, None, None, cache);
        };
        let open =
            move |r: ByteRange| download::follow(dl.clone(), r.start, Some(r.end + 1)).boxed();
        self.ranged(parts, &digest, total, cache, open)
    }

    /// Serves a stored blob; `None` if it vanished meanwhile.
    async fn serve_stored(
        &self,
        d: &Digest,
        size: u64,
        parts: &Parts,
    ) -> Result<Option<Response<Body>>, ProxyError> {
        tracing::Span::current().record("cache", "HIT");
        if parts.method != Method::HEAD && self.store.stat(d).await?.is_none() {
            return Ok(None);
        }
        Stats::add(&self.stats.hits, 1);
        let (store, digest) = (self.store.clone(), d.clone());
        let open = move |r: ByteRange| {
            let (store, digest) = (store.clone(), digest.clone());
            futures_util::stream::once(async move { store.open(&digest, r.start..r.end + 1).await })
                .flat_map(move |opened| match opened {
                    Ok(Some(read)) => read.stream,
                    Ok(None) => error_stream("cached blob vanished while being served".into()),
                    Err(e) => error_stream(e.to_string()),
                })
                .boxed()
        };
        Ok(Some(self.ranged(parts, d, size, CacheStatus::Hit, open)))
    }

    /// The response for a blob of `total` bytes whose byte ranges `open` streams, honouring
    /// `Range` (206, multipart for several ranges, 416 when unsatisfiable) and HEAD.
    fn ranged<F>(
        &self,
        parts: &Parts,
        d: &Digest,
        total: u64,
        cache: CacheStatus,
        open: F,
    ) -> Response<Body>
    where
        F: Fn(ByteRange) -> BoxStream<'static, Result<bytes::Bytes, std::io::Error>>
            + Send
            + 'static,
    {
        let head = parts.method == Method::HEAD;
        let ranges = match range::parse(range_header(parts), total) {
            RangeRequest::Unsatisfiable => return unsatisfiable(total),
            RangeRequest::Ranges(r) if r.len() <= MAX_PARTS => Some(r),
            _ => None,
        };
        match ranges {
            Some(r) if r.len() == 1 => {
                let r = r[0];
                let b = if head {
                    body::empty()
                } else {
                    body::stream(self.count_served(open(r), cache))
                };
                respond::blob(b, d, Some(r.len()), Some((r.start, r.end, total)), cache)
            }
            Some(r) => {
                let len = multipart::content_length(&r, total);
                let b = if head {
                    body::empty()
                } else {
                    body::stream(self.count_served(multipart::body(r, total, open), cache))
                };
                let mut resp = respond::blob(b, d, Some(len), None, cache);
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let ct = format!("multipart/byteranges; boundary={}", multipart::BOUNDARY);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&ct).expect("ASCII"),
                );
                resp
            }
            None => {
                let whole = ByteRange {
                    start: 0,
                    end: total.saturating_sub(1),
                };
                let b = if head || total == 0 {
                    body::empty()
                } else {
                    body::stream(self.count_served(open(whole), cache))
                };
                respond::blob(b, d, Some(total), None, cache)
            }
        }
    }

    /// Counts bytes sent (and bytes a joiner got without another upstream transfer).
    fn count_served<S>(
        &self,
        s: S,
        cache: CacheStatus,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    {
        let stats = self.stats.clone();
        s.inspect(move |r| {
            if let Ok(b) = r {
                Stats::add(&stats.bytes_served, b.len() as u64);
                if cache == CacheStatus::Joined {
                    Stats::add(&stats.bytes_saved, b.len() as u64);
                }
            }
        })
    }
}

fn error_stream(why: String) -> BoxStream<'static, Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::once(async move { Err(std::io::Error::other(why)) }).boxed()
}

fn range_header(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
}

/// 416 with the blob's size.
fn unsatisfiable(total: u64) -> Response<Body> {
    let mut r = oci_error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        OciCode::SizeInvalid,
        "requested range not satisfiable",
    );
    let v = HeaderValue::from_str(&format!("bytes */{total}")).expect("ASCII");
    r.headers_mut().insert(header::CONTENT_RANGE, v);
    r
}
