//! Framing on the link: length-delimited protobuf frames on the control stream, and media
//! datagrams that each carry one or more relayed packets as `varint flow id, varint length,
//! RTP` records.
//!
//! Packets are batched because a relayed packet's cost on the sending node was almost all per
//! datagram (QUIC packet protection, the connection's lock and its driver's wake-up, a system
//! call): a worker packs what it relays to one link in one turn of its loop into as few
//! datagrams as the path's datagram size allows ([`DatagramWriter`]). On a path with a large
//! MTU (loopback, jumbo frames) a datagram carries several video packets; on a 1,500-byte path
//! audio packets still share one. A lost datagram loses every packet in it; the receiver's
//! NACKs name each, and the sender resends them (batched too).

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use sfu_proto::relay::Frame;

/// Largest control frame accepted; a peer sending more is broken or hostile.
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest RTP packet accepted on a unidirectional stream.
pub const MAX_STREAM_PACKET: usize = 64 * 1024;

/// Errors decoding link input. The link is closed on a control-stream error; a bad datagram is
/// dropped and counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A frame length over [`MAX_FRAME`].
    #[error("control frame of {0} bytes is too large")]
    FrameTooLarge(usize),
    /// Bytes that are not a `Frame`.
    #[error("malformed control frame")]
    Malformed,
    /// A datagram without a complete flow id or RTP header.
    #[error("malformed datagram")]
    BadDatagram,
}

/// Appends a length-delimited frame.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    // Writing into a growable buffer cannot fail.
    let _ = frame.encode_length_delimited(out);
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let mut peek = &buf[..];
    let len = match prost::encoding::decode_varint(&mut peek) {
        Ok(l) => l as usize,
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(_) => return Err(WireError::Malformed),
    };
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge(len));
    }
    let header = buf.len() - peek.len();
    if peek.len() < len {
        return Ok(None);
    }
    buf.advance(header);
    let body = buf.split_to(len);
    Frame::decode(body.freeze())
        .map(Some)
        .map_err(|_| WireError::Malformed)
}

/// Bytes a record of `len` bytes of RTP for `flow` takes in a datagram.
pub fn record_len(flow: u32, len: usize) -> usize {
    prost::encoding::encoded_len_varint(flow as u64)
        + prost::encoding::encoded_len_varint(len as u64)
        + len
}

/// A datagram of one packet.
pub fn encode_datagram(flow: u32, rtp: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(record_len(flow, rtp.len()));
    put_record(&mut b, flow, rtp.len(), |out| {
        out.extend_from_slice(rtp);
        true
    });
    b.freeze()
}

/// Appends a record whose `len` bytes of RTP `write` appends; false (and nothing appended) if
/// it failed or appended another length. The RTP is appended rather than written into zeroed
/// room: zeroing a video packet's worth of bytes cost more than its record's header.
fn put_record(
    b: &mut BytesMut,
    flow: u32,
    len: usize,
    write: impl FnOnce(&mut BytesMut) -> bool,
) -> bool {
    let start = b.len();
    let mut head = [0u8; 20];
    let n = varint(flow as u64, &mut head);
    let n = n + varint(len as u64, &mut head[n..]);
    b.extend_from_slice(&head[..n]);
    let at = b.len();
    if write(b) && b.len() == at + len {
        true
    } else {
        b.truncate(start);
        false
    }
}

/// Writes `v` as a protobuf varint at the start of `out` (10 bytes hold any); returns its
/// length. prost's `encode_varint` into a `BytesMut` checks capacity for every byte.
fn varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

/// Room a datagram's user leaves around its records: `head` bytes before them (zeroed, for a
/// header written later) and capacity for `tail` bytes after them (e.g. an AEAD tag), so that
/// the datagram can be sealed in place rather than copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    pub head: usize,
    pub tail: usize,
}

impl Framing {
    pub const NONE: Framing = Framing { head: 0, tail: 0 };
}

/// What a [`DatagramWriter`] allocates at once when its buffer runs out.
const WRITER_CHUNK: usize = 64 * 1024;

/// Packs records into datagrams of at most a given size. Its buffer is a chunk split off into
/// each datagram: an allocation per chunk of datagrams, reclaimed once they are all dropped.
#[derive(Default)]
pub struct DatagramWriter {
    buf: BytesMut,
    /// The framing of the datagram being written.
    framing: Framing,
}

