//! The auth gate: before anything cached for repository R is served, we must know that the
//! upstream would let this requester pull R, and (for blobs) that the blob belongs to R.
//!
//! Decisions come from upstream answers obtained with the requester's own credentials (a
//! HEAD, or the fetch itself) and are kept for `auth_ttl` per (upstream, repository, hash of
//! the Authorization header). A repository anonymous requests may pull is public for all.

use super::{Proxy, Requester, Target};
use crate::cache::{AuthKey, Credential};

impl Proxy {
    fn auth_key(&self, t: &Target, credential: Credential) -> AuthKey {
        AuthKey {
            upstream: t.upstream.key.clone(),
            repo: t.repo.clone(),
            credential,
        }
    }

    /// Whether a recent upstream answer says `who` may pull `t.repo`.
    pub(super) fn gate_allows(&self, t: &Target, who: &Requester) -> bool {
        let auth = &self.memory.auth;
        auth.contains_key(&self.auth_key(t, Credential::Anonymous))
            || auth.contains_key(&self.auth_key(t, who.credential))
    }

    /// Records that upstream just let `who` pull `t.repo`.
    pub(super) async fn gate_record(&self, t: &Target, who: &Requester) {
        self.memory
            .auth
            .insert(self.auth_key(t, who.credential), ())
            .await;
    }
}
