//! The participants and tracks that cross: ours that a peer sees, and a peer's written into
//! our registry as federated participants.
//!
//! Only stage participants cross, with their tracks; participants and tracks already federated
//! (from any peer) never go back out. A peer's participants are namespaced (`peer/identity`)
//! and placed on the link (`gateway~peer`), which is where our rooms pull their tracks from.

use super::config::Identities;
use sfu_control::{Membership, ParticipantRecord, TrackRecord};
use std::collections::HashMap;

/// The most participants, and tracks, of one room that cross.
pub const MAX_ROSTER: usize = 1000;

/// Whether a record's node (or a track's origin) is a federation link, not a node.
pub use sfu_control::federation::is_federated;

/// Our stage participants of a room and their tracks, sorted (so that equal rosters encode
/// equally).
pub fn local(membership: &Membership, room: &str) -> (Vec<ParticipantRecord>, Vec<TrackRecord>) {
    let (mut participants, mut tracks) = membership.room(room);
    participants.retain(|p| p.stage && !is_federated(&p.node));
    participants.sort_by(|a, b| a.sid.cmp(&b.sid));
    participants.truncate(MAX_ROSTER);
    tracks.retain(|t| {
        !is_federated(&t.origin) && participants.iter().any(|p| p.sid == t.participant)
    });
    tracks.sort_by(|a, b| a.track.cmp(&b.track));
    tracks.truncate(MAX_ROSTER);
    (participants, tracks)
}

/// Which peers see our participants under pseudonyms, and the key those are made with (see
/// [`pseudonym_key`]).
#[derive(Default)]
pub struct Pseudonyms {
    pub key: Vec<u8>,
    /// For peers not in `peers` (added at runtime).
    pub default: Identities,
    pub peers: HashMap<String, Identities>,
}

impl Pseudonyms {
    pub fn for_peer(&self, peer: &str) -> bool {
        self.peers.get(peer).copied().unwrap_or(self.default) == Identities::Pseudonym
    }
}

/// The key pseudonyms are made with, derived from our federation private key under a label of
/// its own: every gateway of the cluster holds that key, so they all make the same pseudonyms
/// and a failover keeps them, and the TLS key itself is never used as an HMAC key. A new
/// federation key (or the same key encoded differently) gives new pseudonyms.
pub fn pseudonym_key(federation_key: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(federation_key).expect("any key length");
    mac.update(b"sfu federation pseudonyms v1");
    mac.finalize().into_bytes().to_vec()
}

