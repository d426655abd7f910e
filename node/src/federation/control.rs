//! The federation's own messages, on a bidirectional QUIC stream of the federation link next
//! to the relay's control stream: length-prefixed JSON (4 bytes, big-endian), each at most
//! [`MAX_MESSAGE`] bytes. The gateway whose federation name sorts first opens the stream.

use serde::{Deserialize, Serialize};
use sfu_control::{ParticipantRecord, TrackRecord};

/// The largest message read: a message announcing more is refused and the link closed.
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The sender's mappings with the receiver: each `(sender's room, receiver's room)`.
    Mappings { rooms: Vec<(String, String)> },
    /// The sender's participants and tracks (stage only) of a mapped room, named as the
    /// receiver names the room. Replaces the previous roster of that room.
    Roster {
        room: String,
        participants: Vec<ParticipantRecord>,
        tracks: Vec<TrackRecord>,
    },
}

pub async fn write(send: &mut sfu_relay::quinn::SendStream, m: &Message) -> anyhow::Result<()> {
    let body = serde_json::to_vec(m)?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended or broke (the link went down).
    #[error("stream: {0}")]
    Stream(#[from] sfu_relay::quinn::ReadExactError),
    /// The peer announced a message over [`MAX_MESSAGE`].
    #[error("federation message of {0} bytes (at most {MAX_MESSAGE})")]
    TooLarge(usize),
    /// Bytes that are no message.
    #[error("malformed federation message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl ReadError {
    /// The peer sent something wrong (not just went away).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, ReadError::Stream(_))
    }
}

pub async fn read(recv: &mut sfu_relay::quinn::RecvStream) -> Result<Message, ReadError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(ReadError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}
