//! Signaling shared by the WebSocket endpoint and the media workers.

pub mod protocol;
