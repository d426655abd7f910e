//! One large room at internet scale, in virtual time: one origin node publishes a video track,
//! 10,000 viewers watch it from 100 nodes (100 on each, the origin included).
//!
//! **Real:** every node runs the relay core (`sfu_relay::core::Relay`, with the node's
//! fan-out limit of 4) and the forwarding core (`sfu_core::Room`, one sink per viewer: 10,000
//! sinks), wired as the node wires them (`sfu_relay::glue`); the tree the track spreads over
//! is the one the relay builds, and the media counted is what the forwarding cores sent.
//! **Modelled:** the network (per-link latency, no loss; see `support/cluster_sim.rs`), the
//! detection of a dead node (as its lease running out), and the registry and signaling
//! traffic of the joins (`support/audience_model.rs`, after the node's large-room rules).
//!
//! The figures are printed (`--nocapture`) and recorded in BENCHMARKS.md.

#[path = "support/audience_model.rs"]
mod audience_model;
#[path = "support/cluster_sim.rs"]
mod cluster_sim;

use cluster_sim::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::sync::OnceLock;

const NODES: usize = 100;
const VIEWERS: usize = 10_000;
/// The node's default (`cluster.fanout`) and the relay's (`RelayConfig::default()`).
const FANOUT: usize = 4;
/// One packet per frame at 30 frames a second, one layer: enough to see every node served;
/// the relay's work is per packet and link, not per byte.
const VIDEO: (Duration, usize) = (Duration::from_millis(33), 1);
/// Viewers join in steps of 20 every 10 ms (2,000 a second, so the tree forms under a burst:
/// every node's first viewer arrives within 50 ms).
const JOIN_STEP: Duration = Duration::from_millis(10);
const JOINS_PER_STEP: usize = 20;
/// After the joins, before measuring: keyframes asked for and delivered everywhere.
const SETTLE: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(3);
/// A node's registry lease (`control`'s default TTL): a node that dies without closing its
/// links is known dead when its lease expires.
const LEASE_TTL: Duration = Duration::from_secs(5);
/// What the relay may take, after the death is known, to feed every orphaned node again.
const REPAIR_BOUND: Duration = Duration::from_secs(2);

fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

/// The cluster with every viewer joined and media flowing.
fn big_room() -> Sim {
    let names: Vec<String> = (0..NODES).map(node_name).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&refs, FANOUT, Duration::from_millis(20), 0.0, 1);
    sim.keep_payload_ids = false;
    // Nodes in several regions: one-way latency 5-60 ms, fixed per link.
    let mut rng = StdRng::seed_from_u64(11);
    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            let ms = rng.random_range(5..=60);
            sim.link_latency
                .insert((a.clone(), b.clone()), Duration::from_millis(ms));
        }
    }
    sim.run_on(Duration::from_secs(1), VIDEO);
    // Placement spreads the audience: viewer v on node v mod 100, as its sink v / 100 + 1.
    for v in 0..VIEWERS {
        sim.subscribe(&names[v % NODES], (v / NODES + 1) as u64, vec![0]);
        if (v + 1) % JOINS_PER_STEP == 0 {
            sim.run_on(JOIN_STEP, VIDEO);
        }
    }
    sim.run_on(SETTLE, VIDEO);
    sim
}

/// Media datagrams per link (from, to) put on the wire since `since` (an index into
/// `Sim::layer_datagrams`).
fn links(sim: &Sim, since: usize) -> HashMap<(NodeId, NodeId), u64> {
    let mut l = HashMap::new();
    for (_, from, to, _) in &sim.layer_datagrams[since..] {
        *l.entry((from.clone(), to.clone())).or_default() += 1;
    }
    l
}

