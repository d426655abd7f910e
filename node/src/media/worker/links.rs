//! A worker's links to other nodes (QUIC) and to the other workers of its node (in process).
//!
//! The relay core does not tell them apart: the workers of a node relay a room's tracks to
//! each other as nodes do, one copy of each packet per worker that wants it, so a room spans
//! every core of a node. A sibling link hands frames and datagrams to the other worker's
//! command queue: a turn's packets for it in one command, their bytes shared, not copied.
//!
//! A link to another node sends its media datagrams on the [`direct`](sfu_relay::direct)
//! path when the peer offered one and confirmed that it receives this worker's: packed with
//! room for the header and tag, sealed in place and sent with the worker's own `sendmmsg`
//! batch, so a relayed packet costs about what a local delivery does. Until then (and for
//! datagrams too large for it) they go in the link's QUIC datagrams, while small probes go the
//! direct way every [`PROBE_EVERY`] until one is confirmed.

use crate::media::transport::arena::SendArena;
use crate::media::udp::{MAX_DATAGRAM, SendQueue};
use crate::media::{ClusterInput, Command};
use bytes::{Buf, BytesMut};
use sfu_proto::relay::Frame;
use sfu_relay::NodeId;
use sfu_relay::direct::{DirectPath, OVERHEAD, Sealer, TAG};
use sfu_relay::quic::Link;
use sfu_relay::wire::Framing;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a worker packs into one hand-off to a sibling: a turn's packets for it, in one
/// command (the other worker wakes once for them, not once per packet).
const SIBLING_DATAGRAM: usize = 64 * 1024;
/// How often a worker whose direct datagrams are not confirmed yet sends a probe (only while
/// it has media for the link).
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Below QUIC's datagram size, for the direct header being a few bytes longer than QUIC's.
const DIRECT_SLACK: usize = 8;

/// See the module documentation.
pub(in crate::media) enum LinkHandle {
    Quic {
        link: Link,
        /// Boxed: the key schedule is large, and sibling links have none.
        direct: Option<Box<DirectSend>>,
    },
    Sibling {
        /// This worker's name, as the other worker's relay core knows it.
        me: NodeId,
        to: mpsc::UnboundedSender<Command>,
    },
}

/// A worker's sending end of a link's direct path.
pub(in crate::media) struct DirectSend {
    path: Arc<DirectPath>,
    worker: u32,
    to: SocketAddr,
    /// Read-only borrows of the links pack a turn's datagrams; sealing counts nonces.
    sealer: RefCell<Sealer>,
    last_probe: Cell<Option<Instant>>,
}

/// Where a link's datagram went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::media) enum Sent {
    Direct,
    Quic,
    Sibling,
    Failed,
}

/// The worker's send buffer and batch, which direct datagrams join.
pub(in crate::media) struct DirectOut<'a> {
    pub(in crate::media) now: Instant,
    pub(in crate::media) udp: &'a mut SendQueue,
    pub(in crate::media) arena: &'a mut SendArena,
}

impl LinkHandle {
    /// A link to another node, as worker `worker` sends on it.
    pub(in crate::media) fn quic(link: Link, worker: usize) -> Self {
        let worker = worker as u32;
        let direct = link.direct.clone().and_then(|path| {
            Some(Box::new(DirectSend {
                to: path.peer_addr(worker)?,
                sealer: RefCell::new(Sealer::new(&path.send_key, path.peer_channel, worker)),
                path,
                worker,
                last_probe: Cell::new(None),
            }))
        });
        LinkHandle::Quic { link, direct }
    }

    pub(in crate::media) fn send_frame(&self, frame: Frame) {
        match self {
            LinkHandle::Quic { link, .. } => link.send_frame(frame),
            LinkHandle::Sibling { me, to } => {
                let _ = to.send(Command::Cluster(ClusterInput::Frame {
                    from: me.clone(),
                    frame,
                }));
            }
        }
    }

    /// The largest datagram (its records) the link takes now, and how to frame it: datagrams
    /// for a confirmed direct path leave room for sealing them in place.
    pub(in crate::media) fn datagram_limits(&self) -> (usize, Framing) {
        match self {
            LinkHandle::Quic { link, direct } => {
                let quic = link.max_datagram_size();
                match direct {
                    Some(d) if d.path.is_confirmed(d.worker) => (
                        quic.saturating_sub(DIRECT_SLACK)
                            .min(MAX_DATAGRAM - OVERHEAD),
                        Sealer::FRAMING,
                    ),
                    _ => (quic, Framing::NONE),
                }
            }
            LinkHandle::Sibling { .. } => (SIBLING_DATAGRAM, Framing::NONE),
        }
    }

    /// Sends a datagram of relayed media (framed as [`datagram_limits`](Self::datagram_limits)
    /// said): sealed in place into the worker's send batch if the direct path is confirmed and
    /// it fits, else on the link.
    pub(in crate::media) fn send_datagram(
        &self,
        mut datagram: BytesMut,
        framing: Framing,
        out: &mut DirectOut<'_>,
    ) -> Sent {
        match self {
            LinkHandle::Quic { link, direct } => {
                if let Some(d) = direct {
                    if d.path.is_confirmed(d.worker) {
                        if framing == Sealer::FRAMING && datagram.len() + TAG <= MAX_DATAGRAM {
                            d.sealer.borrow_mut().seal_in_place(&mut datagram);
                            out.udp.push(d.to, datagram);
                            return Sent::Direct;
                        }
                    } else if d
                        .last_probe
                        .get()
                        .is_none_or(|t| out.now.duration_since(t) >= PROBE_EVERY)
                    {
                        d.last_probe.set(Some(out.now));
                        d.seal(&[], out);
                    }
                }
                // Framed for a path that stopped being confirmed: the records alone.
                datagram.advance(framing.head);
                if link.send_datagram(datagram.freeze()) {
                    Sent::Quic
                } else {
                    Sent::Failed
                }
            }
            LinkHandle::Sibling { me, to } => {
                datagram.advance(framing.head);
                let Ok(records) = sfu_relay::wire::records(datagram.freeze()).collect() else {
                    return Sent::Failed;
                };
                let sent = to.send(Command::Cluster(ClusterInput::Datagrams {
                    from: me.clone(),
                    records,
                }));
                if sent.is_ok() {
                    Sent::Sibling
                } else {
                    Sent::Failed
                }
            }
        }
    }
}

impl DirectSend {
    /// Seals `payload` (a probe) into the worker's send buffer and queues it for the peer's
    /// worker.
    fn seal(&self, payload: &[u8], out: &mut DirectOut<'_>) {
        let buf = out.arena.room(payload.len() + OVERHEAD);
        self.sealer.borrow_mut().seal(payload, buf);
        let datagram = buf.split();
        out.udp.push(self.to, datagram);
    }
}
