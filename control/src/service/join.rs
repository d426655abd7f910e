//! Placement of joining participants: `JoinService.Join` and `POST /v1/join`.
//!
//! The decision is [`crate::placement::place`] over the registry's view, with two pieces of
//! soft state this replica keeps: the joins it sent to each node since that node's last load
//! report (so a storm does not pile onto the node that looked emptiest two seconds ago), and
//! each node's join rate as a token bucket (a node past it is skipped; if every node is,
//! the client is told to come back: `429` with `Retry-After`, `RESOURCE_EXHAUSTED` in gRPC).
//!
//! A third piece keeps a new meeting together: a participant is in the registry only once it
//! connected and its node wrote the record, a second or more after it was placed, so joins
//! asked at once (a meeting's first minute, or everyone reconnecting after a node died) would
//! each see an empty room and spread over the least loaded nodes. The joins this replica placed
//! in the last [`RECENT_FOR`] count as the room's participants on their node until the registry
//! shows them there.
//!
//! A client reconnecting after its node died names that node in `avoid`: a killed node stays
//! in the registry (and keeps its participants, so a meeting's affinity points at it) until its
//! lease expires. Avoided nodes are skipped while any other node can take the join; if none
//! can, they are considered again (the client may have seen a network blip, not a death).

use super::{Api, Control, now_ms, status};
use crate::placement::{self, NodeView, RoomView};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sfu_proto::control as pb;
use sfu_proto::control::join_service_server::JoinService;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use tonic::{Request, Response as GrpcResponse, Status};

/// Soft state of placement, per node.
#[derive(Default)]
pub(super) struct Placed {
    nodes: HashMap<String, NodePlaced>,
    /// Recent joins per room: identity → the node it was sent to, and when.
    recent: HashMap<String, HashMap<String, (String, Instant)>>,
    /// When `recent` was last cleared of old joins.
    swept: Option<Instant>,
}

/// How long a placed join counts for its room before the registry shows it: connecting, the
/// node's record and the watch take about a second, a loaded page several.
const RECENT_FOR: Duration = Duration::from_secs(10);

struct NodePlaced {
    /// The load report the count is relative to.
    report_ms: u64,
    since_report: u32,
    /// Join-rate bucket: tokens and when they were counted.
    tokens: f64,
    at: Instant,
}

/// At most this many nodes are avoided per join: a client reports the one or two it lost.
const MAX_AVOID: usize = 8;

/// Why no node could take a join now.
enum Refusal {
    /// Every usable node is past its join rate: retry after this long.
    Busy(Duration),
    Other(Status),
}

impl Placed {
    fn placed_since(&self, node: &str, report_ms: u64) -> u32 {
        self.nodes
            .get(node)
            .filter(|p| p.report_ms == report_ms)
            .map_or(0, |p| p.since_report)
    }

    /// Takes a join from the node's rate, or says when one is available.
    fn take(
        &mut self,
        node: &str,
        report_ms: u64,
        rate: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let p = self.nodes.entry(node.to_owned()).or_insert(NodePlaced {
            report_ms,
            since_report: 0,
            tokens: f64::from(rate),
            at: now,
        });
        if rate > 0 {
            let rate = f64::from(rate);
            p.tokens =
                (p.tokens + now.saturating_duration_since(p.at).as_secs_f64() * rate).min(rate);
            p.at = now;
            if p.tokens < 1.0 {
                return Err(Duration::from_secs_f64((1.0 - p.tokens) / rate));
            }
            p.tokens -= 1.0;
        }
        if p.report_ms != report_ms {
            p.report_ms = report_ms;
            p.since_report = 0;
        }
        p.since_report += 1;
        Ok(())
    }

    /// Remembers that `identity` was sent to `node` for `room` (a later placement of the same
    /// identity replaces it).
    fn remember(&mut self, room: &str, identity: &str, node: &str, now: Instant) {
        if self
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= RECENT_FOR)
        {
            self.swept = Some(now);
            self.recent.retain(|_, joins| {
                joins.retain(|_, (_, at)| now.saturating_duration_since(*at) < RECENT_FOR);
                !joins.is_empty()
            });
        }
        self.recent
            .entry(room.to_owned())
            .or_default()
            .insert(identity.to_owned(), (node.to_owned(), now));
    }

    /// The joins of `room` placed in the last [`RECENT_FOR`] as (node, identity), but for
    /// `asking`'s own: a participant asking again is not drawn to where it was sent before.
    fn recent<'a>(
        &'a self,
        room: &str,
        asking: &'a str,
        now: Instant,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.recent
            .get(room)
            .into_iter()
            .flatten()
            .filter(move |(identity, (_, at))| {
                identity.as_str() != asking && now.saturating_duration_since(*at) < RECENT_FOR
            })
            .map(|(identity, (node, _))| (node.as_str(), identity.as_str()))
    }
}

