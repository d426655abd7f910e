//! Speaker ranking across the federation link: each side's page lists the other side's
//! participant among its active speakers (Chromium's fake microphone beeps, so its levels are
//! not silence). The levels go from the publisher's node to its gateway over a relay link,
//! across the federation link, and from the other gateway to the subscriber's node.

use crate::common::{Browser, Sample};
use std::time::{Duration, Instant};

/// Whether `page` lists a speaker whose identity starts with `prefix` (the page keeps every
/// participant it was told spoke, most recent first).
fn lists(s: &Sample, page: &str, prefix: &str) -> bool {
    s["pages"][page]["stats"]["speakers"]
        .as_array()
        .is_some_and(|l| {
            l.iter()
                .any(|i| i.as_str().is_some_and(|i| i.starts_with(prefix)))
        })
}

/// Waits until the page `on_a` lists B's participant (`b.example/...`, a pseudonym) among its
/// speakers and the page `on_b` lists `a_identity` (`a.example/alice`); panics with the last
/// sample otherwise.
pub async fn each_side_ranks_the_other(
    browser: &mut Browser,
    on_a: &str,
    on_b: &str,
    a_identity: &str,
) {
    let from = Instant::now();
    let (ok, last) = browser
        .until(Duration::from_secs(20), |s| {
            lists(s, on_a, "b.example/") && lists(s, on_b, a_identity)
        })
        .await;
    assert!(
        ok,
        "each side lists the other's participant among its speakers: {:#} / {:#}",
        last["pages"][on_a]["stats"]["speakers"], last["pages"][on_b]["stats"]["speakers"]
    );
    println!(
        "each side ranks the other side's speaker ({:.1} s after media flowed)",
        from.elapsed().as_secs_f64()
    );
}
