#![allow(dead_code)]
//! A **model** of the registry and signaling traffic of one large room, after the rules of
//! `node/src/media/room/roster.rs` and `node/src/media/room/roles.rs`. It is not the node's code
//! (that needs etcd and WebSockets); it counts the messages those rules send, in virtual time,
//! and carries no media. The rules:
//!
//! - a participant is *announced* (one registry record, one `participant_joined` to every client
//!   of the room on every node) if it is on stage, or if the room, as its node knows it, had
//!   fewer participants than the large-room threshold when it joined; otherwise it is *counted*;
//! - a node writes its counted audience (one record per node and room) at once when it goes
//!   from zero or to zero, otherwise at most every [`AUDIENCE_REPORT`] if it changed, checked
//!   at the room's housekeeping, every [`HOUSEKEEPING`] from the room's first join on the node;
//! - every registry write reaches every other node as one watch event, [`WATCH_DELAY`] later;
//! - at housekeeping, the node's clients get one `participant_count` if the counts changed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// `DEFAULT_LARGE_ROOM_THRESHOLD` in room/roster.rs.
pub const THRESHOLD: u32 = 50;
/// `HOUSEKEEPING` in room.rs: counts are told to clients at most this often.
pub const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// `AUDIENCE_REPORT` in room/roles.rs.
pub const AUDIENCE_REPORT: Duration = Duration::from_secs(2);
/// From a write to the watch event on another node (etcd in one region; an assumption).
pub const WATCH_DELAY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    Join {
        node: usize,
        stage: bool,
    },
    Housekeeping {
        node: usize,
    },
    /// Another node's participant record (an announced join).
    ParticipantRecord {
        to: usize,
    },
    /// Another node's audience record.
    AudienceRecord {
        to: usize,
        from: usize,
        count: u32,
    },
}

/// What one node did and received.
#[derive(Default)]
pub struct NodeStats {
    pub joins: u64,
    /// Participant records written (announced joins).
    pub participant_writes: u64,
    /// Audience records written.
    pub audience_writes: u64,
    /// Watch events received (other nodes' writes).
    pub watch_events: u64,
    /// Join time of each client here.
    pub clients: Vec<Duration>,
    /// When every client here got a `participant_count`.
    pub count_broadcasts: Vec<Duration>,
    /// When every client here got a `participant_joined`.
    pub joined_broadcasts: Vec<Duration>,
}

/// What one node knows of the room (the counters of `Roster`).
#[derive(Default)]
struct NodeState {
    /// The room has had a participant here: its housekeeping runs.
    open: bool,
    announced_here: u32,
    counted_here: u32,
    /// Announced participants of other nodes, known from their records.
    announced_elsewhere: u32,
    /// Counted audience of each other node, from its audience record.
    remote_audience: Vec<u32>,
    remote_audience_total: u32,
    /// The count this node last wrote, and when.
    reported: u32,
    reported_at: Option<Duration>,
    /// The room's size its clients last heard (no role changes here, so the size alone
    /// tells whether the counts changed).
    size_sent: Option<u32>,
}

impl NodeState {
    fn size(&self) -> u32 {
        self.announced_here
            + self.counted_here
            + self.announced_elsewhere
            + self.remote_audience_total
    }
}

/// See the module documentation.
pub struct Model {
    pub now: Duration,
    pub stats: Vec<NodeStats>,
    nodes: Vec<NodeState>,
    queue: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    seq: u64,
}

