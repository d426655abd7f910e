//! Measures the stream allocator and bandwidth estimation behind a simulated bottleneck (the
//! same virtual-time simulation as `tests/bottleneck.rs`): goodput and layer at each available
//! bandwidth, how long layer switches take, and audio lost while the link is congested.
//!
//! `cargo run --release -p sfu-core --example bottleneck`

#[path = "../tests/support/downlink_sim.rs"]
#[allow(dead_code)]
mod downlink_sim;

use downlink_sim::{Sim, SimConfig};

const LAYERS: [&str; 3] = ["low", "mid", "high"];

fn layer_name(l: Option<usize>) -> String {
    l.map_or("paused".to_owned(), |l| LAYERS[l].to_owned())
}

fn main() {
    let config = SimConfig::default();
    println!(
        "publisher: VP8 simulcast {:?} bps at {} fps, Opus {} B / 20 ms; path: {} ms one way, {} ms queue\n",
        config.layers_bps,
        config.fps,
        config.audio_payload,
        config.base_delay.as_millis(),
        config.queue.as_millis()
    );
    println!(
        "| available | layer (20-40 s) | video goodput | audio goodput | audio lost | estimate at 40 s |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for kbps in [
        150u32, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000,
    ] {
        let mut sim = Sim::new(config, kbps as f64 * 1e3);
        sim.run_until(40.0);
        let layers = sim.layers_between(20.0, 40.0);
        let estimate = sim.room.estimate(sim.now, sfu_core::SinkId(1)).unwrap_or(0);
        println!(
            "| {kbps} kbps | {} | {:.0} kbps | {:.0} kbps | {:.2} % | {} kbps |",
            layers
                .iter()
                .map(|l| layer_name(*l))
                .collect::<Vec<_>>()
                .join(" → "),
            sim.goodput(20.0, 40.0, false) / 1e3,
            sim.goodput(20.0, 40.0, true) / 1e3,
            sim.observed.audio_dropped as f64 * 100.0 / sim.observed.audio_sent.max(1) as f64,
            estimate / 1000,
        );
    }

    println!("\n| change at 20 s | layers | time to switch | audio lost after the change |");
    println!("|---|---|---:|---:|");
    for (from, to) in [
        (300, 5_000),
        (700, 5_000),
        (300, 1_000),
        (5_000, 1_000),
        (5_000, 700),
        (5_000, 300),
    ] {
        let mut sim = Sim::new(config, from as f64 * 1e3);
        sim.run_until(20.0);
        let before = sim.current_layer();
        sim.link_bps = to as f64 * 1e3;
        let drops = sim.observed.audio_dropped;
        sim.run_until(40.0);
        let after = sim.current_layer();
        let at = after.and_then(|l| sim.reached(l, 20.0)).map(|t| t - 20.0);
        let lost = sim.observed.audio_dropped - drops;
        println!(
            "| {from} → {to} kbps | {} → {} | {} | {lost} of 1,000 packets ({:.1} %) |",
            layer_name(before),
            layer_name(after),
            at.map_or("-".into(), |t| format!("{t:.2} s")),
            lost as f64 / 10.0
        );
    }
}
