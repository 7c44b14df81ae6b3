//! The kubelet node: the real kubelet v1.37 with containerd v2, runc, the CNI
//! plugins and kube-proxy, run as supervised local processes beside the
//! local control plane (`sa-lab up --node kubelet`, or `SA_LAB_NODE=kubelet`).
//!
//! Everything a lab Pod sees then comes from Kubernetes' own code: the
//! kubelet fills and refreshes the `kube-api-access-*` volume, sets
//! `KUBERNETES_SERVICE_HOST` to the `kubernetes` Service's ClusterIP (which
//! kube-proxy sends to the API server), gives the Pod an IP of its own and
//! runs the container from the lab image, built here
//! (`scripts/build-lab-image.sh`) and imported into containerd.
//!
//! It needs root (mounts, cgroups, namespaces, a bridge, iptables, the
//! kubelet's fixed paths), and runs one at a time per host ([`host`]). The
//! pieces:
//! - [`net`]: addresses, checked against the host's routes; fail-closed rules;
//! - [`config`]: containerd's, the kubelet's, kube-proxy's and CNI's files;
//! - [`host`]: the lock, the record of every host change, and the teardown.

pub mod config;
pub mod host;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::paths;
pub use host::NodeLock;
pub use net::Network;

/// The Node's name in a kubelet-node cluster.
pub const NODE_NAME: &str = "kubelet-node";
/// The kubelet's `cgroupRoot`, in every cgroup hierarchy.
pub const CGROUP_ROOT: &str = "sa-lab-kubelet";
/// Runtime state on the host: containerd's state and sockets, shim sockets,
/// runc's state, the record of host changes. Short paths: unix sockets live
/// here.
pub const HOST_DIR: &str = "/run/sa-lab-node";
/// The host-wide lock (never removed).
pub const LOCK_FILE: &str = "/run/sa-lab-kubelet-node.lock";

/// Which node runs a local cluster's Pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// sa-lab's stand-in: lab Pods as local processes (rootless where
    /// user namespaces allow).
    #[default]
    Sandbox,
    /// The real kubelet, containerd, runc, CNI and kube-proxy (root).
    Kubelet,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Sandbox => "sandbox",
            NodeKind::Kubelet => "kubelet",
        }
    }

    /// `$SA_LAB_NODE`, if set.
    pub fn from_env() -> Result<Option<NodeKind>, Error> {
        env_choice("SA_LAB_NODE").map_err(Error::BadNodeKind)
    }
}

/// `$var` as one of `T`'s names, if set; the value when it names none.
fn env_choice<T: clap::ValueEnum>(var: &str) -> Result<Option<T>, String> {
    match paths::non_empty_env(var) {
        None => Ok(None),
        Some(v) => T::from_str(&v, false).map(Some).map_err(|_| v),
    }
}

/// How the kubelet learns that a Pod's container has exited
/// (`$SA_LAB_KUBELET_PLEG`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pleg {
    /// The generic PLEG's listing of the containers once a second, plus
    /// containerd's event stream as a hint: a container's exit makes the
    /// kubelet relist that Pod at once. The `EventedPLEG` feature gate
    /// (alpha); since Kubernetes 1.37 it only requests those relists, the
    /// generic PLEG still owns the Pod cache and its events
    /// (kubernetes/kubernetes#139262). A Pod that runs to its end reports
    /// its terminal phase about a second sooner.
    #[default]
    Evented,
    /// The generic PLEG alone, as kind and kubeadm run the kubelet.
    Generic,
}

impl Pleg {
    pub fn as_str(self) -> &'static str {
        match self {
            Pleg::Evented => "evented",
            Pleg::Generic => "generic",
        }
    }

    /// `$SA_LAB_KUBELET_PLEG`, if set.
    pub fn from_env() -> Result<Option<Pleg>, Error> {
        env_choice("SA_LAB_KUBELET_PLEG").map_err(Error::BadPleg)
    }
}

