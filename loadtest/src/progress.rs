//! Live progress on stderr (indicatif): peers started while ramping, then seconds of warm-up
//! and measurement, each with the latest second's figures. Hidden with `--quiet` or when
//! stderr is not a terminal.

use crate::series::Sample;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// The progress bar of one run.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(show: bool) -> Self {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            bar: ProgressBar::with_draw_target(None, target),
        }
    }

    /// Starts a phase: `name`, counting up to `len` `unit`s.
    pub fn phase(&self, name: &str, len: u64, unit: &str) {
        let template = format!("{{prefix:>9}} [{{bar:30}}] {{pos:>5}}/{{len:5}} {unit} | {{msg}}");
        // The template is fixed text with known keys; should it ever be refused, the bar
        // keeps its previous style, which is harmless.
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_prefix(name.to_owned());
        self.bar.set_length(len);
        self.bar.set_position(0);
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Shows the latest second.
    pub fn update(&self, s: &Sample) {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        self.bar.set_message(format!(
            "up {} failed {} receiving {} | rx {:.1} Mbit/s | latency p50 {} p99 {} ms | loss {} % | watched CPU {} %",
            s.peers_connected,
            s.peers_failed,
            s.peers_receiving,
            s.received_kbps / 1e3,
            opt(s.latency_p50_ms),
            opt(s.latency_p99_ms),
            s.loss_percent.map_or("-".to_owned(), |v| format!("{v:.2}")),
            opt(s.sfu_cpu_percent),
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
