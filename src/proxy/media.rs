//! Manifest media types: what a client's `Accept` allows, and what a stored manifest is.
//!
//! The upstream's answer for a tag depends on `Accept` (an index for clients that take one,
//! a single manifest for those that don't), so the normalized `Accept` is part of the tag
//! cache key, and nothing is ever served with a type the client did not accept.

use http::HeaderMap;
use serde::Deserialize;

use crate::reference::Digest;

/// Every manifest type we know, sent upstream when the client sent no `Accept`.
pub const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json";

/// A client's `Accept` headers, normalized: sorted unique media types, or `*` for anything.
pub fn normalize_accept(headers: &HeaderMap) -> String {
    let mut types: Vec<String> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty() || types.iter().any(|t| t == "*/*") {
        return "*".to_owned();
    }
    types.sort();
    types.dedup();
    types.join(",")
}

/// Whether a normalized accept string allows `media_type`.
pub fn accepts(normalized: &str, media_type: &str) -> bool {
    normalized == "*"
        || normalized.split(',').any(|t| {
            t.eq_ignore_ascii_case(media_type)
                || (t == "application/*" && media_type.starts_with("application/"))
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

/// The media type of a manifest: its own `mediaType`, else the upstream's `Content-Type`
/// when it names a manifest type, else what its shape says.
pub fn media_type_of(body: &[u8], content_type: Option<&str>) -> String {
    let sniff: Option<Sniff> = serde_json::from_slice(body).ok();
    if let Some(mt) = sniff.as_ref().and_then(|s| s.media_type.clone()) {
        return mt;
    }
    if let Some(ct) = content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        if ct.contains("manifest") || ct.contains("image.index") {
            return ct.to_owned();
        }
    }
    match sniff {
        Some(s) if s.schema_version == Some(1) && s.signatures.is_some() => {
            "application/vnd.docker.distribution.manifest.v1+prettyjws".into()
        }
        Some(s) if s.schema_version == Some(1) => {
            "application/vnd.docker.distribution.manifest.v1+json".into()
        }
        Some(s) if s.manifests.is_some() => "application/vnd.oci.image.index.v1+json".into(),
        Some(s) if s.config.is_some() => "application/vnd.oci.image.manifest.v1+json".into(),
        _ => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

/// Digests a manifest refers to (config, layers, child manifests, subject; schema1 layers):
/// they belong to the manifest's repository upstream.
pub fn referenced_digests(body: &[u8]) -> Vec<Digest> {
    use oci_spec::image::{ImageIndex, ImageManifest};
    let mut out: Vec<String> = Vec::new();
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(body) {
        out.push(m.config().digest().to_string());
        out.extend(m.layers().iter().map(|l| l.digest().to_string()));
        out.extend(m.subject().iter().map(|s| s.digest().to_string()));
    } else if let Ok(i) = serde_json::from_slice::<ImageIndex>(body) {
        out.extend(i.manifests().iter().map(|m| m.digest().to_string()));
        out.extend(i.subject().iter().map(|s| s.digest().to_string()));
    } else {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Schema1 {
            fs_layers: Vec<Layer>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layer {
            blob_sum: String,
        }
        if let Ok(s) = serde_json::from_slice::<Schema1>(body) {
            out.extend(s.fs_layers.into_iter().map(|l| l.blob_sum));
        }
    }
    out.iter().filter_map(|d| d.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_normalization_and_matching() {
        let mut h = HeaderMap::new();
        h.append(
            "accept",
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        h.append(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json; q=0.5, application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        let n = normalize_accept(&h);
        assert_eq!(
            n,
            "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json"
        );
        assert!(accepts(&n, "application/vnd.oci.image.manifest.v1+json"));
        assert!(!accepts(&n, "application/vnd.oci.image.index.v1+json"));
        assert_eq!(normalize_accept(&HeaderMap::new()), "*");
        assert!(accepts("*", "anything"));
    }

    #[test]
    fn sniffs_types_and_references() {
        let d = format!("sha256:{}", "b".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert_eq!(
            media_type_of(m.as_bytes(), None),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(referenced_digests(m.as_bytes()), vec![d.parse().unwrap()]);
        let i = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"x","digest":"{d}","size":1}}]}}"#
        );
        assert_eq!(
            media_type_of(i.as_bytes(), Some("application/json")),
            "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        assert_eq!(referenced_digests(i.as_bytes()).len(), 1);
    }
}
