//! `sfuctl`: operate an SFU cluster through `sfu-control`.
//!
//! Tables for people by default, `--json` for scripts. Tokens are signed locally with the API
//! key and secret (the development key by default).

#[path = "sfuctl/federation.rs"]
mod federation;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sfu_control::auth::{admin_claims, join_claims, mint};
use sfu_proto::control as pb;
use sfu_proto::control::node_service_client::NodeServiceClient;
use sfu_proto::control::recording_service_client::RecordingServiceClient;
use sfu_proto::control::room_service_client::RoomServiceClient;
use std::time::Duration;
use tonic::Request;
use tonic::metadata::MetadataValue;

#[derive(Parser)]
#[command(
    version,
    about = "Operate an SFU cluster: tokens, rooms, participants, nodes"
)]
struct Cli {
    /// The control service.
    #[arg(
        long,
        env = "SFU_CONTROL_URL",
        default_value = "http://127.0.0.1:7900",
        global = true
    )]
    url: String,
    #[arg(long, env = "SFU_API_KEY", default_value = "devkey", global = true)]
    api_key: String,
    #[arg(
        long,
        env = "SFU_API_SECRET",
        default_value = "secret",
        global = true,
        hide_env_values = true
    )]
    api_secret: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// A CA certificate (PEM) trusted besides the system's, for an `https://` control service.
    #[arg(long, env = "SFU_TLS_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

/// A channel to the control service: over TLS for `https://` URLs, verified with the system's
/// roots and `--ca`.
async fn channel(
    url: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("--url {url}"))?;
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Rooms.
    Rooms {
        #[command(subcommand)]
        command: RoomsCmd,
    },
    /// Participants of a room.
    Participants {
        #[command(subcommand)]
        command: ParticipantsCmd,
    },
    /// Nodes of the cluster.
    Nodes {
        #[command(subcommand)]
        command: NodesCmd,
    },
    /// One node.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Track and room recordings (files on the recording node).
    Recordings {
        #[command(subcommand)]
        command: RecordingsCmd,
    },
    /// Federation with other organisations' clusters: peers and room mappings.
    Federation {
        #[command(subcommand)]
        command: federation::FederationCmd,
    },
}

