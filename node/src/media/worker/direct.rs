//! A worker's receiving end of relay links' direct paths, and the relayed packets it takes in.
//!
//! Other nodes' workers send relayed media straight to this worker's socket once the link
//! offered it (see [`sfu_relay::direct`]): datagrams starting with [`MAGIC`], naming the link
//! by the channel this node chose for it. Each is opened with the link's key (a copy per
//! datagram, not per packet), its first from a sending worker confirmed to the peer over the
//! link's control stream, and its records routed by flow as the QUIC path routes them: to the
//! room's home worker, which is this one or a sibling (one hand-off per datagram).

use super::WorkerCore;
use crate::media::{ClusterInput, Command};
use bytes::{Bytes, BytesMut};
use sfu_proto::relay::{DirectConfirmed, Frame, frame::Body};
use sfu_relay::NodeId;
use sfu_relay::direct::{HEADER, MAGIC, Opener, channel_of};
use sfu_relay::quic::Link;
use std::time::Instant;

/// One link's direct path as this worker receives on it.
pub(in crate::media) struct DirectIn {
    from: NodeId,
    opener: Opener,
    /// To confirm the peer's workers on.
    link: Link,
    /// Bit `w`: the peer's worker `w` was told its datagrams arrive.
    confirmed: u64,
}

/// Direct datagrams dropped, by why.
#[derive(Default)]
pub(in crate::media) struct DirectDrops {
    /// Naming no channel this worker knows (an old link's, or not ours).
    pub(in crate::media) unknown_channel: u64,
    /// Failing to open (forged, damaged, another key) or seen before.
    pub(in crate::media) rejected: u64,
}

impl WorkerCore {
    /// A link came up: open what its peer sends directly.
    pub(in crate::media) fn direct_link_up(&mut self, link: &Link) {
        // A link replacing an older one to the same node brings new keys and a new channel.
        self.direct_link_down(&link.node);
        if let Some(path) = &link.direct {
            self.direct_in.insert(
                path.channel,
                DirectIn {
                    from: link.node.clone(),
                    opener: Opener::new(&path.recv_key),
                    link: link.clone(),
                    confirmed: 0,
                },
            );
        }
    }

    pub(in crate::media) fn direct_link_down(&mut self, node: &NodeId) {
        self.direct_in.retain(|_, d| d.from != *node);
    }

    /// A datagram starting with [`MAGIC`] arrived on the worker's socket.
    pub(in crate::media) fn handle_direct(&mut self, now: Instant, data: &[u8]) {
        debug_assert_eq!(data.first(), Some(&MAGIC));
        let Some(d) = channel_of(data).and_then(|c| self.direct_in.get_mut(&c)) else {
            self.direct_drops.unknown_channel += 1;
            return;
        };
        let mut buf = BytesMut::from(data);
        let (worker, len) = match d.opener.open(&mut buf) {
            Ok((worker, plain)) => (worker, plain.len()),
            Err(_) => {
                self.direct_drops.rejected += 1;
                return;
            }
        };
        if worker < 64 && d.confirmed & (1 << worker) == 0 {
            d.confirmed |= 1 << worker;
            d.link.send_frame(Frame {
                body: Some(Body::DirectConfirmed(DirectConfirmed { worker })),
            });
        }
        if len == 0 {
            return; // a probe
        }
        self.metrics.relay_direct_in.inc();
        let from = d.from.clone();
        let payload = buf.freeze().slice(HEADER..HEADER + len);
        self.route_direct(now, &from, payload);
    }

    /// The records of a relay datagram, to this worker's rooms or the sibling whose they are.
    fn route_direct(&mut self, now: Instant, from: &NodeId, payload: Bytes) {
        for (worker, records) in self.shared.route_records(from, payload) {
            if worker == self.index {
                self.handle_relay_records(now, from, records);
            } else if let Some(to) = self.siblings.get(worker) {
                let _ = to.send(Command::Cluster(ClusterInput::Datagrams {
                    from: from.clone(),
                    records,
                }));
            }
        }
    }

    /// Relayed packets from `from` (a node, or a sibling worker), to their rooms.
    pub(in crate::media) fn handle_relay_records(
        &mut self,
        now: Instant,
        from: &NodeId,
        records: Vec<(u32, Bytes)>,
    ) {
        let link = self.relay.link_id(from);
        for (flow, rtp) in records {
            match self.relay.handle_datagram(now, link, flow, rtp) {
                Ok(d) => {
                    let (track, layer, packet) = (d.key.track, d.layer, d.packet);
                    if let Some(&idx) = self.room_by_name.get(&*d.key.room) {
                        self.touching = Some(idx);
                        self.rooms[idx].handle_relayed_rtp(
                            now,
                            track,
                            layer,
                            packet,
                            &mut self.out,
                        );
                        self.after_room(now, idx);
                    }
                }
                Err(_) => self.drops.relay_rejected += 1,
            }
        }
    }
}
