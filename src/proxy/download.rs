//! Single flight for blob downloads: the first miss for a digest becomes the leader and starts
//! one upstream transfer into a spool file; every request for that digest arriving meanwhile
//! follows the same spool, reading bytes as they land (never waiting for the whole blob).
//!
//! The transfer runs in its own task, so a client that disconnects does not cancel it for
//! the others. Followers never see the last byte before the digest is verified, so a bad
//! transfer always ends their responses with an error, never a clean end of body.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use crate::reference::Digest;

/// Bytes read from a spool per chunk sent to a client.
const CHUNK: u64 = crate::store::READ_CHUNK;

/// Where a download stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The leader is waiting for upstream response headers.
    Connecting,
    /// Bytes are arriving.
    Running,
    /// All bytes arrived and the digest matched.
    Done,
    /// The transfer failed or did not verify: followers' responses are aborted.
    Failed(Arc<str>),
    /// The leader's upstream request was refused (or dropped) before any byte: followers
    /// must ask for themselves, with their own credentials.
    Refused,
}

/// Progress of a download, broadcast to followers.
#[derive(Debug, Clone)]
pub struct Progress {
    pub written: u64,
    pub total: Option<u64>,
    pub phase: Phase,
}

/// One in-flight download.
pub struct Download {
    pub digest: Digest,
    /// Read handle on the spool file, set when the transfer starts (reads use `pread`, so
    /// the file being renamed into the store meanwhile does not matter).
    file: OnceLock<Arc<std::fs::File>>,
    progress: watch::Sender<Progress>,
    /// Clients reading this download now (to cancel abandoned downloads if configured).
    followers: AtomicUsize,
    /// The most recent bytes, kept in memory so followers keeping pace with the upstream get
    /// them without a file read; laggards read the spool.
    tail: Mutex<Tail>,
}

/// Recent chunks of a download: contiguous `(offset, bytes)`, at most [`TAIL_BYTES`].
#[derive(Default)]
struct Tail {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// Memory kept per download for followers at the head of the transfer.
const TAIL_BYTES: usize = 4 * 1024 * 1024;

impl Download {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::Relaxed)
    }

    /// Called by the transfer task.
    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }

    /// Keeps `data`, written at `offset`, for followers (called before publishing progress).
    pub fn push_tail(&self, offset: u64, data: Bytes) {
        let mut t = self.tail.lock().unwrap();
        t.bytes += data.len();
        t.chunks.push_back((offset, data));
        while t.bytes > TAIL_BYTES && t.chunks.len() > 1 {
            let (_, old) = t.chunks.pop_front().expect("non-empty");
            t.bytes -= old.len();
        }
    }

    /// Up to `max` bytes at `pos` from memory, if still there.
    fn tail_slice(&self, pos: u64, max: u64) -> Option<Bytes> {
        let t = self.tail.lock().unwrap();
        let (off, chunk) = t
            .chunks
            .iter()
            .find(|(off, c)| *off <= pos && pos < off + c.len() as u64)?;
        let start = (pos - off) as usize;
        let end = chunk.len().min(start + max as usize);
        Some(chunk.slice(start..end))
    }

    /// Waits until the leader knows whether the transfer runs.
    pub async fn started(&self) -> Progress {
        let mut rx = self.progress.subscribe();
        let p = rx
            .wait_for(|p| p.phase != Phase::Connecting)
            .await
            .map(|p| p.clone());
        p.unwrap_or(Progress {
            written: 0,
            total: None,
            phase: Phase::Refused,
        })
    }
}

/// The table of in-flight downloads.
#[derive(Clone, Default)]
pub struct Downloads {
    map: Arc<Mutex<HashMap<Digest, Arc<Download>>>>,
}

/// The outcome of [`Downloads::claim`].
pub enum Claim {
    Leader(Leader),
    Follower(Arc<Download>),
}

/// The right (and duty) to start a download; dropping it unstarted releases followers.
pub struct Leader {
    pub download: Arc<Download>,
    table: Downloads,
    started: bool,
}

