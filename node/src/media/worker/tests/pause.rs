//! A participant whose signaling session is parked for a resume receives nothing, keeps its
//! subscriptions, and gets media back at once, from a keyframe, when resumed (in virtual time,
//! with [`Net`]).

use super::Net;
use crate::media::Command;
use std::time::Duration;

/// Keyframe requests the worker's rooms sent publishers.
fn keyframe_requests(net: &Net, w: usize) -> u64 {
    let rooms = &net.workers[w].core.rooms;
    rooms
        .iter()
        .map(|(_, r)| r.core_stats().keyframe_requests_sent)
        .sum()
}

#[tokio::test]
async fn a_paused_participant_receives_nothing_and_resumes_from_a_keyframe() {
    let mut net = Net::new(1);
    let alice = net.add_client();
    let bob = net.add_client();
    let (alice_joined, _alice_events) = net.join(0, "alice");
    let (bob_joined, mut bob_events) = net.join(0, "bob");
    let bob_sid = bob_joined.participant.sid.clone();
    net.publish(0, alice, &alice_joined.participant.sid);
    for _ in 0..100 {
        net.answer_offers(0, bob, &bob_sid, &mut bob_events);
        net.run_for(Duration::from_millis(100)).await;
        if net.clients[bob].received.len() == 2 && net.clients[bob].packets() >= 50 {
            break;
        }
    }
    assert_eq!(
        net.clients[bob].received.len(),
        2,
        "Bob receives both tracks"
    );

    let pause = |net: &mut Net, paused| {
        let command = Command::Pause {
            room: "r".into(),
            participant: bob_sid.clone(),
            paused,
        };
        net.workers[0].core.handle_command(net.now, command);
    };
    pause(&mut net, true);
    // What was already on its way arrives; then nothing, while Alice goes on publishing.
    net.run_for(Duration::from_millis(200)).await;
    let (received, packets_in) = (net.clients[bob].packets(), net.stats(0).packets_in);
    net.run_for(Duration::from_secs(3)).await;
    assert_eq!(
        net.clients[bob].packets(),
        received,
        "nothing reaches a paused participant"
    );
    assert!(
        net.stats(0).packets_in > packets_in + 100,
        "Alice still publishes"
    );
    assert_eq!(
        net.clients[bob].received.len(),
        2,
        "the subscriptions stay: no renegotiation"
    );
    assert!(bob_events.try_recv().is_err(), "no offer while paused");

    let keyframes = keyframe_requests(&net, 0);
    pause(&mut net, false);
    net.run_for(Duration::from_millis(500)).await;
    let streams: Vec<u64> = net.clients[bob]
        .received
        .values()
        .map(|(n, _)| *n)
        .collect();
    assert!(
        net.clients[bob].packets() >= received + 20,
        "media flows again at once: {streams:?}, {received} before"
    );
    assert!(
        keyframe_requests(&net, 0) > keyframes,
        "the publisher was asked for a keyframe"
    );
}
