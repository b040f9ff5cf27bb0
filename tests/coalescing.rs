//! One upstream fetch per blob, streamed to every waiter; Range requests on cached and
//! in-flight blobs; resume after an upstream cut; client disconnects; tag single flight.
//! Proven by counting requests at a fake upstream with a slow, throttled body.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use support::fake_upstream::{random_bytes, sha256_digest, FakeUpstream, Fault, Knob};
use support::mirror::{Mirror, UpstreamSpec};

async fn setup(cache_extra: &str) -> (FakeUpstream, Mirror) {
    let fake = FakeUpstream::start().await;
    let mirror = Mirror::start_with(
        &[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)],
        cache_extra,
    );
    (fake, mirror)
}

fn blob_url(m: &Mirror, digest: &str) -> String {
    format!("{}/v2/team/app/blobs/{digest}", m.url())
}

/// Adds a random blob of `len` bytes and slows every blob body to `bytes_per_sec`, so requests
/// overlap while it downloads; returns the blob and its digest.
fn slow_blob(fake: &FakeUpstream, len: usize, bytes_per_sec: u64) -> (Vec<u8>, String) {
    let blob = random_bytes(len);
    let digest = fake.add_blob(blob.clone());
    fake.push_knob(Knob::new(Fault::Throttle { bytes_per_sec }).blobs());
    (blob, digest)
}

/// The whole body of a plain GET.
async fn get_body(url: &str) -> Bytes {
    reqwest::get(url).await.unwrap().bytes().await.unwrap()
}

async fn get_range(url: &str, range: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("Range", range)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_cold_requests_make_one_upstream_get() {
    let (fake, mirror) = setup("").await;
    let (blob, digest) = slow_blob(&fake, 4 * 1024 * 1024, 4 * 1024 * 1024);
    let url = blob_url(&mirror, &digest);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = reqwest::get(&url).await.unwrap();
                assert_eq!(r.status(), 200);
                let cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
                (r.bytes().await.unwrap(), cache)
            })
        })
        .collect();
    let mut joined = 0;
    for t in tasks {
        let (body, cache) = t.await.unwrap();
        assert_eq!(sha256_digest(&body), digest);
        joined += (cache == "JOINED") as usize;
    }
    assert_eq!(fake.blob_gets(&digest), 1, "exactly one upstream GET");
    assert_eq!(joined, 19);
    let stats = mirror.stats().await;
    assert_eq!(stats["coalesced"], 19);
    assert_eq!(stats["bytes_upstream"], blob.len() as u64);
    assert_eq!(stats["bytes_saved"], 19 * blob.len() as u64);
    assert_eq!(stats["inflight_downloads"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_cached_blobs() {
    let (fake, mirror) = setup("").await;
    let blob = random_bytes(100_000);
    let digest = fake.add_blob(blob.clone());
    let url = blob_url(&mirror, &digest);
    assert_eq!(sha256_digest(&get_body(&url).await), digest);

    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=99990-", 99990, 99999),
        ("bytes=-5", 99995, 99999),
        ("bytes=50-999999", 50, 99999),
    ] {
        let r = get_range(&url, range).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/100000").as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), blob[start..=end], "{range}");
    }
    let r = get_range(&url, "bytes=100000-").await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");

    let r = get_range(&url, "bytes=0-9,500-509").await;
    assert_eq!(r.status(), 206);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart")
        .to_owned();
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    let parts = multipart_parts(&body, &boundary);
    assert_eq!(
        parts,
        vec![
            ("bytes 0-9/100000".to_string(), blob[0..10].to_vec()),
            ("bytes 500-509/100000".to_string(), blob[500..510].to_vec())
        ]
    );
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "ranges on a cached blob never go upstream"
    );
}

