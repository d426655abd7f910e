//! The thread a media worker runs on: its UDP socket and the loop that drives its
//! [`WorkerCore`] with the wall clock.
//!
//! The loop waits for whichever comes first: datagrams on the socket, a command (signaling,
//! relay links, registry changes), or the core's next deadline. It hands each to the core with
//! the time it is handled at, then ends the turn and sends what the turn produced with
//! `sendmmsg`. Nothing else lives here: what a worker does is in the core, which tests drive
//! the same way in virtual time.

use super::{WorkerConfig, WorkerCore};
use crate::media::Command;
use crate::media::plane::Shared;
use crate::media::udp::{self, BATCH, RecvBatch};
use crate::metrics::Metrics;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How often a worker adds its counters to the metrics.
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// Receive batches handled before the send queue is flushed and timers and commands get a
/// turn. Bounds the send queue (and latency) when datagrams arrive faster than they can be
/// forwarded: the excess then waits in (and overflows from) the kernel's receive buffer.
const BATCHES_PER_TURN: usize = 4;
/// Commands handled in one turn at most (a burst of relayed packets from a sibling, of
/// signaling), before the socket and deadlines get their turn.
const COMMANDS_PER_TURN: usize = 64;
/// How long the loop sleeps when the core waits for nothing (it wakes for input anyway).
const IDLE: Duration = Duration::from_secs(3600);

/// Starts worker `index` on a thread of its own; returns its socket's address.
pub(in crate::media) fn spawn(
    index: usize,
    config: &WorkerConfig,
    metrics: Arc<Metrics>,
    commands: mpsc::UnboundedReceiver<Command>,
    siblings: Vec<mpsc::UnboundedSender<Command>>,
    shared: Arc<Shared>,
) -> anyhow::Result<SocketAddr> {
    let port = if config.first_port == 0 {
        0
    } else {
        config.first_port + index as u16
    };
    let bind = SocketAddr::new(config.bind_ip, port);
    let std_socket = udp::bind(bind).map_err(|e| anyhow::anyhow!("binding UDP {bind}: {e}"))?;
    let local = std_socket.local_addr()?;
    // The core lives and dies on its thread (its send queue keeps raw pointers between
    // `sendmmsg` calls, so it is not `Send`); the thread says whether it could be made.
    let (made_tx, made_rx) = std::sync::mpsc::sync_channel(1);
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || {
            let made = WorkerCore::new(
                Instant::now(),
                index,
                &config,
                local,
                metrics,
                siblings,
                shared,
            );
            let mut core = match made {
                Ok(core) => {
                    let _ = made_tx.send(Ok(()));
                    core
                }
                Err(e) => {
                    let _ = made_tx.send(Err(e));
                    return;
                }
            };
            if !config.udp_gso {
                core.transmits().disable_gso();
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("media worker {index}: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let socket = match UdpSocket::from_std(std_socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("media worker {index}: {e}");
                        return;
                    }
                };
                run(core, socket, commands).await;
            });
        })?;
    made_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("media worker {index} stopped as it started"))??;
    Ok(local)
}

async fn run(
    mut core: WorkerCore,
    socket: UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut batch = RecvBatch::new();
    let mut metrics_tick = tokio::time::interval(METRICS_PERIOD);
    loop {
        // Due deadlines first, so that a busy socket cannot starve them.
        core.handle_timeout(Instant::now());
        let deadline = core.poll_timeout().unwrap_or_else(|| Instant::now() + IDLE);
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    read_datagrams(&mut core, &socket, &mut batch);
                }
            }
            command = commands.recv() => match command {
                Some(c) => {
                    core.handle_command(Instant::now(), c);
                    // What else is queued is handled in this turn too, so that its relayed
                    // packets share datagrams and the socket is flushed once.
                    for _ in 1..COMMANDS_PER_TURN {
                        let Ok(c) = commands.try_recv() else { break };
                        core.handle_command(Instant::now(), c);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
            _ = metrics_tick.tick() => core.report_metrics(),
        }
        core.end_turn(Instant::now());
        let out = core.transmits();
        if !out.is_empty() {
            let refused = out.flush(&socket).await as u64;
            core.drops.send_failed += refused;
        }
    }
    core.close();
}

/// Reads up to [`BATCHES_PER_TURN`] batches of datagrams into the core.
fn read_datagrams(core: &mut WorkerCore, socket: &UdpSocket, batch: &mut RecvBatch) {
    for _ in 0..BATCHES_PER_TURN {
        let n = match batch.recv(socket) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!("UDP receive: {e}");
                return;
            }
        };
        let now = Instant::now();
        for (from, data) in batch.iter() {
            core.handle_datagram(now, from, data);
        }
        if n < BATCH {
            return;
        }
    }
}
