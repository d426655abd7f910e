//! Retransmissions from publishers, put back into the streams they repair.
//!
//! The node asks its publishers for what it did not receive (webrtc-rs's NACK generator on
//! publisher connections), as LiveKit, mediasoup and Janus do, so loss on a publisher's path to
//! the node is repaired once for every subscriber and recording. Browsers answer on their RTX
//! stream (RFC 4588): one per simulcast layer. webrtc-rs turns RTX back into the original packet
//! only for streams the SDP declares by SSRC (`a=ssrc-group:FID`); simulcast layers are declared
//! by RID, their RTX packets name the layer they repair in the `repaired-rtp-stream-id` header
//! extension, and webrtc-rs drops them (a "TODO: rrid" in 0.21). So before this interceptor
//! no loss between a simulcast publisher and the node was ever repaired: the NACKs went out, the
//! retransmissions came back and were dropped, subscribers' NACKs found nothing in the node's
//! cache, and recordings waited for the next keyframe.
//!
//! It sits wire-ward of the NACK generator (slot [`REPAIR_SLOT`]) on publisher connections. An
//! RTX packet is matched to the layer it repairs by its declared SSRC or by its MID and RRID
//! (learnt from the layers' own MID and RID extensions, which browsers send on their first
//! packets), and rewritten in place as the original: SSRC, payload type, the sequence number
//! from its first two bytes (the OSN), the payload without them (a slice: nothing is copied or
//! allocated). The NACK generator then sees the packet arrive and stops asking, webrtc-rs hands
//! it to the room as the layer's own, and the forwarding core treats it as any late packet:
//! into the retransmission cache, and on to the subscribers (their forwarders map it to the
//! sequence number it would have had).
//!
//! A retransmission of a packet already received (browsers also probe for bandwidth by sending
//! old packets again on RTX) and RTX padding are left as they are: webrtc-rs drops them after
//! the transport-wide congestion feedback has counted them, as before. NACKs the generator would
//! send for gaps in an RTX stream's own numbering (it binds declared RTX streams as streams of
//! their own) are not sent: a browser would take them as NACKs of its media stream.
//!
//! Per packet of a publisher this costs a search of a few SSRCs and a bit in a window of the
//! last [`WINDOW`] sequence numbers; retransmissions add a few counter increments.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

/// Slot of the interceptor: after webrtc-rs's FEC decoder (6_000), before its NACK generator
/// (7_000), which must see a repaired packet arrive.
pub const REPAIR_SLOT: usize = 6_500;
/// Sequence numbers remembered per stream, to tell a needed retransmission from a repeat.
pub const WINDOW: u64 = 1024;

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// The node's counters of repair by publishers (`sfu_publisher_…`), shared by every
/// publisher connection of every worker.
#[derive(Clone, Debug, Default)]
pub struct RepairMetrics {
    /// Packets the node asked publishers to send again.
    pub nacked: Counter,
    /// Retransmissions that filled a gap.
    pub repaired: Counter,
    /// Retransmissions of packets already received (repeats, bandwidth probes).
    pub repeated: Counter,
}

impl RepairMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "publisher_nacked_packets",
            "Packets the node NACKed to publishers: lost on their way to the node",
            self.nacked.clone(),
        );
        registry.register(
            "publisher_retransmissions",
            "Retransmissions (RTX) from publishers that filled a gap in what the node received",
            self.repaired.clone(),
        );
        registry.register(
            "publisher_retransmissions_repeated",
            "Retransmissions (RTX) from publishers of packets the node already had (repeats and bandwidth probes); dropped",
            self.repeated.clone(),
        );
    }
}

/// The sequence numbers of one stream received lately.
#[derive(Default)]
struct Received {
    highest: Option<u64>,
    bits: [u64; (WINDOW / 64) as usize],
}

impl Received {
    /// Marks `seq` received; whether it was new (false for a repeat, or a number too old to
    /// tell).
    fn insert(&mut self, seq: u16) -> bool {
        let Some(highest) = self.highest else {
            // One cycle up, so that nothing is extended below zero.
            let ext = seq as u64 + (1 << 16);
            self.highest = Some(ext);
            self.set(ext);
            return true;
        };
        // Extended to the value closest to the highest.
        let ext = (highest as i64 + seq.wrapping_sub(highest as u16) as i16 as i64) as u64;
        if ext > highest {
            if ext - highest >= WINDOW {
                self.bits = [0; (WINDOW / 64) as usize];
            } else {
                for s in highest + 1..ext {
                    self.clear(s);
                }
            }
            self.highest = Some(ext);
        } else if highest - ext >= WINDOW {
            return false;
        }
        let new = !self.get(ext);
        self.set(ext);
        new
    }

