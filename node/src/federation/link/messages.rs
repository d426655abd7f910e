//! The federation's own stream with a peer (see [`crate::federation::control`]): reading and
//! writing its messages, and applying what a peer announces (its mappings, the rosters of
//! mapped rooms, written into our registry). A message that does not parse closes the link and
//! is counted (`malformed_message`).

use super::{FederationLinks, bump};
use crate::federation::control::{self, Message};
use crate::federation::{levels, roster};
use crate::webhook::ParticipantRef;
use sfu_relay::NodeId;
use sfu_relay::quic::LinkHandler;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The most mappings a peer may announce.
const MAX_PEER_MAPPINGS: usize = 10_000;

impl FederationLinks {
    /// The rooms both sides map with `peer` are known (its mappings came, or it sent none in
    /// time): the relay learns of the link (after a failover it asks again at once for the
    /// tracks it wanted), and the frames held meanwhile are handled, in the order they came.
    /// The link is announced under the peers' lock, as its end is, so a link that went in
    /// between is never announced. Frames are handled in batches, the hold left empty but in
    /// place meanwhile, so a frame arriving during a batch queues behind it instead of
    /// overtaking it (an unsubscription before the subscription it undoes); the hold goes
    /// once a batch finds it empty.
    pub(super) fn mappings_known(&self, peer: &str) {
        {
            let mut peers = self.peers();
            let Some(p) = peers.get_mut(peer) else { return };
            if let Some(link) = p.relay_link.take() {
                self.router.link_up(link);
            }
        }
        let from = NodeId::from(peer);
        loop {
            let batch = {
                let mut peers = self.peers();
                let Some(early) = peers.get_mut(peer).and_then(|p| p.early.as_mut()) else {
                    return;
                };
                if early.is_empty() {
                    if let Some(p) = peers.get_mut(peer) {
                        p.early = None;
                    }
                    return;
                }
                std::mem::take(early)
            };
            for f in batch {
                self.handle_frame(&from, f);
            }
        }
    }

    pub(super) fn on_message(&self, peer: &str, m: Message) {
        let mut peers = self.peers();
        let Some(p) = peers.get_mut(peer) else { return };
        match m {
            Message::Mappings { rooms } => {
                if rooms.len() > MAX_PEER_MAPPINGS {
                    tracing::warn!(%peer, n = rooms.len(), "federation peer announced too many mappings; ignored");
                    return;
                }
                p.theirs = rooms.into_iter().collect();
                // Before the rosters that follow on the stream arrive.
                self.update_active(peer, p);
                drop(peers);
                self.mappings_known(peer);
            }
            Message::Roster {
                room,
                participants,
                tracks,
            } => {
                if !p.active.contains_key(&room) {
                    bump(&self.stats.rosters_refused);
                    self.metrics.refuse("roster");
                    tracing::info!(%peer, %room, "federation roster for a room not mapped by both sides refused");
                    return;
                }
                match roster::federated(peer, &p.link_name, participants, tracks) {
                    Ok((ps, ts)) => {
                        let keys = self.membership.keys();
                        let mut written = Vec::new();
                        for r in &ps {
                            let k = keys.participant(&room, &r.sid);
                            self.membership.set_json(k.clone(), r);
                            written.push(k);
                        }
                        // Tracks our administrator stopped stay out of our cluster.
                        for t in ts.iter().filter(|t| !self.is_stopped(&room, &t.track)) {
                            let k = keys.track(&room, &t.track);
                            self.membership.set_json(k.clone(), t);
                            written.push(k);
                        }
                        for old in p.written.remove(&room).unwrap_or_default() {
                            if !written.contains(&old) {
                                self.membership.remove(old);
                            }
                        }
                        p.written.insert(room.clone(), written);
                        let heard = levels::speakers(&ts, |t| self.is_stopped(&room, &t.track));
                        p.heard.insert(room.clone(), heard);
                        p.tracks.insert(room.clone(), ts);
                        let members: Vec<ParticipantRef> = ps
                            .iter()
                            .map(|r| ParticipantRef {
                                sid: r.sid.clone(),
                                identity: r.identity.clone(),
                                name: r.name.clone(),
                            })
                            .collect();
                        let before = p.members.insert(room.clone(), members.clone());
                        self.announce(&room, &before.unwrap_or_default(), &members);
                    }
                    Err(e) => {
                        bump(&self.stats.rosters_refused);
                        self.metrics.refuse("roster");
                        tracing::warn!(%peer, %room, "federation roster refused: {e}");
                    }
                }
            }
        }
    }

    /// The federation's own stream with one peer: opened by the side whose name sorts first.
    pub(super) async fn control_stream(
        self: Arc<Self>,
        peer: String,
        conn: sfu_relay::quinn::Connection,
        mut out: mpsc::UnboundedReceiver<Message>,
    ) {
        let streams = if self.name < peer {
            conn.open_bi().await
        } else {
            conn.accept_bi().await
        };
        let Ok((mut send, mut recv)) = streams else {
            return;
        };
        let writer = async {
            while let Some(m) = out.recv().await {
                if control::write(&mut send, &m).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            loop {
                match control::read(&mut recv).await {
                    Ok(m) => self.on_message(&peer, m),
                    Err(e) if e.is_peer_fault() => {
                        bump(&self.stats.malformed);
                        self.metrics.refuse("malformed_message");
                        tracing::warn!(%peer, "federation link closed: {e}");
                        conn.close(6u32.into(), b"malformed federation message");
                        break;
                    }
                    Err(e) => {
                        // A link without its federation stream carries nothing useful.
                        tracing::info!(%peer, "federation stream ended: {e}");
                        conn.close(6u32.into(), b"federation stream ended");
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
    }
}
