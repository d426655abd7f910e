//! The control plane: the registry (etcd, or in memory for a standalone node), a node's
//! membership in the cluster, access tokens, placement, the `sfu-control` gRPC service and the
//! `sfuctl` CLI.

pub mod auth;
pub mod cli_args;
pub mod federation;
pub mod http_server;
pub mod keys;
pub mod membership;
pub mod node_api;
pub mod placement;
pub mod records;
pub mod registry;
pub mod service;
pub mod testing;
pub mod tls;

pub use membership::{ClusterEvent, Membership};
pub use records::{Keys, NodeRecord, ParticipantRecord, QualityRecord, TrackRecord};
pub use registry::{EtcdRegistry, MemoryRegistry, Registry};