/// Each node's relay hops from the origin, following who sends media to whom; `Err` names a
/// node fed by more than one node or not reached from the origin.
fn depths(
    links: &HashMap<(NodeId, NodeId), u64>,
    origin: &NodeId,
    nodes: &[NodeId],
) -> Result<BTreeMap<NodeId, usize>, String> {
    let mut parent: HashMap<&NodeId, &NodeId> = HashMap::new();
    for (from, to) in links.keys() {
        if let Some(other) = parent.insert(to, from) {
            return Err(format!("{to} is fed by {from} and {other}"));
        }
    }
    let mut depth = BTreeMap::new();
    for n in nodes {
        let (mut hops, mut at) = (0, n);
        while at != origin {
            at = parent
                .get(at)
                .ok_or(format!("{n} is not fed (stops at {at})"))?;
            hops += 1;
            if hops > nodes.len() {
                return Err(format!("{n}: a loop"));
            }
        }
        depth.insert(n.clone(), hops);
    }
    Ok(depth)
}

/// The depth allowed: ceil(log_F(N)) + 1 hops for N nodes and fan-out F. A full F-ary tree
/// reaches N nodes within ceil(log_F(N)) hops (1 + F + ... + F^d >= F^d); the relay builds the
/// tree greedily (a full node redirects the next subscriber round-robin to one it feeds), not
/// as an optimal one, so one level of slack is allowed.
fn depth_bound(nodes: usize, fanout: usize) -> usize {
    let (mut d, mut reach) = (0, 1);
    while reach < nodes {
        reach *= fanout;
        d += 1;
    }
    d + 1
}

/// Every node below `node` in the tree given by media links.
fn below(links: &HashMap<(NodeId, NodeId), u64>, node: &NodeId) -> Vec<NodeId> {
    let mut found = Vec::new();
    let mut todo = vec![node.clone()];
    while let Some(n) = todo.pop() {
        for (from, to) in links.keys() {
            if *from == n && !found.contains(to) {
                found.push(to.clone());
                todo.push(to.clone());
            }
        }
    }
    found
}

/// The steady state, measured over one window.
struct Steady {
    nodes: Vec<NodeId>,
    /// Nodes the origin ever sent media to (joins included).
    origin_links: usize,
    origin_datagrams_per_packet: f64,
    /// The most nodes any one node sends media to, and which.
    widest: (NodeId, usize),
    /// Media datagrams per link in the window: the tree.
    tree: HashMap<(NodeId, NodeId), u64>,
    depths: Result<BTreeMap<NodeId, usize>, String>,
    /// Packets each viewer got in the window, as a share of those published in it: the least,
    /// and the node of that viewer.
    worst_viewer: (f64, NodeId),
    viewers: usize,
}

fn measure_steady(sim: &mut Sim) -> Steady {
    let origin = sim.origin();
    let nodes: Vec<NodeId> = sim.nodes.keys().cloned().collect();
    let origin_links = links(sim, 0)
        .keys()
        .filter(|(from, _)| *from == origin)
        .count();
    let (since, first_packet) = (sim.layer_datagrams.len(), sim.payload_id);
    let before: HashMap<NodeId, Vec<u64>> = sim
        .nodes
        .iter()
        .map(|(id, n)| (id.clone(), n.delivered.clone()))
        .collect();
    sim.run_on(WINDOW, VIDEO);
    let packets = (sim.payload_id - first_packet) as f64;
    let tree = links(sim, since);
    // Per sending node: (nodes it sends to, datagrams).
    let mut out: HashMap<&NodeId, (usize, u64)> = HashMap::new();
    for ((from, _), n) in &tree {
        let o = out.entry(from).or_default();
        o.0 += 1;
        o.1 += n;
    }
    let origin_datagrams = out.get(&origin).map_or(0, |o| o.1);
    let widest = out
        .iter()
        .map(|(n, o)| ((*n).clone(), o.0))
        .max_by_key(|(_, c)| *c)
        .unwrap();
    let mut worst_viewer = (f64::MAX, origin.clone());
    let mut viewers = 0;
    for (id, n) in &sim.nodes {
        for s in n.received.keys() {
            let s = s.0 as usize;
            let count = |d: &Vec<u64>| d.get(s).copied().unwrap_or(0);
            let share = (count(&n.delivered) - count(&before[id])) as f64 / packets;
            viewers += 1;
            if share < worst_viewer.0 {
                worst_viewer = (share, id.clone());
            }
        }
    }
    Steady {
        depths: depths(&tree, &origin, &nodes[1..]),
        nodes,
        origin_links,
        origin_datagrams_per_packet: origin_datagrams as f64 / packets,
        widest,
        tree,
        worst_viewer,
        viewers,
    }
}

