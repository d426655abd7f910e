//! Relayed media straight between media workers' UDP sockets: the link's cheap data path.
//!
//! Relayed media in QUIC datagrams cost the sending node about four local deliveries per packet
//! (BENCHMARKS.md): quinn builds, protects and acknowledges each QUIC packet on its connection
//! driver, another task woken per datagram. The link's control stream and its trust stay in
//! QUIC; its media datagrams (the same [`crate::wire`] records) can go instead from the sending
//! worker's socket to a receiving worker's socket, in that worker's `sendmmsg` batches, each
//! sealed with AES-128-GCM under a key both ends export from the link's TLS session (RFC 5705
//! exporters: only the two authenticated ends of that session know it).
//!
//! A direct datagram is `MAGIC, channel (u32), worker (u32), counter (u64), ciphertext, tag`:
//! the channel names the link at the receiver (it chose it and said so in its `Hello`), the
//! worker and counter are the nonce (each sending worker counts on its own, so nonces never
//! repeat under one key) and, with the magic byte and channel, the authenticated data. The
//! receiver drops datagrams that fail to open and those it has seen (a sliding window per
//! sending worker), so a copy replayed by someone on the path is not forwarded twice.
//!
//! The path is used only once proven: a sending worker sends small probes (sealed, empty)
//! while its media still goes in QUIC datagrams, and switches when the receiver confirms one
//! over the control stream (`DirectConfirmed`). A firewall or a worker socket bound to another
//! address than the relay endpoint's thus costs nothing but the probes.
//!
//! This module is sans-IO: sealing and opening buffers; the link (`quic`) exchanges keys and
//! ports, the node's workers own the sockets.

use bytes::BytesMut;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// First byte of a direct datagram: outside every range RFC 7983 gives the protocols a WebRTC
/// socket carries (STUN, DTLS, TURN, RTP/RTCP), so a worker tells it apart at once.
pub const MAGIC: u8 = 0xEC;
/// Bytes before the ciphertext.
pub const HEADER: usize = 1 + 4 + 12;
/// AES-GCM's tag.
pub const TAG: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD: usize = HEADER + TAG;
/// Length of the key each direction exports.
pub const KEY_LEN: usize = 16;
/// The exporter label (RFC 5705: labels of private use begin with "EXPORTER").
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sfu-relay-direct-media";
/// Sending workers a receiver keeps a replay window for; a nonce naming a higher worker is
/// refused (nodes have one worker per core).
const MAX_WORKERS: usize = 1024;
/// Counters this far behind the highest seen are refused as too old.
const WINDOW: u64 = 256;

/// Why a direct datagram was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectError {
    #[error("not a direct datagram")]
    NotDirect,
    #[error("direct datagram shorter than its header and tag")]
    Truncated,
    #[error("direct datagram failed authentication")]
    Unauthentic,
    #[error("direct datagram replayed or too old")]
    Replayed,
    #[error("direct datagram from worker {0}: too high")]
    BadWorker(u32),
}

/// The channel a direct datagram names, if it is one.
pub fn channel_of(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < OVERHEAD || datagram[0] != MAGIC {
        return None;
    }
    Some(u32::from_be_bytes([
        datagram[1],
        datagram[2],
        datagram[3],
        datagram[4],
    ]))
}

/// The exporter context of the key for what `sender` sends: each direction has its own key.
pub fn exporter_context(sender: &str) -> Vec<u8> {
    let mut c = b"from ".to_vec();
    c.extend_from_slice(sender.as_bytes());
    c
}

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-128 takes any 16 bytes; ring refuses only a wrong length, which the type rules out.
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, bytes).expect("a 16-byte AES-128 key"))
}

/// A link's direct path as both ends agreed on it in their `Hello`s, shared by the node's
/// workers: where to send, the keys, and which of our workers the peer has confirmed.
pub struct DirectPath {
    /// The peer's workers' sockets; our worker `w` sends to `peer_addrs[w % len]`.
    pub peer_addrs: Vec<SocketAddr>,
    /// The peer's name for the link, in the datagrams we send.
    pub peer_channel: u32,
    pub send_key: [u8; KEY_LEN],
    /// Our name for the link, in the datagrams the peer sends.
    pub channel: u32,
    pub recv_key: [u8; KEY_LEN],
    /// Bit `w`: the peer opened a datagram of our worker `w`. Workers from 64 on keep to QUIC.
    confirmed: AtomicU64,
}

impl DirectPath {
    pub fn new(
        peer_addrs: Vec<SocketAddr>,
        peer_channel: u32,
        send_key: [u8; KEY_LEN],
        channel: u32,
        recv_key: [u8; KEY_LEN],
    ) -> Self {
        Self {
            peer_addrs,
            peer_channel,
            send_key,
            channel,
            recv_key,
            confirmed: AtomicU64::new(0),
        }
    }

    /// Where our worker `worker` sends.
    pub fn peer_addr(&self, worker: u32) -> Option<SocketAddr> {
        if self.peer_addrs.is_empty() {
            return None;
        }
        Some(self.peer_addrs[worker as usize % self.peer_addrs.len()])
    }

