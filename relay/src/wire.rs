//! Framing on the link: length-delimited protobuf frames on the control stream, and
//! `varint flow id + RTP` datagrams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

/// `varint flow id` followed by the RTP packet.
pub fn encode_datagram(flow: u32, rtp: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + rtp.len());
    prost::encoding::encode_varint(flow as u64, &mut b);
    b.put_slice(rtp);
    b.freeze()
}

/// Splits a datagram into flow id and RTP bytes.
pub fn decode_datagram(mut d: Bytes) -> Result<(u32, Bytes), WireError> {
    let flow = prost::encoding::decode_varint(&mut d).map_err(|_| WireError::BadDatagram)?;
    let flow = u32::try_from(flow).map_err(|_| WireError::BadDatagram)?;
    if d.remaining() < 12 {
        return Err(WireError::BadDatagram);
    }
    Ok((flow, d))
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
        assert_eq!(
            decode_datagram(Bytes::from_static(&[0x80])),
            Err(WireError::BadDatagram)
        );
        assert_eq!(
            decode_datagram(Bytes::from_static(&[1, 2, 3])),
            Err(WireError::BadDatagram)
        );
        let d = encode_datagram(300, &[0x80; 20]);
        assert_eq!(decode_datagram(d).unwrap().0, 300);
    }
}