/// An interior node's death and the repair.
struct Recovery {
    dead: NodeId,
    /// Nodes that were below it.
    orphans: usize,
    /// From the death to each orphan's first fresh frame, sorted.
    fed_again: Vec<Duration>,
    never_fed_again: Vec<NodeId>,
    /// The longest any other node went without a fresh frame after the death.
    unaffected_worst: Duration,
    depths: Result<BTreeMap<NodeId, usize>, String>,
    widest: usize,
}

/// Kills the interior node with the most nodes below it (the worst case), without a word:
/// its links stay up until its lease runs out.
fn kill_interior(sim: &mut Sim, tree: &HashMap<(NodeId, NodeId), u64>) -> Recovery {
    let origin = sim.origin();
    let dead = sim
        .nodes
        .keys()
        .filter(|n| **n != origin)
        .max_by_key(|n| below(tree, n).len())
        .unwrap()
        .clone();
    let orphans = below(tree, &dead);
    let died = sim.now;
    sim.set_mark();
    sim.partition(&dead);
    sim.run_on(LEASE_TTL, VIDEO);
    sim.notice_down(&dead);
    // Past the bound, so a slow repair is measured rather than cut short.
    sim.run_on(REPAIR_BOUND + Duration::from_millis(500), VIDEO);

    let since_death = |n: &NodeId| sim.nodes[n].first_since_mark.map(|t| t - died);
    let (mut fed_again, mut never_fed_again) = (Vec::new(), Vec::new());
    for o in &orphans {
        match since_death(o) {
            Some(t) => fed_again.push(t),
            None => never_fed_again.push(o.clone()),
        }
    }
    fed_again.sort_unstable();
    let unaffected_worst = sim
        .nodes
        .keys()
        .filter(|n| **n != dead && **n != origin && !orphans.contains(n))
        .filter_map(since_death)
        .max()
        .unwrap();

    let since = sim.layer_datagrams.len();
    sim.run_on(Duration::from_millis(500), VIDEO);
    let repaired = links(sim, since);
    let alive: Vec<NodeId> = sim
        .nodes
        .keys()
        .filter(|n| **n != origin && **n != dead)
        .cloned()
        .collect();
    let widest = sim
        .nodes
        .keys()
        .map(|n| repaired.keys().filter(|(f, _)| f == n).count())
        .max()
        .unwrap_or(0);
    Recovery {
        depths: depths(&repaired, &origin, &alive),
        dead,
        orphans: orphans.len(),
        fed_again,
        never_fed_again,
        unaffected_worst,
        widest,
    }
}

/// One run of the scenario, shared by the tests that check its figures: the joins, the
/// steady state, then the death of an interior node.
struct Figures {
    steady: Steady,
    recovery: Recovery,
    /// Wall-clock time of the simulation (debug build).
    wall: Duration,
}

fn figures() -> &'static Figures {
    static FIGURES: OnceLock<Figures> = OnceLock::new();
    FIGURES.get_or_init(|| {
        let wall = std::time::Instant::now();
        let mut sim = big_room();
        let steady = measure_steady(&mut sim);
        let recovery = kill_interior(&mut sim, &steady.tree);
        Figures {
            steady,
            recovery,
            wall: wall.elapsed(),
        }
    })
}

