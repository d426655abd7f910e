//! Carrying out the relay's outputs on a node's forwarding cores (one [`Room`] per room).
//!
//! Shared by the node's media workers and by the simulation tests, so both exercise the same
//! wiring: attach and detach relay sinks, answer NACKs and keyframe requests from downstream,
//! and pack the rooms' relayed packets into datagrams ([`Outbox`]).

use crate::core::{Output, TrackKey, decode_sink};
use crate::wire::{DatagramWriter, Framing};
use bytes::{Bytes, BytesMut};
use sfu_core::{Packet, Room, SinkId, SubscriptionId};
use std::collections::HashMap;
use std::time::Instant;

/// Looks up a node's forwarding core by room name.
pub trait Rooms {
    fn room_mut(&mut self, name: &str) -> Option<&mut Room>;
}

/// A single room answers for every name (tests, and nodes with one room).
impl Rooms for Room {
    fn room_mut(&mut self, _: &str) -> Option<&mut Room> {
        Some(self)
    }
}

impl Rooms for HashMap<String, Room> {
    fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.get_mut(name)
    }
}

/// Which room subscription feeds each relay sink.
#[derive(Default)]
pub struct SinkTable {
    subscriptions: HashMap<SinkId, (TrackKey, SubscriptionId)>,
}

impl SinkTable {
    /// Applies `output` to the forwarding core if it concerns it, and returns it otherwise
    /// (control frames to send, tracks becoming fed or unfed: the node's business).
    pub fn apply(
        &mut self,
        now: Instant,
        output: Output,
        rooms: &mut impl Rooms,
    ) -> Option<Output> {
        match output {
            Output::Attach { key, layer, sink } => {
                let r = rooms.room_mut(&key.room)?;
                match r.subscribe_relay(now, key.track, layer, sink) {
                    Ok(sub) => {
                        if r.track(key.track).is_none() {
                            // The room learns of the track later (a federation gateway's
                            // view of its own registry writes lags); the sink waits for it.
                            tracing::debug!(room = %key.room, track = %key.track, "relay sink waits for its track");
                        }
                        self.subscriptions.insert(sink, (key, sub));
                    }
                    // A flow that will carry nothing: worth seeing.
                    Err(e) => tracing::warn!(room = %key.room, "relay attach: {e}"),
                }
                None
            }
            Output::Detach { key: _, sink } => {
                if let Some((key, sub)) = self.subscriptions.remove(&sink)
                    && let Some(r) = rooms.room_mut(&key.room)
                {
                    r.unsubscribe(sub);
                }
                None
            }
            Output::Retransmit { key: _, sink, seqs } => {
                if let Some((key, sub)) = self.subscriptions.get(&sink)
                    && let Some(r) = rooms.room_mut(&key.room)
                {
                    r.handle_relay_nack(now, *sub, &seqs);
                }
                None
            }
            Output::KeyframeRequest { key, layer } => {
                if let Some(r) = rooms.room_mut(&key.room) {
                    r.handle_relay_keyframe_request(now, key.track, layer);
                }
                None
            }
            other => Some(other),
        }
    }

    /// Forgets the sinks of a room that closed (its subscriptions went with it).
    pub fn forget_room(&mut self, room: &str) {
        self.subscriptions.retain(|_, (k, _)| &*k.room != room);
    }
}

/// Appends `packet` as it goes on the wire: its header marshalled into room made for it, its
/// payload copied once (marshalling the whole packet would first zero room for the payload).
fn append_packet(packet: &Packet, out: &mut BytesMut) -> bool {
    use rtc_shared::marshal::{Marshal, MarshalSize};
    let at = out.len();
    if packet.header.padding {
        // Marshalling writes the padding back (rare: padding-only probes are not relayed).
        out.resize(at + packet.marshal_size(), 0);
        return packet.marshal_to(&mut out[at..]).is_ok();
    }
    out.resize(at + packet.header.marshal_size(), 0);
    if packet.header.marshal_to(&mut out[at..]).is_err() {
        return false;
    }
    out.extend_from_slice(&packet.payload);
    true
}

