//! What the cluster tests of the load tester share: a node's configuration in a test cluster,
//! and reading a node's metrics.

use sfu_node::{Config, Server};

/// Node `id` of test cluster `cluster` (etcd at `etcd`, certificates in `certs`), with the
/// relay's direct media path on.
pub fn node_config(cluster: &str, id: &str, etcd: &str, certs: &std::path::Path) -> Config {
    let mut c = Config::loopback();
    c.cluster.node_id = id.to_owned();
    c.cluster.etcd = vec![etcd.to_owned()];
    c.cluster.certs_dir = Some(certs.to_owned());
    c.cluster.name = cluster.into();
    c.cluster.direct_media = true;
    c.dev = true;
    c
}

/// The value of a metric line (`name{labels} value`) in a node's exposition, 0 if absent.
pub fn metric(server: &Server, line_start: &str) -> f64 {
    server
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}
