//! Participants' data packets: what LiveKit's clients send on the `_reliable` and `_lossy`
//! data channels of their publisher connection (chat, reactions, RPC, data streams), carried
//! to the room's other participants, here and on the other workers and nodes of the room.
//!
//! A packet is LiveKit's `DataPacket`. The node rewrites its sender (identity and sid: a
//! client cannot speak for another) and delivers it on the channel of the same kind of each
//! recipient's publisher connection (livekit-client reads both directions of its channels),
//! to the packet's destination identities only if it names some. Packets are bounded in size
//! and, per participant, in rate; what is refused is counted (`EdgeDrops`), never queued.

use crate::media::egress::{Effect, Egress};
use crate::media::room::LocalRoom;
use livekit_protocol as lk;
use prost::Message as _;
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelMessage};
use std::time::{Duration, Instant};

/// Largest packet taken (LiveKit's clients split larger data into streams of 15 KiB chunks).
pub const MAX_PACKET: usize = 16 * 1024;
/// Packets a participant may send a second, and in a burst.
const PACKETS_PER_SEC: f64 = 50.0;
const PACKET_BURST: f64 = 100.0;
/// Bytes a participant may send a second (a burst is one second's worth).
const BYTES_PER_SEC: f64 = 256.0 * 1024.0;

/// The label of LiveKit's reliable data channel (the lossy one is `_lossy`).
const RELIABLE: &str = "_reliable";
const LOSSY: &str = "_lossy";

/// A participant's data channels and what it may still send.
#[derive(Debug, Default)]
pub struct DataState {
    /// Open channels of its publisher connection: id, and whether it is the reliable one.
    channels: Vec<(RTCDataChannelId, bool)>,
    packets: f64,
    bytes: f64,
    refilled: Option<Instant>,
}

impl DataState {
    /// Takes a packet of `len` bytes from the budget, if it allows.
    fn admit(&mut self, now: Instant, len: usize) -> bool {
        // A new participant starts with a full budget.
        let elapsed = self
            .refilled
            .map_or(Duration::from_secs(60), |t| {
                now.saturating_duration_since(t)
            })
            .as_secs_f64();
        self.refilled = Some(now);
        self.packets = (self.packets + elapsed * PACKETS_PER_SEC).min(PACKET_BURST);
        self.bytes = (self.bytes + elapsed * BYTES_PER_SEC).min(BYTES_PER_SEC);
        if self.packets < 1.0 || self.bytes < len as f64 {
            return false;
        }
        self.packets -= 1.0;
        self.bytes -= len as f64;
        true
    }
}

/// A packet on its way to the room's participants.
#[derive(Debug, Clone)]
pub struct UserData {
    pub sender: String,
    pub destinations: Vec<String>,
    pub reliable: bool,
    pub packet: bytes::Bytes,
}

impl UserData {
    /// A packet from the server (LiveKit's `SendData`): a user packet with no sender, for
    /// the room's participants or those named (by identity or sid).
    #[allow(deprecated)]
    pub fn from_server(
        payload: Vec<u8>,
        reliable: bool,
        topic: Option<String>,
        destinations: Vec<String>,
    ) -> Self {
        use lk::data_packet::Kind;
        let packet = lk::DataPacket {
            kind: if reliable {
                Kind::Reliable
            } else {
                Kind::Lossy
            } as i32,
            destination_identities: destinations.clone(),
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload,
                topic,
                destination_identities: destinations.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        UserData {
            sender: String::new(),
            destinations,
            reliable,
            packet: packet.encode_to_vec().into(),
        }
    }
}

impl LocalRoom {
    /// A data channel of a participant's publisher connection opened.
    pub(super) fn on_data_channel_open(&mut self, key: usize, id: RTCDataChannelId) {
        let peer = &mut self.peers[key];
        let Some(label) = peer.pc.data_channel(id).map(|c| c.label().to_owned()) else {
            return;
        };
        if label != RELIABLE && label != LOSSY {
            return;
        }
        let owner = peer.participant.clone();
        if let Some(p) = self.roster.local.get_mut(&owner) {
            p.data.channels.retain(|(c, _)| *c != id);
            p.data.channels.push((id, label == RELIABLE));
        }
    }

