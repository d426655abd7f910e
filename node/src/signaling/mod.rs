//! Signaling shared by the WebSocket endpoint and the media workers.

pub mod protocol;

use axum::extract::ws::Utf8Bytes;
use protocol::ServerMessage;
use tokio::sync::mpsc;

/// A message on its way to one WebSocket client: encoded by the client's own task, or already
/// encoded once for everyone it goes to (a broadcast costs one encoding per node, and a
/// reference count per recipient).
#[derive(Debug)]
pub enum Outbound {
    /// Boxed: a channel's blocks hold 32 of these, allocated per session; an unboxed
    /// message would make every idle session's queue several kilobytes.
    Message(Box<ServerMessage>),
    Shared(Utf8Bytes),
}

/// Where a room sends a WebSocket client's messages.
pub type Events = mpsc::UnboundedSender<Outbound>;