impl DatagramWriter {
    /// Adds `len` bytes of RTP for `flow`, which `write` appends to the buffer it is given.
    /// If they would not fit beside what is already there in `max` bytes, what was there is
    /// returned as a finished datagram first. A record larger than `max` alone makes a
    /// datagram of its own (the link sends it on a stream). A `write` that fails or appends
    /// another length than `len` adds nothing.
    pub fn push(
        &mut self,
        max: usize,
        flow: u32,
        len: usize,
        write: impl FnOnce(&mut BytesMut) -> bool,
    ) -> Option<Bytes> {
        self.push_framed(max, Framing::NONE, flow, len, write)
            .map(|(d, _)| d.freeze())
    }

    /// As [`push`](Self::push), a datagram that starts here getting `framing` around its
    /// records (`max` counts the records only); a finished datagram comes with its framing.
    pub fn push_framed(
        &mut self,
        max: usize,
        framing: Framing,
        flow: u32,
        len: usize,
        write: impl FnOnce(&mut BytesMut) -> bool,
    ) -> Option<(BytesMut, Framing)> {
        let need = record_len(flow, len);
        let body = self.buf.len().saturating_sub(self.framing.head);
        let full = (body > 0 && body + need > max)
            .then(|| self.finish_framed())
            .flatten();
        if self.buf.is_empty() {
            self.framing = framing;
        }
        let room = need + self.framing.head + self.framing.tail;
        if self.buf.capacity() - self.buf.len() < room {
            // A chunk for many datagrams: those split off earlier may still be queued for the
            // socket (sealed in place), so the buffer cannot always be reclaimed; a chunk
            // makes that an allocation per chunk rather than per datagram.
            self.buf.reserve(room.max(WRITER_CHUNK));
        }
        if self.buf.is_empty() {
            self.buf.resize(self.framing.head, 0);
        }
        put_record(&mut self.buf, flow, len, write);
        full
    }

    /// What is pending, as one datagram.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.finish_framed().map(|(d, _)| d.freeze())
    }

    /// What is pending, as one datagram with its framing (its head included, capacity for its
    /// tail).
    pub fn finish_framed(&mut self) -> Option<(BytesMut, Framing)> {
        let framing = self.framing;
        if self.buf.len() <= framing.head {
            self.buf.clear();
            return None;
        }
        // Split with the tail's bytes, then give them back as spare capacity of the datagram
        // alone (a split-off buffer's capacity ends where it was split).
        let len = self.buf.len();
        self.buf.resize(len + framing.tail, 0);
        let mut datagram = self.buf.split();
        datagram.truncate(len);
        Some((datagram, framing))
    }
}

/// The records of a datagram, each `(flow, RTP)` sharing the datagram's bytes. A malformed
/// record ends the iteration with an error (the records before it stand).
pub fn records(d: Bytes) -> Records {
    Records { rest: d }
}

/// See [`records`].
pub struct Records {
    rest: Bytes,
}

impl Iterator for Records {
    type Item = Result<(u32, Bytes), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.record();
        if r.is_err() {
            self.rest.clear();
        }
        Some(r)
    }
}