    /// A message on a participant's data channel: checked, rewritten with its sender, and
    /// delivered to the room.
    pub(super) fn on_data_message(
        &mut self,
        now: Instant,
        key: usize,
        id: RTCDataChannelId,
        message: RTCDataChannelMessage,
        out: &mut Egress,
    ) {
        let owner = self.peers[key].participant.clone();
        let Some(p) = self.roster.local.get_mut(&owner) else {
            return;
        };
        let Some(&(_, reliable)) = p.data.channels.iter().find(|(c, _)| *c == id) else {
            tracing::debug!(
                room = %self.name, participant = %p.identity, ?id,
                "data on a channel not open (or not LiveKit's): dropped"
            );
            self.drops.data_refused += 1;
            return;
        };
        if message.data.len() > MAX_PACKET || !p.data.admit(now, message.data.len()) {
            tracing::debug!(
                room = %self.name, participant = %p.identity, len = message.data.len(),
                "data packet too large or over the rate: dropped"
            );
            self.drops.data_refused += 1;
            return;
        }
        let (identity, sid) = (p.identity.clone(), p.sid.clone());
        let Some(packet) = rewrite(&message.data, &identity, &sid) else {
            tracing::debug!(
                room = %self.name, participant = %identity,
                "data packet not one participants send each other: dropped"
            );
            self.drops.data_refused += 1;
            return;
        };
        let data = UserData {
            sender: sid,
            destinations: packet.destination_identities.clone(),
            reliable,
            packet: packet.encode_to_vec().into(),
        };
        self.deliver_data(now, &data);
        let nodes = self.roster.nodes(&self.ctx.node_id);
        if !nodes.is_empty() {
            out.effects.push(Effect::UserData {
                room: self.name.clone(),
                nodes,
                data,
            });
        }
    }

    /// Delivers a packet to this worker's participants of the room (but its sender).
    pub fn deliver_data(&mut self, now: Instant, data: &UserData) {
        let mut targets = Vec::new();
        for p in self.roster.local.values() {
            let named =
                data.destinations.contains(&p.identity) || data.destinations.contains(&p.sid);
            if p.sid == data.sender || (!data.destinations.is_empty() && !named) {
                continue;
            }
            let channel = p
                .data
                .channels
                .iter()
                .find(|(_, r)| *r == data.reliable)
                .or_else(|| p.data.channels.first());
            if let (Some(key), Some(&(id, _))) = (p.publisher, channel) {
                targets.push((key, id));
            } else {
                tracing::trace!(
                    room = %self.name, participant = %p.identity,
                    "no data channel to deliver a data packet on"
                );
            }
        }
        for (key, id) in targets {
            let sent = self.peers[key]
                .pc
                .data_channel(id)
                .map(|mut c| c.send(now, bytes::BytesMut::from(&data.packet[..])));
            if !matches!(sent, Some(Ok(()))) {
                self.drops.data_refused += 1;
            }
            self.peers.rearm(key);
        }
    }
}

/// The packet with its sender set, if it is one participants send each other. The user
/// packet's own sender and destination fields are deprecated in the protocol, but
/// livekit-client 2.x still sends and reads them.
#[allow(deprecated)]
fn rewrite(bytes: &[u8], identity: &str, sid: &str) -> Option<lk::DataPacket> {
    use lk::data_packet::Value;
    let mut packet = lk::DataPacket::decode(bytes).ok()?;
    match packet.value.as_mut()? {
        Value::User(u) => {
            u.participant_identity = identity.to_owned();
            u.participant_sid = sid.to_owned();
            if packet.destination_identities.is_empty() {
                packet.destination_identities = u.destination_identities.clone();
            }
        }
        Value::ChatMessage(_)
        | Value::RpcRequest(_)
        | Value::RpcAck(_)
        | Value::RpcResponse(_)
        | Value::StreamHeader(_)
        | Value::StreamChunk(_)
        | Value::StreamTrailer(_) => {}
        // What the server sends (speakers, transcriptions, metrics, SIP), or cannot check.
        _ => return None,
    }
    packet.participant_identity = identity.to_owned();
    packet.participant_sid = sid.to_owned();
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn senders_are_rewritten_and_server_packets_refused() {
        let sent = lk::DataPacket {
            participant_identity: "someone-else".into(),
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                participant_identity: "someone-else".into(),
                payload: b"hi".to_vec(),
                destination_identities: vec!["bob".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let p = rewrite(&sent.encode_to_vec(), "alice", "PA_1").unwrap();
        assert_eq!(p.participant_identity, "alice");
        assert_eq!(p.destination_identities, ["bob"]);
        let Some(lk::data_packet::Value::User(u)) = p.value else {
            panic!()
        };
        assert_eq!(
            (u.participant_identity.as_str(), u.payload.as_slice()),
            ("alice", &b"hi"[..])
        );
        let speaker = lk::DataPacket {
            value: Some(lk::data_packet::Value::Speaker(Default::default())),
            ..Default::default()
        };
        assert!(rewrite(&speaker.encode_to_vec(), "alice", "PA_1").is_none());
        assert!(rewrite(&[0xff, 0xff], "alice", "PA_1").is_none());
    }

    #[test]
    fn the_budget_allows_bursts_then_the_rate() {
        let mut d = DataState::default();
        let t = Instant::now();
        let taken = (0..200).filter(|_| d.admit(t, 10)).count();
        assert_eq!(taken, PACKET_BURST as usize);
        assert!(d.admit(t + Duration::from_millis(40), 10), "refilled");
        assert!(
            !d.admit(t + Duration::from_millis(41), 300 * 1024),
            "too many bytes"
        );
    }
}
