//! The light receiver: measures media from the clear RTP header and authenticates only a
//! sample, so that one load tester core can receive what one node core sends.
//!
//! SRTP encrypts only the payload of an RTP packet: the header (SSRC, sequence number,
//! timestamp, marker bit) stays in clear, and an authentication tag follows the payload. A
//! light receiving connection ([`crate::conn::Conn`] with a [`Light`]) reads its socket in
//! batches where one slot in [`SAMPLE_EVERY`] takes whole datagrams and the others only their
//! first bytes ([`crate::stamped`]: a short read, with each datagram's length on the wire). It
//! sorts each datagram by its first bytes (RFC 7983; RTCP by its packet type, RFC 5761):
//!
//! - STUN, DTLS and RTCP go to the connection's transport ([`crate::transport`], or its peer
//!   connection where it has none): ICE checks, the DTLS handshake, sender reports and
//!   keyframe requests work as in a browser (they are small enough to be read whole in any
//!   slot);
//! - RTP read whole in a slot of the sample (one datagram in 64, from a random offset in each
//!   read), and RTP of a payload type the answer did not negotiate, go there too, to be
//!   authenticated, decrypted and measured;
//! - every other RTP packet is measured from its header (loss, jitter, bitrate, freezes, time
//!   to first media) and dropped without being decrypted (or even read past its header).
//!
//! A stream that fails authentication shows up twice: as sampled packets that never came out
//! decrypted ([`LightCounts`](crate::stats::LightCounts)), and as loss (the
//! sample is counted only once it is authenticated).
//!
//! **Latency is measured on the sample only.** The publisher's send time is in the payload,
//! and no header extension could carry it in clear through this project's nodes: the
//! forwarder writes a fresh header for every forwarded packet and copies no extension
//! (`Rewrite::header` in node/core/src/forwarder.rs; the only extension a subscriber gets is
//! the transport-wide sequence number the node writes itself). The sample is picked by the
//! datagram's place in a read, from an offset drawn for every read, and reads follow a timer
//! that knows nothing of the stream: every packet has the same chance, so the sample's latency
//! is that of the whole stream, measured on one packet in 64 (audio and video alike).
//!
//! **Receiver reports come from here.** The decryptor sees only the sample: a peer
//! connection's receiver-report interceptor would report 63 packets in 64 lost. A light connection has no
//! such interceptor; [`Light::reports`] writes RFC 3550 receiver reports once a second from
//! what the headers said, with the sender reports' timing for round-trip estimates.
//!
//! The decryptor sees irregular gaps between sampled sequence numbers (64 on average), so it
//! cannot track a stream's rollover counter itself: the transport decrypts with the one the
//! headers of every packet tell ([`crate::stats::Reception::rollovers`]).

use crate::stats::Reception;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use std::time::{Duration, Instant};

/// One datagram in this many is read whole and, if it is RTP, authenticated and decrypted:
/// enough to catch a broken stream within a few seconds (audio sends 50 packets a second: a
/// sampled audio packet every 1.3 s on average) and to measure latency on hundreds of packets
/// a second over a room's receivers (200 receivers of one 1.5 Mbps publisher: some 600 a
/// second). A sampled packet costs as much as a full receiver's (some 15,000 instructions
/// through the peer connection's pipeline), a header-only one a tenth of that, so the sample
/// is most of what a light receiver spends in user space: 1 in 16 -> 32 cut the instructions
/// per received packet by a fifth, 32 -> 64 (with a cheaper clock in [`crate::stamped`]) by
/// another fifth, 1,385 -> 1,124 at the margin (BENCHMARKS.md, "The light load tester").
pub const SAMPLE_EVERY: u16 = 64;

/// Between receiver reports, as browsers and webrtc-rs's interceptor send them.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of the SRTP authentication tag until the first sample tells: AES-GCM's, the profile
/// both webrtc-rs ends (this load tester and the node) prefer.
const DEFAULT_TAG: usize = 16;

/// At most this many report blocks fit one receiver report (a 5-bit count).
const MAX_BLOCKS: usize = 31;

/// The clear header of an SRTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
    /// Bytes of the fixed header, CSRCs and header extension: the payload starts here.
    pub len: usize,
}

