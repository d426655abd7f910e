//! Carrying out the relay's outputs on a node's forwarding cores (one [`Room`] per room).
//!
//! Shared by the node's media workers and by the simulation tests, so both exercise the same
//! wiring: attach and detach relay sinks, answer NACKs and keyframe requests from downstream,
//! and turn the rooms' relay outputs into datagrams.

use crate::core::{Output, TrackKey, decode_sink};
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
                        self.subscriptions.insert(sink, (key, sub));
                    }
                    Err(e) => tracing::debug!("relay attach: {e}"),
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

/// The datagram for a packet the room sends to a relay sink: `(link, bytes)`.
pub fn datagram(sink: SinkId, packet: &Packet) -> Option<(u32, Bytes)> {
    use rtc_shared::marshal::{Marshal, MarshalSize};
    let (link, flow) = decode_sink(sink)?;
    let size = packet.marshal_size();
    let mut buf = BytesMut::with_capacity(5 + size);
    prost::encoding::encode_varint(flow as u64, &mut buf);
    let start = buf.len();
    buf.resize(start + size, 0);
    // A packet the room built always marshals into a buffer of its own marshal size.
    packet.marshal_to(&mut buf[start..]).ok()?;
    Some((link, buf.freeze()))
}
