//! The nodes' administrative HTTP API (`/admin/...` on every node), as a client: what the
//! control plane, and a node acting for an administrator connected to it, use to act on a
//! participant wherever in the cluster it is connected.
//!
//! Finding that node costs nothing for the stage (its registry record names its node) and
//! for a raised hand (likewise); an audience member of a large room has no record of its own,
//! so the nodes hosting the room are asked in turn until one has it. Room names and
//! identities are percent-encoded into the path, so that neither can reach another room.

use crate::auth::{admin_claims, mint};
use crate::membership::Membership;
use crate::records::NodeRecord;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum NodeCallError {
    /// No node has what the call is about (the node answered 404, or none could).
    #[error("{0}")]
    NotFound(String),
    /// The node could not be reached.
    #[error("node {node} unreachable: {detail}")]
    Unavailable { node: String, detail: String },
    /// The node refused or failed the request.
    #[error("node {node} answered {status}: {detail}")]
    Failed {
        node: String,
        status: u16,
        detail: String,
    },
}

/// See the module documentation.
#[derive(Clone)]
pub struct NodeApi {
    http: reqwest::Client,
    /// API key and secret to mint short-lived administrator tokens with.
    key: (String, String),
}

impl NodeApi {
    /// Calls nodes with `http` (see [`crate::tls::http_client`]: nodes may serve HTTPS).
    pub fn new(api_key: String, api_secret: String, http: reqwest::Client) -> Self {
        Self {
            http,
            key: (api_key, api_secret),
        }
    }

    fn token(&self) -> String {
        let claims = admin_claims(&self.key.0, Duration::from_secs(60));
        mint(&self.key.1, &claims).unwrap_or_default()
    }

    /// Calls `path` on `node`; the answer's body on success.
    pub async fn call(
        &self,
        node: &NodeRecord,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, NodeCallError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", node.http_url))
            .bearer_auth(self.token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| NodeCallError::Unavailable {
            node: node.id.clone(),
            detail: e.to_string(),
        })?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        match status {
            200..=299 => Ok(text),
            404 => Err(NodeCallError::NotFound(text)),
            _ => Err(NodeCallError::Failed {
                node: node.id.clone(),
                status,
                detail: text,
            }),
        }
    }

    /// Calls `path` (built for the participant) on the node `identity` of `room` is connected
    /// to, trying the likely nodes first; `NotFound` if no node has it. A node the registry
    /// names for the participant that cannot be reached is an error; one only searched (an
    /// audience member has no record) is skipped.
    pub async fn on_participant(
        &self,
        membership: &Membership,
        room: &str,
        identity: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), NodeCallError> {
        let (named, searched) = candidates(membership, room, identity);
        for (node, is_named) in named
            .into_iter()
            .map(|n| (n, true))
            .chain(searched.into_iter().map(|n| (n, false)))
        {
            match self.call(&node, method.clone(), path, body.clone()).await {
                Ok(_) => return Ok(()),
                Err(NodeCallError::NotFound(_)) => continue,
                Err(e) if is_named => return Err(e),
                Err(e) => tracing::debug!(node = node.id, "searching for {identity}: {e}"),
            }
        }
        Err(NodeCallError::NotFound(format!(
            "no participant {identity} in room {room}"
        )))
    }
}

/// The nodes that may hold `identity` in `room`: those the registry names for it (its record,
/// for the stage or the audience of a small room; its raised hand), and the other nodes hosting
/// the room, to search.
pub fn candidates(
    membership: &Membership,
    room: &str,
    identity: &str,
) -> (Vec<NodeRecord>, Vec<NodeRecord>) {
    let (participants, _) = membership.room(room);
    let mut named: Vec<String> = participants
        .iter()
        .filter(|p| p.identity == identity)
        .map(|p| p.node.clone())
        .chain(
            membership
                .hands(room)
                .into_iter()
                .filter(|h| h.identity == identity)
                .map(|h| crate::records::node_of(&h.node).to_owned()),
        )
        .collect();
    named.sort();
    named.dedup();
    let prefix = membership.keys().room_nodes_prefix(room);
    let mut searched: Vec<String> = membership
        .list(&prefix)
        .into_iter()
        .filter_map(|(k, _)| Some(crate::records::node_of(k.strip_prefix(&prefix)?).to_owned()))
        .filter(|n| !named.contains(n))
        .collect();
    searched.sort();
    searched.dedup();
    let nodes = membership.nodes();
    let records = |ids: Vec<String>| -> Vec<NodeRecord> {
        ids.iter()
            .filter_map(|id| nodes.iter().find(|n| n.id == *id).cloned())
            .collect()
    };
    (records(named), records(searched))
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay as they are).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The admin API path of a participant: `/admin/rooms/{room}/participants/{identity}{rest}`.
pub fn participant_path(room: &str, identity: &str, rest: &str) -> String {
    format!(
        "/admin/rooms/{}/participants/{}{rest}",
        segment(room),
        segment(identity)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_their_room() {
        assert_eq!(
            participant_path("a/../b", "x?y", "/mute"),
            "/admin/rooms/a%2F..%2Fb/participants/x%3Fy/mute"
        );
        assert_eq!(segment("plain-Name_1.~"), "plain-Name_1.~");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
