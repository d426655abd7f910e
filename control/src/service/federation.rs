//! `FederationService`: room mappings with other organisations' clusters, kept in the registry
//! where the gateways read them, and the peers the gateways report (see [`crate::federation`]).

use super::{Api, status};
use crate::federation::{PeerRecord, RoomMapping, peers_prefix, room_key, rooms_prefix};
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
        for p in self.peer_records() {
            let e = peers.entry(p.peer.clone()).or_insert(pb::FederationPeer {
                name: p.peer.clone(),
                ..Default::default()
            });
            if p.linked {
                e.linked_gateways.push(p.gateway.clone());
            }
            e.gateways.push(p.gateway);
        }
        Ok(GrpcResponse::new(pb::ListFederationPeersResponse {
            peers: peers.into_values().collect(),
        }))
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
        if !peers.iter().any(|p| p.peer == req.peer) {
            return Err(Status::not_found(format!(
                "{:?} is not a peer any federation gateway of this cluster is configured for",
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
}
