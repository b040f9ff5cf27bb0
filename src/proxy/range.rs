//! `Range` request headers on blobs: `bytes=a-b`, `bytes=a-`, `bytes=-n`.

/// A resolved single range: bytes `start..=end` of a blob of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a `Range` header asks of a blob of `total` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No header, or one we ignore (other units): send the whole blob.
    Full,
    /// One or more satisfiable ranges.
    Ranges(Vec<ByteRange>),
    /// 416.
    Unsatisfiable,
}

/// Parses `header` against a blob of `total` bytes (RFC 9110 §14).
pub fn parse(header: Option<&str>, total: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let Some((a, b)) = part.split_once('-') else {
            return RangeRequest::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        let r = if a.is_empty() {
            let Ok(n) = b.parse::<u64>() else {
                return RangeRequest::Full;
            };
            if n == 0 || total == 0 {
                continue;
            }
            ByteRange {
                start: total.saturating_sub(n),
                end: total - 1,
            }
        } else {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= total {
                continue;
            }
            ByteRange {
                start,
                end: end.min(total - 1),
            }
        };
        out.push(r);
    }
    if out.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Ranges(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: u64, e: u64) -> RangeRequest {
        RangeRequest::Ranges(vec![ByteRange { start: s, end: e }])
    }

    #[test]
    fn forms() {
        assert_eq!(parse(None, 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=2-4"), 10), one(2, 4));
        assert_eq!(parse(Some("bytes=2-"), 10), one(2, 9));
        assert_eq!(parse(Some("bytes=-3"), 10), one(7, 9));
        assert_eq!(parse(Some("bytes=-30"), 10), one(0, 9));
        assert_eq!(parse(Some("bytes=5-100"), 10), one(5, 9));
        assert_eq!(parse(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=4-2"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("items=1-2"), 10), RangeRequest::Full);
        assert_eq!(
            parse(Some("bytes=0-1, 5-6"), 10),
            RangeRequest::Ranges(vec![
                ByteRange { start: 0, end: 1 },
                ByteRange { start: 5, end: 6 }
            ])
        );
    }
}
