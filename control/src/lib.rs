//! The control plane: the registry (etcd, or in memory for a standalone node), a node's
//! membership in the cluster, and (to come) placement, the gRPC API and the CLI.

pub mod auth;
pub mod membership;
pub mod placement;
pub mod records;
pub mod registry;
pub mod testing;

pub use membership::{ClusterEvent, Membership};
pub use records::{Keys, NodeRecord, ParticipantRecord, TrackRecord};
pub use registry::{EtcdRegistry, MemoryRegistry, Registry};