/// Splits a multipart/byteranges body into (Content-Range, bytes) parts.
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delim = format!("\r\n--{boundary}");
    let text = body.to_vec();
    let mut out = Vec::new();
    let mut pos = 0;
    let find = |from: usize, pat: &[u8]| {
        text[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + from)
    };
    while let Some(start) = find(pos, delim.as_bytes()) {
        let after = start + delim.len();
        if text[after..].starts_with(b"--") {
            break;
        }
        let headers_end = find(after, b"\r\n\r\n").unwrap();
        let headers = String::from_utf8_lossy(&text[after..headers_end]).to_string();
        let range = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .unwrap()
            .to_string();
        let data_start = headers_end + 4;
        let next = find(data_start, delim.as_bytes()).unwrap();
        out.push((range, text[data_start..next].to_vec()));
        pos = next;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_an_in_flight_blob_are_served_as_bytes_land() {
    let (fake, mirror) = setup("").await;
    // ~3 s for the whole blob: the ranges below must come back long before that.
    let (blob, digest) = slow_blob(&fake, 3 * 1024 * 1024, 1024 * 1024);
    let url = blob_url(&mirror, &digest);
    let leader = tokio::spawn({
        let url = url.clone();
        async move { get_body(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let r = get_range(&url, "bytes=1000-1999").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-cache"], "JOINED");
    assert_eq!(r.bytes().await.unwrap(), blob[1000..2000]);
    let r = get_range(&url, "bytes=0-9,100-109").await;
    assert_eq!(r.status(), 206);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/byteranges"));
    let _ = r.bytes().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "ranges waited for the whole blob: {:?}",
        start.elapsed()
    );
    assert_eq!(sha256_digest(&leader.await.unwrap()), digest);
    assert_eq!(fake.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_is_resumed_with_a_range_request() {
    let (fake, mirror) = setup("").await;
    let blob = random_bytes(2 * 1024 * 1024);
    let digest = fake.add_blob(blob.clone());
    fake.push_knob(Knob::new(Fault::CutHalfway).blobs().once());
    let body = get_body(&blob_url(&mirror, &digest)).await;
    assert_eq!(
        sha256_digest(&body),
        digest,
        "the client never notices the cut"
    );
    let gets: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.reference == digest)
        .collect();
    assert_eq!(gets.len(), 2);
    let resumed = gets[1]
        .range
        .clone()
        .expect("second GET is a Range request");
    let from: u64 = resumed
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from < blob.len() as u64, "{resumed}");
    // Cached whole: served again without upstream.
    let again = reqwest::get(blob_url(&mirror, &digest)).await.unwrap();
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(sha256_digest(&again.bytes().await.unwrap()), digest);
    assert_eq!(fake.blob_gets(&digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_does_not_cancel_the_download_for_others() {
    let (fake, mirror) = setup("").await;
    let (_, digest) = slow_blob(&fake, 2 * 1024 * 1024, 2 * 1024 * 1024);
    let url = blob_url(&mirror, &digest);
    // The leader reads one chunk and hangs up.
    let r = reqwest::get(&url).await.unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    let others: Vec<_> = (0..3)
        .map(|_| tokio::spawn(reqwest::get(url.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    for o in others {
        let resp = o.await.unwrap().unwrap();
        assert_eq!(
            resp.headers()["x-cache"],
            "JOINED",
            "the others share the leader's download"
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(sha256_digest(&body), digest);
    }
    assert_eq!(fake.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_downloads_finish_by_default_or_cancel_when_configured() {
    for (extra, cached) in [("", true), ("finish_abandoned_downloads = false", false)] {
        let (fake, mirror) = setup(extra).await;
        let (_, digest) = slow_blob(&fake, 1024 * 1024, 1024 * 1024);
        let r = reqwest::get(blob_url(&mirror, &digest)).await.unwrap();
        let mut s = r.bytes_stream();
        s.next().await.unwrap().unwrap();
        drop(s);
        if cached {
            // Finishing takes the blob's ~1 s at the throttled rate (longer on a busy machine).
            mirror.wait_cached_blobs(1).await;
        } else {
            // Well past the time the whole transfer would take: it must have been cancelled.
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
        let stats = mirror.stats().await;
        assert_eq!(stats["cached_blobs"] == 1, cached, "{extra}: {stats}");
        assert_eq!(stats["inflight_downloads"], 0, "{extra}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_cold_tag_share_one_upstream_exchange() {
    let (fake, mirror) = setup("").await;
    let img = fake.add_image("team/app", "v1", 1, 1000);
    let url = format!("{}/v2/team/app/manifests/v1", mirror.url());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .get(&url)
                    .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), img.manifest);
    }
    assert_eq!(fake.manifest_gets(), 1);
    assert_eq!(fake.manifest_heads(), 1);
}