/// The header of an RTP packet; `None` for anything else (STUN, DTLS, RTCP) or a packet
/// whose header does not fit the datagram.
pub fn rtp_header(d: &[u8]) -> Option<RtpHeader> {
    let (&b0, &b1) = (d.first()?, d.get(1)?);
    // RFC 7983: 128..=191 is RTP or RTCP; RFC 5761: RTCP's packet types are 192..=223.
    if !(128..=191).contains(&b0) || (192..=223).contains(&b1) || d.len() < 12 {
        return None;
    }
    let mut len = 12 + 4 * (b0 & 0x0f) as usize;
    if b0 & 0x10 != 0 {
        let words = d.get(len + 2..len + 4)?;
        len += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
    }
    if len > d.len() {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    Some(RtpHeader {
        ssrc: u32_at(8),
        seq: u16::from_be_bytes([d[2], d[3]]),
        timestamp: u32_at(4),
        payload_type: b1 & 0x7f,
        marker: b1 & 0x80 != 0,
        len,
    })
}

/// The payload types of the audio and video sections of a session description, and whether
/// each is video. A payload type listed under both kinds is left out: it is ambiguous, so its
/// packets are decrypted to be measured.
pub fn payload_kinds(sdp: &str) -> Vec<(u8, bool)> {
    let mut kinds: Vec<(u8, bool)> = Vec::new();
    let mut ambiguous = Vec::new();
    for line in sdp.lines() {
        let video = if line.starts_with("m=video ") {
            true
        } else if line.starts_with("m=audio ") {
            false
        } else {
            continue;
        };
        // m=<media> <port> <proto> <fmt> ...
        for pt in line
            .split_whitespace()
            .skip(3)
            .filter_map(|f| f.parse().ok())
        {
            match kinds.iter().find(|(p, _)| *p == pt) {
                Some((_, v)) if *v != video => ambiguous.push(pt),
                Some(_) => {}
                None => kinds.push((pt, video)),
            }
        }
    }
    kinds.retain(|(pt, _)| !ambiguous.contains(pt));
    kinds
}

/// What to do with a datagram on a light connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// RTP measured from its header alone and dropped: `bytes` of payload, as far as the
    /// header and the tag length tell.
    HeaderOnly {
        header: RtpHeader,
        video: bool,
        bytes: usize,
    },
    /// RTP for the peer connection to authenticate and decrypt (the sample, or a payload type
    /// not negotiated).
    Decrypt,
    /// Not RTP: STUN, DTLS or RTCP, for the peer connection.
    NotRtp,
    /// Read short, and neither RTP of a negotiated payload type nor whole: nothing can be
    /// done with it (counted).
    Unreadable,
}

/// A stream's receiver-report state: what the last report said, and the last sender report.
struct Reported {
    ssrc: u32,
    expected: u64,
    received: u64,
    /// The middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

/// See the module documentation.
pub struct Light {
    /// Negotiated payload types, and whether each is video.
    payload_kinds: Vec<(u8, bool)>,
    /// Bytes of the SRTP authentication tag.
    tag: usize,
    /// Until the tag length is known: the first sampled packet (SSRC, sequence number, bytes
    /// after its header), to compare with what the peer connection decrypts of it.
    tag_probe: Option<(u32, u16, usize)>,
    tag_learnt: bool,
    /// The SSRC our receiver reports are sent from.
    ssrc: u32,
    reported: Vec<Reported>,
    next_report: Option<Instant>,
}

impl Default for Light {
    fn default() -> Self {
        Self {
            payload_kinds: Vec::new(),
            tag: DEFAULT_TAG,
            tag_probe: None,
            tag_learnt: false,
            ssrc: rand::random(),
            reported: Vec::new(),
            next_report: None,
        }
    }
}

impl Light {
    /// Takes the payload types of a negotiated session description (ours when we answered,
    /// the far end's when it answered us).
    pub fn negotiated(&mut self, sdp: &str) {
        self.payload_kinds = payload_kinds(sdp);
    }

    /// Whether a payload type is video, if it was negotiated.
    pub fn video(&self, payload_type: u8) -> Option<bool> {
        self.payload_kinds
            .iter()
            .find(|(pt, _)| *pt == payload_type)
            .map(|(_, video)| *video)
    }

    /// Sorts a datagram of `len` bytes on the wire of which `d` was read; `sample`: whether it
    /// fell in a slot of the sample. See [`Verdict`].
    pub fn classify(&mut self, d: &[u8], len: usize, sample: bool) -> Verdict {
        let whole = d.len() == len;
        let Some(header) = rtp_header(d) else {
            return if whole {
                Verdict::NotRtp
            } else {
                Verdict::Unreadable
            };
        };
        let Some(video) = self.video(header.payload_type) else {
            return if whole {
                Verdict::Decrypt
            } else {
                Verdict::Unreadable
            };
        };
        let body = len.saturating_sub(header.len);
        if sample && whole {
            if !self.tag_learnt && self.tag_probe.is_none() {
                self.tag_probe = Some((header.ssrc, header.seq, body));
            }
            return Verdict::Decrypt;
        }
        Verdict::HeaderOnly {
            header,
            video,
            bytes: body.saturating_sub(self.tag),
        }
    }

