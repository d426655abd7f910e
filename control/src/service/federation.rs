//! `FederationService`: room mappings with other organisations' clusters, kept in the registry
//! where the gateways read them, the peers the gateways report, and peers added at runtime
//! (kept in the registry, where the gateways watch them; see [`crate::federation`]).

use super::{Api, status};
use crate::federation::{
    AddedPeer, PeerRecord, RoomMapping, Stop, added_key, added_prefix, forget_stops, peers_prefix,
    resume_track, room_key, rooms_prefix, stop_track, stopped_tracks,
};
use crate::registry::Registry;
use sfu_proto::control as pb;
use sfu_proto::control::federation_service_server::FederationService;
use std::collections::BTreeMap;
use tonic::{Request, Response as GrpcResponse, Status};

fn room_name(room: &str, what: &str) -> Result<(), Status> {
    if room.is_empty()
        || room.len() > 128
        || room.contains('/')
        || room.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(format!(
            "{what}: room names are 1 to 128 printable characters without '/'"
        )));
    }
    Ok(())
}

impl Api {
    /// Every gateway's record of every peer.
    fn peer_records(&self) -> Vec<PeerRecord> {
        self.0
            .membership
            .view(&peers_prefix(self.0.membership.keys()))
    }

    /// The peers added at runtime, read from the registry now.
    async fn added_peers(&self) -> Result<Vec<AddedPeer>, Status> {
        let (listing, _) = self
            .0
            .registry
            .list(&added_prefix(self.0.membership.keys()))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(listing
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    fn mapping(&self, m: RoomMapping, peers: &[PeerRecord]) -> pb::RoomMapping {
        let active = peers
            .iter()
            .any(|p| p.peer == m.peer && p.active_rooms.contains(&m.room));
        pb::RoomMapping {
            room: m.room,
            peer: m.peer,
            peer_room: m.peer_room,
            active,
        }
    }
}

#[tonic::async_trait]
impl FederationService for Api {
    async fn list_peers(
        &self,
        r: Request<pb::ListFederationPeersRequest>,
    ) -> Result<GrpcResponse<pb::ListFederationPeersResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let mut peers: BTreeMap<String, pb::FederationPeer> = BTreeMap::new();
        let mut config = std::collections::BTreeSet::new();
        for p in self.peer_records() {
            let e = peers.entry(p.peer.clone()).or_insert(pb::FederationPeer {
                name: p.peer.clone(),
                ..Default::default()
            });
            if p.linked {
                e.linked_gateways.push(p.gateway.clone());
            }
            e.gateways.push(p.gateway);
            // Records written before peers could be added say nothing: configuration.
            if p.source != "added" {
                config.insert(p.peer);
            }
        }
        let added = self.added_peers().await?;
        for a in &added {
            let e = peers.entry(a.name.clone()).or_insert(pb::FederationPeer {
                name: a.name.clone(),
                ..Default::default()
            });
            e.addrs = a.addrs.iter().map(ToString::to_string).collect();
        }
        for p in peers.values_mut() {
            let added = added.iter().any(|a| a.name == p.name);
            p.source = match (config.contains(&p.name), added) {
                (true, true) => "config,added",
                (false, true) => "added",
                _ => "config",
            }
            .to_owned();
        }
        Ok(GrpcResponse::new(pb::ListFederationPeersResponse {
            peers: peers.into_values().collect(),
        }))
    }

    async fn add_peer(
        &self,
        r: Request<pb::AddPeerRequest>,
    ) -> Result<GrpcResponse<pb::FederationPeer>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let req = r.into_inner();
        let addrs = req
            .addrs
            .iter()
            .map(|a| {
                a.parse::<std::net::SocketAddr>()
                    .map_err(|_| Status::invalid_argument(format!("address {a:?} is not IP:PORT")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let peer = AddedPeer {
            name: req.name,
            addrs,
            ca_pem: req.ca_pem,
        };
        peer.check().map_err(Status::invalid_argument)?;
        let records = self.peer_records();
        if records
            .iter()
            .any(|p| p.peer == peer.name && p.source != "added")
        {
            return Err(Status::already_exists(format!(
                "{:?} is in a federation gateway's configuration",
                peer.name
            )));
        }
        let value = serde_json::to_vec(&peer).unwrap_or_default();
        self.0
            .registry
            .put_persistent(&added_key(self.0.membership.keys(), &peer.name), value)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(peer = %peer.name, addrs = ?peer.addrs, "federation peer added");
        let gateways = records.iter().filter(|p| p.peer == peer.name);
        Ok(GrpcResponse::new(pb::FederationPeer {
            gateways: gateways.clone().map(|p| p.gateway.clone()).collect(),
            linked_gateways: gateways
                .filter(|p| p.linked)
                .map(|p| p.gateway.clone())
                .collect(),
            source: "added".into(),
            addrs: peer.addrs.iter().map(ToString::to_string).collect(),
            name: peer.name,
        }))
    }

    async fn remove_peer(
        &self,
        r: Request<pb::RemovePeerRequest>,
    ) -> Result<GrpcResponse<pb::RemovePeerResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let name = r.into_inner().name;
        if !self.added_peers().await?.iter().any(|a| a.name == name) {
            return Err(Status::not_found(format!(
                "{name:?} is not an added federation peer"
            )));
        }
        self.0
            .registry
            .delete(&added_key(self.0.membership.keys(), &name))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(peer = %name, "federation peer removed");
        Ok(GrpcResponse::new(pb::RemovePeerResponse {}))
    }

    async fn map_room(
        &self,
        r: Request<pb::MapRoomRequest>,
    ) -> Result<GrpcResponse<pb::RoomMapping>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let req = r.into_inner();
        room_name(&req.room, "room")?;
        room_name(&req.peer_room, "peer_room")?;
        let peers = self.peer_records();
        let added = self.added_peers().await?;
        if !peers.iter().any(|p| p.peer == req.peer) && !added.iter().any(|a| a.name == req.peer) {
            return Err(Status::not_found(format!(
                "{:?} is neither a peer any federation gateway of this cluster is configured for nor an added one",
                req.peer
            )));
        }
        let m = RoomMapping {
            room: req.room,
            peer: req.peer,
            peer_room: req.peer_room,
        };
        let value = serde_json::to_vec(&m).unwrap_or_default();
        self.0
            .registry
            .put_persistent(&room_key(self.0.membership.keys(), &m.room), value)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(GrpcResponse::new(self.mapping(m, &peers)))
    }

    async fn unmap_room(
        &self,
        r: Request<pb::UnmapRoomRequest>,
    ) -> Result<GrpcResponse<pb::UnmapRoomResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let room = r.into_inner().room;
        let key = room_key(self.0.membership.keys(), &room);
        let (listing, _) = self
            .0
            .registry
            .list(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !listing.iter().any(|(k, _)| *k == key) {
            return Err(Status::not_found(format!("room {room:?} is not mapped")));
        }
        self.0
            .registry
            .delete(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        forget_stops(&self.0.registry, self.0.membership.keys(), &room)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(GrpcResponse::new(pb::UnmapRoomResponse {}))
    }

    async fn list_mappings(
        &self,
        r: Request<pb::ListMappingsRequest>,
    ) -> Result<GrpcResponse<pb::ListMappingsResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let (listing, _) = self
            .0
            .registry
            .list(&rooms_prefix(self.0.membership.keys()))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let peers = self.peer_records();
        let mappings = listing
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<RoomMapping>(&v).ok())
            .map(|m| self.mapping(m, &peers))
            .collect();
        Ok(GrpcResponse::new(pb::ListMappingsResponse { mappings }))
    }

    async fn stop_track(
        &self,
        r: Request<pb::StopTrackRequest>,
    ) -> Result<GrpcResponse<pb::StopTrackResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let req = r.into_inner();
        room_name(&req.room, "room")?;
        let stop = stop_track(&self.0.registry, &self.0.membership, &req.room, &req.track)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match stop {
            Stop::Unknown => Err(Status::not_found(format!(
                "no federated track {:?} in room {:?}",
                req.track, req.room
            ))),
            Stop::Stopped | Stop::Already => {
                tracing::info!(room = %req.room, track = %req.track, "federated track stopped");
                Ok(GrpcResponse::new(pb::StopTrackResponse {
                    already: stop == Stop::Already,
                }))
            }
        }
    }

    async fn resume_track(
        &self,
        r: Request<pb::ResumeTrackRequest>,
    ) -> Result<GrpcResponse<pb::ResumeTrackResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let req = r.into_inner();
        room_name(&req.room, "room")?;
        let resumed = resume_track(
            &self.0.registry,
            self.0.membership.keys(),
            &req.room,
            &req.track,
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        if !resumed {
            return Err(Status::not_found(format!(
                "track {:?} of room {:?} is not stopped",
                req.track, req.room
            )));
        }
        tracing::info!(room = %req.room, track = %req.track, "federated track resumed");
        Ok(GrpcResponse::new(pb::ResumeTrackResponse {}))
    }

    async fn list_stopped_tracks(
        &self,
        r: Request<pb::ListStoppedTracksRequest>,
    ) -> Result<GrpcResponse<pb::ListStoppedTracksResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let room = r.into_inner().room;
        room_name(&room, "room")?;
        let tracks = stopped_tracks(&self.0.registry, self.0.membership.keys(), &room)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(GrpcResponse::new(pb::ListStoppedTracksResponse { tracks }))
    }
}
