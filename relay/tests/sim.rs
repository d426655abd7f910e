//! The relay protocol in virtual time over a simulated lossy network: loss recovered by NACK,
//! keyframe coalescing, demand-driven pulling, fan-out trees and their repair, loop refusal.

#[path = "support/cluster_sim.rs"]
mod cluster_sim;

use cluster_sim::*;
#[test]
fn loss_on_a_link_is_recovered_by_nacks_to_the_sender() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(20), 0.10, 1);
    sim.subscribe("b", 1, vec![0]);
    sim.run(Duration::from_millis(200), None);
    sim.run(Duration::from_secs(5), Some((Duration::from_millis(10), 1)));
    // Let the last retransmissions arrive.
    sim.run(Duration::from_secs(1), None);
    let got: HashSet<u32> = sim.nodes["b"].received[&SinkId(1)]
        .iter()
        .copied()
        .collect();
    let first = *got.iter().min().unwrap();
    let expected = sim.payload_id - first + 1;
    let missing = expected as usize - got.len();
    assert!(
        missing == 0,
        "10% datagram loss, every packet recovered: {missing} of {expected} missing"
    );
    let sent_a_to_b = sim.datagrams[&("a".into(), "b".into())];
    assert!(
        sent_a_to_b > expected as u64 + expected as u64 / 20,
        "retransmissions were sent: {sent_a_to_b} datagrams for {expected} packets"
    );
}

/// A worker packs what it relays to a link in one turn into shared datagrams: a lost datagram
/// loses every packet in it, and each is named in NACKs and resent.
#[test]
fn packets_sharing_lost_datagrams_are_each_recovered() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(20), 0.10, 3);
    // Every layer crosses the link: three packets a frame, sent in the same turn.
    sim.subscribe("b", 1, vec![0, 1, 2]);
    sim.run(Duration::from_millis(200), None);
    sim.run(Duration::from_secs(5), Some((Duration::from_millis(10), 3)));
    sim.run(Duration::from_secs(1), None);
    let ab = ("a".into(), "b".into());
    let (datagrams, packets) = (sim.datagrams[&ab], sim.packets[&ab]);
    assert!(
        packets >= 2 * datagrams,
        "packets share datagrams: {packets} packets in {datagrams} datagrams"
    );
    for layer in 0..3 {
        let got: HashSet<u32> = sim.nodes["b"].relayed[&layer].iter().copied().collect();
        let (first, last) = (*got.iter().min().unwrap(), *got.iter().max().unwrap());
        let missing = (first..=last).filter(|id| !got.contains(id)).count();
        assert!(
            last - first > 400 && missing == 0,
            "layer {layer}: frames {first}..={last}, {missing} missing after 10 % datagram loss"
        );
    }
}

#[test]
fn ten_edges_asking_for_keyframes_reach_the_publisher_as_one() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
    let mut sim = Sim::new(&names, 4, Duration::from_millis(5), 0.0, 1);
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 1)));
    let before = sim.nodes["a"].plis.len();
    // Ten edge nodes get a subscriber each at the same instant: each wants a keyframe.
    for n in &names[1..] {
        sim.subscribe(n, 1, vec![0]);
    }
    sim.run(
        Duration::from_millis(300),
        Some((Duration::from_millis(33), 1)),
    );
    let plis: Vec<Instant> = sim.nodes["a"].plis[before..].to_vec();
    assert_eq!(plis.len(), 1, "one PLI for ten edges: {plis:?}");
    sim.run(Duration::from_secs(2), Some((Duration::from_millis(33), 1)));
    for n in &names[1..] {
        assert!(sim.received(n) > 30, "{n} receives: {}", sim.received(n));
    }
}

