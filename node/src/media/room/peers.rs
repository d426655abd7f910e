//! The room's peer connections and what the worker must know to reach them.
//!
//! [`Peers`] owns every peer connection of the room on this worker, the deadlines they asked
//! for and the demux changes they cause. Its invariants: a peer's ICE ufrag is announced to the
//! worker's demux when it is added and withdrawn, with every address bound to it, when it is
//! removed; a peer keeps at most [`MAX_PEER_ADDRS`] addresses; a deadline fires only for the
//! peer that asked for it (slab keys are reused, so each deadline carries the peer's
//! generation) and only if the peer did not ask for another since.

use crate::media::peer::{Direction, IceCredentials};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::RTCRtpSenderId;
use sfu_core::{LayerIndex, MediaKind, SubscriptionId, TrackId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A peer connection that has not connected after this long is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected peer that sent nothing for this long is gone. Browsers send ICE consent checks
/// (RFC 7675) every few seconds and RTCP every second, so only a vanished peer is this quiet;
/// webrtc-rs's ICE-lite agent does not time out on its own.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Addresses a peer connection may be reached from (a browser checks from a few candidates).
const MAX_PEER_ADDRS: usize = 4;

/// Changes to the worker's datagram routing that a room asks for.
pub enum DemuxUpdate {
    /// Route STUN with this ufrag to the peer.
    Add { ufrag: String, peer: usize },
    /// Route everything from this address to the peer (an authenticated check came from it).
    Bind { addr: SocketAddr, peer: usize },
    /// Forget these addresses, and the ufrag unless empty: the peer is gone, or (no ufrag) one
    /// of its addresses was pushed out by a newer one.
    Remove {
        ufrag: String,
        addrs: Vec<SocketAddr>,
    },
}

/// A track received on a publisher peer connection.
pub(super) struct Inbound {
    pub track: TrackId,
    /// Simulcast RIDs, lowest quality first (one empty entry for a single stream).
    pub rids: Vec<String>,
    /// SSRC of each layer once its first packet arrived.
    pub ssrcs: Vec<Option<u32>>,
    /// Loss on each layer (connection quality).
    pub rx: Vec<super::quality::RxLoss>,
}

impl Inbound {
    pub fn layer_of(&self, ssrc: u32) -> Option<LayerIndex> {
        self.ssrcs.iter().position(|s| *s == Some(ssrc))
    }
}

/// A track sent on a subscriber peer connection.
pub(super) struct Outbound {
    pub sender: RTCRtpSenderId,
    pub kind: MediaKind,
    pub ssrc: u32,
    /// The track feeding it (fixed for WebSocket clients; chosen by the node for WHEP).
    pub source: Option<TrackId>,
    pub subscription: Option<SubscriptionId>,
    /// Whether the subscriber has accepted it in a completed offer/answer.
    pub negotiated: bool,
    /// What the client last said about showing it.
    pub settings: Option<crate::media::TrackSettings>,
}

/// Subscriber-side negotiation state (the node offers).
#[derive(Default)]
pub(super) struct Negotiation {
    pub offer_outstanding: bool,
    pub needs_offer: bool,
}

/// A peer connection and what flows over it.
pub(super) struct Peer {
    pub pc: RTCPeerConnection,
    pub direction: Direction,
    pub participant: String,
    pub ice: IceCredentials,
    pub addrs: Vec<SocketAddr>,
    pub generation: u32,
    pub created_at: Instant,
    /// When the last datagram from this peer arrived.
    pub last_heard: Instant,
    pub connected: bool,
    pub timer: Option<Instant>,
    /// Publisher side, by webrtc-rs track id.
    pub inbound: HashMap<String, Inbound>,
    /// Subscriber side.
    pub outbound: Vec<Outbound>,
    pub negotiation: Negotiation,
    /// Whether the first offer or answer was made (candidates are added once).
    pub described: bool,
    /// The node's own transport (subscriber connections): webrtc-rs only negotiates them.
    pub transport: Option<crate::media::transport::Transport>,
    /// What its receiver reports said (subscriber connections; connection quality).
    pub quality: super::quality::PeerReports,
    /// Subscriber connections: nothing is forwarded (see [`super::pause`]).
    pub paused: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Peers {
    /// Boxed: a peer connection is several kilobytes, and a slab keeps up to twice the slots
    /// it holds; boxed, a spare slot costs a pointer.
    slab: slab::Slab<Box<Peer>>,
    /// Deadlines asked for: (when, peer, its generation).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Demux changes not yet taken by the worker.
    demux: Vec<DemuxUpdate>,
    next_generation: u32,
}

impl Peer {
    pub fn new(
        pc: RTCPeerConnection,
        direction: Direction,
        participant: &str,
        ice: IceCredentials,
        transport: Option<crate::media::transport::Transport>,
        now: Instant,
    ) -> Self {
        Self {
            pc,
            direction,
            participant: participant.to_owned(),
            ice,
            addrs: Vec::new(),
            generation: 0,
            created_at: now,
            last_heard: now,
            connected: false,
            timer: None,
            inbound: HashMap::new(),
            outbound: Vec::new(),
            negotiation: Negotiation::default(),
            described: false,
            transport,
            quality: Default::default(),
            paused: false,
        }
    }
}

impl Peers {
    /// Adds a peer and routes its connectivity checks here.
    pub fn insert(&mut self, mut peer: Peer) -> usize {
        self.next_generation = self.next_generation.wrapping_add(1);
        peer.generation = self.next_generation;
        let ufrag = peer.ice.ufrag.clone();
        let key = self.slab.insert(Box::new(peer));
        self.demux.push(DemuxUpdate::Add { ufrag, peer: key });
        key
    }

    /// Forgets a peer and everything routed to it.
    pub fn remove(&mut self, key: usize) -> Option<Box<Peer>> {
        let peer = self.slab.try_remove(key)?;
        self.demux.push(DemuxUpdate::Remove {
            ufrag: peer.ice.ufrag.clone(),
            addrs: peer.addrs.clone(),
        });
        Some(peer)
    }

    pub fn get(&self, key: usize) -> Option<&Peer> {
        self.slab.get(key).map(|p| &**p)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Peer> {
        self.slab.get_mut(key).map(|p| &mut **p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Peer)> {
        self.slab.iter().map(|(k, p)| (k, &**p))
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Records an address an authenticated connectivity check of a peer came from, and routes
    /// its datagrams here. A peer keeps a few at most: the oldest is forgotten.
    pub fn bind_addr(&mut self, key: usize, addr: SocketAddr) {
        let Some(p) = self.slab.get_mut(key) else {
            return;
        };
        if p.addrs.contains(&addr) {
            return;
        }
        if p.addrs.len() >= MAX_PEER_ADDRS {
            let old = p.addrs.remove(0);
            self.demux.push(DemuxUpdate::Remove {
                ufrag: String::new(),
                addrs: vec![old],
            });
        }
        p.addrs.push(addr);
        self.demux.push(DemuxUpdate::Bind { addr, peer: key });
    }

    pub fn take_demux_updates(&mut self) -> std::vec::Drain<'_, DemuxUpdate> {
        self.demux.drain(..)
    }

    /// Schedules the peer's next timeout: the earlier of its peer connection's and its own
    /// transport's.
    pub fn rearm(&mut self, key: usize) {
        let Some(peer) = self.slab.get_mut(key) else {
            return;
        };
        let pc = rtc::sansio::Protocol::poll_timeout(&mut peer.pc);
        let own = peer.transport.as_ref().and_then(|t| t.poll_timeout());
        let next = pc.into_iter().chain(own).min();
        if next != peer.timer {
            peer.timer = next;
            if let Some(t) = next {
                self.timers.push(Reverse((t, key, peer.generation)));
            }
        }
    }

    /// The earliest deadline asked for (some may be stale: they are skipped when due).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next peer whose deadline has come by `now`, with its deadline cleared.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        while let Some(&Reverse((t, key, generation))) = self.timers.peek() {
            if t > now {
                return None;
            }
            self.timers.pop();
            let Some(peer) = self.slab.get_mut(key) else {
                continue;
            };
            if peer.generation != generation || peer.timer != Some(t) {
                continue;
            }
            peer.timer = None;
            return Some(key);
        }
        None
    }

    /// Peers that never connected in time or went silent, with why.
    pub fn stale(&self, now: Instant) -> Vec<(usize, &'static str)> {
        self.slab
            .iter()
            .filter_map(|(k, p)| {
                let age = now.saturating_duration_since(p.created_at);
                let quiet = now.saturating_duration_since(p.last_heard);
                if !p.connected && age > CONNECT_TIMEOUT {
                    Some((k, "did not connect in time"))
                } else if p.connected && quiet > SILENCE_TIMEOUT {
                    Some((k, "went silent"))
                } else {
                    None
                }
            })
            .collect()
    }
}

impl std::ops::Index<usize> for Peers {
    type Output = Peer;
    fn index(&self, key: usize) -> &Peer {
        &self.slab[key]
    }
}

impl std::ops::IndexMut<usize> for Peers {
    fn index_mut(&mut self, key: usize) -> &mut Peer {
        &mut self.slab[key]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::peer::{build, worker_certificate};

    fn peer(now: Instant) -> Peer {
        let ice = IceCredentials::random();
        let certificate = worker_certificate().unwrap();
        let pc = build(
            Direction::Subscribe,
            &ice,
            &certificate,
            &Default::default(),
            now,
        )
        .unwrap();
        Peer::new(pc, Direction::Subscribe, "PA_x", ice, None, now)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_peer_is_routed_while_it_lives_and_keeps_four_addresses_at_most() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let key = peers.insert(peer(now));
        let ufrag = peers[key].ice.ufrag.clone();
        for port in 1..=5 {
            peers.bind_addr(key, addr(port));
        }
        peers.bind_addr(key, addr(5)); // known: nothing to do
        assert_eq!(peers[key].addrs, [2, 3, 4, 5].map(addr));
        peers.remove(key).unwrap();
        assert!(peers.remove(key).is_none() && peers.get(key).is_none());
        let updates: Vec<String> = peers
            .take_demux_updates()
            .map(|u| match u {
                DemuxUpdate::Add { ufrag, peer } => format!("add {ufrag} {peer}"),
                DemuxUpdate::Bind { addr, peer } => format!("bind {} {peer}", addr.port()),
                DemuxUpdate::Remove { ufrag, addrs } => {
                    let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
                    format!("remove {ufrag} {ports:?}")
                }
            })
            .collect();
        let expected = [
            format!("add {ufrag} {key}"),
            format!("bind 1 {key}"),
            format!("bind 2 {key}"),
            format!("bind 3 {key}"),
            format!("bind 4 {key}"),
            // The fifth address pushes the first out.
            "remove  [1]".to_owned(),
            format!("bind 5 {key}"),
            format!("remove {ufrag} [2, 3, 4, 5]"),
        ];
        assert_eq!(updates, expected);
        assert_eq!(peers.take_demux_updates().count(), 0);
    }

    #[test]
    fn a_deadline_fires_only_for_the_peer_that_asked_and_only_once() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let old = peers.insert(peer(now));
        let at = now + Duration::from_millis(10);
        peers[old].timer = Some(at);
        peers.timers.push(Reverse((at, old, peers[old].generation)));
        // The peer goes; another takes its slab key: the old deadline is not its own.
        peers.remove(old);
        let new = peers.insert(peer(now));
        assert_eq!(new, old, "the slab reuses the key");
        peers[new].timer = Some(at);
        assert_eq!(peers.pop_due(at), None);
        // Its own deadline fires once, and not before it is due.
        peers.timers.push(Reverse((at, new, peers[new].generation)));
        assert_eq!(peers.pop_due(now), None);
        assert_eq!(peers.pop_due(at), Some(new));
        assert_eq!(peers[new].timer, None);
        assert_eq!(peers.pop_due(at), None);
    }
}
