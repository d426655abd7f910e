//! Stopped federated tracks are kept in the registry: a stop made on the active gateway holds
//! after a failover to the other gateway, and the control plane's `FederationService` stops and
//! resumes a peer's track as the gateways' admin API does.

use crate::checks::expect_media_but;
use crate::common::control::{authed, eventually};
use crate::common::{Browser, http, stat};
use crate::setup::{Control, Side};
use reqwest::Method;
use sfu_proto::control as pb;
use std::time::{Duration, Instant};

/// The peer's tracks of `kind` that `side`'s registry (as `node` sees it) holds in `room`.
fn federated(node: &sfu_node::Server, room: &str, kind: &str) -> Vec<String> {
    let (_, tracks) = node.membership.room(room);
    tracks
        .into_iter()
        .filter(|t| t.kind == kind && t.origin.contains('~'))
        .map(|t| t.track)
        .collect()
}

/// Waits until `node`'s registry view holds (`present`) or no longer holds `track`.
async fn until_listed(node: &sfu_node::Server, room: &str, track: &str, present: bool) -> f64 {
    let from = Instant::now();
    let seen = eventually(Duration::from_secs(8), || async {
        let (_, tracks) = node.membership.room(room);
        (tracks.iter().any(|t| t.track == track) == present).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "track {track} in {room}: expected present={present}"
    );
    from.elapsed().as_secs_f64()
}

/// A's administrator stops B's microphone in A through the active gateway (a1); its record
/// leaves A's registry. Returns the track id.
pub async fn stop_microphone(a: &Side) -> String {
    let mic = federated(&a.plain, "joint", "audio")
        .pop()
        .expect("B's microphone in A's registry");
    let (status, v) = a
        .call(Method::PUT, &format!("rooms/joint/stopped/{mic}"), None)
        .await;
    assert_eq!(status, 204, "{v}");
    let secs = until_listed(&a.plain, "joint", &mic, false).await;
    println!("B's microphone stopped in A: gone from A's registry {secs:.1} s later");
    mic
}

/// After the failover to a3: a3 applies the stop it read from the registry (A's registry holds
/// B's camera but not its microphone, and alice decodes video but receives no more audio);
/// resumed through a3, the microphone is back in A's registry.
pub async fn still_stopped_after_failover(browser: &mut Browser, a: &Side, b: &Side, mic: &str) {
    let a3 = a.standby.as_ref().unwrap();
    let url = format!(
        "http://{}/admin/federation/rooms/joint/stopped",
        a3.http_addr
    );
    let listed: serde_json::Value = http()
        .get(&url)
        .bearer_auth(a.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tracks"], serde_json::json!([mic]), "{listed}");
    assert!(!federated(&a.plain, "joint", "video").is_empty());
    assert!(
        !federated(&a.plain, "joint", "audio").contains(&mic.to_owned()),
        "the second gateway wrote the stopped microphone into A's registry"
    );
    let alice = ["alice"];
    let limit = Duration::from_secs(20);
    let last = expect_media_but(browser, &alice, &alice, 1.0, limit, [a, b]).await;
    let audio = stat(&last, "alice", "audioPacketsReceived");
    let last = expect_media_but(browser, &alice, &alice, 30.0, limit, [a, b]).await;
    assert_eq!(
        stat(&last, "alice", "audioPacketsReceived"),
        audio,
        "alice receives B's stopped microphone after the failover"
    );
    let status = http()
        .delete(format!("{url}/{mic}"))
        .bearer_auth(a.admin())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let secs = until_listed(&a.plain, "joint", mic, true).await;
    println!(
        "resumed through the second gateway: B's microphone back in A's registry {secs:.1} s later"
    );
}

/// B's control plane stops A's microphone in B (`StopTrack`), lists it, and resumes it; B's
/// registry loses the track and gets it back. An unknown track is `NOT_FOUND`, and so is
/// resuming a track that is not stopped.
pub async fn through_control_plane(control: &Control, b: &Side) {
    let room = "joint-with-a";
    let mic = federated(&b.plain, room, "audio")
        .pop()
        .expect("A's microphone in B's registry");
    let fed = || control.fed.clone();
    let req = |track: &str| pb::StopTrackRequest {
        room: room.into(),
        track: track.into(),
    };
    let unknown = fed()
        .stop_track(authed(&control.token, req("TR_0000000000000001")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let r = fed()
        .stop_track(authed(&control.token, req(&mic)))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.already);
    let r = fed()
        .stop_track(authed(&control.token, req(&mic)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.already, "stopping it again");
    let listed = fed()
        .list_stopped_tracks(authed(
            &control.token,
            pb::ListStoppedTracksRequest { room: room.into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tracks, std::slice::from_ref(&mic));
    let secs = until_listed(&b.plain, room, &mic, false).await;
    println!("StopTrack: A's microphone gone from B's registry {secs:.1} s later");
    let resume = || pb::ResumeTrackRequest {
        room: room.into(),
        track: mic.clone(),
    };
    fed()
        .resume_track(authed(&control.token, resume()))
        .await
        .unwrap();
    let again = fed()
        .resume_track(authed(&control.token, resume()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");
    let secs = until_listed(&b.plain, room, &mic, true).await;
    println!("ResumeTrack: A's microphone back in B's registry {secs:.1} s later");
}
