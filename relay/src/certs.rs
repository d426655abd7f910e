//! The cluster's certificate authority and node certificates (development tooling).
//!
//! Every node presents a certificate issued by the cluster CA whose DNS name is its node id;
//! a link is only established between holders of such certificates, and each side checks that
//! the other's certificate names the node it claims to be. Production deployments can issue
//! the same kind of certificates with their own PKI.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM text of a certificate and its private key.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Creates a self-signed CA for a cluster.
pub fn create_ca(name: &str) -> anyhow::Result<Pem> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues a certificate for `node_id` (its DNS name), usable as TLS client and server.
pub fn issue_node(ca: &Pem, node_id: &str) -> anyhow::Result<Pem> {
    let ca_key = KeyPair::from_pem(&ca.key).context("CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).context("CA certificate")?;
    let mut params = CertificateParams::new(vec![node_id.to_owned()])
        .with_context(|| format!("{node_id:?} is not usable as a DNS name"))?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Where a node's files live in a certificate directory.
pub struct NodeFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn node_files(dir: &Path, node_id: &str) -> NodeFiles {
    NodeFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{node_id}.pem")),
        key: dir.join(format!("{node_id}.key")),
    }
}

/// Makes sure `dir` holds a CA (created on first use) and a certificate for each node
/// (existing ones are kept). Returns the files of each node.
pub fn ensure_dev_certs(dir: &Path, nodes: &[String]) -> anyhow::Result<Vec<NodeFiles>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() {
        Pem {
            cert: std::fs::read_to_string(&ca_cert)?,
            key: std::fs::read_to_string(&ca_key)?,
        }
    } else {
        let ca = create_ca("sfu cluster development CA")?;
        std::fs::write(&ca_cert, &ca.cert)?;
        write_private(&ca_key, &ca.key)?;
        ca
    };
    nodes
        .iter()
        .map(|n| {
            let files = node_files(dir, n);
            if !(files.cert.exists() && files.key.exists()) {
                let pem = issue_node(&ca, n)?;
                std::fs::write(&files.cert, &pem.cert)?;
                write_private(&files.key, &pem.key)?;
            }
            Ok(files)
        })
        .collect()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}
