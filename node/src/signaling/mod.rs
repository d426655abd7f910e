//! Signaling shared by the WebSocket endpoint and the media workers.

pub mod livekit;
mod livekit_map;
pub mod protocol;

use axum::extract::ws::Utf8Bytes;
use protocol::ServerMessage;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// A message on its way to one WebSocket client: encoded by the client's own task, or already
/// encoded once for everyone it goes to (a broadcast costs one encoding per node, and a
/// reference count per recipient).
#[derive(Debug)]
pub enum Outbound {
    /// Boxed: a channel's blocks hold 32 of these, allocated per session; an unboxed
    /// message would make every idle session's queue several kilobytes.
    Message(Box<ServerMessage>),
    Shared(Utf8Bytes),
}

/// Messages a client may have waiting. A client that reads is never near it (the node sends
/// a large room's audience at most a few messages a second); one that stops reading is
/// disconnected instead of growing the node's memory without bound.
pub const MAX_QUEUED: usize = 1024;

/// Where a room sends a WebSocket client's messages: a queue of at most [`MAX_QUEUED`]. A
/// message that finds it full is dropped and the queue marked overflowed; the client's
/// session then ends (see [`EventsRx::overflowed`]).
#[derive(Clone, Debug)]
pub struct Events {
    tx: mpsc::UnboundedSender<Outbound>,
    state: Arc<QueueState>,
}

/// The receiving end of [`Events`].
#[derive(Debug)]
pub struct EventsRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    state: Arc<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    queued: AtomicUsize,
    overflowed: AtomicBool,
}

/// A client's message queue.
pub fn events() -> (Events, EventsRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(QueueState::default());
    (
        Events {
            tx,
            state: state.clone(),
        },
        EventsRx { rx, state },
    )
}

impl Events {
    /// Queues a message; false if the client is gone or too far behind to take it.
    pub fn send(&self, message: Outbound) -> bool {
        if self.state.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
            self.state.overflowed.store(true, Ordering::Relaxed);
            return false;
        }
        self.tx.send(message).is_ok()
    }
}

impl EventsRx {
    pub async fn recv(&mut self) -> Option<Outbound> {
        let m = self.rx.recv().await;
        if m.is_some() {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
        }
        m
    }

    /// A message if one is waiting (tests).
    pub fn try_recv(&mut self) -> Result<Outbound, mpsc::error::TryRecvError> {
        let m = self.rx.try_recv()?;
        self.state.queued.fetch_sub(1, Ordering::Relaxed);
        Ok(m)
    }

    /// Whether a message was dropped because the client did not read fast enough.
    pub fn overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_nobody_reads_stops_at_its_bound_and_says_so() {
        let (tx, mut rx) = events();
        let msg = || Outbound::Shared(Utf8Bytes::from_static("{}"));
        for _ in 0..MAX_QUEUED {
            assert!(tx.send(msg()));
        }
        assert!(!rx.overflowed());
        assert!(!tx.send(msg()), "the queue is full");
        assert!(rx.overflowed());
        rx.recv().await.unwrap();
        assert!(tx.send(msg()), "room again once one was read");
    }
}
