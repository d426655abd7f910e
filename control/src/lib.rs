//! The control plane: the registry (etcd, or in memory for a standalone node), placement of
//! joining participants, the gRPC API and the CLI.
//!
//! Empty until the cluster exists; a standalone node needs none of it yet.
