//! `sfuctl federation`: the peers this cluster's gateways are configured for or that were
//! added at runtime, and room mappings with them (`FederationService`).

use super::{authed, channel, table};
use clap::Subcommand;
use sfu_proto::control as pb;
use sfu_proto::control::federation_service_client::FederationServiceClient;

#[derive(Subcommand)]
pub enum FederationCmd {
    /// Peers (other organisations' clusters) the gateways are configured for.
    Peers {
        #[command(subcommand)]
        command: PeersCmd,
    },
    /// Rooms mapped to a peer's rooms.
    Rooms {
        #[command(subcommand)]
        command: RoomsCmd,
    },
}

#[derive(Subcommand)]
pub enum PeersCmd {
    /// Each peer with where it comes from (config, added), its gateways and those linked now.
    List,
    /// Adds a peer (kept in the registry): the gateways trust its CA and link to it.
    Add {
        name: String,
        /// Its gateways' federation endpoints, IP:PORT (repeat for several).
        #[arg(long = "addr", required = true)]
        addrs: Vec<String>,
        /// The only CA (or self-signed certificate) trusted for it, a PEM file.
        #[arg(long)]
        ca: std::path::PathBuf,
    },
    /// Removes an added peer: the gateways close its link and what crosses stops.
    Remove { name: String },
}

#[derive(Subcommand)]
pub enum RoomsCmd {
    /// Maps our ROOM to the peer's room: it crosses once the peer maps it back.
    Map {
        room: String,
        #[arg(long)]
        peer: String,
        /// The peer's room (as the peer names it); defaults to ROOM.
        #[arg(long)]
        peer_room: Option<String>,
    },
    /// Unmaps ROOM: what crosses for it stops within seconds.
    Unmap { room: String },
    /// Our mappings, each with whether the peer maps it back (active).
    List,
    /// Stops forwarding a peer's TRACK in our ROOM, in our cluster only (kept in the
    /// registry: every gateway applies it, after a failover too).
    Stop { room: String, track: String },
    /// Forwards a stopped TRACK of ROOM again.
    Resume { room: String, track: String },
    /// The peers' tracks stopped in ROOM.
    Stopped { room: String },
}

fn mapping(m: &pb::RoomMapping) -> serde_json::Value {
    serde_json::json!({"room": m.room, "peer": m.peer, "peer_room": m.peer_room, "active": m.active})
}

pub async fn run(
    command: FederationCmd,
    url: &str,
    ca: Option<&std::path::Path>,
    admin: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut c = FederationServiceClient::new(channel(url, ca).await?);
    let print =
        |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match command {
        FederationCmd::Peers {
            command: PeersCmd::Add { name, addrs, ca },
        } => {
            use anyhow::Context;
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            let req = pb::AddPeerRequest {
                name,
                addrs,
                ca_pem,
            };
            let p = c.add_peer(authed(admin, req)).await?.into_inner();
            if json {
                print(serde_json::json!({"name": p.name, "addrs": p.addrs, "source": p.source}));
            } else {
                println!("added peer {} at {}", p.name, p.addrs.join(","));
            }
        }
        FederationCmd::Peers {
            command: PeersCmd::Remove { name },
        } => {
            let req = pb::RemovePeerRequest { name: name.clone() };
            c.remove_peer(authed(admin, req)).await?;
            if json {
                print(serde_json::json!({ "removed": name }));
            } else {
                println!("removed peer {name}");
            }
        }
        FederationCmd::Peers {
            command: PeersCmd::List,
        } => {
            let r = c
                .list_peers(authed(admin, pb::ListFederationPeersRequest {}))
                .await?
                .into_inner();
            if json {
                print(serde_json::json!(
                    r.peers
                        .iter()
                        .map(|p| serde_json::json!({
                            "name": p.name, "source": p.source, "addrs": p.addrs,
                            "gateways": p.gateways, "linked_gateways": p.linked_gateways,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows = r.peers.iter().map(|p| {
                    vec![
                        p.name.clone(),
                        p.source.clone(),
                        p.gateways.join(","),
                        p.linked_gateways.join(","),
                    ]
                });
                table(&["PEER", "SOURCE", "GATEWAYS", "LINKED"], rows.collect());
            }
        }
        FederationCmd::Rooms { command } => match command {
            RoomsCmd::Map {
                room,
                peer,
                peer_room,
            } => {
                let req = pb::MapRoomRequest {
                    peer_room: peer_room.unwrap_or_else(|| room.clone()),
                    room,
                    peer,
                };
                let m = c.map_room(authed(admin, req)).await?.into_inner();
                if json {
                    print(mapping(&m));
                } else {
                    println!("mapped {} to {}/{}", m.room, m.peer, m.peer_room);
                }
            }
            RoomsCmd::Unmap { room } => {
                let req = pb::UnmapRoomRequest { room: room.clone() };
                c.unmap_room(authed(admin, req)).await?;
                if json {
                    print(serde_json::json!({ "unmapped": room }));
                } else {
                    println!("unmapped {room}");
                }
            }
            RoomsCmd::Stop { room, track } => {
                let req = pb::StopTrackRequest {
                    room: room.clone(),
                    track: track.clone(),
                };
                let r = c.stop_track(authed(admin, req)).await?.into_inner();
                if json {
                    print(
                        serde_json::json!({"room": room, "stopped": track, "already": r.already}),
                    );
                } else if r.already {
                    println!("{track} of {room} was stopped already");
                } else {
                    println!("stopped {track} in {room}");
                }
            }
            RoomsCmd::Resume { room, track } => {
                let req = pb::ResumeTrackRequest {
                    room: room.clone(),
                    track: track.clone(),
                };
                c.resume_track(authed(admin, req)).await?;
                if json {
                    print(serde_json::json!({"room": room, "resumed": track}));
                } else {
                    println!("resumed {track} in {room}");
                }
            }
            RoomsCmd::Stopped { room } => {
                let req = pb::ListStoppedTracksRequest { room };
                let r = c
                    .list_stopped_tracks(authed(admin, req))
                    .await?
                    .into_inner();
                if json {
                    print(serde_json::json!(r.tracks));
                } else {
                    for t in r.tracks {
                        println!("{t}");
                    }
                }
            }
            RoomsCmd::List => {
                let r = c
                    .list_mappings(authed(admin, pb::ListMappingsRequest {}))
                    .await?
                    .into_inner();
                if json {
                    print(serde_json::json!(
                        r.mappings.iter().map(mapping).collect::<Vec<_>>()
                    ));
                } else {
                    let rows = r.mappings.iter().map(|m| {
                        vec![
                            m.room.clone(),
                            m.peer.clone(),
                            m.peer_room.clone(),
                            if m.active { "yes" } else { "no" }.to_owned(),
                        ]
                    });
                    table(&["ROOM", "PEER", "PEER ROOM", "ACTIVE"], rows.collect());
                }
            }
        },
    }
    Ok(())
}
