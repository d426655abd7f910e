//! The stream allocator: shares one subscriber's estimated bandwidth among its subscriptions.
//!
//! A pure function of the budget and what each subscription wants, so every rule is checked by
//! a unit test:
//!
//! 1. Audio first: every audio subscription that is wanted gets through, whatever the budget
//!    says (audio is a few tens of kbps; losing it is what makes a meeting unusable).
//! 2. Then video, in priority order (screen shares, then pinned tracks and active speakers,
//!    then the rest): first everyone gets the lowest layer while it fits — a picture for all
//!    before a better picture for some; what does not fit is paused (and resumes only with
//!    10% headroom, like any climb).
//! 3. Then, again in priority order, each video subscription climbs towards the layer it
//!    wants as far as the remaining budget allows. Climbing above the layer it had needs 10%
//!    headroom, so a budget hovering at a threshold does not make the layer flap.

use crate::codec::MediaKind;
use crate::ids::LayerIndex;

/// Headroom needed to move a subscription above the layer it had.
const UPGRADE_MARGIN: f64 = 1.1;

/// What one subscription wants.
#[derive(Clone, Debug)]
pub struct Demand<'a> {
    pub kind: MediaKind,
    /// Higher goes first.
    pub priority: u8,
    /// The best layer worth sending (from the size the subscriber renders); `None` when the
    /// subscription is not wanted at all right now.
    pub max_layer: Option<LayerIndex>,
    /// Bits per second of each layer, lowest first.
    pub layer_bps: &'a [u64],
    /// The layer allocated last time, for hysteresis.
    pub current: Option<LayerIndex>,
}

/// The allocator's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Per demand, in input order: the layer to send, or `None` to pause.
    pub layers: Vec<Option<LayerIndex>>,
    /// What everything wanted would cost: when above the budget, probing for more is worth it.
    pub desired_bps: u64,
    /// What the allocation costs.
    pub allocated_bps: u64,
}

fn bps(d: &Demand<'_>, layer: LayerIndex) -> u64 {
    d.layer_bps.get(layer).copied().unwrap_or(0)
}

/// Allocates `budget` bits per second (`None`: no limit) among `demands`.
pub fn allocate(budget: Option<u64>, demands: &[Demand<'_>]) -> Allocation {
    let mut layers = vec![None; demands.len()];
    let mut remaining = budget.unwrap_or(u64::MAX);
    let mut desired = 0u64;
    let mut allocated = 0u64;
    for (i, d) in demands.iter().enumerate() {
        if d.kind == MediaKind::Audio && d.max_layer.is_some() {
            let cost = bps(d, 0);
            layers[i] = Some(0);
            remaining = remaining.saturating_sub(cost);
            desired += cost;
            allocated += cost;
        }
    }
    let mut video: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].kind == MediaKind::Video && demands[i].max_layer.is_some())
        .collect();
    video.sort_by_key(|&i| std::cmp::Reverse(demands[i].priority));
    for &i in &video {
        let d = &demands[i];
        let top = d
            .max_layer
            .unwrap_or(0)
            .min(d.layer_bps.len().saturating_sub(1));
        desired += bps(d, top);
        let cost = bps(d, 0);
        // Resuming a paused subscription needs headroom too.
        let needed = if d.current.is_none() {
            (cost as f64 * UPGRADE_MARGIN) as u64
        } else {
            cost
        };
        if needed <= remaining {
            layers[i] = Some(0);
            remaining -= cost;
            allocated += cost;
        }
    }
    for &i in &video {
        let d = &demands[i];
        let Some(base) = layers[i] else { continue };
        let top = d
            .max_layer
            .unwrap_or(0)
            .min(d.layer_bps.len().saturating_sub(1));
        let had = d.current.unwrap_or(0);
        for l in (base + 1..=top).rev() {
            let extra = bps(d, l).saturating_sub(bps(d, base));
            let needed = if l > had {
                (extra as f64 * UPGRADE_MARGIN) as u64
            } else {
                extra
            };
            if needed <= remaining {
                layers[i] = Some(l);
                remaining -= extra;
                allocated += extra;
                break;
            }
        }
    }
    Allocation {
        layers,
        desired_bps: desired,
        allocated_bps: allocated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULCAST: [u64; 3] = [150_000, 500_000, 1_500_000];
    const AUDIO: [u64; 1] = [40_000];

    fn video(priority: u8, max: LayerIndex, current: Option<LayerIndex>) -> Demand<'static> {
        Demand {
            kind: MediaKind::Video,
            priority,
            max_layer: Some(max),
            layer_bps: &SIMULCAST,
            current,
        }
    }

    fn audio() -> Demand<'static> {
        Demand {
            kind: MediaKind::Audio,
            priority: 0,
            max_layer: Some(0),
            layer_bps: &AUDIO,
            current: Some(0),
        }
    }

    #[test]
    fn without_a_limit_everyone_gets_what_they_want() {
        let a = allocate(None, &[audio(), video(1, 2, None), video(1, 1, None)]);
        assert_eq!(a.layers, vec![Some(0), Some(2), Some(1)]);
        assert_eq!(a.desired_bps, 40_000 + 1_500_000 + 500_000);
    }

    #[test]
    fn a_tight_budget_keeps_audio_and_the_low_layer() {
        let a = allocate(Some(300_000), &[audio(), video(1, 2, None)]);
        assert_eq!(a.layers, vec![Some(0), Some(0)]);
        assert_eq!(a.allocated_bps, 190_000);
        assert!(a.desired_bps > 300_000, "worth probing");
    }

    #[test]
    fn video_pauses_before_audio_suffers() {
        let a = allocate(Some(100_000), &[audio(), video(1, 2, None), audio()]);
        assert_eq!(a.layers, vec![Some(0), None, Some(0)]);
    }

    #[test]
    fn everyone_gets_a_picture_before_anyone_gets_a_better_one() {
        // 700 kbps: the high-priority subscription gets the middle layer, the other the low one.
        let a = allocate(Some(700_000), &[video(1, 2, None), video(5, 2, None)]);
        assert_eq!(a.layers, vec![Some(0), Some(1)]);
        // 200 kbps: only the high-priority one fits at all.
        let a = allocate(Some(200_000), &[video(1, 2, None), video(5, 2, None)]);
        assert_eq!(a.layers, vec![None, Some(0)]);
    }

    #[test]
    fn climbing_needs_headroom_but_staying_does_not() {
        // 520 kbps is enough for the middle layer, but not with 10% headroom to climb to it.
        assert_eq!(
            allocate(Some(520_000), &[video(1, 2, Some(0))]).layers,
            vec![Some(0)]
        );
        assert_eq!(
            allocate(Some(520_000), &[video(1, 2, Some(1))]).layers,
            vec![Some(1)]
        );
        assert_eq!(
            allocate(Some(600_000), &[video(1, 2, Some(0))]).layers,
            vec![Some(1)]
        );
    }

    #[test]
    fn unwanted_subscriptions_cost_nothing() {
        let mut hidden = video(9, 2, Some(2));
        hidden.max_layer = None;
        let a = allocate(Some(200_000), &[hidden, video(1, 0, None)]);
        assert_eq!(a.layers, vec![None, Some(0)]);
        assert_eq!(a.desired_bps, 150_000);
    }
}