    /// The peer confirmed it opens what our worker `worker` sends.
    pub fn confirm(&self, worker: u32) {
        if worker < 64 {
            self.confirmed.fetch_or(1 << worker, Ordering::Relaxed);
        }
    }

    pub fn is_confirmed(&self, worker: u32) -> bool {
        worker < 64 && self.confirmed.load(Ordering::Relaxed) & (1 << worker) != 0
    }
}

/// One sending worker's end of a link's direct path.
pub struct Sealer {
    key: LessSafeKey,
    channel: u32,
    worker: u32,
    counter: u64,
}

impl Sealer {
    /// `channel` is the receiver's name for the link; `worker` this worker's index.
    pub fn new(key_bytes: &[u8; KEY_LEN], channel: u32, worker: u32) -> Self {
        Self {
            key: key(key_bytes),
            channel,
            worker,
            counter: 0,
        }
    }

    /// The framing a datagram sealed in place needs (see [`Sealer::seal_in_place`]).
    pub const FRAMING: crate::wire::Framing = crate::wire::Framing {
        head: HEADER,
        tail: TAG,
    };

    /// Seals a datagram whose first [`HEADER`] bytes were left for the header (their content
    /// is overwritten) and whose payload follows, in place: no copy; the tag is appended
    /// (within its spare capacity when it was framed with [`Sealer::FRAMING`]).
    pub fn seal_in_place(&mut self, datagram: &mut BytesMut) {
        assert!(datagram.len() >= HEADER, "a datagram framed for sealing");
        self.counter += 1;
        datagram[0] = MAGIC;
        datagram[1..5].copy_from_slice(&self.channel.to_be_bytes());
        datagram[5..9].copy_from_slice(&self.worker.to_be_bytes());
        datagram[9..HEADER].copy_from_slice(&self.counter.to_be_bytes());
        let (header, body) = datagram.split_at_mut(HEADER);
        let nonce = Nonce::try_assume_unique_for_key(&header[5..HEADER]).expect("12-byte nonce");
        // Sealing fails only for inputs larger than AES-GCM's limit (64 GiB).
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&header[..5]), body)
            .expect("a datagram-sized input");
        datagram.extend_from_slice(tag.as_ref());
    }

    /// Appends `payload` to `out`, sealed as one direct datagram.
    pub fn seal(&mut self, payload: &[u8], out: &mut BytesMut) {
        self.counter += 1;
        let start = out.len();
        out.reserve(OVERHEAD + payload.len());
        out.extend_from_slice(&[MAGIC]);
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&self.worker.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(payload);
        let (header, body) = out[start..].split_at_mut(HEADER);
        let nonce = Nonce::try_assume_unique_for_key(&header[5..HEADER]).expect("12-byte nonce");
        // Sealing fails only for inputs larger than AES-GCM's limit (64 GiB).
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&header[..5]), body)
            .expect("a datagram-sized input");
        out.extend_from_slice(tag.as_ref());
    }
}

/// What a receiver has seen of one sending worker's counters.
#[derive(Clone, Copy, Default)]
struct Window {
    highest: u64,
    /// Bit `i`: counter `highest - i` was seen.
    seen: [u64; (WINDOW / 64) as usize],
}

impl Window {
    /// Whether `counter` is new; marks it seen if so.
    fn accept(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.shift(shift);
            self.highest = counter;
            self.seen[0] |= 1;
            return true;
        }
        let age = self.highest - counter;
        if age >= WINDOW {
            return false;
        }
        let (word, bit) = ((age / 64) as usize, age % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    /// Ages every mark by `by` counters.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = Default::default();
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        let n = self.seen.len();
        for i in (0..n).rev() {
            let from = i.checked_sub(words);
            let lo = from.map_or(0, |f| self.seen[f]);
            let carry = from
                .and_then(|f| f.checked_sub(1))
                .map_or(0, |f| self.seen[f]);
            self.seen[i] = if bits == 0 {
                lo
            } else {
                (lo << bits) | (carry >> (64 - bits))
            };
        }
    }
}

/// A receiving worker's end of a link's direct path: opens what the peer's workers seal.
pub struct Opener {
    key: LessSafeKey,
    windows: Vec<Window>,
}

impl Opener {
    pub fn new(key_bytes: &[u8; KEY_LEN]) -> Self {
        Self {
            key: key(key_bytes),
            windows: Vec::new(),
        }
    }

