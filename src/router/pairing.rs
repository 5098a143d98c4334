//! Pairing: the table of callers waiting for their peer.
//!
//! The first caller of a stream id goes into the table with its request body and gets a
//! [`Ticket`]; the second takes it out, and each gets a [`Link`] to the other's body (the
//! waiting one through its ticket). Each turns into a `Forward` (`forward.rs`, above this).
//! A caller that leaves, times out or whose token expires before its peer comes is removed
//! (Jumpstarter's Go router once leaked these). Entries carry a caller number, so a caller only ever removes itself: a
//! third caller of a stream id waits in the table on its own, it never joins a pair.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tonic::Status;

use super::auth::Grant;
use super::body::RequestBody;
use super::metrics::{CallResult, Metrics};
use super::pair::{Link, Pair, StreamTag};

/// A caller waiting in the table.
pub(super) struct Waiter {
    caller: u64,
    body: RequestBody,
    tx: oneshot::Sender<Link>,
    since: Instant,
    /// The connection it came on (for the per-connection cap).
    conn: Option<SocketAddr>,
}

/// A waiting caller's own handle on its table entry.
#[derive(Debug)]
pub(super) struct Pending {
    stream: String,
    caller: u64,
    pub(super) tag: StreamTag,
}

/// The table: stream id -> the caller waiting for its peer, and how many wait per connection.
#[derive(Default)]
pub(super) struct Table {
    waiters: HashMap<String, Waiter>,
    per_conn: HashMap<SocketAddr, usize>,
}

impl Table {
    fn remove(&mut self, stream: &str) -> Option<Waiter> {
        let w = self.waiters.remove(stream)?;
        if let Some(conn) = w.conn {
            if let Some(n) = self.per_conn.get_mut(&conn) {
                *n -= 1;
                if *n == 0 {
                    self.per_conn.remove(&conn);
                }
            }
        }
        Some(w)
    }
}

/// Caps on waiting callers: past them a caller that would wait is refused with
/// `RESOURCE_EXHAUSTED`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Caps {
    pub(super) total: Option<usize>,
    pub(super) per_connection: Option<usize>,
}

/// How long a timer may wait: a token may expire centuries from now.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The callers waiting for their peer, and the pairs made: one per router.
pub(super) struct Pairing {
    table: Mutex<Table>,
    /// Every pair made, for [`end_all`](Pairing::end_all) (pruned of ended ones as it grows).
    pairs: Mutex<Vec<Weak<Pair>>>,
    /// The router's counters (the only copy: the router reads them here).
    pub(super) metrics: Metrics,
    next_caller: AtomicU64,
    pairing_timeout: Option<Duration>,
    caps: Caps,
}

/// What [`Pairing::accept`] made of a caller.
pub(super) enum Accepted {
    /// Its peer was waiting: this is the second caller's link.
    Paired(Link),
    /// It waits for its peer.
    Waiting(Ticket),
}

/// A waiting caller's side of the table: its entry, where its link comes, and until when.
pub(super) struct Ticket {
    pub(super) entry: Pending,
    pub(super) rx: oneshot::Receiver<Link>,
    /// When it gives up, and what it is told then.
    pub(super) deadline: (tokio::time::Instant, &'static str),
}

impl Pairing {
    pub(super) fn new(metrics: Metrics, pairing_timeout: Option<Duration>, caps: Caps) -> Self {
        Pairing {
            table: Mutex::default(),
            pairs: Mutex::default(),
            metrics,
            next_caller: AtomicU64::new(1),
            pairing_timeout,
            caps,
        }
    }