    /// A packet the peer connection decrypted: learns the tag length from the first sample.
    pub fn on_decrypted(&mut self, ssrc: u32, seq: u16, payload: usize, padded: bool) {
        if let Some((s, q, body)) = self.tag_probe
            && (s, q) == (ssrc, seq)
        {
            self.tag_probe = None;
            // Padding hides inside the encrypted payload: such a packet cannot tell.
            if !padded && body >= payload {
                self.tag = body - payload;
                self.tag_learnt = true;
            }
        }
    }

    /// Notes the sender reports among RTCP from the far end.
    pub fn on_rtcp(&mut self, now: Instant, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        for sr in packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
        {
            let last_sr = Some(((sr.ntp_time >> 16) as u32, now));
            match self.reported.iter_mut().find(|r| r.ssrc == sr.ssrc) {
                Some(r) => r.last_sr = last_sr,
                None => self.reported.push(Reported {
                    ssrc: sr.ssrc,
                    expected: 0,
                    received: 0,
                    last_sr,
                }),
            }
        }
    }

    /// Reports start once the connection is up.
    pub fn on_connected(&mut self, now: Instant) {
        self.next_report.get_or_insert(now + REPORT_INTERVAL);
    }

    /// When the next receiver report is due.
    pub fn next_report(&self) -> Option<Instant> {
        self.next_report
    }

    /// The receiver reports due at `now` (none before they are): one block per stream heard
    /// since the last report, 31 blocks to a report; one empty report when nothing was heard,
    /// so the far end still hears from us.
    pub fn reports(&mut self, now: Instant, reception: &Reception) -> Vec<ReceiverReport> {
        if self.next_report.is_none_or(|t| now < t) {
            return Vec::new();
        }
        self.next_report = Some(now + REPORT_INTERVAL);
        let mut blocks = Vec::new();
        for stream in &reception.streams {
            let Some(now_counts) = stream.stats.since_start() else {
                continue;
            };
            let i = match self.reported.iter().position(|r| r.ssrc == stream.ssrc) {
                Some(i) => i,
                None => {
                    self.reported.push(Reported {
                        ssrc: stream.ssrc,
                        expected: 0,
                        received: 0,
                        last_sr: None,
                    });
                    self.reported.len() - 1
                }
            };
            let r = &mut self.reported[i];
            if now_counts.received == r.received {
                continue;
            }
            // RFC 3550 A.3: the fraction lost since the last report, the total since the start.
            let expected = now_counts.expected - r.expected;
            let lost = expected.saturating_sub(now_counts.received - r.received);
            let fraction_lost = (lost << 8)
                .checked_div(expected)
                .map_or(0, |f| f.min(255) as u8);
            let (last_sender_report, delay) = match r.last_sr {
                Some((lsr, at)) => (
                    lsr,
                    (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32,
                ),
                None => (0, 0),
            };
            blocks.push(ReceptionReport {
                ssrc: stream.ssrc,
                fraction_lost,
                total_lost: now_counts
                    .expected
                    .saturating_sub(now_counts.received)
                    .min(0x7f_ffff) as u32,
                last_sequence_number: now_counts.highest,
                jitter: now_counts.jitter,
                last_sender_report,
                delay,
            });
            (r.expected, r.received) = (now_counts.expected, now_counts.received);
        }
        if blocks.is_empty() {
            return vec![self.report(Vec::new())];
        }
        blocks
            .chunks(MAX_BLOCKS)
            .map(|c| self.report(c.to_vec()))
            .collect()
    }

    fn report(&self, reports: Vec<ReceptionReport>) -> ReceiverReport {
        ReceiverReport {
            ssrc: self.ssrc,
            reports,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Arrival;

    /// An SRTP-like datagram: header (with a one-word extension when `ext`), payload, tag.
    fn datagram(pt: u8, seq: u16, ext: bool, payload: usize, tag: usize) -> Vec<u8> {
        let mut d = vec![0x80 | if ext { 0x10 } else { 0 }, 0x80 | pt];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&90_000u32.to_be_bytes());
        d.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        if ext {
            d.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        }
        d.resize(d.len() + payload + tag, 0xa5);
        d
    }

    #[test]
    fn headers_are_read_and_everything_else_is_not_rtp() {
        let d = datagram(96, 7, true, 100, 16);
        let h = rtp_header(&d).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                ssrc: 0xdead_beef,
                seq: 7,
                timestamp: 90_000,
                payload_type: 96,
                marker: true,
                len: 20,
            }
        );
        // STUN, DTLS, RTCP (a receiver report: packet type 201), and a header cut short.
        for other in [
            &[0u8, 1, 0, 0][..],
            &[22, 254, 253, 0],
            &[0x81, 201, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0],
            &d[..14],
        ] {
            assert_eq!(rtp_header(other), None, "{other:?}");
        }
    }

