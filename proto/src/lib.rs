//! Wire definitions shared between nodes (the relay link) and with the control plane.
//!
//! Generated from `proto/*.proto` by prost and tonic; see those files for the meaning of each
//! message.

/// The relay link's control-stream frames.
pub mod relay {
    include!(concat!(env!("OUT_DIR"), "/sfu.relay.v1.rs"));

    /// Protocol version carried in [`Hello`]; links between different versions are refused.
    /// 2: media datagrams carry several packets (`varint flow, varint length, RTP` records).
    pub const PROTOCOL_VERSION: u32 = 2;
}

/// The control-plane gRPC API: messages, clients and servers.
pub mod control {
    tonic::include_proto!("sfu.control.v1");
}