#[test]
fn tracks_are_pulled_only_while_wanted_and_only_the_wanted_layers() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(5), 0.0, 3);
    let ab = ("a".into(), "b".into());
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    assert_eq!(
        sim.datagrams.get(&ab),
        None,
        "nothing flows without a subscriber"
    );

    sim.subscribe("b", 1, vec![0]);
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    let flowing = sim.datagrams[&ab];
    assert!(flowing > 20, "{flowing}");
    assert_eq!(
        sim.layers_seen[&ab].len(),
        1,
        "only the wanted layer crosses the link"
    );
    assert!(sim.received("b") > 20);

    sim.unsubscribe_all("b");
    sim.run(
        Duration::from_millis(200),
        Some((Duration::from_millis(33), 3)),
    );
    let after_stop = sim.datagrams[&ab];
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    assert_eq!(
        sim.datagrams[&ab], after_stop,
        "the flow stops with the last subscriber"
    );
    assert!(!sim.nodes["b"].relay.is_remote(&key()));
}

#[test]
fn many_subscribers_behind_a_link_cost_one_copy() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(5), 0.0, 1);
    for s in 1..=50 {
        sim.subscribe("b", s, vec![0]);
    }
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(10), 1)));
    let frames = sim.payload_id as u64;
    let datagrams = sim.datagrams[&("a".into(), "b".into())];
    assert!(
        datagrams <= frames,
        "{datagrams} datagrams for {frames} packets"
    );
    assert!(sim.received("b") as u64 > 50 * (frames - 10));
}

#[test]
fn the_origin_feeds_fanout_nodes_and_the_tree_repairs_itself() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let mut sim = Sim::new(&names, 2, Duration::from_millis(5), 0.0, 1);
    for n in &names[1..] {
        sim.subscribe(n, 1, vec![0]);
        sim.run(
            Duration::from_millis(100),
            Some((Duration::from_millis(33), 1)),
        );
    }
    sim.run(Duration::from_secs(2), Some((Duration::from_millis(33), 1)));
    let direct = sim.nodes["a"].relay.children(&key());
    assert_eq!(
        direct.len(),
        2,
        "the origin feeds exactly `fanout` nodes: {direct:?}"
    );
    for n in &names[1..] {
        let path = sim.nodes[*n]
            .relay
            .path(&key())
            .expect("receiving")
            .to_vec();
        assert_eq!(&*path[0], "a", "{n}: {path:?}");
        assert!(!path.contains(&NodeId::from(*n)), "{n}: no loop {path:?}");
        assert!(sim.nodes[*n].relay.children(&key()).len() <= 2);
        assert!(sim.received(n) > 30, "{n} receives");
    }
    // Take out an interior node that feeds others.
    let interior = direct
        .iter()
        .find(|d| !sim.nodes[&**d].relay.children(&key()).is_empty())
        .expect("an interior node")
        .clone();
    let orphans: Vec<NodeId> = sim.nodes[&interior].relay.children(&key());
    sim.kill(&interior);
    let before: HashMap<NodeId, usize> = orphans
        .iter()
        .map(|o| (o.clone(), sim.received(o)))
        .collect();
    sim.run(Duration::from_secs(3), Some((Duration::from_millis(33), 1)));
    for o in &orphans {
        assert!(
            sim.received(o) > before[o] + 50,
            "{o} resumed after {interior} left: {} -> {}",
            before[o],
            sim.received(o)
        );
        let path = sim.nodes[o].relay.path(&key()).unwrap().to_vec();
        assert!(
            !path.contains(&interior),
            "{o} no longer goes through {interior}: {path:?}"
        );
    }
}

#[test]
fn a_subscription_that_would_close_a_loop_is_refused() {
    // b receives the track through c (path a, c). c now asks b for it: refused.
    let mut sim = Sim::new(&["a", "b", "c"], 1, Duration::from_millis(5), 0.0, 1);
    sim.subscribe("c", 1, vec![0]);
    sim.run(
        Duration::from_millis(300),
        Some((Duration::from_millis(33), 1)),
    );
    sim.subscribe("b", 1, vec![0]);
    sim.run(
        Duration::from_millis(500),
        Some((Duration::from_millis(33), 1)),
    );
    let path_b = sim.nodes["b"].relay.path(&key()).unwrap().to_vec();
    assert_eq!(path_b, vec![NodeId::from("a"), NodeId::from("c")]);
    let now = sim.now;
    let b = sim.nodes.get_mut("b").unwrap();
    b.relay.handle_frame(
        now,
        &"c".into(),
        Frame {
            body: Some(Body::Subscribe(Subscribe {
                room: ROOM.into(),
                track: TRACK.0,
                layers: vec![0],
                origin: "a".into(),
            })),
        },
    );
    let refused = std::iter::from_fn(|| b.relay.poll_output()).any(|o| {
        matches!(o, Output::Send { ref to, frame: Frame { body: Some(Body::Refused(ref r)) } }
            if &**to == "c" && r.reason == sfu_proto::relay::refused::Reason::Loop as i32)
    });
    assert!(refused, "b refuses to feed its own upstream");
}

