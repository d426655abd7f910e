//! ICE-lite connectivity checks (RFC 8445 §7.3, RFC 5389): a subscriber's browser sends binding
//! requests; the node answers those that prove they know the connection's password and learns
//! the address they came from. Only such an authenticated request binds an address to the
//! connection or keeps it alive: a third party that sees the (cleartext) username cannot.

use rtc::crypto::RTCCrypto;
use rtc::stun::attributes::{ATTR_USE_CANDIDATE, ATTR_USERNAME};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter};
use rtc::stun::xoraddr::XorMappedAddress;
use std::net::SocketAddr;

/// Why a STUN packet was not answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StunError {
    #[error("not a STUN message: {0}")]
    Malformed(String),
    #[error("not a binding request")]
    NotBindingRequest,
    #[error("the username is not this connection's")]
    WrongUsername,
    #[error("MESSAGE-INTEGRITY or FINGERPRINT does not verify")]
    Unauthenticated,
}

/// An authenticated binding request, and the answer to send back.
pub struct Answered {
    pub response: Vec<u8>,
    /// The request nominates this address (USE-CANDIDATE).
    pub nominated: bool,
}

/// Answers a binding request from `from` to a connection whose ICE credentials are
/// `ufrag`/`pwd`.
pub fn answer(
    data: &[u8],
    from: SocketAddr,
    ufrag: &str,
    pwd: &str,
    crypto: &dyn RTCCrypto,
) -> Result<Answered, StunError> {
    let m = verified(data, ufrag, pwd, crypto)?;
    let nominated = m.contains(ATTR_USE_CANDIDATE);
    let mut response = Message::new();
    let setters: [Box<dyn Setter + '_>; 5] = [
        Box::new(m.transaction_id),
        Box::new(BINDING_SUCCESS),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto,
        )),
        Box::new(FINGERPRINT),
    ];
    response
        .build(&setters)
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    Ok(Answered {
        response: response.raw,
        nominated,
    })
}

/// Checks that a binding request is for `ufrag` and proves it knows `pwd`, without answering
/// it (for connections whose checks webrtc-rs answers).
pub fn verify(
    data: &[u8],
    ufrag: &str,
    pwd: &str,
    crypto: &dyn RTCCrypto,
) -> Result<(), StunError> {
    verified(data, ufrag, pwd, crypto).map(|_| ())
}

fn verified(
    data: &[u8],
    ufrag: &str,
    pwd: &str,
    crypto: &dyn RTCCrypto,
) -> Result<Message, StunError> {
    let mut m = Message::new();
    m.raw = data.to_vec();
    m.decode()
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    if m.typ != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    // USERNAME is "ours:theirs" (RFC 8445 §7.2.2).
    let username = m.get(ATTR_USERNAME).map_err(|_| StunError::WrongUsername)?;
    let ours = username
        .split(|b| *b == b':')
        .next()
        .ok_or(StunError::WrongUsername)?;
    if ours != ufrag.as_bytes() {
        return Err(StunError::WrongUsername);
    }
    if FINGERPRINT.check(&m).is_err() {
        return Err(StunError::Unauthenticated);
    }
    MessageIntegrity::check(&mut m, pwd.as_bytes(), crypto)
        .map_err(|_| StunError::Unauthenticated)?;
    Ok(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rtc::stun::textattrs::TextAttribute;

    /// A binding request as a browser sends it (also used by the transport's tests).
    pub(crate) fn request(
        username: &str,
        pwd: &str,
        crypto: &dyn RTCCrypto,
        use_candidate: bool,
    ) -> Vec<u8> {
        let mut m = Message::new();
        let setters: [Box<dyn Setter + '_>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(rtc::stun::message::TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        ];
        m.build(&setters).unwrap();
        if use_candidate {
            m.add(ATTR_USE_CANDIDATE, &[]);
        }
        MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), crypto)
            .add_to(&mut m)
            .unwrap();
        FINGERPRINT.add_to(&mut m).unwrap();
        m.raw
    }

    #[test]
    fn only_a_request_that_knows_the_password_is_answered() {
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let from: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let good = request("local:remote", "p4ssword-of-22-characters", crypto, true);
        let a = answer(&good, from, "local", "p4ssword-of-22-characters", crypto).unwrap();
        assert!(a.nominated);
        let mut r = Message::new();
        r.raw = a.response.clone();
        r.decode().unwrap();
        assert_eq!(r.typ, BINDING_SUCCESS);
        let mut mapped = XorMappedAddress::default();
        rtc::stun::message::Getter::get_from(&mut mapped, &r).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);
        MessageIntegrity::check(&mut r, b"p4ssword-of-22-characters", crypto).unwrap();

        // A third party that saw the username but not the password.
        let forged = request("local:remote", "guessed-password-here!!", crypto, true);
        assert_eq!(
            answer(&forged, from, "local", "p4ssword-of-22-characters", crypto).err(),
            Some(StunError::Unauthenticated)
        );
        let other = request("someone:remote", "p4ssword-of-22-characters", crypto, false);
        assert_eq!(
            answer(&other, from, "local", "p4ssword-of-22-characters", crypto).err(),
            Some(StunError::WrongUsername)
        );
        assert!(matches!(
            answer(&[0, 1, 2], from, "local", "x", crypto),
            Err(StunError::Malformed(_))
        ));
    }
}