impl Records {
    fn record(&mut self) -> Result<(u32, Bytes), WireError> {
        let d = &mut self.rest;
        let flow = prost::encoding::decode_varint(d).map_err(|_| WireError::BadDatagram)?;
        let flow = u32::try_from(flow).map_err(|_| WireError::BadDatagram)?;
        let len = prost::encoding::decode_varint(d).map_err(|_| WireError::BadDatagram)?;
        let len = usize::try_from(len).map_err(|_| WireError::BadDatagram)?;
        if len < 12 || len > d.remaining() {
            return Err(WireError::BadDatagram);
        }
        Ok((flow, d.split_to(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_proto::relay::{Hello, frame::Body};

    #[test]
    fn frames_round_trip_and_partial_input_waits() {
        let f = Frame {
            body: Some(Body::Hello(Hello {
                node_id: "n1".into(),
                protocol_version: 1,
                ..Default::default()
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&f, &mut buf);
        encode_frame(&f, &mut buf);
        let mut partial = BytesMut::from(&buf[..3]);
        assert_eq!(decode_frame(&mut partial), Ok(None));
        assert_eq!(decode_frame(&mut buf), Ok(Some(f.clone())));
        assert_eq!(decode_frame(&mut buf), Ok(Some(f)));
        assert_eq!(decode_frame(&mut buf), Ok(None));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut huge = BytesMut::new();
        prost::encoding::encode_varint(10_000_000, &mut huge);
        assert_eq!(
            decode_frame(&mut huge),
            Err(WireError::FrameTooLarge(10_000_000))
        );
        let mut junk = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode_frame(&mut junk), Err(WireError::Malformed));
        let mut bad_varint = BytesMut::from(&[0xffu8; 12][..]);
        assert_eq!(decode_frame(&mut bad_varint), Err(WireError::Malformed));
        let bad = |d: &'static [u8]| records(Bytes::from_static(d)).collect::<Vec<_>>();
        assert_eq!(bad(&[0x80]), [Err(WireError::BadDatagram)]);
        assert_eq!(bad(&[1, 2, 3]), [Err(WireError::BadDatagram)]);
        // A length past the end of the datagram.
        assert_eq!(bad(&[1, 40, 0x80, 0, 0]), [Err(WireError::BadDatagram)]);
        let d = encode_datagram(300, &[0x80; 20]);
        assert_eq!(records(d).next().unwrap().unwrap().0, 300);
    }

    #[test]
    fn packets_share_datagrams_up_to_the_size_given() {
        let mut w = DatagramWriter::default();
        let rtp = |i: u8| vec![0x80 | (i & 0x3f); 500];
        let mut datagrams = Vec::new();
        for i in 0..7u8 {
            datagrams.extend(w.push(1200, u32::from(i), 500, |out| {
                out.extend_from_slice(&rtp(i));
                true
            }));
        }
        // A failed write adds nothing; a record larger than the limit goes alone.
        assert!(w.push(1200, 8, 100, |_| false).is_none());
        assert!(
            w.push(1200, 8, 100, |out| {
                out.extend_from_slice(&[0x80; 99]);
                true
            })
            .is_none(),
            "nor does one of another length than it said"
        );
        datagrams.extend(w.push(1200, 7, 3000, |out| {
            out.extend_from_slice(&[0x80; 3000]);
            true
        }));
        datagrams.extend(w.finish());
        assert!(w.finish().is_none(), "nothing left behind");
        let sizes: Vec<usize> = datagrams.iter().map(|d| d.len()).collect();
        assert_eq!(sizes, [2 * 503, 2 * 503, 2 * 503, 503, 3003]);
        let got: Vec<(u32, Bytes)> = datagrams
            .into_iter()
            .flat_map(records)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 8);
        for (i, (flow, r)) in got.iter().take(7).enumerate() {
            assert_eq!((*flow, &r[..]), (i as u32, &rtp(i as u8)[..]));
        }
        assert_eq!((got[7].0, got[7].1.len()), (7, 3000));
    }

    #[test]
    fn framed_datagrams_leave_room_for_a_header_and_a_tag() {
        let mut w = DatagramWriter::default();
        let framing = Framing { head: 17, tail: 16 };
        let mut datagrams = Vec::new();
        for i in 0..3u32 {
            datagrams.extend(w.push_framed(1200, framing, i, 500, |out| {
                out.extend_from_slice(&[0x80; 500]);
                true
            }));
        }
        // A failed first write leaves no datagram of its head alone.
        datagrams.extend(w.finish_framed());
        assert!(w.push_framed(1200, framing, 9, 10, |_| false).is_none());
        assert!(
            w.finish_framed().is_none(),
            "a head alone is not a datagram"
        );
        assert_eq!(datagrams.len(), 2);
        for (d, f) in &datagrams {
            assert_eq!(*f, framing);
            assert!(d[..17].iter().all(|b| *b == 0));
            assert!(d.capacity() - d.len() >= 16, "room for the tag");
        }
        let records: Vec<_> = datagrams
            .into_iter()
            .flat_map(|(d, f)| records(d.freeze().slice(f.head..)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 3);
        // Unframed datagrams after framed ones carry no head.
        let d = w.push(1200, 1, 10, |o| {
            o.extend_from_slice(&[0x80; 10]);
            true
        });
        assert!(d.is_none());
        assert_eq!(w.finish().unwrap().len(), record_len(1, 10));
    }
}