impl Model {
    pub fn new(nodes: usize) -> Self {
        Self {
            now: Duration::ZERO,
            stats: (0..nodes).map(|_| NodeStats::default()).collect(),
            nodes: (0..nodes)
                .map(|_| NodeState {
                    remote_audience: vec![0; nodes],
                    ..Default::default()
                })
                .collect(),
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn at(&mut self, t: Duration, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, e)));
    }

    /// A participant joins `node` at `t` (on stage: it may publish).
    pub fn join(&mut self, t: Duration, node: usize, stage: bool) {
        self.at(t, Event::Join { node, stage });
    }

    /// Runs every event up to `until`.
    pub fn run(&mut self, until: Duration) {
        while let Some(Reverse((t, _, e))) = self.queue.peek().copied() {
            if t > until {
                break;
            }
            self.queue.pop();
            self.now = t;
            self.handle(e);
        }
        self.now = until;
    }

    fn handle(&mut self, e: Event) {
        let now = self.now;
        match e {
            Event::Join { node, stage } => {
                let n = &mut self.nodes[node];
                if !n.open {
                    n.open = true;
                    self.at(now + HOUSEKEEPING, Event::Housekeeping { node });
                }
                let n = &mut self.nodes[node];
                let announced = stage || n.size() < THRESHOLD;
                self.stats[node].joins += 1;
                if announced {
                    n.announced_here += 1;
                    // Clients already here hear of it; so does every other node.
                    self.tell_joined(node);
                    self.stats[node].participant_writes += 1;
                    for to in (0..self.nodes.len()).filter(|&o| o != node) {
                        self.at(now + WATCH_DELAY, Event::ParticipantRecord { to });
                    }
                } else {
                    n.counted_here += 1;
                    if (n.counted_here == 0) != (n.reported == 0) {
                        self.report(node);
                    }
                }
                self.stats[node].clients.push(now);
            }
            Event::Housekeeping { node } => {
                let n = &mut self.nodes[node];
                if n.size_sent != Some(n.size()) {
                    n.size_sent = Some(n.size());
                    self.stats[node].count_broadcasts.push(now);
                }
                let n = &self.nodes[node];
                let due = n
                    .reported_at
                    .is_none_or(|t| now.saturating_sub(t) >= AUDIENCE_REPORT);
                if due && n.counted_here != n.reported {
                    self.report(node);
                }
                self.at(now + HOUSEKEEPING, Event::Housekeeping { node });
            }
            Event::ParticipantRecord { to } => {
                self.stats[to].watch_events += 1;
                self.nodes[to].announced_elsewhere += 1;
                self.tell_joined(to);
            }
            Event::AudienceRecord { to, from, count } => {
                self.stats[to].watch_events += 1;
                let n = &mut self.nodes[to];
                n.remote_audience_total = n.remote_audience_total - n.remote_audience[from] + count;
                n.remote_audience[from] = count;
            }
        }
    }

    /// `participant_joined` to every client of the room on `node`.
    fn tell_joined(&mut self, node: usize) {
        if !self.stats[node].clients.is_empty() {
            self.stats[node].joined_broadcasts.push(self.now);
        }
    }

    /// The node writes its counted audience; every other node gets the watch event.
    fn report(&mut self, node: usize) {
        let now = self.now;
        let n = &mut self.nodes[node];
        let count = n.counted_here;
        n.reported = count;
        n.reported_at = Some(now);
        self.stats[node].audience_writes += 1;
        for to in (0..self.nodes.len()).filter(|&o| o != node) {
            self.at(
                now + WATCH_DELAY,
                Event::AudienceRecord {
                    to,
                    from: node,
                    count,
                },
            );
        }
    }

    /// The most messages of any kind a client of `node` got within one second, counting only
    /// what it got after `since`.
    pub fn max_per_second(&self, node: usize, since: Duration) -> usize {
        let s = &self.stats[node];
        let mut times: Vec<Duration> = s
            .count_broadcasts
            .iter()
            .chain(&s.joined_broadcasts)
            .copied()
            .filter(|t| *t > since)
            .collect();
        times.sort_unstable();
        // Every client here gets every broadcast made while it is connected, so the busiest
        // second of the broadcasts is the busiest second of the client that saw them all.
        let mut max = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= Duration::from_secs(1) {
                start += 1;
            }
            max = max.max(end - start + 1);
        }
        max
    }
}