    /// Opens a direct datagram in place. Returns the sending worker and the payload (the
    /// relay's datagram records) within `datagram`.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<(u32, &'a [u8]), DirectError> {
        if datagram.first() != Some(&MAGIC) {
            return Err(DirectError::NotDirect);
        }
        if datagram.len() < OVERHEAD {
            return Err(DirectError::Truncated);
        }
        let worker = u32::from_be_bytes([datagram[5], datagram[6], datagram[7], datagram[8]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&datagram[9..HEADER]);
        let counter = u64::from_be_bytes(c);
        if worker as usize >= MAX_WORKERS {
            return Err(DirectError::BadWorker(worker));
        }
        let (header, body) = datagram.split_at_mut(HEADER);
        let nonce = Nonce::try_assume_unique_for_key(&header[5..HEADER]).expect("12-byte nonce");
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&header[..5]), body)
            .map_err(|_| DirectError::Unauthentic)?;
        // Only an authentic datagram moves the window, so forgeries cannot push it forward.
        let w = worker as usize;
        if self.windows.len() <= w {
            self.windows.resize(w + 1, Window::default());
        }
        if !self.windows[w].accept(counter) {
            return Err(DirectError::Replayed);
        }
        Ok((worker, plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; KEY_LEN] = [7; KEY_LEN];

    #[test]
    fn sealed_datagrams_open_once() {
        let mut sealer = Sealer::new(&K, 0xabcd, 3);
        let mut opener = Opener::new(&K);
        let mut out = BytesMut::new();
        sealer.seal(b"records", &mut out);
        assert_eq!(out.len(), OVERHEAD + 7);
        assert_eq!(channel_of(&out), Some(0xabcd));
        let mut copy = out.to_vec();
        let (worker, plain) = opener.open(&mut out).unwrap();
        assert_eq!((worker, plain), (3, &b"records"[..]));
        assert_eq!(opener.open(&mut copy), Err(DirectError::Replayed));
    }

    #[test]
    fn sealing_in_place_makes_what_sealing_a_copy_makes() {
        let (mut a, mut b) = (Sealer::new(&K, 7, 2), Sealer::new(&K, 7, 2));
        let mut copied = BytesMut::new();
        a.seal(b"records", &mut copied);
        let mut framed = BytesMut::with_capacity(HEADER + 7 + TAG);
        framed.resize(HEADER, 0);
        framed.extend_from_slice(b"records");
        let at = framed.as_ptr();
        b.seal_in_place(&mut framed);
        assert_eq!(framed, copied);
        assert_eq!(framed.as_ptr(), at, "sealed where it was written");
        let (_, payload) = Opener::new(&K).open(&mut framed).unwrap();
        assert_eq!(payload, b"records");
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let mut sealer = Sealer::new(&K, 1, 0);
        let mut out = BytesMut::new();
        sealer.seal(b"records", &mut out);
        for i in [1, 8, 12, HEADER + 2, out.len() - 1] {
            let mut bad = out.to_vec();
            bad[i] ^= 0x40;
            assert_eq!(
                Opener::new(&K).open(&mut bad),
                Err(DirectError::Unauthentic),
                "byte {i} changed"
            );
        }
        let mut other = out.to_vec();
        assert_eq!(
            Opener::new(&[8; KEY_LEN]).open(&mut other),
            Err(DirectError::Unauthentic)
        );
        assert_eq!(
            Opener::new(&K).open(&mut out[..OVERHEAD - 1].to_vec()),
            Err(DirectError::Truncated)
        );
        assert_eq!(channel_of(&[MAGIC; 8]), None);
        assert_eq!(channel_of(&[0x80; 64]), None, "RTP is not direct");
    }

    #[test]
    fn reordering_within_the_window_is_accepted_and_old_counters_are_not() {
        let mut sealer = Sealer::new(&K, 1, 0);
        let sealed: Vec<BytesMut> = (0..400)
            .map(|_| {
                let mut b = BytesMut::new();
                sealer.seal(b"x", &mut b);
                b
            })
            .collect();
        let mut opener = Opener::new(&K);
        // 0..300 arrive, then 330 (jumps ahead), then 310 late but within the window.
        for d in &sealed[..300] {
            assert!(opener.open(&mut d.to_vec()).is_ok());
        }
        assert!(opener.open(&mut sealed[330].to_vec()).is_ok());
        assert!(opener.open(&mut sealed[310].to_vec()).is_ok());
        assert_eq!(
            opener.open(&mut sealed[310].to_vec()),
            Err(DirectError::Replayed)
        );
        // Counter 331 is the highest now: counter 76 (255 behind, inside the window) was seen;
        // counter 21 is older than the window.
        assert_eq!(
            opener.open(&mut sealed[75].to_vec()),
            Err(DirectError::Replayed)
        );
        assert_eq!(
            opener.open(&mut sealed[20].to_vec()),
            Err(DirectError::Replayed)
        );
        assert!(opener.open(&mut sealed[320].to_vec()).is_ok());
        assert!(opener.open(&mut sealed[399].to_vec()).is_ok());
    }

    #[test]
    fn workers_count_on_their_own() {
        let mut a = Sealer::new(&K, 1, 0);
        let mut b = Sealer::new(&K, 1, 1);
        let mut opener = Opener::new(&K);
        for _ in 0..3 {
            for s in [&mut a, &mut b] {
                let mut d = BytesMut::new();
                s.seal(b"y", &mut d);
                assert!(opener.open(&mut d).is_ok());
            }
        }
        let mut big = Sealer::new(&K, 1, MAX_WORKERS as u32);
        let mut d = BytesMut::new();
        big.seal(b"z", &mut d);
        assert_eq!(
            opener.open(&mut d),
            Err(DirectError::BadWorker(MAX_WORKERS as u32))
        );
    }
}
