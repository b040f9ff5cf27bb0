//! The one response body type every layer above the store hands to hyper.
//!
//! A stream that yields `Err` makes hyper abort the response (connection closed without the
//! final chunk / short of Content-Length), which is how a failed verification reaches a
//! client as an error and never as a clean end of body.

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

/// Error type of response bodies.
pub type BodyError = std::io::Error;

/// A boxed response body.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body holding `data` (manifests, JSON).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body (HEAD, 304...).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body streamed from chunks; an `Err` item aborts the response.
pub fn stream<S>(s: S) -> Body
where
    S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
{
    use futures_util::StreamExt;
    BodyExt::boxed_unsync(StreamBody::new(s.map(|r| r.map(Frame::data))))
}
