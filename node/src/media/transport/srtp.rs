//! SRTP protection of the media the node sends to a subscriber, in place.
//!
//! webrtc-rs protects a packet by copying it into a fresh buffer; a large room sends every
//! packet to thousands of subscribers, so here the forwarded packet is written once into the
//! worker's send buffer and encrypted and authenticated where it lies. Two profiles, the ones
//! browsers negotiate: `AEAD_AES_128_GCM` (RFC 7714) and `AES128_CM_HMAC_SHA1_80` (RFC 3711).
//! Session keys come from the DTLS master key and salt by the AES-CM key derivation of RFC 3711
//! §4.3 (key derivation rate 0, as RFC 5764 requires). RTCP, a few packets a second, goes
//! through webrtc-rs's `srtp::Context` instead.
//!
//! The load tester's light receivers use the same keys the other way ([`RtpProtector::unprotect`])
//! for the one packet in 64 they decrypt: they read every packet's header, so they know each
//! stream's rollover counter, which a decryptor that sees only the sample cannot guess.

use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, HmacAlgorithm, Mac, RTCCrypto, StreamCipher,
    StreamCipherAlgorithm,
};

/// The SRTP protection profiles the node accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    AeadAes128Gcm,
    Aes128CmHmacSha1_80,
}

impl Profile {
    pub fn key_len(self) -> usize {
        16
    }

    pub fn salt_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 12,
            Profile::Aes128CmHmacSha1_80 => 14,
        }
    }

    /// Bytes a protected RTP packet is longer than the clear one.
    pub fn overhead(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 16,
            Profile::Aes128CmHmacSha1_80 => 10,
        }
    }
}

/// Why a packet could not be protected.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("crypto: {0}")]
    Crypto(String),
    #[error("the packet is shorter than its header")]
    Short,
    #[error("the packet does not authenticate")]
    Unauthenticated,
}

fn crypto_err(e: impl std::fmt::Display) -> SrtpError {
    SrtpError::Crypto(e.to_string())
}

const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;
/// HMAC-SHA1 keys of the SHA1 profiles are 160 bits.
const AUTH_KEY_LEN: usize = 20;

/// A session key derived from the master key and salt (RFC 3711 §4.3.1, AES-CM PRF, key
/// derivation rate 0): AES of the master salt, with the label XORed in at byte 7 and a block
/// counter in the last two bytes, under the master key.
fn derive(
    crypto: &dyn RTCCrypto,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    len: usize,
) -> Result<Vec<u8>, SrtpError> {
    let mut out = Vec::with_capacity(len + 16);
    let mut counter = 0u16;
    while out.len() < len {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&counter.to_be_bytes());
        crypto
            .block_encrypt(BlockCipherAlgorithm::Aes128, master_key, &mut block)
            .map_err(crypto_err)?;
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    Ok(out)
}