impl Control {
    /// Nodes as placement sees them for `asking` joining `room`, and the room.
    fn views(&self, room: &str, asking: &str, now: Instant) -> (Vec<NodeView>, RoomView) {
        let (in_room, tracks) = self.membership.room(room);
        let audience = self.membership.audience(room);
        let stage_nodes: BTreeSet<&str> = tracks.iter().map(|t| t.origin.as_str()).collect();
        let placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let registered: HashSet<(&str, &str)> = in_room
            .iter()
            .map(|p| (p.node.as_str(), p.identity.as_str()))
            .collect();
        let mut on_the_way: HashMap<&str, u32> = HashMap::new();
        for (node, identity) in placed.recent(room, asking, now) {
            if !registered.contains(&(node, identity)) {
                *on_the_way.entry(node).or_default() += 1;
            }
        }
        let views = self
            .membership
            .nodes()
            .iter()
            .map(|n| {
                let mut v = NodeView::from_record(n);
                v.room_participants = in_room.iter().filter(|p| p.node == n.id).count() as u32
                    + audience
                        .iter()
                        .filter(|(name, _)| crate::records::node_of(name) == n.id)
                        .map(|(_, c)| c)
                        .sum::<u32>()
                    + on_the_way.get(n.id.as_str()).copied().unwrap_or(0);
                v.stage_here = stage_nodes.contains(n.id.as_str());
                v.placed_since_report = placed.placed_since(&n.id, n.updated_ms);
                v
            })
            .collect();
        let counts = self.counts(room);
        let config = self.membership.room_config(room).unwrap_or_default();
        let room = RoomView {
            size: counts.stage + counts.audience,
            large_threshold: config.large_room_threshold,
        };
        (views, room)
    }