fn per_depth(depths: &BTreeMap<NodeId, usize>) -> BTreeMap<usize, usize> {
    let mut per = BTreeMap::new();
    for d in depths.values() {
        *per.entry(*d).or_insert(0) += 1;
    }
    per
}

#[test]
fn the_origin_sends_one_copy_per_link_to_at_most_fanout_nodes() {
    let f = figures();
    let s = &f.steady;
    println!(
        "scale: {} viewers on {} nodes (simulated in {:.1?}); origin links: {} (fan-out \
         {FANOUT}), datagrams per packet at origin: {:.2}, widest node: {} sends to {}",
        s.viewers,
        s.nodes.len(),
        f.wall,
        s.origin_links,
        s.origin_datagrams_per_packet,
        s.widest.0,
        s.widest.1
    );
    assert_eq!(s.viewers, VIEWERS, "every viewer is a sink somewhere");
    assert!(
        s.origin_links <= FANOUT,
        "the origin sends to {} nodes",
        s.origin_links
    );
    assert!(
        s.origin_datagrams_per_packet <= FANOUT as f64,
        "{} datagrams per packet at the origin",
        s.origin_datagrams_per_packet
    );
    assert!(
        s.widest.1 <= FANOUT,
        "{} feeds {} nodes, past the fan-out",
        s.widest.0,
        s.widest.1
    );
}

#[test]
fn the_tree_is_shallow_and_every_node_is_served() {
    let s = &figures().steady;
    let depths = s
        .depths
        .as_ref()
        .expect("one feed per node, all from the origin");
    let max = depths.values().max().copied().unwrap_or(0);
    let bound = depth_bound(s.nodes.len(), FANOUT);
    println!(
        "scale: max depth: {max} hops (bound {bound} = ceil(log_{FANOUT} {}) + 1), nodes per \
         depth: {:?}; worst viewer got {:.1} % of the packets (on {})",
        s.nodes.len(),
        per_depth(depths),
        s.worst_viewer.0 * 100.0,
        s.worst_viewer.1
    );
    assert!(max <= bound, "depth {max} > {bound}");
    assert_eq!(
        depths.len(),
        s.nodes.len() - 1,
        "every node but the origin is fed"
    );
    assert!(
        s.worst_viewer.0 >= 0.95,
        "a viewer on {} got {:.1} % of the packets",
        s.worst_viewer.1,
        s.worst_viewer.0 * 100.0
    );
}

#[test]
fn a_dead_interior_node_is_routed_around_once_its_lease_expires() {
    let r = &figures().recovery;
    let last = r.fed_again.last().copied();
    println!(
        "scale: {} died with {} nodes ({} viewers) below it; known dead after {LEASE_TTL:?} \
         (lease TTL); all fed again {last:?} after the death ({:?} after it was known; first \
         {:?}, median {:?}); every other node had a fresh frame within {:?}; after the repair: \
         nodes per depth {:?}, widest node sends to {}",
        r.dead,
        r.orphans,
        r.orphans * VIEWERS / NODES,
        last.map(|t| t.saturating_sub(LEASE_TTL)),
        r.fed_again.first(),
        r.fed_again.get(r.fed_again.len() / 2),
        r.unaffected_worst,
        r.depths.as_ref().map(per_depth),
        r.widest
    );
    assert!(r.orphans > 0, "{} feeds others", r.dead);
    assert!(
        r.never_fed_again.is_empty(),
        "never fed again: {:?}",
        r.never_fed_again
    );
    assert!(
        r.fed_again[0] >= LEASE_TTL,
        "nothing reaches the orphans before the death is known"
    );
    let worst = last.unwrap();
    assert!(
        worst <= LEASE_TTL + REPAIR_BOUND,
        "fed again {worst:?} after the death"
    );
    assert!(
        r.unaffected_worst < Duration::from_millis(500),
        "the rest of the tree kept its media: {:?}",
        r.unaffected_worst
    );
    // The depth after a repair is reported, not held to the bound: an orphan takes its
    // subtree along to wherever it is placed, and nothing rebalances the tree afterwards.
    r.depths
        .as_ref()
        .expect("the repaired tree feeds every node once");
    assert!(
        r.widest <= FANOUT,
        "a node feeds {} nodes after the repair",
        r.widest
    );
}

