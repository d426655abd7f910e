//! Federation records in the registry (see the node's `federation` module and
//! `docs/federation.md`):
//!
//! - `<prefix>federation/rooms/<room>`: a [`RoomMapping`], written by an administrator (the
//!   gateway's admin API or `FederationService`), bound to no lease.
//! - `<prefix>federation/peers/<peer>/<gateway>`: a [`PeerRecord`], written by each gateway
//!   under its lease: the peers it is configured for, whether the link is up, and the rooms both
//!   sides map.
//! - `<prefix>federation/stopped/<room>/<track>`: a [`StoppedTrack`], a peer's track an
//!   administrator stopped forwarding in our cluster, bound to no lease: every gateway (and the
//!   one that takes over after a failover) keeps it out of our registry until it is resumed or
//!   the room unmapped.
//! - `<prefix>federation/added/<peer>`: an [`AddedPeer`], a peer added by an administrator
//!   (`FederationService.AddPeer`) beside those in the gateways' configuration, bound to no
//!   lease. Gateways watch these and link to (or unlink from) them at runtime.

use crate::Membership;
use crate::records::Keys;
use crate::registry::{Registry, RegistryError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Our side of one mapping: our `room` is joined with the peer's `peer_room`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomMapping {
    pub room: String,
    pub peer: String,
    pub peer_room: String,
}

/// A gateway's view of one peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PeerRecord {
    pub peer: String,
    pub gateway: String,
    pub linked: bool,
    /// Our rooms both sides map now.
    pub active_rooms: Vec<String>,
    /// Where the gateway has the peer from: `config` (its configuration) or `added` (an
    /// [`AddedPeer`] in the registry).
    #[serde(default)]
    pub source: String,
    /// The peer's gateway address the link runs to (when linked): where a gateway taking over
    /// dials first (the peer's active gateway, which may not be its first address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
}

/// A peer added at runtime: its name (its certificate must name it), its gateways' federation
/// endpoints, and the only CA (or self-signed certificate) trusted for it, in PEM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddedPeer {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub ca_pem: String,
}

/// The most gateway addresses one peer may have.
pub const MAX_PEER_ADDRS: usize = 16;

/// Whether `name` can be a federation name: a DNS name (letters, digits, '.', '-').
pub fn is_federation_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

impl AddedPeer {
    /// Checks what a gateway needs of it; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !is_federation_name(&self.name) {
            return Err(format!(
                "peer name {:?} must be a DNS name (letters, digits, '.', '-')",
                self.name
            ));
        }
        if self.addrs.is_empty() || self.addrs.len() > MAX_PEER_ADDRS {
            return Err(format!(
                "a peer needs 1 to {MAX_PEER_ADDRS} gateway addresses (got {})",
                self.addrs.len()
            ));
        }
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the peer's CA is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the peer's CA holds no PEM certificate".into());
        }
        Ok(())
    }
}

pub fn added_prefix(keys: &Keys) -> String {
    format!("{}federation/added/", keys.prefix())
}

pub fn added_key(keys: &Keys, peer: &str) -> String {
    format!("{}{peer}", added_prefix(keys))
}

pub fn rooms_prefix(keys: &Keys) -> String {
    format!("{}federation/rooms/", keys.prefix())
}

pub fn room_key(keys: &Keys, room: &str) -> String {
    format!("{}{room}", rooms_prefix(keys))
}

pub fn peers_prefix(keys: &Keys) -> String {
    format!("{}federation/peers/", keys.prefix())
}

pub fn peer_key(keys: &Keys, peer: &str, gateway: &str) -> String {
    format!("{}{peer}/{gateway}", peers_prefix(keys))
}

/// Where our nodes send the audio levels of `room` besides the nodes hosting it: to each
/// gateway carrying the room to a peer now (linked, both sides map it, as its [`PeerRecord`]
/// says), which passes them on, whoever the peer has in the room (an audience only, too). The
/// gateway `me` sends them to its own federation link, `me~peer`.
pub fn level_gateways(records: &[PeerRecord], room: &str, me: &str) -> Vec<String> {
    let mut to: Vec<String> = records
        .iter()
        .filter(|r| r.linked && r.active_rooms.iter().any(|a| a == room))
        .map(|r| {
            if r.gateway == me {
                format!("{me}~{}", r.peer)
            } else {
                r.gateway.clone()
            }
        })
        .collect();
    to.sort_unstable();
    to.dedup();
    to
}