/// Replaces our participants' identities with stable pseudonyms for `peer` (a keyed hash of the
/// identity: the same participant gets the same one at every join, each peer another), and
/// drops what would reveal them: names, metadata, attributes, track names.
pub fn pseudonymize(
    key: &[u8],
    peer: &str,
    participants: &mut [ParticipantRecord],
    tracks: &mut [TrackRecord],
) {
    use hmac::Mac;
    for p in participants.iter_mut() {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(peer.as_bytes());
        mac.update(b"/");
        mac.update(p.identity.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        p.identity = format!("guest-{hex}");
        p.name = String::new();
        p.metadata = String::new();
        p.attributes = Default::default();
    }
    for t in tracks.iter_mut() {
        t.name = String::new();
    }
}

/// Ids that become parts of registry keys: letters, digits, `_` and `-`.
fn plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A peer's roster as our registry holds it; an error names the first bad record.
pub fn federated(
    peer: &str,
    link: &str,
    participants: Vec<ParticipantRecord>,
    tracks: Vec<TrackRecord>,
) -> Result<(Vec<ParticipantRecord>, Vec<TrackRecord>), String> {
    if participants.len() > MAX_ROSTER || tracks.len() > MAX_ROSTER {
        return Err(format!(
            "{} participants and {} tracks (at most {MAX_ROSTER} each)",
            participants.len(),
            tracks.len()
        ));
    }
    let mut ps = Vec::with_capacity(participants.len());
    for mut p in participants {
        if !plain_id(&p.sid) || p.identity.len() > 256 {
            return Err(format!("participant {:?}", p.sid));
        }
        p.identity = format!("{peer}/{}", p.identity);
        p.node = link.to_owned();
        p.worker = 0;
        p.stage = true;
        ps.push(p);
    }
    let mut ts = Vec::with_capacity(tracks.len());
    for mut t in tracks {
        if t.track.parse::<sfu_core::TrackId>().is_err()
            || !ps.iter().any(|p| p.sid == t.participant)
        {
            return Err(format!("track {:?}", t.track));
        }
        t.origin = link.to_owned();
        t.worker = 0;
        // `audio_levels` as the peer has it: its gateway passes the track's levels on to us
        // (`super::levels`), so our rooms rank it as any remote speaker.
        ts.push(t);
    }
    Ok((ps, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(sid: &str, identity: &str) -> ParticipantRecord {
        ParticipantRecord {
            sid: sid.into(),
            identity: identity.into(),
            name: identity.into(),
            node: "b2".into(),
            kind: "client".into(),
            joined_ms: 1,
            stage: true,
            worker: 3,
            metadata: String::new(),
            attributes: Default::default(),
            quality: None,
        }
    }

    fn track(id: &str, participant: &str) -> TrackRecord {
        TrackRecord {
            track: id.into(),
            participant: participant.into(),
            kind: "video".into(),
            codec_mime: "video/VP8".into(),
            clock_rate: 90000,
            rids: vec![],
            name: String::new(),
            origin: "b2".into(),
            muted: false,
            source: "camera".into(),
            audio_levels: true,
            red_payload_type: None,
            worker: 3,
        }
    }

    #[test]
    fn a_peers_roster_is_namespaced_and_placed_on_the_link() {
        let (ps, ts) = federated(
            "b.example",
            "a1~b.example",
            vec![participant("PA_1", "bob")],
            vec![track("TR_00000000000000ff", "PA_1")],
        )
        .unwrap();
        assert_eq!(ps[0].identity, "b.example/bob");
        assert_eq!((ps[0].node.as_str(), ps[0].worker), ("a1~b.example", 0));
        assert_eq!((ts[0].origin.as_str(), ts[0].worker), ("a1~b.example", 0));
        assert!(
            ts[0].audio_levels,
            "levels cross, so they are written as they are"
        );
        assert!(is_federated(&ts[0].origin) && !is_federated("b2"));
    }

    #[test]
    fn pseudonyms_are_stable_per_peer_and_reveal_nothing() {
        let mut one = vec![participant("PA_1", "bob")];
        one[0].metadata = "bob@b.example".into();
        let mut two = vec![participant("PA_2", "bob"), participant("PA_3", "carol")];
        let mut ts = vec![track("TR_00000000000000ff", "PA_1")];
        ts[0].name = "bob's camera".into();
        pseudonymize(b"key", "a.example", &mut one, &mut ts);
        pseudonymize(b"key", "a.example", &mut two, &mut []);
        assert!(one[0].identity.starts_with("guest-"), "{}", one[0].identity);
        assert_eq!(one[0].identity, two[0].identity, "stable across joins");
        assert_ne!(two[0].identity, two[1].identity);
        assert!(one[0].name.is_empty() && one[0].metadata.is_empty() && ts[0].name.is_empty());
        let mut other = vec![participant("PA_1", "bob")];
        pseudonymize(b"key", "c.example", &mut other, &mut []);
        assert_ne!(
            other[0].identity, one[0].identity,
            "another peer, another pseudonym"
        );
        let mut rekeyed = vec![participant("PA_1", "bob")];
        pseudonymize(b"other key", "a.example", &mut rekeyed, &mut []);
        assert_ne!(rekeyed[0].identity, one[0].identity);
    }

    #[test]
    fn bad_rosters_are_refused() {
        // A sid that would change the registry key's shape.
        assert!(federated("b", "l", vec![participant("PA/../x", "bob")], vec![]).is_err());
        // A malformed track id, and a track of nobody in the roster.
        let p = || vec![participant("PA_1", "bob")];
        assert!(federated("b", "l", p(), vec![track("bogus", "PA_1")]).is_err());
        assert!(federated("b", "l", p(), vec![track("TR_00000000000000ff", "PA_2")]).is_err());
        // Too many.
        let many = (0..=MAX_ROSTER)
            .map(|i| participant(&format!("PA_{i}"), "x"))
            .collect();
        assert!(federated("b", "l", many, vec![]).is_err());
    }
}
