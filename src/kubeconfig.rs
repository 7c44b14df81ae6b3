//! Kubeconfig files with the certificates embedded, so they work from any
//! directory and with any client (kubectl, kube-rs, client-go).

use std::path::Path;

use base64::Engine;

use crate::pki::{self, Pair};

/// Renders a kubeconfig for one user against one server.
pub fn render(cluster: &str, server: &str, ca_pem: &str, user: &str, pair: &Pair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
preferences: {{}}
",
        ca = b64(ca_pem),
        cert = b64(&pair.cert_pem),
        key = b64(&pair.key_pem),
    )
}

/// Writes a kubeconfig with mode 0600.
pub fn write(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    pair: &Pair,
) -> Result<(), pki::Error> {
    pki::write_private(path, render(cluster, server, ca_pem, user, pair).as_bytes())
}