    /// The join decision for a participant's token, skipping the nodes in `avoid` while
    /// another one can take it.
    fn decide(
        &self,
        token: &str,
        region: &str,
        avoid: &[String],
    ) -> Result<pb::JoinResponse, Refusal> {
        let grants = self
            .auth
            .verify(token)
            .map_err(|e| Refusal::Other(status(e)))?;
        let room_name = grants.room.clone().unwrap_or_default();
        grants
            .may_join(&room_name)
            .map_err(|e| Refusal::Other(status(e)))?;
        let now = Instant::now();
        let (mut views, room) = self.views(&room_name, &grants.identity, now);
        let avoid = &avoid[..avoid.len().min(MAX_AVOID)];
        let (mut avoided, kept): (Vec<NodeView>, Vec<NodeView>) =
            views.into_iter().partition(|v| avoid.contains(&v.id));
        views = kept;
        if let Some(c) = self.membership.room_config(&room_name)
            && c.max_participants > 0
            && room.size >= c.max_participants
        {
            return Err(Refusal::Other(Status::resource_exhausted(format!(
                "room {room_name} is full"
            ))));
        }
        let region = (!region.is_empty()).then_some(region);
        let mut soonest: Option<Duration> = None;
        // The best node past its join rate gives way to the next best.
        loop {
            let chosen = match placement::place(&self.policy, now_ms(), &views, &room, region) {
                Ok(n) => n.clone(),
                Err(_) if soonest.is_none() && !avoided.is_empty() => {
                    views.append(&mut avoided);
                    continue;
                }
                Err(e) => {
                    return Err(match soonest {
                        Some(wait) => Refusal::Busy(wait),
                        None => Refusal::Other(Status::unavailable(e.to_string())),
                    });
                }
            };
            let rate = self
                .membership
                .nodes()
                .iter()
                .find(|n| n.id == chosen.id)
                .map_or(0, |n| n.limits.joins_per_sec);
            let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
            match placed.take(&chosen.id, chosen.updated_ms, rate, now) {
                Ok(()) => {
                    placed.remember(&room_name, &grants.identity, &chosen.id, now);
                    return Ok(pb::JoinResponse {
                        node: chosen.id,
                        url: chosen.http_url,
                    });
                }
                Err(wait) => {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    views.retain(|v| v.id != chosen.id);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl JoinService for Api {
    async fn join(
        &self,
        r: Request<pb::JoinRequest>,
    ) -> Result<GrpcResponse<pb::JoinResponse>, Status> {
        let req = r.into_inner();
        match self.0.decide(&req.token, &req.region, &req.avoid) {
            Ok(j) => Ok(GrpcResponse::new(j)),
            Err(Refusal::Other(s)) => Err(s),
            Err(Refusal::Busy(wait)) => Err(Status::resource_exhausted(format!(
                "every node is admitting joins at its rate; retry in {} ms",
                wait.as_millis().max(1)
            ))),
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct JoinJson {
    token: String,
    #[serde(default)]
    region: String,
    /// Node ids the client lost its connection to (see the module documentation).
    #[serde(default)]
    avoid: Vec<String>,
}

fn problem(code: StatusCode, kind: &str, detail: &str) -> Response {
    let problem = serde_json::json!({
        "type": kind,
        "title": code.canonical_reason().unwrap_or("error"),
        "status": code.as_u16(),
        "detail": detail,
    });
    (
        code,
        [("content-type", "application/problem+json")],
        problem.to_string(),
    )
        .into_response()
}

/// `POST /v1/join` for browsers: `{"token": "...", "region": "...", "avoid": ["node"]}` →
/// `{"node", "url"}`.
pub(super) async fn join_json(State(api): State<Api>, Json(body): Json<JoinJson>) -> Response {
    match api.0.decide(&body.token, &body.region, &body.avoid) {
        Ok(j) => Json(serde_json::json!({ "node": j.node, "url": j.url })).into_response(),
        Err(Refusal::Busy(wait)) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut r = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_joins",
                &format!(
                    "every node is admitting joins at its rate; retry in {}s",
                    secs.max(1)
                ),
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
            r
        }
        Err(Refusal::Other(s)) => {
            let code = match s.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            problem(code, &format!("{:?}", s.code()).to_lowercase(), s.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_past_its_rate_waits_and_placements_count_until_its_next_report() {
        let mut p = Placed::default();
        let t0 = Instant::now();
        assert!(p.take("a", 100, 2, t0).is_ok());
        assert!(p.take("a", 100, 2, t0).is_ok());
        let wait = p.take("a", 100, 2, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(p.placed_since("a", 100), 2);
        assert!(p.take("a", 200, 2, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(
            p.placed_since("a", 200),
            1,
            "a new report starts the count again"
        );
        assert_eq!(p.placed_since("a", 100), 0);
        for _ in 0..100 {
            assert!(p.take("b", 1, 0, t0).is_ok(), "0: no rate known, no limit");
        }
    }

    #[test]
    fn recent_joins_count_for_their_room_but_not_for_the_one_asking_and_expire() {
        let mut p = Placed::default();
        let t0 = Instant::now();
        p.remember("m", "ann", "a", t0);
        p.remember("m", "bob", "a", t0);
        p.remember("m", "bob", "b", t0 + Duration::from_secs(1));
        p.remember("other", "cy", "c", t0);
        let seen = |p: &Placed, asking: &str, at: Instant| {
            let mut v: Vec<(String, String)> = p
                .recent("m", asking, at)
                .map(|(n, i)| (n.to_owned(), i.to_owned()))
                .collect();
            v.sort();
            v
        };
        let pair = |n: &str, i: &str| (n.to_owned(), i.to_owned());
        assert_eq!(
            seen(&p, "dan", t0),
            [pair("a", "ann"), pair("b", "bob")],
            "a later placement of bob replaces the earlier"
        );
        assert_eq!(seen(&p, "ann", t0), [pair("b", "bob")], "not ann's own");
        let later = t0 + RECENT_FOR + Duration::from_millis(500);
        assert_eq!(seen(&p, "dan", later), [pair("b", "bob")], "ann's expired");
        p.remember("m", "eve", "a", later + RECENT_FOR);
        assert_eq!(
            p.recent.len(),
            1,
            "old rooms are swept: {:?}",
            p.recent.keys()
        );
        assert_eq!(p.recent["m"].len(), 1);
    }
}
