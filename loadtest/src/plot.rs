//! The plot of a run (SVG, plotters): received bitrate and connected peers, latency p50 and
//! p99, loss, and CPU over time, one panel each, with the measurement window marked.

use crate::report::Report;
use anyhow::{Context, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 260;
const WINDOW_MARK: RGBColor = RGBColor(150, 150, 150);

/// One line of a panel: its name, colour and points (seconds, value).
struct Line {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Writes the plot of `r` to `path` (`.svg`).
pub fn write(r: &Report, path: &Path) -> anyhow::Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!(
            "{}: only SVG plots are made (name the file .svg)",
            path.display()
        );
    }
    let root = SVGBackend::new(path, (WIDTH, PANEL_HEIGHT * 4)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((4, 1));
    let series = |f: &dyn Fn(&crate::series::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .filter_map(|s| Some((s.t_s, f(s)?)))
            .collect()
    };
    let s = &r.scenario;
    let title = format!(
        "{:?} {}: {} rooms x ({} publishers + {} subscribers)",
        s.target.kind, s.target.url, s.rooms, s.publishers, s.subscribers
    );
    panel(
        &panels[0],
        &format!("{title}: received media, all peers"),
        "Mbit/s",
        vec![Line {
            name: "received",
            color: BLUE,
            points: series(&|x| Some(x.received_kbps / 1e3)),
        }],
        r,
    )?;
    panel(
        &panels[1],
        "peers",
        "peers",
        vec![
            Line {
                name: "connected",
                color: GREEN,
                points: series(&|x| Some(x.peers_connected as f64)),
            },
            Line {
                name: "receiving",
                color: BLUE,
                points: series(&|x| Some(x.peers_receiving as f64)),
            },
            Line {
                name: "failed",
                color: RED,
                points: series(&|x| Some(x.peers_failed as f64)),
            },
        ],
        r,
    )?;
    panel(
        &panels[2],
        "send-to-receive latency, every packet",
        "ms",
        vec![
            Line {
                name: "p50",
                color: BLUE,
                points: series(&|x| x.latency_p50_ms),
            },
            Line {
                name: "p99",
                color: RED,
                points: series(&|x| x.latency_p99_ms),
            },
        ],
        r,
    )?;
    panel(
        &panels[3],
        "loss and CPU (% of one core)",
        "%",
        vec![
            Line {
                name: "loss %",
                color: RED,
                points: series(&|x| x.loss_percent),
            },
            Line {
                name: "watched processes CPU %",
                color: BLUE,
                points: series(&|x| x.sfu_cpu_percent),
            },
            Line {
                name: "load tester CPU %",
                color: MAGENTA,
                points: series(&|x| x.loadtest_cpu_percent),
            },
            Line {
                name: "other processes CPU %",
                color: RGBColor(150, 150, 150),
                points: series(&|x| x.others_cpu_percent),
            },
        ],
        r,
    )?;
    root.present()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    lines: Vec<Line>,
    r: &Report,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let x_max = r.series.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    let (w0, w1) = (r.window_started_s, r.window_started_s + r.window_s);
    for x in [w0, w1] {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, y_max)],
                WINDOW_MARK,
            )))
            .map_err(err)?;
    }
    for l in lines {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(l.points, color.stroke_width(2)))
            .map_err(err)?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}