/// [`level_gateways`] from the peer records in `membership`'s view.
pub fn level_gateways_of(membership: &Membership, room: &str, me: &str) -> Vec<String> {
    let records = membership.view::<PeerRecord>(&peers_prefix(membership.keys()));
    level_gateways(&records, room, me)
}

/// A peer's track an administrator stopped forwarding in our `room` (see the module doc).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct StoppedTrack {
    pub room: String,
    pub track: String,
}

pub fn stopped_prefix(keys: &Keys) -> String {
    format!("{}federation/stopped/", keys.prefix())
}

/// Where the stops of one room are (room names hold no '/', so this is the room's alone).
pub fn stopped_room_prefix(keys: &Keys, room: &str) -> String {
    format!("{}{room}/", stopped_prefix(keys))
}

pub fn stopped_key(keys: &Keys, room: &str, track: &str) -> String {
    format!("{}{track}", stopped_room_prefix(keys, room))
}

/// Whether a track's origin (or a participant's node) is a federation link (`gateway~peer`),
/// not a node of ours.
pub fn is_federated(origin: &str) -> bool {
    origin.contains('~')
}

/// The outcome of [`stop_track`].
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stopped now.
    Stopped,
    /// It was stopped already.
    Already,
    /// No peer's track of that id is in the room (our registry holds none).
    Unknown,
}

/// Stops forwarding a peer's `track` in our `room`: records the stop, which the gateways
/// apply within a sync period. Only a track a peer announced in the room can be stopped.
pub async fn stop_track<R: Registry>(
    registry: &R,
    membership: &Membership,
    room: &str,
    track: &str,
) -> Result<Stop, RegistryError> {
    let keys = membership.keys();
    if stopped_tracks(registry, keys, room)
        .await?
        .iter()
        .any(|t| t == track)
    {
        return Ok(Stop::Already);
    }
    let (_, tracks) = membership.room(room);
    if !tracks
        .iter()
        .any(|t| t.track == track && is_federated(&t.origin))
    {
        return Ok(Stop::Unknown);
    }
    let value = StoppedTrack {
        room: room.to_owned(),
        track: track.to_owned(),
    };
    let value = serde_json::to_vec(&value).unwrap_or_default();
    registry
        .put_persistent(&stopped_key(keys, room, track), value)
        .await?;
    Ok(Stop::Stopped)
}

/// Forwards a stopped track again; false if it was not stopped.
pub async fn resume_track<R: Registry>(
    registry: &R,
    keys: &Keys,
    room: &str,
    track: &str,
) -> Result<bool, RegistryError> {
    if !stopped_tracks(registry, keys, room)
        .await?
        .iter()
        .any(|t| t == track)
    {
        return Ok(false);
    }
    registry.delete(&stopped_key(keys, room, track)).await?;
    Ok(true)
}

/// The tracks stopped in our `room`, sorted, read from the registry now.
pub async fn stopped_tracks<R: Registry>(
    registry: &R,
    keys: &Keys,
    room: &str,
) -> Result<Vec<String>, RegistryError> {
    let (listing, _) = registry.list(&stopped_room_prefix(keys, room)).await?;
    let mut tracks: Vec<String> = listing
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<StoppedTrack>(&v).ok())
        .filter(|s| s.room == room)
        .map(|s| s.track)
        .collect();
    tracks.sort();
    Ok(tracks)
}

/// Forgets the stops of a room that is unmapped (they were about that mapping).
pub async fn forget_stops<R: Registry>(
    registry: &R,
    keys: &Keys,
    room: &str,
) -> Result<(), RegistryError> {
    for track in stopped_tracks(registry, keys, room).await? {
        registry
            .delete(&stopped_key(keys, room, track.as_str()))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: &str, gateway: &str, linked: bool, rooms: &[&str]) -> PeerRecord {
        PeerRecord {
            peer: peer.into(),
            gateway: gateway.into(),
            linked,
            active_rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn levels_go_to_the_gateways_carrying_the_room() {
        let records = [
            record("a.example", "b1", true, &["joint", "other"]),
            record("c.example", "b1", true, &["joint"]),
            // A standby gateway, or one whose link is down, carries nothing.
            record("a.example", "b3", false, &[]),
            record("d.example", "b4", false, &["joint"]),
        ];
        assert_eq!(level_gateways(&records, "joint", "b2"), ["b1"]);
        assert_eq!(
            level_gateways(&records, "joint", "b1"),
            ["b1~a.example", "b1~c.example"],
            "the gateway itself, to its links"
        );
        assert!(level_gateways(&records, "alone", "b2").is_empty());
    }
}