#[derive(Subcommand)]
enum RecordingsCmd {
    /// Record a published track, or without --track the whole room (the active speaker's
    /// video and everyone's audio, mixed); prints the recording's id.
    Start {
        room: String,
        #[arg(long, default_value = "")]
        track: String,
        /// The node that records (default: the track's own node; for a room, its first
        /// participant's).
        #[arg(long, default_value = "")]
        node: String,
        /// Room recordings: also stream live to this RTMP(S) URL (repeat for several).
        #[arg(long = "stream")]
        streams: Vec<String>,
        /// Room recordings: also HLS, served by the recording node.
        #[arg(long)]
        hls: bool,
    },
    /// Stop a recording; waits until its file is finalised.
    Stop { id: String },
    /// Recordings of every node.
    List {
        /// Only this room's.
        #[arg(long, default_value = "")]
        room: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a join token (or an administrator token with --admin).
    Create {
        #[arg(long, default_value = "admin")]
        identity: String,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        no_publish: bool,
        #[arg(long)]
        no_subscribe: bool,
        /// Every administrative grant, for every room.
        #[arg(long)]
        admin: bool,
        /// Validity in seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        valid_for: u64,
    },
}

#[derive(Subcommand)]
enum RoomsCmd {
    List,
    Create {
        name: String,
        #[arg(long, default_value_t = 0)]
        max_participants: u32,
        #[arg(long, default_value_t = 0)]
        empty_timeout: u32,
        /// Above this many participants the audience is counted, not announced (0: 50).
        #[arg(long, default_value_t = 0)]
        large_room_threshold: u32,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum ParticipantsCmd {
    /// Everyone in the room, on every node (stage and audience), and the raised hands.
    List {
        room: String,
    },
    /// Let a participant on stage (--can-publish=true) or take it off (--can-publish=false).
    Update {
        room: String,
        identity: String,
        #[arg(long, action = clap::ArgAction::Set, required = true)]
        can_publish: Option<bool>,
    },
    Remove {
        room: String,
        identity: String,
    },
    /// Mute (or with --unmute, unmute) a published track.
    Mute {
        room: String,
        identity: String,
        track: String,
        #[arg(long)]
        unmute: bool,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    List,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Drain a node: no new joins, participants move to other nodes, then it exits.
    Drain { node: String },
}

/// Prints rows as an aligned table.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sfu_control::tls::install_default_provider();
    let url = cli.url.clone();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {}: {}", code_name(s.code()), s.message()),
                None if e.downcast_ref::<tonic::transport::Error>().is_some() => {
                    eprintln!(
                        "error: cannot reach the control service at {url}: {}",
                        e.root_cause()
                    )
                }
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::Unavailable => "unavailable",
        _ => "failed",
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let admin = mint(
        &cli.api_secret,
        &admin_claims(&cli.api_key, Duration::from_secs(300)),
    )?;
    let json = cli.json;
    let print =
        |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match cli.command {
        Cmd::Token {
            command:
                TokenCmd::Create {
                    identity,
                    room,
                    no_publish,
                    no_subscribe,
                    admin: is_admin,
                    valid_for,
                },
        } => {
            let valid = Duration::from_secs(valid_for);
            let claims = if is_admin {
                let mut c = admin_claims(&cli.api_key, valid);
                c.sub = identity;
                c.video.room = room;
                c
            } else {
                let room =
                    room.ok_or_else(|| anyhow::anyhow!("--room is needed for a join token"))?;
                join_claims(
                    &cli.api_key,
                    &identity,
                    &room,
                    !no_publish,
                    !no_subscribe,
                    valid,
                )
            };
            println!("{}", mint(&cli.api_secret, &claims)?);
        }
        Cmd::Rooms { command } => {
            let mut c = RoomServiceClient::new(channel(&cli.url, cli.ca.as_deref()).await?);
            match command {
                RoomsCmd::List => {
                    let rooms = c
                        .list_rooms(authed(&admin, pb::ListRoomsRequest::default()))
                        .await?
                        .into_inner()
                        .rooms;
                    if json {
                        print(serde_json::json!(rooms.iter().map(|r| serde_json::json!({
                            "name": r.name, "participants": r.num_participants, "publishers": r.num_publishers,
                            "max_participants": r.max_participants, "nodes": r.nodes,
                        })).collect::<Vec<_>>()));
                    } else {
                        table(
                            &["ROOM", "PARTICIPANTS", "PUBLISHERS", "LIMIT", "NODES"],
                            rooms
                                .iter()
                                .map(|r| {
                                    vec![
                                        r.name.clone(),
                                        r.num_participants.to_string(),
                                        r.num_publishers.to_string(),
                                        if r.max_participants == 0 {
                                            "-".into()
                                        } else {
                                            r.max_participants.to_string()
                                        },
                                        r.nodes.join(","),
                                    ]
                                })
                                .collect(),
                        );
                    }
                }
                RoomsCmd::Create {
                    name,
                    max_participants,
                    empty_timeout,
                    large_room_threshold,
                } => {
                    let r = c
                        .create_room(authed(
                            &admin,
                            pb::CreateRoomRequest {
                                name,
                                max_participants,
                                empty_timeout,
                                large_room_threshold,
                            },
                        ))
                        .await?
                        .into_inner();
                    if json {
                        print(
                            serde_json::json!({ "name": r.name, "max_participants": r.max_participants }),
                        );
                    } else {
                        println!("created room {}", r.name);
                    }
                }
                RoomsCmd::Delete { name } => {
                    c.delete_room(authed(&admin, pb::DeleteRoomRequest { room: name.clone() }))
                        .await?;
                    if json {
                        print(serde_json::json!({ "deleted": name }));
                    } else {
                        println!("deleted room {name}");
                    }
                }
            }
        }
        Cmd::Participants { command } => {
            let mut c = RoomServiceClient::new(channel(&cli.url, cli.ca.as_deref()).await?);
            match command {
                ParticipantsCmd::List { room } => {
                    let mut ps = Vec::new();
                    let mut page_token = String::new();
                    let hands = loop {
                        let page = c
                            .list_participants(authed(
                                &admin,
                                pb::ListParticipantsRequest {
                                    room: room.clone(),
                                    page_size: 0,
                                    page_token,
                                },
                            ))
                            .await?
                            .into_inner();
                        ps.extend(page.participants);
                        if page.next_page_token.is_empty() {
                            break page.raised_hands;
                        }
                        page_token = page.next_page_token;
                    };
                    if json {
                        print(serde_json::json!({
                            "participants": ps.iter().map(|p| serde_json::json!({
                                "sid": p.sid, "identity": p.identity, "name": p.name, "node": p.node,
                                "kind": p.kind, "stage": p.stage,
                                "hand_raised_ms": (p.hand_raised_ms > 0).then_some(p.hand_raised_ms),
                                "tracks": p.tracks.iter().map(|t| serde_json::json!({"sid": t.sid, "kind": t.kind, "muted": t.muted})).collect::<Vec<_>>(),
                            })).collect::<Vec<_>>(),
                            "raised_hands": hands.iter().map(|h| serde_json::json!({
                                "sid": h.sid, "identity": h.identity, "node": h.node, "raised_ms": h.raised_ms,
                            })).collect::<Vec<_>>(),
                        }));
                    } else {
                        table(
                            &["IDENTITY", "SID", "NODE", "ROLE", "TRACKS"],
                            ps.iter()
                                .map(|p| {
                                    let tracks: Vec<String> = p
                                        .tracks
                                        .iter()
                                        .map(|t| {
                                            format!(
                                                "{}:{}{}",
                                                t.kind,
                                                t.sid,
                                                if t.muted { " (muted)" } else { "" }
                                            )
                                        })
                                        .collect();
                                    let role = match (p.stage, p.hand_raised_ms > 0) {
                                        (true, _) => "stage",
                                        (false, true) => "audience (hand up)",
                                        (false, false) => "audience",
                                    };
                                    vec![
                                        p.identity.clone(),
                                        p.sid.clone(),
                                        p.node.clone(),
                                        role.to_owned(),
                                        tracks.join(" "),
                                    ]
                                })
                                .collect(),
                        );
                        if !hands.is_empty() {
                            println!();
                            println!("raised hands, first first:");
                            for h in &hands {
                                println!("  {} ({})", h.identity, h.node);
                            }
                        }
                    }
                }
                ParticipantsCmd::Update {
                    room,
                    identity,
                    can_publish,
                } => {
                    c.update_participant(authed(
                        &admin,
                        pb::UpdateParticipantRequest {
                            room,
                            identity: identity.clone(),
                            permission: Some(pb::ParticipantPermission { can_publish }),
                            ..Default::default()
                        },
                    ))
                    .await?;
                    let stage = can_publish == Some(true);
                    if json {
                        print(serde_json::json!({ "identity": identity, "stage": stage }));
                    } else if stage {
                        println!("{identity} is on stage");
                    } else {
                        println!("{identity} is in the audience");
                    }
                }
                ParticipantsCmd::Remove { room, identity } => {
                    c.remove_participant(authed(
                        &admin,
                        pb::RoomParticipantIdentity {
                            room,
                            identity: identity.clone(),
                        },
                    ))
                    .await?;
                    if json {
                        print(serde_json::json!({ "removed": identity }));
                    } else {
                        println!("removed {identity}");
                    }
                }
                ParticipantsCmd::Mute {
                    room,
                    identity,
                    track,
                    unmute,
                } => {
                    let r = c
                        .mute_published_track(authed(
                            &admin,
                            pb::MuteRoomTrackRequest {
                                room,
                                identity,
                                track_sid: track,
                                muted: !unmute,
                            },
                        ))
                        .await?
                        .into_inner();
                    let t = r.track.unwrap_or_default();
                    if json {
                        print(serde_json::json!({ "track": t.sid, "muted": t.muted }));
                    } else {
                        println!("{} {}", t.sid, if t.muted { "muted" } else { "unmuted" });
                    }
                }
            }
        }
        Cmd::Nodes {
            command: NodesCmd::List,
        } => {
            let mut c = NodeServiceClient::new(channel(&cli.url, cli.ca.as_deref()).await?);
            let nodes = c
                .list_nodes(authed(&admin, pb::ListNodesRequest {}))
                .await?
                .into_inner()
                .nodes;
            if json {
                print(serde_json::json!(nodes.iter().map(|n| serde_json::json!({
                    "id": n.id, "state": n.state, "region": n.region, "url": n.http_url,
                    "rooms": n.rooms, "participants": n.participants, "tracks": n.tracks, "cpu": n.cpu,
                    "media_cpu": n.media_cpu, "media_cores": n.media_cores,
                    "egress_bps": n.egress_bps, "egress_capacity_bps": n.egress_capacity_bps,
                    "joins_per_sec": n.joins_per_sec, "utilisation": n.utilisation,
                })).collect::<Vec<_>>()));
            } else {
                table(
                    &[
                        "NODE",
                        "STATE",
                        "REGION",
                        "URL",
                        "ROOMS",
                        "PARTICIPANTS",
                        "TRACKS",
                        "CPU",
                        "MEDIA CPU",
                        "EGRESS",
                        "LOAD",
                    ],
                    nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.id.clone(),
                                n.state.clone(),
                                n.region.clone(),
                                n.http_url.clone(),
                                n.rooms.to_string(),
                                n.participants.to_string(),
                                n.tracks.to_string(),
                                format!("{:.2}", n.cpu),
                                format!("{:.2}/{:.0}", n.media_cpu, n.media_cores),
                                format!(
                                    "{:.1}/{:.0} Mb/s",
                                    n.egress_bps as f64 / 1e6,
                                    n.egress_capacity_bps as f64 / 1e6
                                ),
                                format!("{:.0} %", n.utilisation * 100.0),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Cmd::Node {
            command: NodeCmd::Drain { node },
        } => {
            let mut c = NodeServiceClient::new(channel(&cli.url, cli.ca.as_deref()).await?);
            c.drain_node(authed(&admin, pb::DrainNodeRequest { node: node.clone() }))
                .await?;
            if json {
                print(serde_json::json!({ "draining": node }));
            } else {
                println!("node {node} is draining");
            }
        }
        Cmd::Federation { command } => {
            federation::run(command, &cli.url, cli.ca.as_deref(), &admin, json).await?;
        }
        Cmd::Recordings { command } => {
            let mut c = RecordingServiceClient::new(channel(&cli.url, cli.ca.as_deref()).await?);
            let one = |r: &pb::RecordingInfo| {
                serde_json::json!({
                    "id": r.id, "room": r.room, "kind": r.kind, "track": r.track, "codec": r.codec,
                    "state": r.state, "node": r.node, "file": r.file, "duration_ms": r.duration_ms,
                    "size_bytes": r.size_bytes, "started_ms": r.started_ms, "ended_ms": r.ended_ms,
                    "error": r.error, "hls": r.hls, "url": r.url, "upload": r.upload,
                    "upload_error": r.upload_error,
                    "streams": r.streams.iter().map(|s| serde_json::json!({
                        "url": s.url, "state": s.state, "error": s.error,
                    })).collect::<Vec<_>>(),
                })
            };
            match command {
                RecordingsCmd::Start {
                    room,
                    track,
                    node,
                    streams,
                    hls,
                } => {
                    let req = pb::StartRecordingRequest {
                        room,
                        track,
                        node,
                        streams,
                        hls,
                    };
                    let r = c.start_recording(authed(&admin, req)).await?.into_inner();
                    if json {
                        print(one(&r));
                    } else {
                        println!("{}", r.id);
                    }
                }
                RecordingsCmd::Stop { id } => {
                    let req = pb::StopRecordingRequest { id };
                    let r = c.stop_recording(authed(&admin, req)).await?.into_inner();
                    if json {
                        print(one(&r));
                    } else {
                        println!(
                            "{} {}: {} ({:.1} s, {} bytes)",
                            r.id,
                            r.state,
                            r.file,
                            r.duration_ms as f64 / 1000.0,
                            r.size_bytes
                        );
                    }
                }
                RecordingsCmd::List { room } => {
                    let req = pb::ListRecordingsRequest { room };
                    let all = c.list_recordings(authed(&admin, req)).await?.into_inner();
                    if json {
                        print(serde_json::json!(
                            all.recordings.iter().map(one).collect::<Vec<_>>()
                        ));
                    } else {
                        let header = [
                            "ID",
                            "ROOM",
                            "KIND",
                            "STATE",
                            "NODE",
                            "FILE OR URL",
                            "DURATION",
                            "SIZE",
                        ];
                        let rows = all.recordings.iter().map(|r| {
                            vec![
                                r.id.clone(),
                                r.room.clone(),
                                format!("{} {}", r.kind, r.track),
                                if r.error.is_empty() {
                                    r.state.clone()
                                } else {
                                    format!("{} ({})", r.state, r.error)
                                },
                                r.node.clone(),
                                // Where it is: uploaded, or on the node.
                                match r.upload.as_str() {
                                    "uploaded" => r.url.clone(),
                                    "" => r.file.clone(),
                                    "failed" => {
                                        format!("{} (upload failed: {})", r.file, r.upload_error)
                                    }
                                    other => format!("{} ({other})", r.file),
                                },
                                format!("{:.1}s", r.duration_ms as f64 / 1000.0),
                                r.size_bytes.to_string(),
                            ]
                        });
                        table(&header, rows.collect());
                    }
                }
            }
        }
    }
    Ok(())
}
