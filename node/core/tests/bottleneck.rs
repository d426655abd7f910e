//! The stream allocator and bandwidth estimation in virtual time, behind a simulated
//! bottleneck: a subscriber limited to 300 kbps gets the low simulcast layer and loses no
//! audio; when the limit lifts it climbs back to the top layer within a few seconds; and its
//! streams never show a sequence gap or a picture id going backwards across the switches.

#[path = "support/downlink_sim.rs"]
mod downlink_sim;

use downlink_sim::{Sim, SimConfig};

#[test]
fn a_limited_subscriber_gets_the_low_layer_then_climbs_back_when_the_limit_lifts() {
    let mut sim = Sim::new(SimConfig::default(), 300_000.0);
    sim.run_until(20.0);
    // Settled on the low layer, and stays there.
    let settled = sim.layers_between(8.0, 20.0);
    assert_eq!(settled, vec![Some(0)], "{:?}", sim.observed.layers);
    let video = sim.goodput(8.0, 20.0, false);
    assert!(video > 120_000.0, "the low layer keeps flowing: {video}");
    assert_eq!(
        sim.observed.audio_dropped, 0,
        "no audio lost at the bottleneck"
    );
    assert!(sim.observed.audio_sent >= 990, "audio is never paused");

    sim.link_bps = 5_000_000.0;
    sim.run_until(35.0);
    let up = sim.reached(2, 20.0).expect("climbs to the top layer");
    assert!(
        up - 20.0 <= 4.0,
        "back on the top layer {:.1} s after the limit lifted",
        up - 20.0
    );
    assert_eq!(sim.layers_between(up + 1.0, 35.0), vec![Some(2)]);
    let video = sim.goodput(30.0, 35.0, false);
    assert!(video > 1_300_000.0, "the top layer flows: {video}");

    assert_eq!(
        sim.observed.video_seq_gaps, 0,
        "no sequence gap across switches"
    );
    assert_eq!(sim.observed.audio_seq_gaps, 0);
    assert_eq!(sim.observed.picture_id_regressions, 0);
    assert_eq!(sim.observed.audio_dropped, 0);
}

/// A link that suddenly narrows sevenfold overflows its queue until the estimate catches up
/// (as it would for any sender); the subscriber moves down within a couple of seconds and
/// loses no more audio after that.
#[test]
fn a_link_that_narrows_moves_the_subscriber_down_quickly() {
    let mut sim = Sim::new(SimConfig::default(), 5_000_000.0);
    sim.run_until(15.0);
    assert_eq!(sim.current_layer(), Some(2), "{:?}", sim.observed.layers);
    sim.link_bps = 700_000.0;
    sim.run_until(30.0);
    let down = sim
        .reached(1, 15.0)
        .expect("moves down to the middle layer");
    assert!(
        down - 15.0 <= 3.0,
        "switched down {:.1} s after the link narrowed",
        down - 15.0
    );
    assert_eq!(
        sim.layers_between(22.0, 30.0),
        vec![Some(1)],
        "{:?}",
        sim.observed.layers
    );
    assert_eq!(
        sim.audio_drops_between(18.0, 30.0),
        0,
        "no audio lost once settled"
    );
    assert!(
        sim.observed.audio_dropped <= 50,
        "{} audio packets lost while adapting",
        sim.observed.audio_dropped
    );
    assert_eq!(sim.observed.video_seq_gaps, 0);
    assert_eq!(sim.observed.picture_id_regressions, 0);
}