#[test]
fn an_offered_feed_through_the_receiver_is_declined() {
    let now = Instant::now();
    let mut b = Relay::new("b".into(), RelayConfig::default());
    b.handle_link_up(now, "a".into());
    b.handle_link_up(now, "c".into());
    b.set_demand(now, key(), "a".into(), vec![0]);
    while b.poll_output().is_some() {}
    // The origin redirects b to c; c answers with a path that contains b.
    b.handle_frame(
        now,
        &"a".into(),
        Frame {
            body: Some(Body::Redirect(sfu_proto::relay::Redirect {
                room: ROOM.into(),
                track: TRACK.0,
                via: "c".into(),
            })),
        },
    );
    while b.poll_output().is_some() {}
    b.handle_frame(
        now,
        &"c".into(),
        Frame {
            body: Some(Body::Accepted(sfu_proto::relay::Accepted {
                room: ROOM.into(),
                track: TRACK.0,
                path: vec!["a".into(), "b".into(), "c".into()],
                info: None,
            })),
        },
    );
    let outs: Vec<Output> = std::iter::from_fn(|| b.poll_output()).collect();
    assert!(b.path(&key()).is_none(), "the looping feed is not taken");
    let unsubscribed_c = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "c" && s.layers.is_empty()));
    let asked_a = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "a" && !s.layers.is_empty()));
    assert!(unsubscribed_c && asked_a, "{outs:?}");
}

/// A track whose origin changes (its federation gateway failed over to another node) is asked
/// for at the new origin, and the old way is told to stop, even while it was flowing.
#[test]
fn a_track_that_moves_is_asked_for_where_it_is_now() {
    let now = Instant::now();
    let mut b = Relay::new("b".into(), RelayConfig::default());
    b.handle_link_up(now, "a".into());
    b.handle_link_up(now, "c".into());
    b.set_demand(now, key(), "a".into(), vec![0]);
    b.handle_frame(
        now,
        &"a".into(),
        Frame {
            body: Some(Body::Accepted(sfu_proto::relay::Accepted {
                room: ROOM.into(),
                track: TRACK.0,
                path: vec!["a".into()],
                info: None,
            })),
        },
    );
    while b.poll_output().is_some() {}
    assert_eq!(b.path(&key()), Some(&[NodeId::from("a")][..]));
    b.set_demand(now, key(), "c".into(), vec![0]);
    let outs: Vec<Output> = std::iter::from_fn(|| b.poll_output()).collect();
    let unsubscribed_a = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "a" && s.layers.is_empty()));
    let asked_c = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "c" && s.layers == [0] && s.origin == "c"));
    assert!(unsubscribed_a && asked_c, "{outs:?}");
}