/// Why the kubelet node cannot start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `SA_LAB_NODE` names no node.
    #[error("SA_LAB_NODE={0:?} names no node: use `sandbox` (the default) or `kubelet`")]
    BadNodeKind(String),
    /// `SA_LAB_KUBELET_PLEG` names no PLEG.
    #[error(
        "SA_LAB_KUBELET_PLEG={0:?} is neither `evented` (the default: containerd's events \
         tell the kubelet of a container's exit) nor `generic` (the kubelet lists \
         containers once a second, as on kind)"
    )]
    BadPleg(String),
    /// Not root.
    #[error(
        "the kubelet node needs root ({why}): containerd and runc mount filesystems, \
         create cgroups and namespaces, the node gets a bridge, veths and iptables \
         rules, and the kubelet writes to /var/lib/kubelet. Run it as root \
         (`sudo -E sa-lab up --node kubelet`), or use the sandbox node (`sa-lab up`), \
         which needs no root where user namespaces are enabled"
    )]
    NotRoot { why: String },
    /// Host tools are missing.
    #[error(
        "the kubelet node needs {tools} on PATH; install them (Debian: apt-get install {packages}) \
         or run scripts/install-node-bins.sh as root, which does"
    )]
    MissingTools { tools: String, packages: String },
    /// Another kubelet-node cluster holds the host.
    #[error(
        "the kubelet node of cluster {holder:?} is running on this host, and the kubelet \
         uses fixed host paths, so only one can run at a time; stop it \
         (`sa-lab down --name {holder}`) or use the sandbox node (`sa-lab up`)"
    )]
    Busy { holder: String },
    /// Something not ours uses what the node needs.
    #[error(
        "the kubelet node cannot start here: {what}. sa-lab does not touch what it did not \
         make; stop or remove that, or use the sandbox node (`sa-lab up`)"
    )]
    Foreign { what: String },
    /// The addresses collide.
    #[error(transparent)]
    Plan(#[from] net::PlanError),
    /// A build script failed or could not run.
    #[error("{0}")]
    Build(String),
    /// Preparing the host failed.
    #[error("preparing the host for the kubelet node: {0}")]
    Setup(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A file operation failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |e| Error::Io(what, e)
    }
}

/// The kubelet node's part of a cluster's facts (`cluster.json`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KubeletNode {
    /// The node binaries' cache directory (`bin/`, `cni/`, `images/`).
    pub cache_dir: PathBuf,
    /// Debian's runc.
    pub runc: PathBuf,
    /// The lab image as an OCI archive (`scripts/build-lab-image.sh`).
    pub lab_image_archive: PathBuf,
    /// The pause image's name (`registry.k8s.io/pause:<tag>`).
    pub pause_image: String,
    pub net: Network,
    /// How the kubelet learns of container exits (clusters started before
    /// this field existed ran the generic PLEG).
    #[serde(default = "generic_pleg")]
    pub pleg: Pleg,
    pub kubelet_healthz_port: u16,
    pub proxy_healthz_port: u16,
    pub proxy_metrics_port: u16,
}

fn generic_pleg() -> Pleg {
    Pleg::Generic
}

impl KubeletNode {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.cache_dir.join("bin").join(name)
    }
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.cache_dir.join("cni")
    }
    pub fn pause_archive(&self) -> PathBuf {
        self.cache_dir.join("images/pause.tar")
    }
}

/// Where the node's files are.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `<cluster>/node`
    pub node_dir: PathBuf,
    /// containerd's root: content and snapshots (per cluster).
    pub containerd_root: PathBuf,
    pub containerd_config: PathBuf,
    pub containerd_state: PathBuf,
    pub containerd_socket: PathBuf,
    pub shim_socket_dir: PathBuf,
    pub runc_root: PathBuf,
    pub kubelet_config: PathBuf,
    pub proxy_config: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub resolv_conf: PathBuf,
    /// containerd's registry hosts directory.
    pub registry_dir: PathBuf,
}