    fn get(&self, ext: u64) -> bool {
        let i = ext % WINDOW;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, ext: u64) {
        let i = ext % WINDOW;
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn clear(&mut self, ext: u64) {
        let i = ext % WINDOW;
        self.bits[(i / 64) as usize] &= !(1 << (i % 64));
    }
}

/// A media stream of the publisher (one simulcast layer, or a track without simulcast).
struct Stream {
    ssrc: u32,
    /// The payload type of its latest packet: what a retransmission of it carried.
    payload_type: u8,
    /// Its RTX stream, declared or learnt.
    rtx_ssrc: Option<u32>,
    /// Its MID and RID, from its first packets (simulcast).
    mid_rid: Option<(bytes::Bytes, bytes::Bytes)>,
    /// Packets left in which to look for them: a stream whose first packets name no RID (audio,
    /// a single video stream) is not searched on every packet.
    rid_tries: u8,
    received: Received,
}

/// Packets of a stream searched for its MID and RID (browsers send them on the first ones).
const RID_TRIES: u8 = 64;

/// See the module documentation.
pub struct RtxRepair {
    metrics: RepairMetrics,
    streams: Vec<Stream>,
    /// Negotiated header extension ids: MID, RID, RRID.
    ext: [Option<u8>; 3],
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl RtxRepair {
    pub fn new(metrics: RepairMetrics) -> Self {
        Self {
            metrics,
            streams: Vec::new(),
            ext: [None; 3],
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn extension(&self, header: &rtc::rtp::Header, which: usize) -> Option<bytes::Bytes> {
        header
            .get_extension(self.ext[which]?)
            .filter(|v| !v.is_empty())
    }

    /// Rewrites an RTX packet into the packet it repeats when that one is missing.
    fn on_rtp(&mut self, packet: &mut rtc::rtp::Packet) {
        let ssrc = packet.header.ssrc;
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            s.received.insert(packet.header.sequence_number);
            s.payload_type = packet.header.payload_type;
            if s.mid_rid.is_none() && s.rid_tries > 0 {
                s.rid_tries -= 1;
            }
            if s.mid_rid.is_none()
                && s.rid_tries > 0
                && let (Some(mid), Some(rid)) = (
                    self.ext[0].and_then(|id| packet.header.get_extension(id)),
                    self.ext[1].and_then(|id| packet.header.get_extension(id)),
                )
                && !mid.is_empty()
                && !rid.is_empty()
            {
                s.mid_rid = Some((mid, rid));
            }
            return;
        }
        let index = match self.streams.iter().position(|s| s.rtx_ssrc == Some(ssrc)) {
            Some(i) => i,
            None => {
                // An RTX stream not seen yet: the layer it repairs is named by MID and RRID.
                let (Some(mid), Some(rrid)) = (
                    self.extension(&packet.header, 0),
                    self.extension(&packet.header, 2),
                ) else {
                    return;
                };
                let Some(i) = self.streams.iter().position(|s| {
                    s.rtx_ssrc.is_none()
                        && s.mid_rid
                            .as_ref()
                            .is_some_and(|(m, r)| *m == mid && *r == rrid)
                }) else {
                    return;
                };
                self.streams[i].rtx_ssrc = Some(ssrc);
                i
            }
        };
        // The OSN, then the original payload; shorter is padding (a bandwidth probe).
        if packet.payload.len() <= 2 {
            return;
        }
        let s = &mut self.streams[index];
        let osn = u16::from_be_bytes([packet.payload[0], packet.payload[1]]);
        if !s.received.insert(osn) {
            self.metrics.repeated.inc();
            return;
        }
        self.metrics.repaired.inc();
        packet.header.ssrc = s.ssrc;
        packet.header.payload_type = s.payload_type;
        packet.header.sequence_number = osn;
        packet.header.padding = false;
        packet.payload = packet.payload.slice(2..);
    }

    /// Counts the NACKs going to the publisher, and keeps back those about an RTX stream.
    fn on_rtcp_out(&mut self, packets: &mut Vec<Box<dyn rtc::rtcp::Packet>>) {
        packets.retain(|p| {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                return true;
            };
            if self
                .streams
                .iter()
                .any(|s| s.rtx_ssrc == Some(nack.media_ssrc))
            {
                return false;
            }
            let lost: usize = nack.nacks.iter().map(|n| n.into_iter().count()).sum();
            self.metrics.nacked.inc_by(lost as u64);
            true
        });
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtxRepair {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(p) = &mut msg.message.packet {
            self.on_rtp(p);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet
            && !packets.is_empty()
        {
            self.on_rtcp_out(packets);
            if packets.is_empty() {
                return Ok(());
            }
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for RtxRepair {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        for e in &info.rtp_header_extensions {
            let slot = match e.uri.as_str() {
                MID_URI => 0,
                RID_URI => 1,
                RRID_URI => 2,
                _ => continue,
            };
            self.ext[slot] = u8::try_from(e.id).ok();
        }
        // webrtc-rs binds a declared RTX stream as a stream of its own, after its media stream;
        // should it come first, it was taken for media: the media stream corrects that.
        let rtx = self.streams.iter().any(|s| s.rtx_ssrc == Some(info.ssrc));
        if rtx || self.streams.iter().any(|s| s.ssrc == info.ssrc) {
            return;
        }
        if let Some(rtx) = info.ssrc_rtx {
            self.streams.retain(|s| s.ssrc != rtx);
        }
        self.streams.push(Stream {
            ssrc: info.ssrc,
            payload_type: info.payload_type,
            rtx_ssrc: info.ssrc_rtx,
            mid_rid: None,
            rid_tries: RID_TRIES,
            received: Received::default(),
        });
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.streams.retain(|s| s.ssrc != info.ssrc);
    }
}

#[cfg(test)]
mod tests;
