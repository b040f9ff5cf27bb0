//! Manifests: by tag (trusted for `tag_ttl`, then revalidated with an upstream HEAD, which
//! Docker Hub does not count against pull limits) and by digest (immutable). Bodies are
//! buffered under a size cap, verified against the requested digest or the upstream's
//! `Docker-Content-Digest`, then stored by digest.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Method, Response};
use http_body_util::BodyExt;

use super::media::{self, ALL_MANIFEST_TYPES};
use super::respond::{self, CacheStatus};
use super::{relay_status, Proxy, ProxyError, Requester, Target};
use crate::body::Body;
use crate::cache::{ManifestEntry, TagEntry, TagKey};
use crate::reference::{Digest, Reference, Tag};
use crate::stats::Stats;
use crate::store::Spool;
use crate::upstream::Forward;

/// A verified manifest ready to serve.
#[derive(Clone)]
pub(super) struct Found {
    digest: Digest,
    entry: Arc<ManifestEntry>,
}

impl Proxy {
    pub(super) async fn manifest(
        &self,
        t: &Target,
        reference: &Reference,
        parts: &Parts,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        let accept = media::normalize_accept(&parts.headers);
        let (found, cache) = match reference {
            Reference::Tag(tag) => self.manifest_by_tag(t, tag, &accept, parts, who).await?,
            Reference::Digest(d) => self.manifest_by_digest(t, d, parts, who).await?,
        };
        if !media::accepts(&accept, &found.entry.media_type) {
            return Err(ProxyError::NotAcceptable(found.entry.media_type.clone()));
        }
        let counter = if cache == CacheStatus::Hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        Stats::add(counter, 1);
        if parts.method == Method::GET {
            Stats::add(&self.stats.bytes_served, found.entry.bytes.len() as u64);
        }
        tracing::Span::current().record("cache", cache.as_str());
        Ok(respond::manifest(
            &parts.method,
            &found.digest,
            &found.entry.media_type,
            found.entry.bytes.clone(),
            cache,
        ))
    }

    async fn manifest_by_tag(
        &self,
        t: &Target,
        tag: &Tag,
        accept: &str,
        parts: &Parts,
        who: &Requester,
    ) -> Result<(Found, CacheStatus), ProxyError> {
        let key = TagKey {
            upstream: t.upstream.key.clone(),
            repo: t.repo.clone(),
            tag: tag.clone(),
            accept: Arc::from(accept),
        };
        if let Some(e) = self.memory.tags.get(&key).await {
            if e.fetched.elapsed() < self.config.cache.tag_ttl && self.gate_allows(t, who) {
                if let Some(found) = self.load_manifest(&e.digest).await? {
                    return Ok((found, CacheStatus::Hit));
                }
            }
        }
        // Concurrent revalidations with the same credentials share one upstream exchange
        // (other credentials need their own answer from upstream: the auth gate).
        let flight_key = (key.clone(), who.credential);
        let work = || async {
            self.revalidate_tag(t, tag, key, accept, parts, who)
                .await
                .map_err(Arc::new)
        };
        let (result, _joined) = self.tag_flights.run(flight_key, work).await;
        result.map_err(ProxyError::Shared)
    }

    /// Asks upstream which digest `tag` names now (a HEAD with the requester's credentials
    /// answers both that and "may this requester pull"), fetching the manifest if new.
    async fn revalidate_tag(
        &self,
        t: &Target,
        tag: &Tag,
        key: TagKey,
        accept: &str,
        parts: &Parts,
        who: &Requester,
    ) -> Result<(Found, CacheStatus), ProxyError> {
        let fwd = forward_accept(who, parts);
        let head = t
            .upstream
            .manifest(Method::HEAD, &t.repo, tag.as_str(), &fwd)
            .await?;
        if !head.status().is_success() {
            return Err(relay_status(head).await);
        }
        self.gate_record(t, who).await;
        let (found, cache) = match digest_header(head.headers()) {
            Some(d) => match self.load_manifest(&d).await? {
                Some(found) if media::accepts(accept, &found.entry.media_type) => {
                    (found, CacheStatus::Hit)
                }
                _ => (self.fetch_shared(t, &d, &fwd).await?, CacheStatus::Miss),
            },
            // No digest in the HEAD answer (some registries): fetch by tag.
            None => (
                self.fetch_manifest(t, tag.as_str(), None, &fwd).await?,
                CacheStatus::Miss,
            ),
        };
        self.remember_tag(t, key, &found).await;
        Ok((found, cache))
    }

    /// Fetches a manifest by digest, sharing one upstream GET among concurrent callers (each
    /// of them is already authorized for the repository by its own upstream answer).
    async fn fetch_shared(
        &self,
        t: &Target,
        d: &Digest,
        fwd: &Forward,
    ) -> Result<Found, ProxyError> {
        let work = || async {
            self.fetch_manifest(t, &d.to_string(), Some(d), fwd)
                .await
                .map_err(Arc::new)
        };
        let (result, _joined) = self.manifest_fetches.run(d.clone(), work).await;
        let found = result.map_err(ProxyError::Shared)?;
        // The flight recorded ownership for the leader's repository; add the joiner's.
        self.own_manifest(t, &found.digest, &found.entry.bytes);
        Ok(found)
    }

    /// Records that upstream holds manifest `d` in `t.repo`, and so everything it lists:
    /// "listed in a verified manifest of R" is what lets a cached blob be served under R.
    fn own_manifest(&self, t: &Target, d: &Digest, bytes: &[u8]) {
        let children = media::referenced_digests(bytes);
        self.index
            .add_owner(children.iter().chain([d]), &self.owner(t));
    }

