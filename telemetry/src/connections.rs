//! The open HTTP connections, bounded: at most `limit` at once, each with the
//! time a byte last moved and whether a request is being answered.
//!
//! At the limit, a new connection displaces the one that has been quiet the
//! longest among those with no request in progress (idle keep-alive, or a
//! request head still arriving), as nginx reuses idle connections when it
//! runs out; so a flood of idle or half-sent connections can never lock a
//! real client (or `/healthz`) out. Only when every connection is answering
//! a request is the newcomer refused (503, closed).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// One open connection's state, shared by its task and the registry.
pub struct Conn {
    /// Milliseconds since the registry's start when a byte last moved.
    last: AtomicU64,
    /// Requests being answered on it (0 or 1 with HTTP/1).
    busy: AtomicUsize,
    /// Told when the connection is displaced.
    pub close: Notify,
    epoch: Instant,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Milliseconds since a byte last moved.
    pub fn quiet_ms(&self) -> u64 {
        self.now().saturating_sub(self.last.load(Ordering::Relaxed))
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }
}

/// A request in progress on a connection.
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of a new connection.
pub enum Admission {
    /// Room for it (perhaps after displacing an idle one).
    Admitted { slot: Slot, displaced: bool },
    /// Every connection is answering a request.
    Full,
}

#[derive(Default)]
struct Inner {
    open: HashMap<u64, Arc<Conn>>,
    next: u64,
}

/// Every open connection.
pub struct Connections {
    limit: usize,
    epoch: Instant,
    inner: Mutex<Inner>,
}

impl Connections {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Connections {
            limit: limit.max(1),
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn open(&self) -> usize {
        self.inner.lock().expect("connections lock").open.len()
    }

    /// Takes a place for a new connection, displacing the quietest idle one
    /// at the limit.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut inner = self.inner.lock().expect("connections lock");
        let mut displaced = false;
        if inner.open.len() >= self.limit {
            let victim = inner
                .open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
                .max_by_key(|(_, c)| c.quiet_ms())
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return Admission::Full;
            };
            if let Some(c) = inner.open.remove(&id) {
                // A permit is stored if its task is not waiting right now.
                c.close.notify_one();
                displaced = true;
            }
        }
        inner.next += 1;
        let id = inner.next;
        let conn = Arc::new(Conn {
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            close: Notify::new(),
            epoch: self.epoch,
        });
        conn.touch();
        inner.open.insert(id, conn.clone());
        Admission::Admitted {
            slot: Slot {
                registry: self.clone(),
                id,
                conn,
            },
            displaced,
        }
    }
}

/// A connection's place in the registry, given back when dropped.
pub struct Slot {
    registry: Arc<Connections>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry
            .inner
            .lock()
            .expect("connections lock")
            .open
            .remove(&self.id);
    }
}

/// A stream that records on its [`Conn`] each time bytes move.
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Watched { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> (Slot, bool) {
        match a {
            Admission::Admitted { slot, displaced } => (slot, displaced),
            Admission::Full => panic!("full"),
        }
    }

    #[test]
    fn at_the_limit_the_quietest_idle_connection_makes_room() {
        let c = Connections::new(2);
        let (a, _) = admitted(c.admit());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (b, _) = admitted(c.admit());
        let busy = b.conn.busy();
        // a is idle and the quietest: it goes.
        let (_new, displaced) = admitted(c.admit());
        assert!(displaced);
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 2);
        // Everyone left is busy or new; the new one is idle, so it goes next.
        let (_newer, displaced) = admitted(c.admit());
        assert!(displaced);
        drop(busy);
    }

    #[test]
    fn when_every_connection_is_busy_a_newcomer_is_refused() {
        let c = Connections::new(1);
        let (a, _) = admitted(c.admit());
        let _busy = a.conn.busy();
        assert!(matches!(c.admit(), Admission::Full));
        drop(_busy);
        assert!(matches!(c.admit(), Admission::Admitted { .. }));
    }
}