/// A **model** (see `support/audience_model.rs`): the registry writes, watch events and
/// signaling messages of 10,000 audience joins at 100 a second over the 100 nodes.
#[test]
fn audience_joins_are_coalesced_for_the_registry_and_for_clients() {
    use audience_model::{Model, THRESHOLD};
    let joins_over = Duration::from_secs(100);
    let gap = joins_over / VIEWERS as u32;
    let mut m = Model::new(NODES);
    // The publisher is on stage, on the origin; the audience follows, placed round-robin.
    m.join(Duration::ZERO, 0, true);
    for v in 0..VIEWERS {
        m.join(gap * (v as u32 + 1), v % NODES, false);
    }
    // Time for the last counts to be written (2 s) and told (1 s).
    let end = joins_over + Duration::from_secs(4);
    m.run(end);

    let secs = end.as_secs_f64();
    let joins: u64 = m.stats.iter().map(|s| s.joins).sum();
    let announced: u64 = m.stats.iter().map(|s| s.participant_writes).sum();
    let writes = |s: &audience_model::NodeStats| s.participant_writes + s.audience_writes;
    let worst_writes_per_join = m
        .stats
        .iter()
        .map(|s| writes(s) as f64 / s.joins as f64)
        .fold(0.0, f64::max);
    let writes_per_node_per_sec =
        m.stats.iter().map(writes).sum::<u64>() as f64 / NODES as f64 / secs;
    let watch_max = m.stats.iter().map(|s| s.watch_events).max().unwrap();
    // Messages every client got, over the seconds it was connected.
    let (mut messages, mut client_secs) = (0u64, 0.0);
    for s in &m.stats {
        for b in s.count_broadcasts.iter().chain(&s.joined_broadcasts) {
            messages += s.clients.iter().filter(|j| *j < b).count() as u64;
        }
        client_secs += s
            .clients
            .iter()
            .map(|j| (end - *j).as_secs_f64())
            .sum::<f64>();
    }
    // The room is large for everyone once the last announced join has been told.
    let large_from = m
        .stats
        .iter()
        .filter_map(|s| s.joined_broadcasts.last())
        .max()
        .copied()
        .unwrap_or_default();
    let busiest_large = (0..NODES)
        .map(|n| m.max_per_second(n, large_from))
        .max()
        .unwrap();
    let busiest_small = (0..NODES)
        .map(|n| m.max_per_second(n, Duration::ZERO))
        .max()
        .unwrap();
    println!(
        "scale (model): {joins} joins in {joins_over:?} on {NODES} nodes; announced: {announced} \
         (threshold {THRESHOLD}), the rest counted; registry writes per node per join: at most \
         {worst_writes_per_join:.2}, per node per second: {writes_per_node_per_sec:.2}; watch \
         events per node: {:.1}/s, {:.2} per join in the cluster; signaling messages per client \
         per second: {:.2} on average, at most {busiest_large} in any second once the room is \
         large (from {large_from:?}), at most {busiest_small} while it was small",
        watch_max as f64 / secs,
        watch_max as f64 / joins as f64,
        messages as f64 / client_secs
    );
    assert_eq!(joins, VIEWERS as u64 + 1);
    assert!(
        worst_writes_per_join < 1.0,
        "a node writes {worst_writes_per_join:.2} times per join"
    );
    assert!(
        announced <= 2 * THRESHOLD as u64,
        "{announced} announced: the audience of a large room is counted"
    );
    assert!(
        large_from < Duration::from_secs(2),
        "the room is large within a second or two: {large_from:?}"
    );
    assert!(
        busiest_large <= 1,
        "{busiest_large} messages in a second to one client"
    );
}