enum Cipher {
    Gcm {
        aead: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    CmSha1 {
        stream: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
        salt: [u8; 14],
    },
}

/// The rollover counter of one SSRC the node sends (RFC 3711 §3.3.1).
#[derive(Clone, Copy)]
struct Roc {
    roc: u32,
    highest: u16,
}

impl Roc {
    /// The rollover counter of `seq`, and the state after sending it.
    fn index(self, seq: u16) -> (u32, Roc) {
        let delta = seq.wrapping_sub(self.highest) as i16;
        if delta >= 0 {
            // Ahead of the highest sent (or it): wrapped if the number went down.
            let roc = if seq < self.highest {
                self.roc.wrapping_add(1)
            } else {
                self.roc
            };
            (roc, Roc { roc, highest: seq })
        } else {
            // A resend of an older packet: from before the wrap if the number is higher.
            let roc = if seq > self.highest {
                self.roc.wrapping_sub(1)
            } else {
                self.roc
            };
            (roc, self)
        }
    }
}

/// Protects the RTP one subscriber receives. See the module documentation.
pub struct RtpProtector {
    profile: Profile,
    cipher: Cipher,
    rocs: sfu_core::IdMap<u32, Roc>,
}

impl RtpProtector {
    /// Keys for one direction of a DTLS-SRTP session: the local (sending) side's to protect,
    /// the remote side's to unprotect.
    pub fn new(
        crypto: &dyn RTCCrypto,
        profile: Profile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        let key = derive(
            crypto,
            master_key,
            master_salt,
            LABEL_RTP_ENCRYPTION,
            profile.key_len(),
        )?;
        let salt = derive(
            crypto,
            master_key,
            master_salt,
            LABEL_RTP_SALT,
            profile.salt_len(),
        )?;
        let cipher = match profile {
            Profile::AeadAes128Gcm => {
                let mut s = [0u8; 12];
                s.copy_from_slice(&salt);
                Cipher::Gcm {
                    aead: crypto
                        .new_aead(AeadAlgorithm::Aes128Gcm, &key)
                        .map_err(crypto_err)?,
                    salt: s,
                }
            }
            Profile::Aes128CmHmacSha1_80 => {
                let auth = derive(
                    crypto,
                    master_key,
                    master_salt,
                    LABEL_RTP_AUTH,
                    AUTH_KEY_LEN,
                )?;
                let mut s = [0u8; 14];
                s.copy_from_slice(&salt);
                Cipher::CmSha1 {
                    stream: crypto
                        .new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &key)
                        .map_err(crypto_err)?,
                    mac: crypto
                        .new_hmac(HmacAlgorithm::Sha1, &auth)
                        .map_err(crypto_err)?,
                    salt: s,
                }
            }
        };
        Ok(Self {
            profile,
            cipher,
            rocs: sfu_core::IdMap::default(),
        })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Protects the clear RTP packet in `packet[..len]` (its header `header_len` bytes long)
    /// where it lies, and writes the tag after it: `packet` must have
    /// [`Profile::overhead`] more bytes than `len`. Returns the protected length.
    pub fn protect(
        &mut self,
        packet: &mut [u8],
        len: usize,
        header_len: usize,
    ) -> Result<usize, SrtpError> {
        if len < 12 || header_len > len || packet.len() < len + self.profile.overhead() {
            return Err(SrtpError::Short);
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let state = *self.rocs.entry(ssrc).or_insert(Roc {
            roc: 0,
            highest: seq,
        });
        let (roc, next) = state.index(seq);
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (clear, rest) = packet.split_at_mut(len);
                let (aad, payload) = clear.split_at_mut(header_len);
                aead.seal_in_place(&iv, aad, payload, &mut rest[..16])
                    .map_err(crypto_err)?;
            }
            Cipher::CmSha1 { stream, mac, salt } => {
                let iv = cm_iv(salt, ssrc, roc, seq);
                stream
                    .apply_keystream(&iv, &mut packet[header_len..len])
                    .map_err(crypto_err)?;
                // The tag: HMAC-SHA1 over the protected packet and the ROC, 80 bits of it.
                let mut tag = [0u8; 20];
                mac.sign(&[&packet[..len], &roc.to_be_bytes()], &mut tag)
                    .map_err(crypto_err)?;
                packet[len..len + 10].copy_from_slice(&tag[..10]);
            }
        }
        self.rocs.insert(ssrc, next);
        Ok(len + self.profile.overhead())
    }

    /// Authenticates and decrypts the SRTP packet `packet` (its header `header_len` bytes
    /// long) where it lies, as sent with rollover counter `roc`: the clear packet's length.
    pub fn unprotect(
        &mut self,
        packet: &mut [u8],
        header_len: usize,
        roc: u32,
    ) -> Result<usize, SrtpError> {
        let overhead = self.profile.overhead();
        if header_len < 12 || packet.len() < header_len + overhead {
            return Err(SrtpError::Short);
        }
        let len = packet.len() - overhead;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (sealed, tag) = packet.split_at_mut(len);
                let (aad, payload) = sealed.split_at_mut(header_len);
                aead.open_in_place(&iv, aad, payload, tag)
                    .map_err(|_| SrtpError::Unauthenticated)?;
            }
            Cipher::CmSha1 { stream, mac, salt } => {
                let mut tag = [0u8; 20];
                mac.sign(&[&packet[..len], &roc.to_be_bytes()], &mut tag)
                    .map_err(crypto_err)?;
                let differs = tag[..10]
                    .iter()
                    .zip(&packet[len..])
                    .fold(0u8, |d, (a, b)| d | (a ^ b));
                if differs != 0 {
                    return Err(SrtpError::Unauthenticated);
                }
                let iv = cm_iv(salt, ssrc, roc, seq);
                stream
                    .apply_keystream(&iv, &mut packet[header_len..len])
                    .map_err(crypto_err)?;
            }
        }
        Ok(len)
    }
}

/// RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR the session salt.
fn gcm_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (v, s) in iv.iter_mut().zip(salt.iter()) {
        *v ^= s;
    }
    iv
}

/// RFC 3711 §4.1.1: the session salt, XOR the SSRC at bytes 4..8 and the 48-bit packet index
/// (ROC || SEQ) at bytes 8..14.
fn cm_iv(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (v, b) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *v ^= b;
    }
    for (v, b) in iv[8..12].iter_mut().zip(roc.to_be_bytes()) {
        *v ^= b;
    }
    for (v, b) in iv[12..14].iter_mut().zip(seq.to_be_bytes()) {
        *v ^= b;
    }
    iv
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::Header;
    use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};

    fn packet(seq: u16, ssrc: u32, payload: &[u8], extension: bool) -> Vec<u8> {
        let mut h = Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: 90_000,
            ssrc,
            ..Default::default()
        };
        if extension {
            h.set_extension(3, bytes::Bytes::from_static(&[1, 2]))
                .unwrap();
        }
        let mut out = h.marshal().unwrap().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Our in-place protection against webrtc-rs's SRTP context, for both profiles, across a
    /// sequence number wrap and with a resend of a packet from before the wrap.
    #[test]
    fn protects_as_webrtc_rs_does() {
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        for (profile, theirs) in [
            (
                Profile::AeadAes128Gcm,
                rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
            ),
            (
                Profile::Aes128CmHmacSha1_80,
                rtc::srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80,
            ),
        ] {
            let key: Vec<u8> = (0..16).collect();
            let salt: Vec<u8> = (100..100 + profile.salt_len() as u8).collect();
            let mut ours = RtpProtector::new(crypto, profile, &key, &salt).unwrap();
            let mut oracle =
                rtc::srtp::context::Context::new(&key, &salt, theirs, None, None, crypto).unwrap();
            for (i, seq) in [65_533u16, 65_534, 65_535, 0, 1, 65_535, 2]
                .into_iter()
                .enumerate()
            {
                let clear = packet(seq, 0x1234_5678, &[i as u8; 100], i % 2 == 0);
                let header_len = Header::unmarshal(&mut &clear[..]).unwrap().marshal_size();
                let expected = oracle.encrypt_rtp(&clear).unwrap();
                let mut buf = clear.clone();
                buf.resize(clear.len() + profile.overhead(), 0);
                let n = ours.protect(&mut buf, clear.len(), header_len).unwrap();
                assert_eq!(&buf[..n], &expected[..], "{profile:?} seq {seq}");
                // And back, with the rollover counter the sender used (1 from the wrap on,
                // 0 for the resend from before it); a wrong one does not authenticate.
                let roc = u32::from(i >= 3 && i != 5);
                let mut theirs = RtpProtector::new(crypto, profile, &key, &salt).unwrap();
                let mut wrong = buf[..n].to_vec();
                assert!(matches!(
                    theirs.unprotect(&mut wrong, header_len, roc ^ 1),
                    Err(SrtpError::Unauthenticated)
                ));
                let m = theirs.unprotect(&mut buf[..n], header_len, roc).unwrap();
                assert_eq!(&buf[..m], &clear[..], "{profile:?} seq {seq} unprotected");
            }
        }
    }

    #[test]
    fn a_buffer_without_room_for_the_tag_is_an_error_not_a_panic() {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut p = RtpProtector::new(
            provider.crypto(),
            Profile::AeadAes128Gcm,
            &[0; 16],
            &[0; 12],
        )
        .unwrap();
        let mut buf = packet(1, 1, &[0; 10], false);
        let len = buf.len();
        assert!(p.protect(&mut buf, len, 12).is_err());
        assert!(p.protect(&mut buf[..5], 5, 12).is_err());
    }
}