impl Downloads {
    /// Joins the download of `d` in flight, or becomes its leader.
    pub fn claim(&self, d: &Digest) -> Claim {
        let mut map = self.map.lock().unwrap();
        if let Some(dl) = map.get(d) {
            return Claim::Follower(dl.clone());
        }
        let (tx, _) = watch::channel(Progress {
            written: 0,
            total: None,
            phase: Phase::Connecting,
        });
        let dl = Arc::new(Download {
            digest: d.clone(),
            file: OnceLock::new(),
            progress: tx,
            followers: AtomicUsize::new(0),
            tail: Mutex::new(Tail::default()),
        });
        map.insert(d.clone(), dl.clone());
        Claim::Leader(Leader {
            download: dl,
            table: self.clone(),
            started: false,
        })
    }

    /// Forgets a finished download (only if it is still the one registered).
    pub fn remove(&self, dl: &Arc<Download>) {
        let mut map = self.map.lock().unwrap();
        if map.get(&dl.digest).is_some_and(|cur| Arc::ptr_eq(cur, dl)) {
            map.remove(&dl.digest);
        }
    }
}

impl Leader {
    /// The transfer is starting: readers may open `file` (a read handle on the spool).
    pub fn start(mut self, file: std::fs::File, total: Option<u64>) -> Arc<Download> {
        let _ = self.download.file.set(Arc::new(file));
        self.download.update(|p| {
            p.total = total;
            p.phase = Phase::Running;
        });
        self.started = true;
        self.download.clone()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.started {
            self.download.update(|p| p.phase = Phase::Refused);
            self.table.remove(&self.download);
        }
    }
}

/// Counts a follower for as long as its stream lives.
struct FollowerGuard(Arc<Download>);

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Streams bytes `start..end` (end exclusive; `None` = to the end) of a running download.
pub fn follow(
    dl: Arc<Download>,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    dl.followers.fetch_add(1, Ordering::Relaxed);
    let rx = dl.progress.subscribe();
    let state = (FollowerGuard(dl), rx, start, false);
    futures_util::stream::unfold(state, move |(guard, mut rx, pos, over)| async move {
        if over {
            return None;
        }
        loop {
            let p = rx.borrow_and_update().clone();
            let end = end.or(p.total);
            // Reaching the blob's end implies Done: its last byte is held back until then.
            if end.is_some_and(|e| pos >= e) {
                return None;
            }
            // Hold back the blob's last byte until it is verified.
            let avail = if p.phase == Phase::Done {
                p.written
            } else {
                p.written.saturating_sub(1)
            };
            let avail = end.map_or(avail, |e| avail.min(e));
            if pos < avail {
                let n = (avail - pos).min(CHUNK);
                let read = match guard.0.tail_slice(pos, n) {
                    Some(b) => Ok(b),
                    None => read_at(guard.0.file.get().cloned(), pos, n).await,
                };
                let n = read.as_ref().map_or(n, |b| b.len() as u64);
                let ok = read.is_ok();
                return Some((read, (guard, rx, pos + n, !ok)));
            }
            match &p.phase {
                Phase::Done if end.is_none() => return None,
                Phase::Failed(why) => {
                    let e = std::io::Error::other(format!("upstream transfer failed: {why}"));
                    return Some((Err(e), (guard, rx, pos, true)));
                }
                Phase::Refused => {
                    let e = std::io::Error::other("upstream transfer did not start");
                    return Some((Err(e), (guard, rx, pos, true)));
                }
                _ => {}
            }
            if rx.changed().await.is_err() {
                let e = std::io::Error::other("download vanished");
                return Some((Err(e), (guard, rx, pos, true)));
            }
        }
    })
}

async fn read_at(
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    n: u64,
) -> Result<Bytes, std::io::Error> {
    let file = file.ok_or_else(|| std::io::Error::other("spool not open"))?;
    crate::store::read_chunk(file, pos, n).await
}