/// What the rooms of a node (or worker) relay during one turn of its loop, packed per link into
/// as few datagrams as the link's datagram size allows when the turn ends (see
/// [`crate::wire`]). Packets keep their order within a link.
#[derive(Default)]
pub struct Outbox {
    /// (link, flow, packet), in the order the rooms sent them.
    packets: Vec<(u32, u32, Packet)>,
    writer: DatagramWriter,
}

impl Outbox {
    /// Queues a packet a room sends to a relay sink; false if `sink` is not one.
    pub fn push(&mut self, sink: SinkId, packet: Packet) -> bool {
        let Some((link, flow)) = decode_sink(sink) else {
            return false;
        };
        self.packets.push((link, flow, packet));
        true
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Packs the queued packets and hands each datagram to `send(link, datagram)`; `max(link)`
    /// is the largest datagram the link takes now.
    pub fn flush(&mut self, mut max: impl FnMut(u32) -> usize, mut send: impl FnMut(u32, Bytes)) {
        self.flush_framed(
            |link| (max(link), Framing::NONE),
            |link, d, _| send(link, d.freeze()),
        );
    }

    /// As [`flush`](Self::flush), each link's datagrams framed as `max(link)` says (with the
    /// records' limit), handed over unfrozen with their framing, e.g. to be sealed in place.
    pub fn flush_framed(
        &mut self,
        mut max: impl FnMut(u32) -> (usize, Framing),
        mut send: impl FnMut(u32, BytesMut, Framing),
    ) {
        use rtc_shared::marshal::MarshalSize;
        // Stable: a link's packets stay in the order they were sent.
        self.packets.sort_by_key(|(link, _, _)| *link);
        let mut current: Option<(u32, usize, Framing)> = None;
        for (link, flow, packet) in self.packets.drain(..) {
            let (limit, framing) = match current {
                Some((l, limit, framing)) if l == link => (limit, framing),
                _ => {
                    if let Some((l, _, _)) = current
                        && let Some((d, f)) = self.writer.finish_framed()
                    {
                        send(l, d, f);
                    }
                    let (limit, framing) = max(link);
                    current = Some((link, limit, framing));
                    (limit, framing)
                }
            };
            let full =
                self.writer
                    .push_framed(limit, framing, flow, packet.marshal_size(), |out| {
                        append_packet(&packet, out)
                    });
            if let Some((d, f)) = full {
                send(link, d, f);
            }
        }
        if let Some((l, _, _)) = current
            && let Some((d, f)) = self.writer.finish_framed()
        {
            send(l, d, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sink;
    use rtc_shared::marshal::Marshal;

    /// Packed records carry each packet as marshalling it whole would, padding included,
    /// and keep a link's order.
    #[test]
    fn relayed_packets_are_packed_as_they_marshal() {
        let packet = |seq: u16, len: usize, padding: bool| {
            let mut p = Packet {
                payload: Bytes::from(vec![seq as u8; len]),
                ..Default::default()
            };
            p.header.version = 2;
            p.header.ssrc = 7;
            p.header.sequence_number = seq;
            p.header.padding = padding;
            p.header.csrc = vec![1, 2];
            p
        };
        let sent = [
            packet(1, 1100, false),
            packet(2, 30, true),
            packet(3, 1001, false),
        ];
        let mut outbox = Outbox::default();
        for p in &sent {
            assert!(outbox.push(sink(4, 9), p.clone()));
        }
        let mut datagrams = Vec::new();
        outbox.flush(|_| 1200, |link, d| datagrams.push((link, d)));
        let got: Vec<(u32, Bytes)> = datagrams
            .iter()
            .flat_map(|(link, d)| {
                assert_eq!(*link, 4);
                crate::wire::records(d.clone())
            })
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 3, "{} datagrams", datagrams.len());
        for ((flow, rtp), p) in got.iter().zip(&sent) {
            assert_eq!(*flow, 9);
            assert_eq!(
                rtp,
                &p.marshal().unwrap(),
                "packet {}",
                p.header.sequence_number
            );
        }
    }
}
