//! Command-line flags, and how they turn into scenarios: a `--scenario FILE` (or the built-in
//! default) overridden by every flag given, then checked. A flag's mistake names the flag.
//!
//! `--subscribers` takes a list (`50,100,150`): one run per value, a sweep, each in rooms of
//! its own (`loadtest-0`, `loadtest-1`, …).

use crate::scenario::{AudioSpec, Scenario, ScenarioError, TargetKind, VideoSpec, err};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Default)]
#[command(
    name = "sfu-loadtest",
    version,
    about = "Load-tests a WebRTC SFU with real WebRTC peers (ICE, DTLS, SRTP)",
    after_help = "Scenario files: docs/loadtest.md. Flags override the file."
)]
pub struct Cli {
    /// A TOML scenario file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// What is tested: this project's nodes (WebSocket), any WHIP/WHEP server, Janus, or a
    /// LiveKit server (or our nodes) over LiveKit's client protocol.
    #[arg(long, value_enum)]
    pub target: Option<TargetKind>,
    /// Base URL of the server (Janus: its HTTP API, e.g. http://127.0.0.1:8088/janus).
    #[arg(long)]
    pub url: Option<String>,
    /// Base URLs subscribers join, round robin (default: --url).
    #[arg(long, value_delimiter = ',')]
    pub subscriber_url: Vec<String>,
    /// The control plane (e.g. http://127.0.0.1:7900): every peer is placed by it.
    #[arg(long)]
    pub control: Option<String>,
    /// Number of rooms; each gets the publishers and subscribers below.
    #[arg(long)]
    pub rooms: Option<u32>,
    /// Room name, or prefix of the numbered room names.
    #[arg(long)]
    pub room: Option<String>,
    /// Publishers per room.
    #[arg(long)]
    pub publishers: Option<u32>,
    /// Publishers also receive the other publishers' media.
    #[arg(long)]
    pub publishers_subscribe: bool,
    /// Subscribers per room; a comma-separated list runs one test per value (a sweep).
    #[arg(long, value_delimiter = ',')]
    pub subscribers: Vec<u32>,
    /// Video bitrate of each publisher (top layer) in kbps; 0: no video.
    #[arg(long)]
    pub video_kbps: Option<u32>,
    #[arg(long)]
    pub fps: Option<u32>,
    /// Seconds between keyframes.
    #[arg(long)]
    pub keyframe_interval: Option<f64>,
    /// Publish three simulcast layers (q, h, f).
    #[arg(long)]
    pub simulcast: bool,
    /// Audio bitrate of each publisher in kbps; 0: no audio.
    #[arg(long)]
    pub audio_kbps: Option<u32>,
    /// Audio packet time in milliseconds (10, 20, 40 or 60).
    #[arg(long)]
    pub ptime: Option<u32>,
    /// Leave out the audio-level header extension (RFC 6464).
    #[arg(long)]
    pub no_audio_level: bool,
    /// Publishers of a room take turns speaking for this many seconds each (0: all at once).
    #[arg(long, value_name = "SECS")]
    pub speaker_turn: Option<f64>,
    /// Peers started per second.
    #[arg(long)]
    pub join_rate: Option<f64>,
    /// Seconds between the last join and the start of measuring.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds of measurement.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Light receivers: measure media from the clear RTP headers and authenticate and decrypt
    /// one packet in 64 (latency from those), for a fraction of the CPU per packet.
    #[arg(long)]
    pub light: bool,
    /// Light receivers read datagram by datagram, as a browser does, instead of taking a
    /// sender's runs of equal-size datagrams whole (`UDP_GRO`).
    #[arg(long)]
    pub no_gro: bool,
    /// Address the peers' sockets bind to.
    #[arg(long)]
    pub bind: Option<String>,
    #[arg(long, env = "SFU_API_KEY")]
    pub api_key: Option<String>,
    #[arg(long, env = "SFU_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// One fixed bearer token for every peer instead of minted ones.
    #[arg(long)]
    pub token: Option<String>,
    /// Report CPU and memory of every process with this command name (e.g. sfu-node, janus).
    #[arg(long, value_delimiter = ',')]
    pub watch_process: Vec<String>,
    /// Report CPU and memory of these processes.
    #[arg(long, value_delimiter = ',')]
    pub watch_pid: Vec<u32>,
    /// Write the reports (a JSON array, one per run) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Plot bitrate, latency and loss over time to this SVG file (one file per run of a sweep).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sets `field` from `flag` when the flag was given, remembering which flag set it.
struct Applied {
    by_flag: Vec<(&'static str, &'static str)>,
}

impl Applied {
    fn set<T>(&mut self, value: Option<T>, slot: &mut T, field: &'static str, flag: &'static str) {
        if let Some(v) = value {
            *slot = v;
            self.by_flag.push((field, flag));
        }
    }

