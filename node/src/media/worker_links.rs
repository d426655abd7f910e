//! A worker's links to other nodes (QUIC) and to the other workers of its node (in process).
//!
//! The relay core does not tell them apart: the workers of a node relay a room's tracks to
//! each other as nodes do, one copy of each packet per worker that wants it, so a room spans
//! every core of a node. A sibling link hands frames and datagrams to the other worker's
//! command queue: a turn's packets for it in one command, their bytes shared, not copied.

use super::{ClusterInput, Command};
use bytes::Bytes;
use sfu_proto::relay::Frame;
use sfu_relay::NodeId;
use sfu_relay::quic::Link;
use tokio::sync::mpsc;

/// What a worker packs into one hand-off to a sibling: a turn's packets for it, in one
/// command (the other worker wakes once for them, not once per packet).
const SIBLING_DATAGRAM: usize = 64 * 1024;

/// See the module documentation.
pub(super) enum LinkHandle {
    Quic(Link),
    Sibling {
        /// This worker's name, as the other worker's relay core knows it.
        me: NodeId,
        to: mpsc::UnboundedSender<Command>,
    },
}

impl LinkHandle {
    pub(super) fn send_frame(&self, frame: Frame) {
        match self {
            LinkHandle::Quic(l) => l.send_frame(frame),
            LinkHandle::Sibling { me, to } => {
                let _ = to.send(Command::Cluster(ClusterInput::Frame {
                    from: me.clone(),
                    frame,
                }));
            }
        }
    }

    /// The largest datagram the link takes now.
    pub(super) fn max_datagram_size(&self) -> usize {
        match self {
            LinkHandle::Quic(l) => l.max_datagram_size(),
            LinkHandle::Sibling { .. } => SIBLING_DATAGRAM,
        }
    }

    /// False if the datagram could not be sent.
    pub(super) fn send_datagram(&self, datagram: Bytes) -> bool {
        match self {
            LinkHandle::Quic(l) => l.send_datagram(datagram),
            LinkHandle::Sibling { me, to } => {
                let Ok(records) = sfu_relay::wire::records(datagram).collect() else {
                    return false;
                };
                to.send(Command::Cluster(ClusterInput::Datagrams {
                    from: me.clone(),
                    records,
                }))
                .is_ok()
            }
        }
    }
}
