//! Command-line options shared by `sfu-control` and `sfu-node`: how to reach a secured etcd
//! and how to serve (and call) over TLS. The same names and variables in both programs.

use crate::registry::EtcdAccess;
use std::path::PathBuf;

/// `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EtcdAccessArgs {
    /// CA certificate (PEM) of etcd's server certificate: connect over TLS.
    #[arg(long, env = "SFU_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth.
    #[arg(long, env = "SFU_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SFU_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (with etcd's auth enabled).
    #[arg(long, env = "SFU_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (better in the environment than on a command line).
    #[arg(
        long,
        env = "SFU_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
}

impl EtcdAccessArgs {
    /// Whether any option was given (so that it replaces a configuration file's settings).
    pub fn any(&self) -> bool {
        self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_user.is_some()
    }

    pub fn access(&self) -> EtcdAccess {
        EtcdAccess {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

/// `--tls-cert`, `--tls-key`, `--tls-ca`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Certificate chain (PEM) to serve HTTPS (and gRPC over TLS) with.
    #[arg(long, env = "SFU_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SFU_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A CA certificate (PEM) trusted besides the system's, for HTTPS this program calls
    /// (webhooks, nodes' admin API).
    #[arg(long, env = "SFU_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}
