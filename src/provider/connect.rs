//! Reaching the chosen provider's cluster as its admin, with one config
//! and one client whatever the provider, and starting or stopping the
//! clusters sa-lab owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    KIND_CLUSTER_ENV, PreflightError, Provider, SelectError, kind_cluster_name, kind_context,
    kind_kubeconfig_path, preflight, select_from_env, select_image_from_env,
};
use crate::kubeconfig::{self, LoadError, Source};
use crate::local;

/// Why no cluster could be reached, or started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The provider or image could not be chosen.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The local cluster could not be started or read.
    #[error(transparent)]
    Local(#[from] local::Error),
    /// The kind cluster's kubeconfig is not in the sa-lab state dir: the
    /// cluster was never created by `scripts/kind-up.sh`, or was deleted.
    #[error("no kind cluster {name:?}: {} does not exist; create it with scripts/kind-up.sh --name {name}", path.display())]
    KindMissing {
        /// The cluster name.
        name: String,
        /// The kubeconfig path that was looked for.
        path: PathBuf,
    },
    /// The kubeconfig gave no client.
    #[error(transparent)]
    Kubeconfig(#[from] LoadError),
    /// The cluster did not answer.
    #[error("no cluster reachable: {what} {said}; {hint}")]
    Unreachable {
        /// Which cluster.
        what: String,
        /// What happened.
        said: String,
        /// What to check.
        hint: String,
    },
    /// The cluster does not enforce RBAC the way the course needs.
    #[error("refusing to teach on this cluster")]
    Preflight(#[source] PreflightError),
    /// A kind script could not be run or failed.
    #[error("{script} failed{}", status.map(|s| format!(" (exit status {s})")).unwrap_or_default())]
    Script {
        /// The script.
        script: String,
        /// Its exit status, if it ran.
        status: Option<i32>,
    },
    /// The current provider's cluster is not sa-lab's to start or stop.
    #[error("the current provider is your kubeconfig's cluster: sa-lab does not start or stop it")]
    NotOurs,
}

/// Where to run chapters.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// `--provider`; else `$SA_LAB_PROVIDER`; else local.
    pub provider: Option<Provider>,
    /// Local: the cluster name (else `$SA_LAB_CLUSTER`, else `sa-lab`).
    /// Kind: the kind cluster name (else `$SA_LAB_KIND_CLUSTER`).
    pub name: Option<String>,
    /// Current: a kubeconfig context other than the current one.
    pub context: Option<String>,
    /// `--image` (kind/current only).
    pub image: Option<String>,
}

/// A cluster, reached as its admin.
#[derive(Clone)]
pub struct Connection {
    /// Who runs it.
    pub provider: Provider,
    /// The admin's config (also used to send requests with other tokens).
    pub config: kube::Config,
    /// The admin's client.
    pub client: kube::Client,
    /// The image lab Pods run there.
    pub image: String,
    /// Which cluster this is, for messages.
    pub describe: String,
    /// The API server's audit log, where sa-lab can read it (the local
    /// provider's); elsewhere rows name no reason.
    pub audit_log: Option<crate::audit::AuditLog>,
    /// The local cluster, when it is one sa-lab supervises.
    pub local: Option<local::ClusterInfo>,
}

/// Reaches the cluster chapters should run on. A local cluster that is not
/// running is started (and left running); a kind or current cluster must
/// pass the RBAC [`preflight`].
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ConnectError> {
    let provider = select_from_env(opts.provider)?;
    let image = select_image_from_env(provider, opts.image.as_deref())?;
    let (config, client, describe, audit_log, local) = match provider {
        Provider::Local => {
            let name = local_name(opts.name.as_deref());
            let info = if local::running_pid(&name).is_some() {
                local::load(&name)?
            } else {
                eprintln!(
                    "No local cluster {name:?} is running; starting one \
                     (stop it later with `sa-lab down --name {name}`)."
                );
                local::up_interruptible(&local::UpOptions {
                    name: name.clone(),
                    kubectl: true,
                    ..Default::default()
                })
                .await?
            };
            let describe = format!("local cluster {name:?} ({})", info.server);
            let kubeconfig::Loaded { config, client, .. } = info.connect().await?;
            let hint = format!(
                "check it with `sa-lab status --name {name}`, or restart it with \
                 `sa-lab down --name {name} && sa-lab up --name {name}`"
            );
            // A component its supervisor is restarting: wait, bounded.
            local::await_whole(&info, &client).await?;
            reachable(&client, &describe, &hint).await?;
            let audit = info
                .audit_log
                .then(|| crate::audit::AuditLog::of_cluster(&info.dir));
            (config, client, describe, audit, Some(info))
        }
        Provider::Kind | Provider::Current => {
            let (source_path, context) = if provider == Provider::Kind {
                let name = kind_name(opts.name.as_deref());
                let path = kind_kubeconfig_path(&crate::paths::home(), &name);
                if !path.is_file() {
                    return Err(ConnectError::KindMissing { name, path });
                }
                (Some(path), Some(kind_context(&name)))
            } else {
                (None, opts.context.clone())
            };
            let source = match &source_path {
                Some(p) => Source::File(p),
                None => Source::Default,
            };
            let kubeconfig::Loaded {
                config,
                client,
                context,
            } = kubeconfig::connect(source, context.as_deref()).await?;
            let describe = format!(
                "{provider} cluster (context {context}, {})",
                source.describe()
            );
            reachable(
                &client,
                &describe,
                "check the kubeconfig and that the cluster is running",
            )
            .await?;
            preflight(&client).await.map_err(ConnectError::Preflight)?;
            // A kind cluster from scripts/kind-up.sh logs to its state
            // directory (kind/cluster*.yaml mount it into the node).
            let audit = source_path
                .as_deref()
                .and_then(Path::parent)
                .and_then(crate::audit::AuditLog::kept_in);
            if audit.is_none() {
                eprintln!(
                    "Note: sa-lab cannot read this {provider} cluster's audit log, \
                     so rows do not name the binding that allowed them."
                );
            }
            (config, client, describe, audit, None)
        }
    };
    Ok(Connection {
        provider,
        config,
        client,
        image,
        describe,
        audit_log,
        local,
    })
}

/// The local cluster's name: `--name`, else `$SA_LAB_CLUSTER`, else `sa-lab`.
pub fn local_name(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(local::env_cluster_name)
        .unwrap_or_else(|| local::DEFAULT_NAME.to_string())
}

/// The kind cluster's name: `--name`, else `$SA_LAB_KIND_CLUSTER`, else
/// [`DEFAULT_KIND_CLUSTER`].
pub fn kind_name(flag: Option<&str>) -> String {
    let flag = flag.filter(|n| *n != local::DEFAULT_NAME);
    kind_cluster_name(flag, std::env::var(KIND_CLUSTER_ENV).ok().as_deref())
}

async fn reachable(client: &kube::Client, what: &str, hint: &str) -> Result<(), ConnectError> {
    let said = match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await
    {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => format!("answered {e}"),
        Err(_) => "did not answer within 10s".into(),
    };
    Err(ConnectError::Unreachable {
        what: what.into(),
        said,
        hint: hint.into(),
    })
}

/// What `sa-lab up` started.
#[derive(Debug)]
pub enum Started {
    /// A local cluster, ready.
    Local(local::ClusterInfo),
    /// A kind cluster, made by `scripts/kind-up.sh`.
    Kind(String),
}

/// What `sa-lab up` was asked for.
#[derive(Clone, Debug, Default)]
pub struct UpArgs {
    /// `--provider`, else `$SA_LAB_PROVIDER`, else local.
    pub provider: Option<Provider>,
    /// `--name` (local default `sa-lab`, kind default `sa-lab-kind`).
    pub name: Option<String>,
    /// Local: a fixed API server port.
    pub api_port: Option<u16>,
    /// Local: no audit log.
    pub no_audit_log: bool,
    /// Local: which node (`--node`; else `$SA_LAB_NODE`, else the sandbox).
    pub node: Option<crate::kubelet::NodeKind>,
}

/// `sa-lab up` for the chosen provider.
pub async fn up(args: &UpArgs) -> Result<Started, ConnectError> {
    let name = args.name.as_deref();
    match select_from_env(args.provider)? {
        Provider::Local => {
            let info = local::up_interruptible(&local::UpOptions {
                name: name.unwrap_or(local::DEFAULT_NAME).to_string(),
                api_port: args.api_port,
                no_audit_log: args.no_audit_log,
                node: args.node,
                kubectl: true,
                ..Default::default()
            })
            .await?;
            Ok(Started::Local(info))
        }
        Provider::Kind => {
            let name = kind_name(name);
            kind_script("kind-up.sh", &name)?;
            Ok(Started::Kind(name))
        }
        Provider::Current => Err(ConnectError::NotOurs),
    }
}

/// `sa-lab down` for the chosen provider; returns the cluster's name.
pub fn down(provider: Option<Provider>, name: Option<&str>) -> Result<String, ConnectError> {
    match select_from_env(provider)? {
        Provider::Local => {
            let name = name.unwrap_or(local::DEFAULT_NAME).to_string();
            local::down(&name)?;
            Ok(name)
        }
        Provider::Kind => {
            let name = kind_name(name);
            kind_script("kind-down.sh", &name)?;
            Ok(name)
        }
        Provider::Current => Err(ConnectError::NotOurs),
    }
}

/// The kind provider's bring-up and tear-down are scripts (they need a
/// container engine).
fn kind_script(script: &str, name: &str) -> Result<(), ConnectError> {
    let path = crate::paths::repo_root().join("scripts").join(script);
    let status = std::process::Command::new("bash")
        .arg(&path)
        .args(["--name", name])
        .status()
        .map_err(|_| ConnectError::Script {
            script: path.display().to_string(),
            status: None,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ConnectError::Script {
            script: path.display().to_string(),
            status: status.code(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::DEFAULT_KIND_CLUSTER;

    #[test]
    fn kind_names() {
        // `sa-lab up --provider kind` without --name, and the local
        // default name, both mean the default kind cluster.
        if std::env::var_os(KIND_CLUSTER_ENV).is_none() {
            assert_eq!(kind_name(None), DEFAULT_KIND_CLUSTER);
            assert_eq!(kind_name(Some(local::DEFAULT_NAME)), DEFAULT_KIND_CLUSTER);
        }
        assert_eq!(kind_name(Some("ci")), "ci");
    }

    #[test]
    fn missing_kind_cluster_says_how_to_create_it() {
        let err = ConnectError::KindMissing {
            name: "nope".into(),
            path: kind_kubeconfig_path(std::path::Path::new("/nonexistent/sa-lab"), "nope"),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/sa-lab/clusters/nope/kubeconfig"),
            "{msg}"
        );
        assert!(msg.contains("scripts/kind-up.sh --name nope"), "{msg}");
    }
}
