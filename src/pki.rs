//! The cluster's PKI, generated in Rust with rcgen: one CA (as kubeadm does)
//! that signs the API server's serving certificate and every client
//! certificate, plus the ServiceAccount signing key. Private keys are 0600,
//! the directory 0700.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// SANs of the API server's serving certificate: what Pods and learners dial
/// (127.0.0.1) and the names a real cluster's certificate carries.
pub const APISERVER_SANS: [&str; 7] = [
    "127.0.0.1",
    "10.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Failure to create or write the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused the parameters or failed to sign.
    #[error("generating {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file failed.
    #[error("writing {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A certificate and key written to disk, with their PEM text kept for
/// embedding in kubeconfigs.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Every file the control plane and the sandbox node need.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Pair,
    pub apiserver: Pair,
    /// ServiceAccount token signing key (ECDSA P-256, PKCS#8 PEM): the API
    /// server's `--service-account-signing-key-file` and the KCM's
    /// `--service-account-private-key-file` (legacy Secret tokens).
    pub sa_key: PathBuf,
    /// Its public half (PEM `PUBLIC KEY`): the API server's
    /// `--service-account-key-file`, which verifies tokens.
    pub sa_pub: PathBuf,
    pub admin: Pair,
    pub controller_manager: Pair,
    pub scheduler: Pair,
    pub node: Pair,
    /// The API server's client certificate for the node's log endpoint.
    pub apiserver_kubelet_client: Pair,
    /// The node's serving certificate (its kubelet port).
    pub node_serving: Pair,
    /// kube-proxy's client certificate (`system:kube-proxy`, which the
    /// default `system:node-proxier` binding names); the kubelet node's.
    pub kube_proxy: Pair,
}

/// Who a client certificate names.
struct Subject<'a> {
    file: &'a str,
    cn: &'a str,
    org: Option<&'a str>,
}

/// Generates the whole PKI into `dir` (created 0700).
pub fn generate(dir: &Path, node_name: &str) -> Result<Pki, Error> {
    generate_with(dir, node_name, &[])
}

/// Like [`generate`], with `extra_ips` added to the API server's and the
/// node's serving certificates (the kubelet node's host-local address and
/// Service IP).
pub fn generate_with(dir: &Path, node_name: &str, extra_ips: &[String]) -> Result<Pki, Error> {
    create_private_dir(dir)?;
    let ca_key = key("CA key")?;
    let mut ca_params = params(&[], "sa-lab-ca", None, "CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| gen_err("CA certificate", e))?;
    let ca = write_pair(dir, "ca", &ca_cert.pem(), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let extra: Vec<&str> = extra_ips.iter().map(String::as_str).collect();
    let apiserver_sans: Vec<&str> = APISERVER_SANS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect();
    let apiserver = leaf(
        dir,
        &issuer,
        &apiserver_sans,
        Subject {
            file: "apiserver",
            cn: "kube-apiserver",
            org: None,
        },
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let node_serving = leaf(
        dir,
        &issuer,
        &[&["127.0.0.1", "localhost", node_name][..], &extra].concat(),
        Subject {
            file: "node-serving",
            cn: node_name,
            org: None,
        },
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client = |s: Subject| leaf(dir, &issuer, &[], s, ExtendedKeyUsagePurpose::ClientAuth);
    let admin = client(Subject {
        file: "admin",
        cn: "kubernetes-admin",
        org: Some("system:masters"),
    })?;
    let controller_manager = client(Subject {
        file: "controller-manager",
        cn: "system:kube-controller-manager",
        org: None,
    })?;
    let scheduler = client(Subject {
        file: "scheduler",
        cn: "system:kube-scheduler",
        org: None,
    })?;
    let node_cn = format!("system:node:{node_name}");
    let node = client(Subject {
        file: "node",
        cn: &node_cn,
        org: Some("system:nodes"),
    })?;
    let apiserver_kubelet_client = client(Subject {
        file: "apiserver-kubelet-client",
        cn: "kube-apiserver-kubelet-client",
        org: None,
    })?;

    let kube_proxy = client(Subject {
        file: "kube-proxy",
        cn: "system:kube-proxy",
        org: None,
    })?;

    let sa = key("ServiceAccount signing key")?;
    let sa_key = dir.join("sa.key");
    write_private(&sa_key, sa.serialize_pem().as_bytes())?;
    let sa_pub = dir.join("sa.pub");
    write_private(&sa_pub, sa.public_key_pem().as_bytes())?;

    Ok(Pki {
        dir: dir.to_path_buf(),
        ca,
        apiserver,
        sa_key,
        sa_pub,
        admin,
        controller_manager,
        scheduler,
        node,
        apiserver_kubelet_client,
        node_serving,
        kube_proxy,
    })
}

fn key(what: &str) -> Result<KeyPair, Error> {
    KeyPair::generate().map_err(|e| gen_err(what, e))
}

fn gen_err(what: &str, source: rcgen::Error) -> Error {
    Error::Generate {
        what: what.to_string(),
        source,
    }
}

fn params(
    sans: &[&str],
    cn: &str,
    org: Option<&str>,
    what: &str,
) -> Result<CertificateParams, Error> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).map_err(|e| gen_err(what, e))?;
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(365);
    Ok(p)
}

fn leaf(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    sans: &[&str],
    subject: Subject,
    usage: ExtendedKeyUsagePurpose,
) -> Result<Pair, Error> {
    let key = key(subject.file)?;
    let mut p = params(sans, subject.cn, subject.org, subject.file)?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![usage];
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| gen_err(subject.file, e))?;
    write_pair(dir, subject.file, &cert.pem(), &key.serialize_pem())
}

fn write_pair(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<Pair, Error> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    write_private(&cert, cert_pem.as_bytes())?;
    write_private(&key, key_pem.as_bytes())?;
    Ok(Pair {
        cert,
        key,
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
    })
}

/// Creates `dir` (and parents) and makes `dir` itself 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::Write(dir.to_path_buf(), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Write(dir.to_path_buf(), e))
}

/// Writes a file readable only by its owner (0600), replacing it if present.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Write(path.to_path_buf(), e))?;
    f.write_all(data)
        .map_err(|e| Error::Write(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_dir_are_private() {
        let tmp = std::env::temp_dir().join(format!("sa-lab-pki-{}", std::process::id()));
        let pki = generate(&tmp, "sandbox-node").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp), 0o700);
        for p in [&pki.ca.key, &pki.admin.key, &pki.node.key, &pki.sa_key] {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
        assert!(pki.sa_key.is_file());
        assert!(
            pki.apiserver
                .cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
