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

/// Why a kubeconfig gave no client.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or parsed, or has no such context.
    #[error("cannot load the kubeconfig {what}")]
    Kubeconfig {
        /// Which kubeconfig and context.
        what: String,
        /// What kube said.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig was read but no client could be built from it.
    #[error("cannot build a client for {what}")]
    Client {
        /// Which kubeconfig and context.
        what: String,
        /// What kube said.
        #[source]
        source: kube::Error,
    },
}

/// Which kubeconfig to read.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// This file.
    File(&'a Path),
    /// `$KUBECONFIG`, else `~/.kube/config`, as kubectl reads them.
    Default,
}

impl Source<'_> {
    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Default => match std::env::var("KUBECONFIG") {
                Ok(v) if !v.is_empty() => v,
                _ => "~/.kube/config".to_owned(),
            },
        }
    }
}

/// A cluster reached through a kubeconfig.
#[derive(Clone)]
pub struct Loaded {
    /// The config of the context used.
    pub config: kube::Config,
    /// A client for it.
    pub client: kube::Client,
    /// The context used (the current one unless another was named).
    pub context: String,
}

/// The one way sa-lab turns a kubeconfig into a client: the config of
/// `context` (else the current context) in `source`, and a client for it.
pub async fn connect(source: Source<'_>, context: Option<&str>) -> Result<Loaded, LoadError> {
    let what = match context {
        Some(c) => format!("{} (context {c})", source.describe()),
        None => source.describe(),
    };
    let kubeconfig = match source {
        Source::File(p) => kube::config::Kubeconfig::read_from(p),
        Source::Default => kube::config::Kubeconfig::read(),
    }
    .map_err(|source| LoadError::Kubeconfig {
        what: what.clone(),
        source,
    })?;
    let used = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| LoadError::Kubeconfig {
            what: what.clone(),
            source,
        })?;
    let client = kube::Client::try_from(config.clone())
        .map_err(|source| LoadError::Client { what, source })?;
    Ok(Loaded {
        config,
        client,
        context: used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_uses_the_named_context_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        // What `kind get kubeconfig --name t` writes, minus credentials,
        // with another context current.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: other\n\
             clusters:\n- name: kind-t\n  cluster:\n    server: https://127.0.0.1:39999\n\
             - name: other\n  cluster:\n    server: https://10.0.0.1:6443\n\
             contexts:\n- name: kind-t\n  context:\n    cluster: kind-t\n    user: kind-t\n\
             - name: other\n  context:\n    cluster: other\n    user: other\n\
             users:\n- name: kind-t\n  user:\n    token: not-a-real-token\n\
             - name: other\n  user:\n    token: nope\n",
        )
        .unwrap();
        let kind = connect(Source::File(&path), Some("kind-t")).await.unwrap();
        assert_eq!(
            kind.config.cluster_url.to_string(),
            "https://127.0.0.1:39999/"
        );
        assert_eq!(kind.client.default_namespace(), "default");
        assert_eq!(kind.context, "kind-t");
        let current = connect(Source::File(&path), None).await.unwrap();
        assert_eq!(
            current.config.cluster_url.to_string(),
            "https://10.0.0.1:6443/"
        );
        assert_eq!(current.context, "other");
        let err = connect(Source::File(&path), Some("nope"))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot load the kubeconfig {} (context nope)",
                path.display()
            )),
            "{err}"
        );
    }
}
