//! `multipart/byteranges` bodies for multi-range requests (`bytes=a-b,c-d`, used by
//! zstd:chunked partial pulls): each part has its own `Content-Range`, parts stream in order.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::range::ByteRange;

/// The boundary; blob bytes never need escaping, a fixed token is fine.
pub const BOUNDARY: &str = "REGMIRROR_BYTERANGES_7f3a9c";

fn part_header(r: &ByteRange, total: u64) -> String {
    format!(
        "\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/{total}\r\n\r\n",
        r.start, r.end
    )
}

fn closing() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

/// Exact length of the multipart body.
pub fn content_length(ranges: &[ByteRange], total: u64) -> u64 {
    ranges
        .iter()
        .map(|r| part_header(r, total).len() as u64 + r.len())
        .sum::<u64>()
        + closing().len() as u64
}

/// The body: part headers interleaved with each range's bytes from `open`.
pub fn body<F>(
    ranges: Vec<ByteRange>,
    total: u64,
    open: F,
) -> BoxStream<'static, Result<Bytes, std::io::Error>>
where
    F: Fn(ByteRange) -> BoxStream<'static, Result<Bytes, std::io::Error>> + Send + 'static,
{
    let parts: Vec<BoxStream<'static, Result<Bytes, std::io::Error>>> = ranges
        .into_iter()
        .map(|r| {
            let head = stream::once(futures_util::future::ready(Ok(Bytes::from(part_header(
                &r, total,
            )))));
            head.chain(open(r)).boxed()
        })
        .chain(std::iter::once(
            stream::once(futures_util::future::ready(Ok(Bytes::from(closing())))).boxed(),
        ))
        .collect();
    stream::iter(parts).flatten().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_matches_its_length_and_shape() {
        let data = Bytes::from_static(b"0123456789");
        let ranges = vec![
            ByteRange { start: 0, end: 1 },
            ByteRange { start: 7, end: 9 },
        ];
        let d = data.clone();
        let s = body(ranges.clone(), 10, move |r| {
            stream::iter([Ok(d.slice(r.start as usize..=r.end as usize))]).boxed()
        });
        let chunks: Vec<_> = s.collect().await;
        let all: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(all.len() as u64, content_length(&ranges, 10));
        let text = String::from_utf8(all).unwrap();
        assert!(text.contains("Content-Range: bytes 0-1/10\r\n\r\n01\r\n"));
        assert!(text.contains("Content-Range: bytes 7-9/10\r\n\r\n789\r\n"));
        assert!(text.ends_with(&format!("--{BOUNDARY}--\r\n")));
    }
}