    async fn remember_tag(&self, t: &Target, key: TagKey, found: &Found) {
        // Also after a restart, when the manifest came from disk: upstream just confirmed it.
        self.own_manifest(t, &found.digest, &found.entry.bytes);
        let entry = TagEntry {
            digest: found.digest.clone(),
            fetched: Instant::now(),
        };
        self.memory.tags.insert(key, entry).await;
    }

    async fn manifest_by_digest(
        &self,
        t: &Target,
        d: &Digest,
        parts: &Parts,
        who: &Requester,
    ) -> Result<(Found, CacheStatus), ProxyError> {
        let fwd = forward_accept(who, parts);
        if let Some(found) = self.load_manifest(d).await? {
            if !(self.gate_allows(t, who) && self.index.owns(d, &self.owner(t))) {
                let head = t
                    .upstream
                    .manifest(Method::HEAD, &t.repo, &d.to_string(), &fwd)
                    .await?;
                if !head.status().is_success() {
                    return Err(relay_status(head).await);
                }
                self.gate_record(t, who).await;
            }
            // Known to be R's (an index of R listed it, or upstream just said so): so are the
            // blobs it lists, also after a restart that forgot them.
            self.own_manifest(t, d, &found.entry.bytes);
            return Ok((found, CacheStatus::Hit));
        }
        let found = self.fetch_shared(t, d, &fwd).await?;
        self.gate_record(t, who).await;
        Ok((found, CacheStatus::Miss))
    }

    /// A verified manifest from memory or disk.
    async fn load_manifest(&self, d: &Digest) -> Result<Option<Found>, ProxyError> {
        if let Some(entry) = self.memory.manifests.get(d).await {
            return Ok(Some(Found {
                digest: d.clone(),
                entry,
            }));
        }
        let max = self.config.cache.max_manifest_size.as_u64();
        let Some(bytes) = self.store.read_small(d, max).await? else {
            return Ok(None);
        };
        let entry = Arc::new(ManifestEntry {
            media_type: media::media_type_of(&bytes, None),
            bytes,
        });
        self.memory.manifests.insert(d.clone(), entry.clone()).await;
        Ok(Some(Found {
            digest: d.clone(),
            entry,
        }))
    }

    /// GETs a manifest, verifies it, stores it, and records who owns what it references.
    async fn fetch_manifest(
        &self,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        fwd: &Forward,
    ) -> Result<Found, ProxyError> {
        let resp = t
            .upstream
            .manifest(Method::GET, &t.repo, reference, fwd)
            .await?;
        if !resp.status().is_success() {
            return Err(relay_status(resp).await);
        }
        let limit = self.config.cache.max_manifest_size.as_u64();
        let declared = content_length(resp.headers());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::ManifestTooLarge { limit });
        }
        let header_digest = digest_header(resp.headers());
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_capped(resp.into_body(), limit).await?;
        Stats::add(&self.stats.bytes_upstream, bytes.len() as u64);
        // Verify against what was asked (a digest) or what upstream claims (a tag).
        let want = expected.or(header_digest.as_ref());
        let algorithm = want.map_or(crate::reference::Algorithm::Sha256, |d| d.algorithm());
        let actual = Digest::of(algorithm, &bytes);
        if let Some(want) = want {
            if *want != actual {
                Stats::add(&self.stats.verify_failures, 1);
                return Err(ProxyError::DigestMismatch {
                    expected: want.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if let (Some(e), Some(h)) = (expected, &header_digest) {
            if e != h {
                Stats::add(&self.stats.verify_failures, 1);
                return Err(ProxyError::DigestMismatch {
                    expected: e.to_string(),
                    actual: h.to_string(),
                });
            }
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(ProxyError::ManifestInvalid("not JSON".into()));
        }
        let entry = Arc::new(ManifestEntry {
            media_type: media::media_type_of(&bytes, content_type.as_deref()),
            bytes,
        });
        self.store_manifest(t, &actual, &entry).await?;
        Ok(Found {
            digest: actual,
            entry,
        })
    }

    async fn store_manifest(
        &self,
        t: &Target,
        d: &Digest,
        entry: &Arc<ManifestEntry>,
    ) -> Result<(), ProxyError> {
        self.own_manifest(t, d, &entry.bytes);
        if self.index.stored_size(d).is_none() {
            let verified = Spool::from_bytes(self.store.spool_dir(), d, &entry.bytes)
                .await
                .map_err(|e| ProxyError::Internal(e.to_string()))?;
            let size = verified.size;
            self.store.publish(verified).await?;
            self.index.stored(d, size);
        }
        self.memory.manifests.insert(d.clone(), entry.clone()).await;
        Ok(())
    }
}

/// The requester's credentials and `Accept` (all manifest types when it sent none).
fn forward_accept(who: &Requester, parts: &Parts) -> Forward {
    let accepts: Vec<&str> = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = if accepts.is_empty() {
        ALL_MANIFEST_TYPES.to_owned()
    } else {
        accepts.join(", ")
    };
    Forward {
        accept: HeaderValue::from_str(&accept).ok(),
        ..who.forward()
    }
}

pub(super) fn digest_header(h: &http::HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}

pub(super) fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads a body of at most `limit` bytes.
async fn read_capped(body: hyper::body::Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::ManifestTooLarge { limit })
        }
        Err(e) => Err(ProxyError::Upstream(crate::upstream::UpstreamError::Body(
            e.to_string(),
        ))),
    }
}