    /// Names the flag in an error about a field it set.
    fn blame(&self, mut e: ScenarioError) -> ScenarioError {
        if let Some((_, flag)) = self.by_flag.iter().rev().find(|(f, _)| *f == e.field) {
            e.field = format!("{flag} ({})", e.field);
        }
        e
    }
}

impl Cli {
    /// The scenarios to run: one, or one per `--subscribers` value.
    pub fn scenarios(&self) -> Result<Vec<Scenario>, ScenarioError> {
        let base = match &self.scenario {
            Some(path) => Scenario::from_file(path)?,
            None => Scenario::default(),
        };
        let (mut s, applied) = self.apply(base)?;
        if self.subscribers.len() <= 1 {
            if let Some(&n) = self.subscribers.first() {
                s.subscribers = n;
            }
            s.validate().map_err(|e| applied.blame(e))?;
            return Ok(vec![s]);
        }
        self.subscribers
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut run = s.clone();
                run.subscribers = n;
                run.room_prefix = format!("{}-{i}", s.room_prefix);
                run.validate().map_err(|e| applied.blame(e))?;
                Ok(run)
            })
            .collect()
    }

    fn apply(&self, mut s: Scenario) -> Result<(Scenario, Applied), ScenarioError> {
        let mut a = Applied {
            by_flag: Vec::new(),
        };
        if !self.subscribers.is_empty() {
            a.by_flag.push(("subscribers", "--subscribers"));
        }
        a.set(self.target, &mut s.target.kind, "target.kind", "--target");
        a.set(self.url.clone(), &mut s.target.url, "target.url", "--url");
        if !self.subscriber_url.is_empty() {
            s.target.subscriber_urls = self.subscriber_url.clone();
            a.by_flag
                .push(("target.subscriber_urls", "--subscriber-url"));
        }
        if let Some(c) = &self.control {
            s.target.control = Some(c.clone());
            a.by_flag.push(("target.control", "--control"));
        }
        a.set(self.rooms, &mut s.rooms, "rooms", "--rooms");
        a.set(
            self.room.clone(),
            &mut s.room_prefix,
            "room_prefix",
            "--room",
        );
        a.set(
            self.publishers,
            &mut s.publishers,
            "publishers",
            "--publishers",
        );
        if self.publishers_subscribe {
            s.publishers_subscribe = true;
            a.by_flag
                .push(("publishers_subscribe", "--publishers-subscribe"));
        }
        match self.video_kbps {
            Some(0) => s.video = None,
            Some(kbps) => {
                s.video.get_or_insert_with(VideoSpec::default).bitrate_kbps = kbps;
                a.by_flag.push(("video.bitrate_kbps", "--video-kbps"));
            }
            None => {}
        }
        if self.fps.is_some() || self.keyframe_interval.is_some() || self.simulcast {
            let flag = if self.fps.is_some() {
                "--fps"
            } else if self.simulcast {
                "--simulcast"
            } else {
                "--keyframe-interval"
            };
            let Some(v) = s.video.as_mut() else {
                return Err(err(flag, "the scenario has no video (set --video-kbps)"));
            };
            a.set(self.fps, &mut v.fps, "video.fps", "--fps");
            a.set(
                self.keyframe_interval,
                &mut v.keyframe_interval_secs,
                "video.keyframe_interval_secs",
                "--keyframe-interval",
            );
            v.simulcast |= self.simulcast;
        }
        match self.audio_kbps {
            Some(0) => s.audio = None,
            Some(kbps) => {
                s.audio.get_or_insert_with(AudioSpec::default).bitrate_kbps = kbps;
                a.by_flag.push(("audio.bitrate_kbps", "--audio-kbps"));
            }
            None => {}
        }
        if self.ptime.is_some() || self.no_audio_level {
            let flag = if self.ptime.is_some() {
                "--ptime"
            } else {
                "--no-audio-level"
            };
            let Some(au) = s.audio.as_mut() else {
                return Err(err(flag, "the scenario has no audio (set --audio-kbps)"));
            };
            a.set(self.ptime, &mut au.ptime_ms, "audio.ptime_ms", "--ptime");
            au.audio_level &= !self.no_audio_level;
        }
        a.set(
            self.speaker_turn,
            &mut s.speakers.turn_secs,
            "speakers.turn_secs",
            "--speaker-turn",
        );
        a.set(self.join_rate, &mut s.join_rate, "join_rate", "--join-rate");
        a.set(self.warmup, &mut s.warmup_secs, "warmup_secs", "--warmup");
        a.set(
            self.duration,
            &mut s.duration_secs,
            "duration_secs",
            "--duration",
        );
        if self.light {
            s.light_receivers = true;
            a.by_flag.push(("light_receivers", "--light"));
        }
        if self.no_gro {
            s.light_gro = false;
            a.by_flag.push(("light_gro", "--no-gro"));
        }
        a.set(self.bind.clone(), &mut s.bind, "bind", "--bind");
        if let Some(k) = &self.api_key {
            s.auth.api_key = Some(k.clone());
            a.by_flag.push(("auth", "--api-key"));
        }
        if let Some(k) = &self.api_secret {
            s.auth.api_secret = Some(k.clone());
            a.by_flag.push(("auth", "--api-secret"));
        }
        if let Some(t) = &self.token {
            s.auth.token = Some(t.clone());
        }
        Ok((s, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<Scenario>, ScenarioError> {
        let mut all = vec!["sfu-loadtest"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("flags parse").scenarios()
    }

    fn scenario_file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A scenario file in the temp directory, removed when dropped.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "sfu-loadtest-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&path, text).expect("temp dir is writable");
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn without_a_file_the_defaults_run_one_scenario() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0], Scenario::default());
    }

    #[test]
    fn flags_override_the_file() {
        let f = scenario_file(
            "rooms = 3\nsubscribers = 7\n[target]\nkind = \"sfu\"\nurl = \"http://a:1\"\n[audio]\nbitrate_kbps = 32\n",
        );
        let path = f.0.to_str().unwrap();
        let s = parse(&["--scenario", path, "--rooms", "5", "--ptime", "60"]).unwrap();
        assert!(!s[0].light_receivers, "full receivers unless asked");
        assert!(parse(&["--scenario", path, "--light"]).unwrap()[0].light_receivers);
        assert!(s[0].light_gro, "light receivers take segments unless told");
        assert!(!parse(&["--scenario", path, "--no-gro"]).unwrap()[0].light_gro);
        assert_eq!(s[0].rooms, 5);
        assert_eq!(s[0].subscribers, 7);
        assert_eq!(s[0].target.kind, TargetKind::Sfu);
        assert_eq!(s[0].audio.as_ref().unwrap().ptime_ms, 60);
        assert_eq!(s[0].audio.as_ref().unwrap().bitrate_kbps, 32);
        assert!(s[0].video.is_none(), "a file without [video] stays without");
    }

    #[test]
    fn a_subscriber_list_is_a_sweep_in_separate_rooms() {
        let s = parse(&["--subscribers", "5,10", "--room", "r"]).unwrap();
        assert_eq!(
            s.iter()
                .map(|s| (s.subscribers, s.room_prefix.as_str()))
                .collect::<Vec<_>>(),
            [(5, "r-0"), (10, "r-1")]
        );
    }

    #[test]
    fn a_bad_flag_value_names_the_flag_and_the_reason() {
        let cases: [(&[&str], &str, &str); 6] = [
            (&["--fps", "100"], "--fps (video.fps)", "between 1 and 60"),
            (
                &["--url", "ws://x"],
                "--url (target.url)",
                "not an http(s) URL",
            ),
            (&["--rooms", "0"], "--rooms (rooms)", "between 1 and 10000"),
            (&["--video-kbps", "0", "--fps", "15"], "--fps", "no video"),
            (
                &["--target", "janus", "--control", "http://c:7900"],
                "--control (target.control)",
                "only for kind",
            ),
            (
                &["--publishers-subscribe"],
                "--publishers-subscribe (publishers_subscribe)",
                "at least 2 publishers",
            ),
        ];
        for (args, field, reason) in cases {
            let e = parse(args).expect_err("refused");
            assert_eq!(e.field, field, "{args:?}: {e}");
            assert!(e.reason.contains(reason), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_missing_scenario_file_is_an_error_naming_it() {
        let e = parse(&["--scenario", "/nonexistent/x.toml"]).unwrap_err();
        assert_eq!(e.field, "scenario");
        assert!(e.reason.contains("/nonexistent/x.toml"), "{e}");
    }
}
