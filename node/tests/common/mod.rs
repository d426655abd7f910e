//! Test harness: a node started in-process on ephemeral loopback ports, and headless Chromium
//! driven by `tests/browser/driver.mjs`. Submodules: [`control`] (etcd, cluster nodes and
//! `sfu-control`), [`media`] (recording and streaming helpers), [`recording`] (a node's
//! recording API, ffprobe and ffmpeg on files, webhooks), [`process`] (node
//! processes), [`sdp`] (client SDP), [`shaper`] (a bandwidth limiter), [`noise`] (a camera
//! video no encoder can compress).

#![allow(dead_code)]

pub mod control;
pub mod limited;
pub mod media;
pub mod noise;
pub mod process;
pub mod recording;
pub mod sdp;
pub mod shaper;

use serde_json::Value;
use sfu_node::auth::{Claims, join_claims, mint};
use sfu_node::{Config, Server};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Starts a development-mode node on loopback with ephemeral ports.
pub async fn start_node() -> Server {
    let _ = tracing_subscriber_init();
    Server::start(Config::loopback())
        .await
        .expect("node starts")
}

/// An HTTP client (the process's TLS provider chosen first: reqwest is built without one).
pub fn http() -> reqwest::Client {
    sfu_control::tls::install_default_provider();
    reqwest::Client::new()
}

/// A node's Prometheus text (`GET /metrics` on its HTTP base URL).
pub async fn metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample whose line starts with `series` (a name, with its labels if it has
/// any, e.g. `sfu_dropped_packets_total{reason="paused"}`), or 0 if there is none.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn tracing_subscriber_init() -> Option<()> {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = std::env::var("SFU_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber_try_init(&filter);
    });
    Some(())
}

fn tracing_subscriber_try_init(filter: &str) -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter)?)
        .with_test_writer()
        .try_init()
        .map_err(|e| e as Box<dyn std::error::Error>)
}

/// A development token.
pub fn token(identity: &str, room: &str, publish: bool, subscribe: bool) -> String {
    mint(
        "secret",
        &join_claims(
            "devkey",
            identity,
            room,
            publish,
            subscribe,
            Duration::from_secs(600),
        ),
    )
    .unwrap()
}

/// Mints arbitrary claims with the development secret.
pub fn token_for(claims: &Claims, secret: &str) -> String {
    mint(secret, claims).unwrap()
}

/// Browser tests run one at a time: each runs several Chromium pages, and two such tests
/// at once would starve each other on a small machine.
pub async fn browser_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// Headless Chromium with some pages open.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

/// One report of the driver: `pages.<name>.{state, errors, stats}`.
pub type Sample = Value;

impl Browser {
    pub async fn launch(pages: &[(&str, String)]) -> Browser {
        Self::launch_with_args(pages, &[]).await
    }

    /// Launches with extra Chromium flags.
    pub async fn launch_with_args(pages: &[(&str, String)], args: &[String]) -> Browser {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "playwright-core is missing: run `npm ci --prefix node/tests/browser` (the test script in README does)"
        );
        let spec = serde_json::json!({
            "pages": pages.iter().map(|(n, u)| serde_json::json!({"name": n, "url": u})).collect::<Vec<_>>(),
            "seconds": 240,
            "args": args,
        });
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js) is installed");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        Browser {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Opens another page.
    pub async fn open(&mut self, name: &str, url: &str) {
        let cmd = serde_json::json!({"open": {"name": name, "url": url}});
        self.command(cmd).await;
    }

    /// Evaluates a JavaScript expression in a page (awaited if it is a promise).
    pub async fn eval(&mut self, name: &str, js: &str) {
        self.command(serde_json::json!({"eval": {"name": name, "js": js}}))
            .await;
    }

    /// Runs a script file in a page (added as a script tag; e.g. an npm package's build).
    pub async fn script(&mut self, name: &str, path: &str) {
        self.command(serde_json::json!({"script": {"name": name, "path": path}}))
            .await;
    }

    /// Types `value` into the element `selector` matches, as a user does.
    pub async fn fill(&mut self, name: &str, selector: &str, value: &str) {
        let cmd = serde_json::json!({"fill": {"name": name, "selector": selector, "value": value}});
        self.command(cmd).await;
    }

    /// Clicks the element `selector` matches, as a user does.
    pub async fn click(&mut self, name: &str, selector: &str) {
        let cmd = serde_json::json!({"click": {"name": name, "selector": selector}});
        self.command(cmd).await;
    }

    /// Saves a PNG of the page at `path`; the driver writes `PATH.json` with its statistics
    /// (`bytes`, `width`, `height`, `colours`, `stddev`) once it is saved.
    pub async fn screenshot(&mut self, name: &str, path: &std::path::Path) {
        let cmd = serde_json::json!({"screenshot": {"name": name, "path": path}});
        self.command(cmd).await;
    }

    pub async fn close_page(&mut self, name: &str) {
        self.command(serde_json::json!({ "close": name })).await;
    }

    async fn command(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("driver running");
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next report (one per second).
    pub async fn sample(&mut self) -> Sample {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("driver reports within 30 s")
            .expect("driver output readable")
            .expect("driver still running");
        serde_json::from_str(&line).expect("driver prints JSON")
    }

    /// The newest report: those that queued up while the test was not reading are skipped
    /// (after a wait, [`Browser::sample`] returns the oldest, seconds old).
    pub async fn latest(&mut self) -> Sample {
        let mut newest = None;
        // `next_line` is cancel safe: a timeout loses no line.
        while let Ok(line) =
            tokio::time::timeout(Duration::from_millis(50), self.lines.next_line()).await
        {
            match line {
                Ok(Some(l)) => newest = Some(l),
                _ => break,
            }
        }
        match newest {
            Some(l) => serde_json::from_str(&l).expect("driver prints JSON"),
            None => self.sample().await,
        }
    }

    /// Samples until `done` holds, for at most `limit`; returns the last sample either way,
    /// with whether `done` held.
    pub async fn until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sample) -> bool,
    ) -> (bool, Sample) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = self.sample().await;
            if done(&s) {
                return (true, s);
            }
            if tokio::time::Instant::now() >= deadline {
                return (false, s);
            }
        }
    }

    pub async fn stop(mut self) {
        self.stdin.take();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A numeric statistic of a page in a sample (0 when absent).
pub fn stat(sample: &Sample, page: &str, name: &str) -> f64 {
    sample["pages"][page]["stats"][name].as_f64().unwrap_or(0.0)
}

pub fn state(sample: &Sample, page: &str) -> String {
    sample["pages"][page]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Waits until every named page decoded at least `frames` more video frames than in the first
/// sample and received audio; panics with the last sample otherwise.
pub async fn expect_media(
    browser: &mut Browser,
    pages: &[&str],
    frames: f64,
    limit: Duration,
) -> Sample {
    let mut baseline: Option<Vec<f64>> = None;
    let (ok, last) = browser
        .until(limit, |s| {
            let decoded: Vec<f64> = pages.iter().map(|p| stat(s, p, "framesDecoded")).collect();
            let base = baseline.get_or_insert_with(|| decoded.clone());
            pages
                .iter()
                .zip(decoded.iter().zip(base.iter()))
                .all(|(p, (now, start))| {
                    now - start >= frames && stat(s, p, "audioPacketsReceived") > 0.0
                })
        })
        .await;
    assert!(
        ok,
        "media did not flow to {pages:?} within {limit:?}; last sample: {last:#}"
    );
    last
}
