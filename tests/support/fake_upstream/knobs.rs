//! Faults the fake upstream can be told to commit, which requests they apply to, and how they
//! shape a response body. Knobs change at run time through the shared state; this file knows
//! nothing about routing or content.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Method;

use super::Kind;

/// What goes wrong. Body faults (`Corrupt`, `CutHalfway`, `Throttle`, `Chunked`) only apply to
/// GETs, so a HEAD never uses up a "once" knob meant for a body; `Status` applies to any method.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Flip one byte in the middle of the body; length and `Docker-Content-Digest` stay as if
    /// intact, so only hashing the bytes reveals it.
    Corrupt,
    /// Send headers with the full `Content-Length`, then half the body, then drop the connection.
    CutHalfway,
    /// Send headers and half the body, then fall silent with the connection open until the
    /// peer gives up: what an idle timeout is for.
    StallHalfway,
    /// Wait this long before sending the response headers: what a response timeout is for.
    DelayHeaders(Duration),
    /// Send the body in small chunks at about this many bytes per second.
    Throttle { bytes_per_sec: u64 },
    /// Omit `Content-Length` and send the body chunked, as some registries and CDNs do.
    Chunked,
    /// Answer with this status and an OCI error body instead of the content.
    Status(u16),
}

impl Fault {
    fn needs_body(&self) -> bool {
        !matches!(self, Fault::Status(_) | Fault::DelayHeaders(_))
    }
}

/// A fault plus the requests it applies to. Built with `Knob::new(fault)` and narrowed with the
/// builder methods; with no narrowing it applies to every request it can affect, forever.
#[derive(Clone, Debug)]
pub struct Knob {
    pub fault: Fault,
    /// Only requests of this kind (blobs, manifests...).
    kind: Option<Kind>,
    /// Only this tag or digest.
    reference: Option<String>,
    /// Only this method (e.g. fail GETs but let the mirror's HEAD checks through).
    method: Option<Method>,
    /// How many more requests it applies to; `None` means until healed.
    remaining: Option<u32>,
}

impl Knob {
    pub fn new(fault: Fault) -> Knob {
        Knob {
            fault,
            kind: None,
            reference: None,
            method: None,
            remaining: None,
        }
    }

    /// Only blob requests.
    pub fn blobs(mut self) -> Knob {
        self.kind = Some(Kind::Blob);
        self
    }

    /// Only manifest requests.
    pub fn manifests(mut self) -> Knob {
        self.kind = Some(Kind::Manifest);
        self
    }

    /// Only requests for this digest or tag.
    pub fn only(mut self, reference: &str) -> Knob {
        self.reference = Some(reference.into());
        self
    }

    /// Only GET requests.
    pub fn get_only(mut self) -> Knob {
        self.method = Some(Method::GET);
        self
    }

    /// Apply to the next `n` matching requests, then heal by itself.
    pub fn times(mut self, n: u32) -> Knob {
        self.remaining = Some(n);
        self
    }

    /// Apply to the next matching request only.
    pub fn once(self) -> Knob {
        self.times(1)
    }

    fn applies(&self, method: &Method, kind: Kind, reference: &str) -> bool {
        self.remaining != Some(0)
            && self.kind.is_none_or(|k| k == kind)
            && self.reference.as_deref().is_none_or(|r| r == reference)
            && self.method.as_ref().is_none_or(|m| m == method)
            && (!self.fault.needs_body() || *method == Method::GET)
    }
}

/// The faults that apply to this request, using up one application of each counted knob.
pub(super) fn take_faults(
    knobs: &mut Vec<Knob>,
    method: &Method,
    kind: Kind,
    reference: &str,
) -> Vec<Fault> {
    let mut faults = Vec::new();
    for knob in knobs.iter_mut() {
        if knob.applies(method, kind, reference) {
            faults.push(knob.fault.clone());
            if let Some(n) = knob.remaining.as_mut() {
                *n -= 1;
            }
        }
    }
    knobs.retain(|k| k.remaining != Some(0));
    faults
}

/// A response body after body faults, and whether to declare its full length.
pub(super) struct Shaped {
    pub body: BoxBody<Bytes, io::Error>,
    /// `false` when `Fault::Chunked` asked for no `Content-Length`.
    pub declare_length: bool,
}

/// How long to hold the response headers back, if a `DelayHeaders` knob applies.
pub(super) fn header_delay(faults: &[Fault]) -> Duration {
    let delays = faults.iter().filter_map(|f| match f {
        Fault::DelayHeaders(d) => Some(*d),
        _ => None,
    });
    delays.max().unwrap_or_default()
}

/// Applies body faults to `data`, whose intact length is what the headers will declare.
pub(super) fn shape(mut data: Bytes, faults: &[Fault]) -> Shaped {
    if faults.contains(&Fault::Corrupt) && !data.is_empty() {
        let mut bytes = data.to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        data = Bytes::from(bytes);
    }
    let halfway = if faults.contains(&Fault::CutHalfway) {
        Some(Halfway::Cut)
    } else if faults.contains(&Fault::StallHalfway) {
        Some(Halfway::Stall)
    } else {
        None
    };
    let rate = faults.iter().find_map(|f| match f {
        Fault::Throttle { bytes_per_sec } => Some((*bytes_per_sec).max(1)),
        _ => None,
    });
    let declare_length = !faults.contains(&Fault::Chunked);
    let body = if halfway.is_some() || rate.is_some() || !declare_length {
        paced(data, rate, halfway)
    } else {
        Full::new(data).map_err(|never| match never {}).boxed()
    };
    Shaped {
        body,
        declare_length,
    }
}

/// What happens after the first half of a body.
#[derive(Clone, Copy)]
enum Halfway {
    /// An error, which makes hyper drop the connection short of the declared length.
    Cut,
    /// Nothing at all, until the peer hangs up.
    Stall,
}

/// Streams `data` from a task: at `rate` bytes/s in ~50 ms chunks if given (else 16 KiB chunks
/// as fast as the peer reads), and, if `halfway` is set, only the first half.
fn paced(data: Bytes, rate: Option<u64>, halfway: Option<Halfway>) -> BoxBody<Bytes, io::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Frame<Bytes>>>(4);
    let chunk = rate.map_or(16 * 1024, |r| (r / 20).max(1) as usize);
    let delay = rate.map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(chunk as f64 / r as f64)
    });
    let end = if halfway.is_some() {
        data.len() / 2
    } else {
        data.len()
    };
    tokio::spawn(async move {
        let mut off = 0;
        while off < end {
            let n = chunk.min(end - off);
            if tx
                .send(Ok(Frame::data(data.slice(off..off + n))))
                .await
                .is_err()
            {
                return; // the peer went away
            }
            off += n;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        match halfway {
            Some(Halfway::Cut) => {
                // Give hyper time to flush the half we sent, so the peer sees a partial body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "fake upstream: cut");
                let _ = tx.send(Err(cut)).await;
            }
            Some(Halfway::Stall) => tx.closed().await,
            None => {}
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    BodyExt::boxed(StreamBody::new(frames))
}
