//! `NodeService`: the cluster's nodes with their load, and draining.

use super::{Api, status};
use crate::placement::{NodeView, load::utilisation};
use crate::records::NodeState;
use sfu_proto::control as pb;
use sfu_proto::control::node_service_server::NodeService;
use tonic::{Request, Response as GrpcResponse, Status};

#[tonic::async_trait]
impl NodeService for Api {
    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<GrpcResponse<pb::ListNodesResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let nodes = self
            .0
            .membership
            .nodes()
            .into_iter()
            .map(|n| pb::NodeInfo {
                utilisation: utilisation(&self.0.policy, &NodeView::from_record(&n)),
                media_cpu: n.load.media_cpu,
                media_cores: n.limits.media_cores,
                egress_bps: n.load.egress_bps,
                egress_capacity_bps: n.limits.egress_bps,
                joins_per_sec: n.limits.joins_per_sec,
                id: n.id,
                region: n.region,
                http_url: n.http_url,
                state: match n.state {
                    NodeState::Active => "active".into(),
                    NodeState::Draining => "draining".into(),
                },
                capacity: n.capacity,
                rooms: n.load.rooms,
                participants: n.load.participants,
                tracks: n.load.tracks,
                cpu: n.load.cpu,
                updated_ms: n.updated_ms,
            })
            .collect();
        Ok(GrpcResponse::new(pb::ListNodesResponse { nodes }))
    }

    async fn drain_node(
        &self,
        r: Request<pb::DrainNodeRequest>,
    ) -> Result<GrpcResponse<pb::DrainNodeResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let node = r.into_inner().node;
        self.0
            .call_node(&node, reqwest::Method::POST, "/admin/drain", None)
            .await?;
        Ok(GrpcResponse::new(pb::DrainNodeResponse {}))
    }
}
