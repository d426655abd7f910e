//! One track delivered to one sink, and the RTCP sender reports it owes that sink.

use crate::clock::{WallClock, ntp_add, rtp_ticks};
use crate::forwarder::Forwarder;
use crate::ids::{LayerIndex, SinkId, SubscriptionId};
use crate::resend::RecentResends;
use crate::track::PublisherReport;
use std::time::{Duration, Instant};

/// How often a subscriber gets a sender report for each of its streams.
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Parameters the caller negotiated with the subscriber.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubscriptionParams {
    /// SSRC the subscriber expects.
    pub ssrc: u32,
    /// Payload type the subscriber negotiated for the track's codec.
    pub payload_type: u8,
    /// Highest layer the subscriber should receive.
    pub max_layer: LayerIndex,
    /// The retransmission stream (RFC 4588), if the subscriber negotiated one.
    pub rtx: Option<RtxParams>,
    /// The subscriber's payload type for RED audio, if it negotiated RED (it then gets RED
    /// as the publisher sent it; otherwise the primary block only).
    pub red_payload_type: Option<u8>,
}

/// A retransmission stream: its SSRC and payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtxParams {
    pub ssrc: u32,
    pub payload_type: u8,
}

/// The retransmission stream of a subscription and its next sequence number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rtx {
    pub params: RtxParams,
    pub seq: u16,
}

impl Rtx {
    /// Wraps a packet (already rewritten for the subscriber) for the retransmission stream:
    /// the original sequence number leads the payload (RFC 4588 §4).
    pub fn wrap(&mut self, packet: &rtp::packet::Packet) -> rtp::packet::Packet {
        use bytes::BufMut;
        let mut payload = bytes::BytesMut::with_capacity(2 + packet.payload.len());
        payload.put_u16(packet.header.sequence_number);
        payload.put_slice(&packet.payload);
        let mut header = packet.header.clone();
        header.ssrc = self.params.ssrc;
        header.payload_type = self.params.payload_type;
        header.sequence_number = self.next_seq();
        rtp::packet::Packet {
            header,
            payload: payload.freeze(),
        }
    }

    /// A padding-only packet on the retransmission stream (a bandwidth probe; receivers count
    /// its arrival and discard it).
    pub fn padding(&mut self, timestamp: u32) -> rtp::packet::Packet {
        rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                padding: true,
                payload_type: self.params.payload_type,
                sequence_number: self.next_seq(),
                timestamp,
                ssrc: self.params.ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::new(),
        }
    }

    fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

/// What the subscriber says about one subscription (it renders the track, and how large).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// The best layer worth sending (from the rendered size); `None` disables the
    /// subscription (the track is not shown) without ending it.
    pub max_layer: Option<LayerIndex>,
    /// Pinned by the subscriber: exempt from last-N, and sent before others.
    pub pinned: bool,
}

/// An RTCP sender report for one subscriber stream, in the subscriber's SSRC and timestamp
/// space. Converted to the wire format at the edge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp: u64,
    pub rtp_time: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// A subscription, owned by the track it subscribes to.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) id: SubscriptionId,
    pub(crate) sink: SinkId,
    pub(crate) forwarder: Forwarder,
    pub(crate) max_layer: LayerIndex,
    /// Disabled by the subscriber (not rendered): nothing is sent.
    pub(crate) enabled: bool,
    pub(crate) pinned: bool,
    /// The layer the allocator gave it (`None`: paused), whether or not that layer flows.
    pub(crate) desired: Option<LayerIndex>,
    pub(crate) rtx: Option<Rtx>,
    pub(crate) red_payload_type: Option<u8>,
    pub(crate) next_report: Option<Instant>,
    /// Packets resent lately, so a NACK repeated within a round trip is not answered twice.
    pub(crate) resent: RecentResends,
}

impl Subscription {
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    pub fn sink(&self) -> SinkId {
        self.sink
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The layer the stream allocator chose for it (`None`: paused).
    pub fn desired_layer(&self) -> Option<LayerIndex> {
        self.desired
    }

    /// The sender report due at `now`, if one is due. Uses the publisher's own report for the
    /// layer being forwarded when there is one, so that audio and video of one publisher keep
    /// their lip-sync relation downstream; otherwise maps our wall clock to the last packet
    /// sent.
    pub(crate) fn poll_report(
        &mut self,
        now: Instant,
        clock: &WallClock,
        publisher: Option<&PublisherReport>,
    ) -> Option<SenderReport> {
        let (last_ts, last_at) = self.forwarder.last_sent()?;
        match self.next_report {
            None => {
                // First media went out: report soon, so the subscriber can sync early.
                self.next_report = Some(now + SENDER_REPORT_INTERVAL / 5);
                return None;
            }
            Some(due) if now < due => return None,
            Some(_) => {}
        }
        self.next_report = Some(now + SENDER_REPORT_INTERVAL);
        let clock_rate = self.forwarder.config().clock_rate;
        let (ntp, rtp_time) = match (publisher, self.forwarder.timestamp_offset()) {
            (Some(r), Some(offset)) => {
                let elapsed = now.saturating_duration_since(r.received_at);
                (
                    ntp_add(r.ntp, elapsed),
                    r.rtp_time
                        .wrapping_add(rtp_ticks(elapsed, clock_rate))
                        .wrapping_add(offset),
                )
            }
            _ => (
                clock.ntp(now),
                last_ts.wrapping_add(rtp_ticks(
                    now.saturating_duration_since(last_at),
                    clock_rate,
                )),
            ),
        };
        let (packet_count, octet_count) = self.forwarder.counters();
        Some(SenderReport {
            ssrc: self.forwarder.config().ssrc,
            ntp,
            rtp_time,
            packet_count,
            octet_count,
        })
    }
}
