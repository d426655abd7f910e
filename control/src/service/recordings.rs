//! `RecordingService`: track and room recordings, carried out by the nodes (their
//! `/admin/.../recordings` API). A recording runs on any node: the one the request names, or
//! by default the track's origin (no relay traffic for it), for a room recording the node of
//! its first participant. Listing and stopping ask every
//! node, since the registry holds no recordings (a few nodes: a few calls).

use super::{Api, status};
use crate::node_api::segment;
use sfu_proto::control as pb;
use sfu_proto::control::recording_service_server::RecordingService;
use tonic::{Request, Response as GrpcResponse, Status};

/// A recording as a node's admin API shows it.
#[derive(serde::Deserialize)]
struct Listed {
    id: String,
    room: String,
    kind: String,
    track: String,
    codec: String,
    state: String,
    node: String,
    file: String,
    duration_ms: u64,
    size_bytes: u64,
    started_ms: u64,
    ended_ms: u64,
    error: String,
    #[serde(default)]
    streams: Vec<ListedStream>,
    #[serde(default)]
    hls: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    upload: String,
    #[serde(default)]
    upload_error: String,
}

#[derive(serde::Deserialize)]
struct ListedStream {
    url: String,
    state: String,
    error: String,
}

impl From<Listed> for pb::RecordingInfo {
    fn from(l: Listed) -> Self {
        pb::RecordingInfo {
            id: l.id,
            room: l.room,
            kind: l.kind,
            track: l.track,
            codec: l.codec,
            state: l.state,
            node: l.node,
            file: l.file,
            duration_ms: l.duration_ms,
            size_bytes: l.size_bytes,
            started_ms: l.started_ms,
            ended_ms: l.ended_ms,
            error: l.error,
            streams: l
                .streams
                .into_iter()
                .map(|s| pb::StreamInfo {
                    url: s.url,
                    state: s.state,
                    error: s.error,
                })
                .collect(),
            hls: l.hls,
            url: l.url,
            upload: l.upload,
            upload_error: l.upload_error,
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(node: &str, body: &str) -> Result<T, Status> {
    serde_json::from_str(body)
        .map_err(|e| Status::internal(format!("node {node} answered nonsense: {e}")))
}

/// A node's problem body (`{"detail": ...}`), or the body as it is.
fn detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

impl Api {
    /// Asks `node` to start a recording of `room` (`body` says which).
    async fn start_on(
        &self,
        node: &str,
        room: &str,
        body: serde_json::Value,
    ) -> Result<GrpcResponse<pb::RecordingInfo>, Status> {
        let path = format!("/admin/rooms/{}/recordings", segment(room));
        let answer = self
            .0
            .call_node(node, reqwest::Method::POST, &path, Some(body))
            .await
            .map_err(|s| Status::new(s.code(), detail(s.message())))?;
        let listed: Listed = parse(node, &answer)?;
        Ok(GrpcResponse::new(listed.into()))
    }
}

#[tonic::async_trait]
impl RecordingService for Api {
    async fn start_recording(
        &self,
        r: Request<pb::StartRecordingRequest>,
    ) -> Result<GrpcResponse<pb::RecordingInfo>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let (participants, tracks) = self.0.membership.room(&req.room);
        if req.track.is_empty() {
            // A room recording.
            let Some(first) = participants.first() else {
                return Err(Status::not_found(format!("no room {}", req.room)));
            };
            let node = if req.node.is_empty() {
                first.node.clone()
            } else {
                req.node.clone()
            };
            let body = serde_json::json!({ "streams": req.streams, "hls": req.hls });
            return self.start_on(&node, &req.room, body).await;
        }
        let Some(track) = tracks.iter().find(|t| t.track == req.track) else {
            return Err(Status::not_found(
                if participants.is_empty() && tracks.is_empty() {
                    format!("no room {}", req.room)
                } else {
                    format!("no track {} in room {}", req.track, req.room)
                },
            ));
        };
        let node = if req.node.is_empty() {
            crate::records::node_of(&track.origin).to_owned()
        } else {
            req.node.clone()
        };
        let body = serde_json::json!({ "track": req.track });
        self.start_on(&node, &req.room, body).await
    }

    async fn stop_recording(
        &self,
        r: Request<pb::StopRecordingRequest>,
    ) -> Result<GrpcResponse<pb::RecordingInfo>, Status> {
        let g = self.0.grants(&r)?;
        let id = r.into_inner().id;
        let path = format!("/admin/recordings/{}", segment(&id));
        for node in self.0.membership.nodes() {
            let found = self
                .0
                .nodes
                .call(&node, reqwest::Method::GET, &path, None)
                .await;
            let Ok(body) = found else { continue };
            let listed: Listed = parse(&node.id, &body)?;
            g.may_admin(&listed.room).map_err(status)?;
            let answer = self
                .0
                .call_node(&node.id, reqwest::Method::DELETE, &path, None)
                .await
                .map_err(|s| Status::new(s.code(), detail(s.message())))?;
            let listed: Listed = parse(&node.id, &answer)?;
            return Ok(GrpcResponse::new(listed.into()));
        }
        Err(Status::not_found(format!("no recording {id}")))
    }

    async fn list_recordings(
        &self,
        r: Request<pb::ListRecordingsRequest>,
    ) -> Result<GrpcResponse<pb::ListRecordingsResponse>, Status> {
        let g = self.0.grants(&r)?;
        let room = r.into_inner().room;
        if !room.is_empty() {
            g.may_admin(&room).map_err(status)?;
        }
        let mut recordings: Vec<pb::RecordingInfo> = Vec::new();
        for node in self.0.membership.nodes() {
            // The node lists what the token may see.
            match self
                .0
                .nodes
                .call(&node, reqwest::Method::GET, "/admin/recordings", None)
                .await
            {
                Ok(body) => {
                    let listed: Vec<Listed> = parse(&node.id, &body)?;
                    recordings.extend(
                        listed
                            .into_iter()
                            .filter(|l| room.is_empty() || l.room == room)
                            .filter(|l| g.may_admin(&l.room).is_ok())
                            .map(pb::RecordingInfo::from),
                    );
                }
                Err(e) => tracing::warn!(node = node.id, "listing recordings: {e}"),
            }
        }
        recordings.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        Ok(GrpcResponse::new(pb::ListRecordingsResponse { recordings }))
    }
}