impl Layout {
    pub fn new(cluster_dir: &Path) -> Layout {
        let node = cluster_dir.join("node");
        let host = Path::new(HOST_DIR);
        Layout {
            containerd_root: node.join("containerd"),
            containerd_config: node.join("containerd.toml"),
            containerd_state: host.join("containerd"),
            containerd_socket: host.join("containerd.sock"),
            shim_socket_dir: host.join("s"),
            runc_root: host.join("runc"),
            kubelet_config: node.join("kubelet.yaml"),
            proxy_config: node.join("kube-proxy.yaml"),
            cni_conf_dir: node.join("cni"),
            ipam_dir: node.join("cni-ipam"),
            pod_logs_dir: node.join("pod-logs"),
            resolv_conf: node.join("resolv.conf"),
            registry_dir: node.join("registries"),
            node_dir: node,
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.containerd_socket.display())
    }
}

/// What `up` holds before it starts the supervisor: the host lock (handed
/// to the supervisor) and the node's facts.
pub struct Prepared {
    pub lock: NodeLock,
    pub node: KubeletNode,
}

/// Everything `up` checks and builds before a kubelet-node cluster starts:
/// root, host tools, the lock (`wait`: block until free), leftovers of a
/// crashed run (undone), nothing foreign in the way, addresses free on this
/// host, the node binaries and both images. `pleg`: how the kubelet will
/// learn of container exits. `ports`: free ports on 127.0.0.1 for the
/// kubelet's healthz and kube-proxy's healthz and metrics.
pub fn prepare(
    wait: bool,
    pleg: Pleg,
    labs_dir: &Path,
    ports: [u16; 3],
) -> Result<Prepared, Error> {
    host::require_root()?;
    let missing: Vec<&(&str, &str)> = host::HOST_TOOLS
        .iter()
        .filter(|(cmd, _)| host::which(cmd).is_none())
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        packages.dedup();
        return Err(Error::MissingTools {
            tools: missing
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
            packages: packages.join(" "),
        });
    }
    let lock = NodeLock::acquire(wait)?;
    // We hold the lock, so whoever wrote a record is gone: finish its job.
    recover_stale()?;
    host::refuse_foreign_state()?;
    let net = Network::from_vars(paths::non_empty_env)?;
    let (routes, resolvers) = net::host_view().map_err(Error::Setup)?;
    net.check(&routes, &resolvers)?;
    let cache_dir = ensure_bins()?;
    let pause_image = std::fs::read_to_string(cache_dir.join("images/pause.ref"))
        .map_err(Error::io(
            "reading the pause image's name (images/pause.ref)",
        ))?
        .trim()
        .to_string();
    let lab_image_archive = lab_image(labs_dir)?;
    let node = KubeletNode {
        cache_dir,
        runc: host::which("runc").expect("checked above"),
        lab_image_archive,
        pause_image,
        net,
        pleg,
        kubelet_healthz_port: ports[0],
        proxy_healthz_port: ports[1],
        proxy_metrics_port: ports[2],
    };
    Ok(Prepared { lock, node })
}

/// Undoes what a crashed kubelet-node cluster left on the host. Call with
/// the lock held.
pub fn recover_stale() -> Result<(), Error> {
    let Some(record) = host::read_record() else {
        // A state dir without a record holds nothing of value.
        let _ = std::fs::remove_dir_all(HOST_DIR);
        return Ok(());
    };
    let failed = host::teardown(&record);
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "cleaning up what cluster {:?} left on this host failed: {}",
        record.cluster,
        failed.join("; ")
    )))
}

/// The node binaries' cache directory, built by
/// `scripts/install-node-bins.sh` when something is missing.
pub fn ensure_bins() -> Result<PathBuf, Error> {
    let script = paths::repo_root().join("scripts/install-node-bins.sh");
    if let Some(dir) = paths::non_empty_env("SA_LAB_NODE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let print = Command::new("bash")
        .arg(&script)
        .arg("--print")
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&print.stdout).trim());
    let complete = [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "crictl",
        "kubelet",
        "kube-proxy",
        "pause",
    ]
    .iter()
    .all(|b| dir.join("bin").join(b).is_file())
        && ["bridge", "host-local", "loopback", "portmap"]
            .iter()
            .all(|b| dir.join("cni").join(b).is_file())
        && dir.join("images/pause.tar").is_file();
    if print.status.success() && complete {
        return Ok(dir);
    }
    if std::env::var("SA_LAB_NO_BUILD").is_ok_and(|v| v == "1") {
        return Err(Error::Build(format!(
            "the kubelet node's binaries are not built ({} is incomplete); run {}",
            dir.display(),
            script.display()
        )));
    }
    eprintln!(
        " • the kubelet node's binaries are missing; building them (scripts/install-node-bins.sh)"
    );
    run_script(&script, &[])
}