    /// Pairs the caller with `grant` with the one waiting for the same stream id, or makes it
    /// wait. `body` is the caller's request body, `conn` the connection it came on.
    ///
    /// # Errors
    ///
    /// `ResourceExhausted` when the caller would wait and a cap on waiting callers is reached
    /// (the body is handed back, to be drained).
    pub(super) fn accept(
        &self,
        grant: Grant,
        body: RequestBody,
        conn: Option<SocketAddr>,
    ) -> Result<Accepted, Box<(Status, RequestBody)>> {
        let tag = StreamTag::of(&grant.stream);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiter) = table.remove(&grant.stream) {
            drop(table);
            let m = &self.metrics;
            m.pending(-1);
            // This caller; the waiting one counts itself when it takes the link.
            m.call(CallResult::Paired);
            let waited = waiter.since.elapsed();
            Metrics::observe(&m.pairing_wait, waited);
            tracing::info!(stream = %tag, waited_ms = waited.as_millis() as u64, "paired");
            let pair = Pair::new(m.clone(), tag);
            self.register_pair(&pair);
            let mine = Link {
                peer: waiter.body,
                pair: pair.clone(),
            };
            let theirs = Link { peer: body, pair };
            if let Err(back) = waiter.tx.send(theirs) {
                // The waiting caller left just now: nobody will read this caller's frames.
                back.abandon();
            }
            return Ok(Accepted::Paired(mine));
        }
        let caps = self.caps;
        let on_conn = conn.map_or(0, |c| table.per_conn.get(&c).copied().unwrap_or(0));
        let full = match (caps.total, caps.per_connection) {
            (Some(max), _) if table.waiters.len() >= max => Some(format!(
                "too many callers waiting for their peer on this router (limit {max})"
            )),
            (_, Some(max)) if on_conn >= max => Some(format!(
                "too many callers waiting for their peer on this connection (limit {max})"
            )),
            _ => None,
        };
        if let Some(why) = full {
            drop(table);
            tracing::debug!(stream = %tag, "{why}");
            return Err(Box::new((Status::resource_exhausted(why), body)));
        }
        if let Some(c) = conn {
            *table.per_conn.entry(c).or_default() += 1;
        }
        let caller = self.next_caller.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Under the lock, so that a pairer's decrement never comes first.
        self.metrics.pending(1);
        table.waiters.insert(
            grant.stream.clone(),
            Waiter {
                caller,
                body,
                tx,
                since: Instant::now(),
                conn,
            },
        );
        drop(table);
        tracing::info!(stream = %tag, "waiting for the peer");
        let deadline = self.deadline(&grant);
        let entry = Pending {
            stream: grant.stream,
            caller,
            tag,
        };
        Ok(Accepted::Waiting(Ticket {
            entry,
            rx,
            deadline,
        }))
    }

    /// Removes a waiting caller's entry, if it is still its own.
    pub(super) fn remove_pending(&self, entry: &Pending) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table
            .waiters
            .get(&entry.stream)
            .is_some_and(|w| w.caller == entry.caller)
        {
            let waiter = table.remove(&entry.stream);
            drop(table);
            // The request body is dropped outside the lock.
            drop(waiter);
            self.metrics.pending(-1);
        }
    }

    /// Keeps a handle on `pair` for [`end_all`](Pairing::end_all); drops the handles of ended
    /// pairs whenever the list would grow.
    fn register_pair(&self, pair: &Arc<Pair>) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        if pairs.len() == pairs.capacity() {
            pairs.retain(|p| p.strong_count() > 0);
        }
        pairs.push(Arc::downgrade(pair));
    }

    /// Ends every pair (each caller gets the router's GOAWAY, then `UNAVAILABLE`), and takes
    /// every waiting caller out of the table: each one's call ends with `UNAVAILABLE` (its
    /// side of the link is dropped, which its `Forward` takes as the router closing).
    pub(super) fn end_all(&self) {
        let pairs = std::mem::take(&mut *self.pairs.lock().unwrap_or_else(|e| e.into_inner()));
        for pair in pairs.iter().filter_map(Weak::upgrade) {
            pair.close();
        }
        let waiters: Vec<Waiter> = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let streams: Vec<String> = table.waiters.keys().cloned().collect();
            streams.iter().filter_map(|s| table.remove(s)).collect()
        };
        self.metrics.pending(-(waiters.len() as i64));
        // The request bodies are dropped (and drained) outside the lock.
        drop(waiters);
    }

    /// When a waiting caller gives up: its token's expiry or the pairing timeout.
    fn deadline(&self, grant: &Grant) -> (tokio::time::Instant, &'static str) {
        let now = tokio::time::Instant::now();
        let until_exp = grant
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(LONGEST_WAIT);
        let exp = (now + until_exp, "token expired while waiting for the peer");
        match self.pairing_timeout {
            Some(t) if now + t < exp.0 => (now + t, "no peer arrived within the pairing timeout"),
            _ => exp,
        }
    }
}
