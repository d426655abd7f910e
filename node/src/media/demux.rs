//! Finding the peer connection a datagram belongs to, when all peers share one socket.
//!
//! A peer's first datagrams are ICE connectivity checks (STUN binding requests) whose USERNAME
//! attribute is `<our ufrag>:<their ufrag>`; we chose our ufrag when we created the peer
//! connection, so it names the peer. Once a check arrived from an address, every later datagram
//! from that address (DTLS, SRTP, SRTCP, more STUN) goes to the same peer.

/// What kind of packet a datagram carries (RFC 7983 demultiplexing by the first byte).
#[derive(Debug, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    Rtp,
    Unknown,
}

pub fn classify(datagram: &[u8]) -> PacketClass {
    match datagram.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => PacketClass::Rtp,
        _ => PacketClass::Unknown,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// Our ufrag from the USERNAME of a STUN message, or `None` if the datagram is not a well-formed
/// STUN message with a USERNAME.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < HEADER_LEN || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[i], body[i + 1]]);
        let len = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + len)?;
        if typ == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0024u16.to_be_bytes()); // PRIORITY first
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[0, 0, 0, 1]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn extracts_our_ufrag() {
        assert_eq!(
            stun_local_ufrag(&binding_request(b"srvfrag:clnt")),
            Some("srvfrag")
        );
        assert_eq!(classify(&binding_request(b"a:b")), PacketClass::Stun);
    }

    #[test]
    fn garbage_is_not_stun() {
        assert_eq!(stun_local_ufrag(&[0u8; 10]), None);
        assert_eq!(stun_local_ufrag(&[0u8; 40]), None, "no magic cookie");
        let mut truncated = binding_request(b"srvfrag:clnt");
        truncated.truncate(30);
        assert_eq!(stun_local_ufrag(&truncated), None);
        let mut bad_len = binding_request(b"srvfrag:clnt");
        bad_len[22 + 8] = 0xff; // length of USERNAME runs past the end
        assert_eq!(stun_local_ufrag(&bad_len), None);
        assert_eq!(classify(&[255, 1, 2]), PacketClass::Unknown);
        assert_eq!(classify(&[]), PacketClass::Unknown);
    }
}