/// The lab image's OCI archive, packed from the lab binaries in
/// `labs_dir` by `scripts/build-lab-image.sh` (reused when unchanged).
pub fn lab_image(labs_dir: &Path) -> Result<PathBuf, Error> {
    let script = paths::repo_root().join("scripts/build-lab-image.sh");
    let dir = labs_dir.display().to_string();
    run_script(&script, &["--bin-dir", &dir])
}

/// Runs a build script (progress on stderr) and returns the path it prints.
fn run_script(script: &Path, args: &[&str]) -> Result<PathBuf, Error> {
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit());
    if crate::ui::quiet() {
        cmd.stderr(std::process::Stdio::null());
    }
    let out = cmd
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "{} failed ({}); run it by hand to see why",
            script.display(),
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        text.lines().last().unwrap_or_default().trim(),
    ))
}

// ------------------------------------------------ run by the supervisor

/// Prepares the host (recorded first) and writes every component's config.
pub fn setup(info: &crate::local::ClusterInfo, node: &KubeletNode) -> Result<(), Error> {
    let l = Layout::new(&info.dir);
    host::setup(
        &info.name,
        &info.dir,
        &node.cache_dir,
        &node.net,
        info.api_port,
    )?;
    let no_registry = l.registry_dir.join("_default");
    for d in [
        &l.node_dir,
        &l.cni_conf_dir,
        &l.ipam_dir,
        &l.pod_logs_dir,
        &no_registry,
    ] {
        std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
    }
    let pki = info.pki_dir();
    let p = |f: &str| pki.join(f).display().to_string();
    let write = |path: &Path, text: String| {
        crate::pki::write_private(path, text.as_bytes()).map_err(|e| Error::Setup(e.to_string()))
    };
    write(
        &l.containerd_config,
        config::containerd(
            &l,
            &node.runc.display().to_string(),
            &node.pause_image,
            &node.cni_bin_dir().display().to_string(),
        ),
    )?;
    write(
        &l.kubelet_config,
        config::kubelet(
            &l,
            &node.net,
            config::KubeletPorts {
                kubelet: info.kubelet_port,
                healthz: node.kubelet_healthz_port,
            },
            &config::Pki {
                ca_cert: p("ca.crt"),
                serving_cert: p("node-serving.crt"),
                serving_key: p("node-serving.key"),
            },
            node.pleg,
        ),
    )?;
    write(
        &l.proxy_config,
        config::kube_proxy(
            &p("kube-proxy.kubeconfig"),
            &info.node_name,
            &node.net,
            node.proxy_healthz_port,
            node.proxy_metrics_port,
        ),
    )?;
    write(
        &l.cni_conf_dir.join("10-sa-lab.conflist"),
        config::cni_conflist(&l, &node.net),
    )?;
    write(&l.resolv_conf, config::RESOLV_CONF.to_string())?;
    write(
        &no_registry.join("hosts.toml"),
        config::NO_REGISTRY.to_string(),
    )?;
    Ok(())
}

/// The node components' command lines.
pub fn command(
    component: crate::local::Component,
    info: &crate::local::ClusterInfo,
    node: &KubeletNode,
) -> (PathBuf, Vec<String>) {
    use crate::local::Component;
    let l = Layout::new(&info.dir);
    let pki = info.pki_dir();
    match component {
        Component::Containerd => (
            node.bin("containerd"),
            vec![format!("--config={}", l.containerd_config.display())],
        ),
        Component::Kubelet => (
            node.bin("kubelet"),
            vec![
                format!("--config={}", l.kubelet_config.display()),
                format!("--kubeconfig={}", pki.join("node.kubeconfig").display()),
                format!("--hostname-override={}", info.node_name),
                format!("--node-ip={}", node.net.node_ip),
                "--v=1".into(),
            ],
        ),
        Component::KubeProxy => (
            node.bin("kube-proxy"),
            vec![
                format!("--config={}", l.proxy_config.display()),
                "--v=1".into(),
            ],
        ),
        other => unreachable!("{} is not a kubelet-node component", other.name()),
    }
}

