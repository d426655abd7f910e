//! A look inside a room recording's running pipeline, for finding where its media stops
//! (a stall under load does not show in the node's logs, and GStreamer's own debug log is
//! slow enough to hide it). Off unless `SFU_RECORDING_INSPECT` names a directory; then the
//! recording thread writes `{dir}/{id}.log` once a second and a graph of the pipeline
//! (`{id}-{seconds}.dot`, with queue levels and other live properties) every five, the last
//! 24 kept:
//!
//! - buffers counted on every source pad, with the last buffer's time and the last push's
//!   result (`pad=count@seconds Ok(Ok)`);
//! - events other than buffers that pass those pads (segments, caps, gaps...), each logged
//!   with its pad as it comes;
//! - the pipeline's state (and the one it is going to), latency and running time.
//!
//! It costs one counter per buffer per pad while on, and nothing while off.

use gstreamer as gst;
use gstreamer::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable naming the directory written to.
pub const ENV: &str = "SFU_RECORDING_INSPECT";
const EVERY: Duration = Duration::from_secs(1);
const GRAPH_EVERY: u64 = 5;
/// Graphs kept: the last two minutes (older ones are deleted as new ones come).
const GRAPHS_KEPT: u64 = 24;
/// No time seen yet.
const NONE: u64 = u64::MAX;

#[derive(Default)]
struct Count {
    buffers: AtomicU64,
    last_pts: AtomicU64,
}

/// What the recording thread holds while inspection is on.
pub struct Inspect {
    dir: PathBuf,
    id: String,
    started: Instant,
    last: Option<Instant>,
    ticks: u64,
    pads: BTreeMap<String, (gst::Pad, Arc<Count>)>,
    /// Lines written by GStreamer's threads (events), flushed at each tick.
    lines: Arc<Mutex<Vec<String>>>,
}

/// An element's name with its bin's (`rtmp-0/flvmux0`).
fn path(e: &gst::Element) -> String {
    match e.parent().and_then(|p| p.downcast::<gst::Element>().ok()) {
        Some(p) if p.parent().is_some() => format!("{}/{}", path(&p), e.name()),
        _ => e.name().to_string(),
    }
}

fn secs(ns: u64) -> String {
    if ns == NONE {
        "-".into()
    } else {
        format!("{:.3}", ns as f64 / 1e9)
    }
}

impl Inspect {
    /// Inspection of recording `id` if [`ENV`] is set.
    pub fn from_env(id: &str) -> Option<Inspect> {
        let dir = PathBuf::from(std::env::var_os(ENV)?);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("{ENV}: {}: {e}", dir.display());
            return None;
        }
        let started = Instant::now();
        let lines = Arc::new(Mutex::new(Vec::new()));
        tracing::info!(
            recording = id,
            "inspecting the pipeline into {}",
            dir.display()
        );
        Some(Inspect {
            dir,
            id: id.to_owned(),
            started,
            last: None,
            ticks: 0,
            pads: BTreeMap::new(),
            lines,
        })
    }

    /// Probes the source pads not probed yet (elements come and go while it runs).
    fn attach(&mut self, pipeline: &gst::Pipeline) {
        let mut elements = Vec::new();
        let mut it = pipeline.iterate_recurse();
        while let Ok(Some(e)) = it.next() {
            elements.push(e);
        }
        for e in elements {
            for pad in e.src_pads() {
                let name = format!("{}.{}", path(&e), pad.name());
                if self.pads.contains_key(&name) {
                    continue;
                }
                let count = Arc::new(Count {
                    buffers: AtomicU64::new(0),
                    last_pts: AtomicU64::new(NONE),
                });
                let c = count.clone();
                let lines = self.lines.clone();
                let started = self.started;
                let label = name.clone();
                let kinds = gst::PadProbeType::BUFFER
                    | gst::PadProbeType::BUFFER_LIST
                    | gst::PadProbeType::EVENT_DOWNSTREAM;
                pad.add_probe(kinds, move |_, info| {
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => {
                            c.buffers.fetch_add(1, Ordering::Relaxed);
                            if let Some(pts) = b.pts() {
                                c.last_pts.store(pts.nseconds(), Ordering::Relaxed);
                            }
                        }
                        Some(gst::PadProbeData::BufferList(l)) => {
                            c.buffers.fetch_add(l.len() as u64, Ordering::Relaxed);
                        }
                        Some(gst::PadProbeData::Event(ev)) => {
                            let t = started.elapsed().as_secs_f64();
                            let what = match ev.view() {
                                gst::EventView::Segment(s) => format!("{:?}", s.segment()),
                                gst::EventView::Caps(c) => c.caps().to_string(),
                                gst::EventView::Gap(g) => format!("gap {:?}", g.get()),
                                _ => format!("{:?}", ev.type_()),
                            };
                            if let Ok(mut l) = lines.lock() {
                                l.push(format!("{t:.3} {label} event {what}"));
                            }
                        }
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                });
                self.pads.insert(name, (pad.clone(), count));
            }
        }
    }

    /// Called often by the recording thread: writes what it saw once a second.
    pub fn tick(&mut self, pipeline: &gst::Pipeline) {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < EVERY) {
            return;
        }
        self.last = Some(now);
        // Pads of elements taken out (a speaker's audio branch that went) are forgotten.
        self.pads
            .retain(|_, (pad, _)| pad.has_as_ancestor(pipeline));
        self.attach(pipeline);
        let t = now.duration_since(self.started).as_secs_f64();
        let mut out = String::new();
        if let Ok(mut l) = self.lines.lock() {
            for line in l.drain(..) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let mut q = gst::query::Latency::new();
        let latency = if pipeline.query(&mut q) {
            let (live, min, max) = q.result();
            format!("live {live} min {min} max {max:?}")
        } else {
            "no answer".into()
        };
        let running = pipeline.current_running_time().map(|r| r.nseconds());
        // A pipeline whose start failed stays paused, waiting for what never comes.
        let (result, state, pending) = pipeline.state(gst::ClockTime::ZERO);
        out.push_str(&format!(
            "{t:.3} running {} state {state:?} pending {pending:?} ({result:?}) latency {latency}\n",
            secs(running.unwrap_or(NONE))
        ));
        for (name, (pad, c)) in &self.pads {
            // The last push's result: a branch that stopped says why (its upstream stops
            // at the first error it is given back).
            out.push_str(&format!(
                "{t:.3}   {name}={}@{} {:?}\n",
                c.buffers.load(Ordering::Relaxed),
                secs(c.last_pts.load(Ordering::Relaxed)),
                pad.last_flow_result()
            ));
        }
        let log = self.dir.join(format!("{}.log", self.id));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(out.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("{}: {e}", log.display());
        }
        if self.ticks.is_multiple_of(GRAPH_EVERY) {
            let dot = pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
            let file = self.dir.join(format!("{}-{:03}.dot", self.id, self.ticks));
            let _ = std::fs::write(file, dot.as_str());
            if let Some(old) = self.ticks.checked_sub(GRAPH_EVERY * GRAPHS_KEPT) {
                let _ = std::fs::remove_file(self.dir.join(format!("{}-{old:03}.dot", self.id)));
            }
        }
        self.ticks += 1;
    }
}