    #[test]
    fn payload_types_come_from_the_media_sections() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        // 0 is under both kinds: ambiguous, so left out.
        assert_eq!(payload_kinds(sdp), [(111, false), (96, true)]);
    }

    /// `classify` of a datagram read whole.
    fn whole(l: &mut Light, d: &[u8], sample: bool) -> Verdict {
        l.classify(d, d.len(), sample)
    }

    #[test]
    fn the_sample_is_decrypted_and_teaches_the_tag_length() {
        let mut l = Light::default();
        l.negotiated("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        // Not negotiated: decrypted, in the sample or not.
        let other = datagram(97, 1, false, 100, 10);
        assert_eq!(whole(&mut l, &other, false), Verdict::Decrypt);
        assert_eq!(whole(&mut l, &[0, 1, 0, 0], false), Verdict::NotRtp);
        // Only what fell in the sample, whatever its sequence number.
        assert_eq!(
            whole(&mut l, &datagram(96, 7, false, 100, 10), true),
            Verdict::Decrypt
        );
        // Until the sample tells, the tag is taken for AES-GCM's 16 bytes; read short (the
        // header alone), a packet's bytes come from its length on the wire.
        let bytes = |l: &mut Light| {
            let d = datagram(96, 65, false, 100, 10);
            match l.classify(&d[..20], d.len(), false) {
                Verdict::HeaderOnly { bytes, video, .. } => {
                    assert!(video);
                    bytes
                }
                v => panic!("{v:?}"),
            }
        };
        assert_eq!(bytes(&mut l), 94);
        l.on_decrypted(0xdead_beef, 7, 100, false);
        assert_eq!(bytes(&mut l), 100, "HMAC-SHA1-80's 10 bytes, learnt");
    }

    #[test]
    fn what_is_read_short_is_measured_from_its_header_or_counted() {
        let mut l = Light::default();
        l.negotiated("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        let d = datagram(96, 3, true, 1000, 16);
        // A sample slot that got only part of it (never happens: sample slots read whole).
        assert!(matches!(
            l.classify(&d[..64], d.len(), true),
            Verdict::HeaderOnly { bytes: 1000, .. }
        ));
        // Not negotiated, or not RTP, and cut short: nothing to measure.
        let other = datagram(97, 3, false, 1000, 16);
        assert_eq!(
            l.classify(&other[..64], other.len(), false),
            Verdict::Unreadable
        );
        assert_eq!(l.classify(&[0, 1, 0, 0], 300, false), Verdict::Unreadable);
        // A header longer than what was read: not taken for one.
        assert_eq!(l.classify(&d[..14], d.len(), false), Verdict::Unreadable);
    }

    #[test]
    fn receiver_reports_tell_loss_jitter_and_sender_report_timing() {
        let mut l = Light::default();
        let mut r = Reception::default();
        let t = Instant::now();
        assert!(l.reports(t, &r).is_empty(), "nothing before connecting");
        l.on_connected(t);
        // 20 packets sent, 3 lost; a sender report arrives.
        for seq in (1000u16..1020).filter(|s| ![1003, 1004, 1010].contains(s)) {
            r.on_packet(Arrival {
                now: t,
                ssrc: 5,
                video: true,
                seq,
                rtp_time: 0,
                bytes: 100,
                marker: false,
                sent: None,
            });
        }
        let sr: Box<dyn rtc::rtcp::Packet> = Box::new(SenderReport {
            ssrc: 5,
            ntp_time: 0x0001_2345_6789_0000,
            ..Default::default()
        });
        l.on_rtcp(t, &[sr]);
        let at = t + REPORT_INTERVAL + Duration::from_millis(500);
        let reports = l.reports(at, &r);
        assert_eq!(reports.len(), 1);
        let b = &reports[0].reports[0];
        assert_eq!((b.ssrc, b.total_lost, b.last_sequence_number), (5, 3, 1019));
        assert_eq!(b.fraction_lost, (3 * 256 / 20) as u8);
        assert_eq!(b.last_sender_report, 0x2345_6789);
        assert!(
            (b.delay as i64 - 32768 * 3).abs() < 100,
            "1.5 s: {}",
            b.delay
        );
        // Not due again yet; then due, with nothing heard: an empty report.
        assert!(l.reports(at, &r).is_empty());
        let later = l.reports(at + REPORT_INTERVAL, &r);
        assert_eq!(later.len(), 1);
        assert!(later[0].reports.is_empty());
    }
}