/// The environment of a node component: containerd finds its shim on PATH.
pub fn path_env(node: &KubeletNode) -> String {
    let inherited = std::env::var("PATH").unwrap_or_default();
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{inherited}",
        node.cache_dir.join("bin").display()
    )
}

/// Is containerd answering on its socket?
pub async fn containerd_ready(info: &crate::local::ClusterInfo) -> bool {
    let l = Layout::new(&info.dir);
    tokio::net::UnixStream::connect(&l.containerd_socket)
        .await
        .is_ok()
}

/// Imports the pause and lab images into containerd's `k8s.io` namespace,
/// pinned (never garbage-collected), as kind loads images.
pub fn import_images(info: &crate::local::ClusterInfo, node: &KubeletNode) -> Result<(), Error> {
    let l = Layout::new(&info.dir);
    let ctr = node.bin("ctr");
    for archive in [node.pause_archive(), node.lab_image_archive.clone()] {
        let out = Command::new(&ctr)
            .arg(format!("--address={}", l.containerd_socket.display()))
            .args(["--namespace=k8s.io", "images", "import", "--local"])
            .args(["--label", "io.cri-containerd.pinned=pinned"])
            .arg(&archive)
            .output()
            .map_err(Error::io(format!("running {}", ctr.display())))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("ctr images import {}", archive.display()),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Has kube-proxy synced its rules (its /healthz answers 200)?
pub async fn proxy_ready(node: &KubeletNode) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", node.proxy_healthz_port)).await
    else {
        return false;
    };
    let req = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    read.is_ok() && buf.starts_with(b"HTTP/1.") && buf.get(9..12) == Some(b"200")
}

/// On the way down, with the kubelet stopped and containerd still up:
/// stops and removes every Pod sandbox through the CRI, so containerd
/// stops the containers and the CNI plugins remove their veths and
/// addresses.
pub fn remove_sandboxes(info: &crate::local::ClusterInfo, node: &KubeletNode) {
    let l = Layout::new(&info.dir);
    let out = Command::new(node.bin("crictl"))
        .args(["--runtime-endpoint", &l.endpoint(), "--timeout", "20s"])
        .args(["rmp", "--all", "--force"])
        .output();
    if let Ok(o) = out {
        if !o.status.success() {
            eprintln!(
                "supervisor: crictl rmp failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
}

/// Undoes every host change of the cluster in `dir`, if it owns the host's
/// record; returns what could not be undone.
pub fn teardown_for(name: &str) -> Vec<String> {
    match host::read_record() {
        Some(r) if r.cluster == name => host::teardown(&r),
        _ => Vec::new(),
    }
}

/// The API server's client for the kubelet (logs, exec) gets the role
/// kubeadm gives it.
pub async fn bind_kubelet_api_admin(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use kube::api::{Api, Patch, PatchParams};
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": "sa-lab:apiserver-kubelet-client",
            // Not the course's label (app.kubernetes.io/part-of=sa-lab):
            // a chapter's clean slate deletes what carries that one.
            "labels": {"app.kubernetes.io/managed-by": "sa-lab"},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": "kube-apiserver-kubelet-client",
        }],
    }))?;
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    api.patch(
        "sa-lab:apiserver-kubelet-client",
        &PatchParams::apply("sa-lab").force(),
        &Patch::Apply(&binding),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_sockets_short() {
        let l = Layout::new(Path::new("/a/very/long/state/dir/clusters/name"));
        assert!(l.containerd_socket.as_os_str().len() < 60);
        assert!(
            l.containerd_root
                .starts_with("/a/very/long/state/dir/clusters/name/node")
        );
    }
}
