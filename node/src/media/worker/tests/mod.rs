//! The worker core driven in virtual time by real webrtc-rs peer connections, as `quinn`'s
//! tests drive two endpoints: no socket, no thread, no sleep. A [`Net`] holds the workers of
//! one or more nodes (a node's workers linked through their command queues, as in the node;
//! every worker linked in process to every other node, whose real relay router,
//! `crate::cluster::Router`, hands what it receives to its workers; one in-memory registry)
//! and the clients' peer connections. It carries datagrams with a fixed one-way latency,
//! optionally losing every n-th to the subscriber or on the relay link, and jumps to the next
//! instant anything is due. ICE, DTLS-SRTP, signaling commands, registry records, the relay
//! core and the forwarding all run for real; a few virtual seconds take a fraction of a second.

mod client;
mod net;
mod pause;

use net::Net;
use std::time::Duration;

/// Alice publishes on worker `pw`, Bob subscribes on worker `sw` (indexes over all nodes'
/// workers); Bob receives both tracks.
async fn publish_and_receive(mut net: Net, pw: usize, sw: usize) -> Net {
    let alice = net.add_client();
    let bob = net.add_client();
    let (alice_joined, _alice_events) = net.join(pw, "alice");
    let (bob_joined, mut bob_events) = net.join(sw, "bob");
    let bob_sid = bob_joined.participant.sid.clone();
    net.publish(pw, alice, &alice_joined.participant.sid);
    let started = net.now;
    let mut offers = 0;
    let mut ok = false;
    // Offers come as the tracks reach Bob's worker: Bob answers them as they come.
    while net.now < started + Duration::from_secs(10) {
        offers += net.answer_offers(sw, bob, &bob_sid, &mut bob_events);
        net.run_for(Duration::from_millis(100)).await;
        if net.clients[bob].received.len() == 2 && net.clients[bob].packets() >= 100 {
            ok = true;
            break;
        }
    }
    assert!(offers >= 1, "Bob was offered the tracks");
    assert!(
        ok,
        "Bob received {:?} within 10 virtual seconds",
        net.clients[bob].received
    );
    net
}

#[tokio::test]
async fn a_subscriber_receives_a_publisher_on_the_same_worker_in_virtual_time() {
    let net = publish_and_receive(Net::new(1), 0, 0).await;
    let bob = &net.clients[1];
    // Opus and VP8, in the payload types negotiated with Bob.
    assert_eq!(bob.payload_types.len(), 2, "{:?}", bob.payload_types);
}

#[tokio::test]
async fn a_room_spans_two_workers_in_virtual_time() {
    // Alice on worker 0, Bob on worker 1: the track crosses the in-process link once.
    let net = publish_and_receive(Net::new(2), 0, 1).await;
    let (home, edge) = (net.stats(0), net.stats(1));
    assert!(home.relayed > 0 && home.packets_out == 0, "{home:?}");
    assert!(edge.packets_out >= 100, "{edge:?}");
}

#[tokio::test]
async fn media_gets_through_a_lossy_network_in_virtual_time() {
    // Every 20th datagram to Bob lost, the handshakes' too: retransmissions (STUN, DTLS) and
    // NACKs carry the session through.
    let mut net = Net::new(2);
    net.lose_every = 20;
    let net = publish_and_receive(net, 0, 1).await;
    let (home, edge) = (net.stats(0), net.stats(1));
    assert!(net.lost > 0, "the network lost nothing");
    // Bob's worker answered his NACKs from its own cache; the in-process link between the
    // workers lost nothing, so nothing was asked of the publisher's worker.
    assert!(
        edge.nacks_received > 0 && edge.retransmitted > 0,
        "lost {} of {}: {edge:?}",
        net.lost,
        net.sent
    );
    assert_eq!(home.nacks_received, 0, "{home:?}");
}

#[tokio::test]
async fn a_track_crosses_a_lossy_relay_link_between_two_nodes_in_virtual_time() {
    // Alice on node n1, Bob on node n2: n2 learns the track from the registry, asks n1 for
    // it over their link, and asks again for what the link lost (one datagram in ten).
    let mut net = Net::cluster(&[1, 1]);
    net.relay_lose_every = 10;
    let net = publish_and_receive(net, 0, 1).await;
    let (origin, edge) = (net.stats(0), net.stats(1));
    assert!(net.relay_lost > 0, "the link lost nothing");
    assert!(origin.relayed > 0, "{origin:?}");
    assert!(
        origin.nacks_received > 0 && origin.retransmitted > 0,
        "lost {} of {} relay datagrams: {origin:?}",
        net.relay_lost,
        net.relay_sent
    );
    assert!(edge.packets_out > 0, "{edge:?}");
}

#[tokio::test]
async fn a_track_crosses_two_nodes_of_two_workers_in_virtual_time() {
    // Alice on n1's first worker, Bob on the n2 worker that is not the room's home there: n2
    // pulls the track through its home worker (the link's frames and datagrams go through
    // n2's real router), which hands it to Bob's worker; the track crosses the link once.
    let home = 2 + crate::media::home_worker("r", 2);
    let bob = if home == 2 { 3 } else { 2 };
    let net = publish_and_receive(Net::cluster(&[2, 2]), 0, bob).await;
    let stats: Vec<_> = (0..4).map(|w| net.stats(w)).collect();
    let origin = &stats[0];
    assert!(origin.relayed > 0 && origin.packets_out == 0, "{stats:?}");
    assert!(
        stats[1].relayed == 0,
        "n1's other worker relays nothing: {stats:?}"
    );
    assert!(
        stats[home].relayed > 0,
        "n2's home worker hands it on: {stats:?}"
    );
    assert!(stats[bob].packets_out >= 100, "{stats:?}");
}

#[tokio::test]
async fn a_fan_out_tree_feeds_five_nodes_with_the_origin_sending_two_copies() {
    // Alice on n1, one subscriber on each of n2..n6, each node feeding at most two others:
    // n1 sends each packet twice, nodes it feeds pass it on, and everyone receives it.
    let mut net = Net::cluster_with_fanout(&[1; 6], 2);
    let alice = net.add_client();
    let (alice_joined, _alice_events) = net.join(0, "alice");
    let mut subscribers = Vec::new();
    for w in 1..6 {
        let c = net.add_client();
        let (joined, events) = net.join(w, &format!("s{w}"));
        subscribers.push((w, c, joined.participant.sid.clone(), events));
    }
    net.publish(0, alice, &alice_joined.participant.sid);
    let started = net.now;
    while net.now < started + Duration::from_secs(10) {
        for (w, c, sid, events) in &mut subscribers {
            net.answer_offers(*w, *c, sid, events);
        }
        net.run_for(Duration::from_millis(100)).await;
        let all = subscribers.iter().all(|(_, c, _, _)| {
            net.clients[*c].received.len() == 2 && net.clients[*c].packets() >= 100
        });
        if all {
            break;
        }
    }
    let stats: Vec<_> = (0..6).map(|w| net.stats(w)).collect();
    for (w, c, _, _) in &subscribers {
        let client = &net.clients[*c];
        assert!(
            client.received.len() == 2 && client.packets() >= 100,
            "the subscriber on n{} received {:?}: {stats:?}",
            w + 1,
            client.received
        );
    }
    let origin = &stats[0];
    assert!(
        origin.relayed > origin.packets_in && origin.relayed <= 2 * origin.packets_in,
        "n1 sends each packet to at most two nodes: {origin:?}"
    );
    let passed_on: u64 = stats[1..].iter().map(|s| s.relayed).sum();
    assert!(passed_on > 0, "nodes n1 feeds pass the track on: {stats:?}");
}