/// A worker pulling a track through its node's home worker keeps asking the home worker when
/// the answer is slow (and when the origin's link comes and goes): the origin feeds a node once
/// per link and would take the worker's subscription for the home worker's, answering nothing.
#[test]
fn a_worker_that_pulls_through_its_home_worker_never_goes_around_it() {
    let now = Instant::now();
    let mut w0 = Relay::new("b2#w0".into(), RelayConfig::default());
    w0.handle_link_up(now, "b1".into());
    w0.handle_link_up(now, "b2#w1".into());
    w0.set_demand_via(now, key(), "b1".into(), "b2#w1".into(), vec![0]);
    let asked = |r: &mut Relay| -> Vec<String> {
        std::iter::from_fn(|| r.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    frame:
                        Frame {
                            body: Some(Body::Subscribe(s)),
                        },
                } if !s.layers.is_empty() => Some(to.to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(asked(&mut w0), ["b2#w1"]);
    // No answer within the subscription timeout (the home worker waits for the origin).
    let later = now + Duration::from_secs(3);
    w0.handle_timeout(later);
    assert_eq!(asked(&mut w0), ["b2#w1"], "asked again where it starts");
    w0.handle_link_down(later, &"b1".into());
    w0.handle_link_up(later, "b1".into());
    assert!(
        asked(&mut w0).iter().all(|n| n != "b1"),
        "never the origin itself"
    );
}

/// Dynacast across the cluster: a layer nobody on any node watches stops flowing over the
/// relay link and is paused at the publisher; when a subscriber wants it again, it comes back.
#[test]
fn a_layer_nobody_watches_stops_on_the_link_and_at_the_publisher() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(5), 0.0, 3);
    let frames = Some((Duration::from_millis(33), 3));
    sim.announce("b", 3);
    // A subscriber on b that renders large: wants the top layer.
    sim.subscribe_up_to("b", 1, 2);
    sim.run(Duration::from_secs(4), frames);
    let t = sim.now;
    sim.run(Duration::from_secs(1), frames);
    assert_eq!(
        sim.layers_sent("a", "b", t, sim.now),
        vec![2],
        "only the watched layer is relayed"
    );
    assert_eq!(
        sim.publisher_layers,
        vec![false, false, true],
        "the publisher sends only it"
    );

    // It shrinks its view: the low layer is enough.
    let n = sim.nodes.get_mut("b").unwrap();
    let sub = n.subscriptions[&SinkId(1)];
    n.room
        .update_subscription(
            sim.now,
            sub,
            sfu_core::SubscriptionSettings {
                max_layer: Some(0),
                pinned: false,
            },
        )
        .unwrap();
    sim.run(Duration::from_secs(4), frames);
    let t = sim.now;
    sim.run(Duration::from_secs(1), frames);
    assert_eq!(sim.layers_sent("a", "b", t, sim.now), vec![0]);
    assert_eq!(sim.publisher_layers, vec![true, false, false]);
    let recent = &sim.nodes["b"].received[&SinkId(1)];
    assert!(
        recent.len() > 100,
        "the subscriber kept receiving: {}",
        recent.len()
    );

    // Nobody at all: after the delay, every layer is paused at the publisher.
    sim.unsubscribe_all("b");
    sim.run(Duration::from_secs(4), frames);
    assert_eq!(sim.publisher_layers, vec![false, false, false]);
    let t = sim.now;
    sim.run(Duration::from_secs(1), frames);
    assert!(sim.layers_sent("a", "b", t, sim.now).is_empty());
}

#[test]
fn nodes_waiting_to_be_fed_count_against_the_fanout() {
    // b subscribes through a slow link; c and d ask b's way before b itself is fed. With a
    // fan-out of one, b feeds one of them and sends the other one further down.
    let mut sim = Sim::new(&["a", "b", "c", "d"], 1, Duration::from_millis(5), 0.0, 1);
    sim.link_latency
        .insert(("a".into(), "b".into()), Duration::from_millis(60));
    sim.run(
        Duration::from_millis(100),
        Some((Duration::from_millis(33), 1)),
    );
    sim.subscribe("b", 1, vec![0]);
    sim.run(
        Duration::from_millis(61),
        Some((Duration::from_millis(33), 1)),
    );
    sim.subscribe("c", 1, vec![0]);
    sim.subscribe("d", 1, vec![0]);
    sim.run(Duration::from_secs(3), Some((Duration::from_millis(33), 1)));
    for n in ["a", "b", "c", "d"] {
        let children = sim.nodes[n].relay.children(&key());
        assert!(children.len() <= 1, "{n} feeds {children:?}");
    }
    for n in ["b", "c", "d"] {
        assert!(sim.received(n) > 30, "{n} receives: {}", sim.received(n));
    }
}
