//! Draining: taking a node out of service without cutting anyone off abruptly.
//!
//! A draining node admits no one, says so in its registry record (placement skips it), and
//! tells its WebSocket participants to reconnect to another node (a `migrate` message; the demo
//! client follows it). Its recordings are stopped first, so their files are finalised. It is
//! done when its last participant has left, or at the deadline; then the process exits.

use crate::media::{AdminOp, Command, MediaPlane};
use sfu_control::Membership;
use sfu_control::placement::{self, NodeView, Policy};
use sfu_control::records::NodeState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How often a draining node checks whether it is empty (and re-sends migrations to those
/// still there, e.g. WebSocket clients that had not joined yet).
const CHECK: Duration = Duration::from_secs(1);

/// The drain state of a node.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    finished: AtomicBool,
    done: Notify,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining (once); finishes when the node is empty or at `deadline`.
    pub fn start(
        self: &Arc<Self>,
        node_id: Arc<str>,
        media: MediaPlane,
        membership: Membership,
        deadline: Duration,
    ) {
        if self.draining.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            ?deadline,
            "draining: no new joins; participants are sent to other nodes"
        );
        let me = self.clone();
        tokio::spawn(async move {
            let until = Instant::now() + deadline;
            // Recordings end cleanly (finalised files) before participants move away.
            media.stop_all_recordings().await;
            loop {
                if let Some(url) = target(&node_id, &membership) {
                    for i in 0..media.worker_count() {
                        let (tx, _rx) = tokio::sync::oneshot::channel();
                        let _ = media.send_to(
                            i,
                            Command::Admin {
                                op: AdminOp::Migrate { url: url.clone() },
                                reply: tx,
                            },
                        );
                    }
                }
                tokio::time::sleep(CHECK).await;
                let left = media.snapshot().await.participants;
                if left == 0 {
                    tracing::info!("drained: no participant left");
                    break;
                }
                if Instant::now() >= until {
                    tracing::warn!(
                        left,
                        "drain deadline reached with participants still connected"
                    );
                    break;
                }
            }
            me.finished.store(true, Ordering::Relaxed);
            me.done.notify_waiters();
        });
    }

    /// Waits until a drain has finished.
    pub async fn finished(&self) {
        loop {
            let notified = self.done.notified();
            if self.finished.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

/// Where this node's participants should go: placement over the other nodes.
fn target(me: &str, membership: &Membership) -> Option<String> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let views: Vec<NodeView> = membership
        .nodes()
        .into_iter()
        .filter(|n| n.id != me && n.state == NodeState::Active)
        .map(|n| NodeView::from_record(&n))
        .collect();
    placement::place(
        &Policy::default(),
        now_ms,
        &views,
        &Default::default(),
        None,
    )
    .ok()
    .map(|n| n.http_url.clone())
}
