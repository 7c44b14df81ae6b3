//! The local provider: the real etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler as local processes, plus the sandbox node.
//!
//! `up` prepares the cluster directory (PKI, kubeconfigs, ports) and starts a
//! detached supervisor process (`sa-lab supervise`) that owns every component:
//! it starts etcd and kube-apiserver together, then, once the API server is
//! ready, what talks to it, waits until the cluster is ready, restarts any
//! component that exits (with a back-off, in dependency order, giving up on
//! one that keeps crashing), and stops everything on SIGTERM. Components are
//! started with a parent-death signal, so they cannot outlive the supervisor.
//! `down` signals the supervisor, waits for it, checks the ports are free and
//! removes the cluster's state.
//!
//! The node is the sandbox node by default; `--node kubelet` runs the real
//! kubelet, containerd, runc, CNI and kube-proxy instead (see
//! [`crate::kubelet`]): as root, one such cluster per host.

mod components;
mod health;
mod procs;
mod restart;
mod supervisor;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kubelet::{self, NodeKind};
use crate::{binaries, kubeconfig, paths, pki, ui};

pub use components::Component;
pub use health::{ComponentHealth, HEAL_TIMEOUT, HealthReport, await_whole, health, restarts};
pub use restart::Policy as RestartPolicy;
pub(crate) use supervisor::etcd_healthy as supervisor_etcd_health;
pub use supervisor::{Error as SupervisorError, supervise};

/// Default cluster name.
pub const DEFAULT_NAME: &str = "sa-lab";
/// The sandbox node's name in every local cluster.
pub const NODE_NAME: &str = "sandbox-node";
/// How long `up` waits for the cluster to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What can go wrong bringing a local cluster up or down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not usable as a directory and label.
    #[error("invalid cluster name {0:?}: use 1-40 lower-case letters, digits and '-'")]
    InvalidName(String),
    /// A cluster of that name is already running.
    #[error(
        "cluster {name:?} is already running (supervisor pid {pid}); use it \
         (`eval \"$(sa-lab env --name {name})\"`), stop it (`sa-lab down --name {name}`), \
         or pick another --name"
    )]
    AlreadyRunning { name: String, pid: u32 },
    /// No cluster of that name exists.
    #[error("no local cluster named {name:?}{known}; start one with `sa-lab up --name {name}`")]
    NotFound { name: String, known: String },
    /// The requested API server port is taken.
    #[error(
        "port {port} on 127.0.0.1 is already in use; free it or choose another with --api-port"
    )]
    PortInUse { port: u16 },
    /// Kubernetes binaries are missing.
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    /// PKI or kubeconfig generation failed.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A component exited or never became healthy while starting.
    #[error("{component} failed to start: {reason}\n--- last lines of {log} ---\n{tail}")]
    ComponentFailed {
        component: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    /// The cluster did not become ready in time.
    #[error(
        "cluster {name:?} did not become ready within {secs}s (waiting for: {waiting}); logs are in {logs}"
    )]
    Timeout {
        name: String,
        secs: u64,
        waiting: String,
        logs: PathBuf,
    },
    /// Processes or ports were still in use after stopping.
    #[error("cluster {name:?} did not stop cleanly: {what}")]
    StopFailed { name: String, what: String },
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The kubelet node cannot start or stop.
    #[error(transparent)]
    Kubelet(#[from] kubelet::Error),
    /// Ctrl-C (or SIGTERM) arrived while the cluster was starting.
    #[error(
        "interrupted ({1}) while starting cluster {0:?}; everything it had started was stopped and removed"
    )]
    Interrupted(String, crate::interrupt::Caught),
    /// The supervisor gave up on a component that kept crashing.
    #[error("{0}")]
    GaveUp(Box<GaveUp>),
    /// A restarted component did not come back in time.
    #[error(
        "cluster {name:?} was not whole again within {secs}s (waiting for: {waiting}); \
         see `sa-lab status --name {name}`"
    )]
    NotHealed {
        name: String,
        secs: u64,
        waiting: String,
    },
    /// The cluster's supervisor is not running.
    #[error(
        "cluster {0:?} is not running (its supervisor stopped); start it with `sa-lab up --name {0}`"
    )]
    Stopped(String),
    /// State on disk could not be parsed.
    #[error(
        "cluster state {} is unreadable; stop and remove the cluster with \
         `sa-lab down --name {name}`, then `sa-lab up --name {name}` starts afresh",
        path.display()
    )]
    BadState {
        name: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The cluster runs, but its state directory (or its `cluster.json`)
    /// is gone: certificates, kubeconfig and etcd data with it.
    #[error(
        "cluster {name:?} still runs (supervisor pid {pid}) but its state in {} is gone; \
         stop it with `sa-lab down --name {name}`, then `sa-lab up --name {name}` starts afresh",
        dir.display()
    )]
    StateGone {
        name: String,
        dir: PathBuf,
        pid: u32,
    },
}

/// A component its supervisor stopped restarting ([`Error::GaveUp`]).
#[derive(Debug)]
pub struct GaveUp {
    /// The cluster.
    pub name: String,
    pub component: String,
    pub restarts: u32,
    /// How its last run ended.
    pub last_exit: String,
    pub log: PathBuf,
    /// The end of its log.
    pub tail: String,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let GaveUp {
            name,
            component,
            restarts,
            last_exit,
            log,
            tail,
        } = self;
        write!(
            f,
            "{component} of cluster {name:?} keeps crashing: its supervisor gave up on it \
             after {restarts} restarts (last exit: {last_exit}); start afresh with \
             `sa-lab down --name {name} && sa-lab up --name {name}`\n\
             --- last lines of {} ---\n{tail}",
            log.display()
        )
    }
}

/// Options for [`up`].
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    pub name: String,
    /// Fixed API server port; a free one is chosen when `None`.
    pub api_port: Option<u16>,
    /// Run kube-apiserver without its audit log (for the benchmark's
    /// comparison; `sa-lab trace` and the rows' reasons need it).
    pub no_audit_log: bool,
    /// Which node runs Pods; `None`: `$SA_LAB_NODE`, else the sandbox node.
    pub node: Option<NodeKind>,
    /// Kubelet node: how the kubelet learns of container exits; `None`:
    /// `$SA_LAB_KUBELET_PLEG`, else evented.
    pub kubelet_pleg: Option<kubelet::Pleg>,
    /// Kubelet node: wait while another kubelet-node cluster runs on this
    /// host (tests), instead of refusing.
    pub wait_for_node: bool,
    /// Build kubectl too when sa-lab's own build lacks it: the cluster is
    /// the learner's (`sa-lab up`, a chapter's), not the tour's or a test's.
    pub kubectl: bool,
}

/// A local cluster's fixed facts, stored in `<dir>/cluster.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterInfo {
    pub name: String,
    pub dir: PathBuf,
    /// The admin kubeconfig (0600).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<api_port>`.
    pub server: String,
    pub api_port: u16,
    pub etcd_port: u16,
    pub etcd_peer_port: u16,
    pub kubelet_port: u16,
    pub node_name: String,
    pub bin_dir: PathBuf,
    pub labs_dir: PathBuf,
    pub kubernetes_version: String,
    /// Set when the real kubelet is the node (`--node kubelet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Box<kubelet::KubeletNode>>,
    /// kube-apiserver writes an audit log (`logs/audit.log`).
    #[serde(default = "yes")]
    pub audit_log: bool,
}

fn yes() -> bool {
    true
}

impl ClusterInfo {
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn kubectl(&self) -> PathBuf {
        self.bin_dir.join(binaries::KUBECTL)
    }
    /// Which node runs the cluster's Pods.
    pub fn node_kind(&self) -> NodeKind {
        if self.kubelet.is_some() {
            NodeKind::Kubelet
        } else {
            NodeKind::Sandbox
        }
    }
    /// Every TCP port the cluster listens on.
    pub fn ports(&self) -> [u16; 4] {
        [
            self.api_port,
            self.etcd_port,
            self.etcd_peer_port,
            self.kubelet_port,
        ]
    }
    /// The admin's (`system:masters`) config and client. An admin
    /// kubeconfig that gives no client (truncated, overwritten) is written
    /// again from the cluster's certificates, as `up` wrote it, and said so.
    pub async fn connect(&self) -> Result<crate::kubeconfig::Loaded, crate::kubeconfig::LoadError> {
        let source = crate::kubeconfig::Source::File(&self.kubeconfig);
        let err = match crate::kubeconfig::connect(source, None).await {
            Ok(loaded) => return Ok(loaded),
            Err(e) => e,
        };
        match self.rewrite_admin_kubeconfig() {
            Ok(true) => {
                ui::note(format!(
                    "{} was unusable ({}); wrote it again from the cluster's certificates",
                    self.kubeconfig.display(),
                    ui::error_chain(&err)
                ));
                crate::kubeconfig::connect(source, None).await
            }
            // Already as `up` wrote it, or the certificates are gone too.
            Ok(false) | Err(_) => Err(err),
        }
    }

    /// Writes the admin kubeconfig again from `pki/` unless it already
    /// holds exactly that; returns whether it wrote.
    fn rewrite_admin_kubeconfig(&self) -> Result<bool, std::io::Error> {
        let pki = self.pki_dir();
        let pair = pki::Pair {
            cert_pem: fs::read_to_string(pki.join("admin.crt"))?,
            key_pem: fs::read_to_string(pki.join("admin.key"))?,
            cert: pki.join("admin.crt"),
            key: pki.join("admin.key"),
        };
        let ca = fs::read_to_string(pki.join("ca.crt"))?;
        let cluster = format!("sa-lab-{}", self.name);
        let want = kubeconfig::render(&cluster, &self.server, &ca, "kubernetes-admin", &pair);
        if fs::read(&self.kubeconfig).is_ok_and(|have| have == want.as_bytes()) {
            return Ok(false);
        }
        pki::write_private(&self.kubeconfig, want.as_bytes()).map_err(|e| match e {
            pki::Error::Write(_, io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        Ok(true)
    }

    /// A client with the admin identity (`system:masters`).
    pub async fn client(&self) -> Result<kube::Client, crate::kubeconfig::LoadError> {
        Ok(self.connect().await?.client)
    }
}

/// The supervisor's live view, in `<dir>/status.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Status {
    pub supervisor_pid: u32,
    /// The step being waited for ("etcd", "kube-apiserver", ...), or "ready".
    pub phase: String,
    pub ready: bool,
    /// Set when start-up failed; the supervisor then stops everything.
    pub error: Option<String>,
    pub components: Vec<ComponentStatus>,
    /// When each start-up phase began, and when the cluster was ready, in
    /// seconds since the supervisor started (the benchmark's breakdown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Milestone>,
}

/// One step of the supervisor's start-up ([`Status::timeline`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Milestone {
    /// The phase that began ("etcd", "kube-apiserver", ...), or "ready" once
    /// the cluster is.
    pub what: String,
    /// Seconds since the supervisor started.
    pub at: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ComponentStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    pub log: PathBuf,
    /// How its last run ended ("signal: 9 (SIGKILL)", "exit status: 1"),
    /// once one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// It kept crashing and the supervisor stopped restarting it.
    #[serde(default)]
    pub gave_up: bool,
}

/// `$SA_LAB_CLUSTER`, as exported by `sa-lab env`.
pub fn env_cluster_name() -> Option<String> {
    paths::non_empty_env("SA_LAB_CLUSTER")
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// Names of the clusters that have state on disk.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(paths::home().join("clusters"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("cluster.json").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn not_found(name: &str) -> Error {
    let others = list();
    let known = if others.is_empty() {
        " (no local clusters exist)".to_string()
    } else {
        format!(" (existing: {})", others.join(", "))
    };
    Error::NotFound {
        name: name.to_string(),
        known,
    }
}

/// Reads a cluster's facts, whether or not it is running.
pub fn load(name: &str) -> Result<ClusterInfo, Error> {
    validate_name(name)?;
    let dir = paths::cluster_dir(name);
    let path = dir.join("cluster.json");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Deleted under a running cluster: say so, not "no cluster".
            return Err(match orphan_supervisor(name) {
                Some(pid) => Error::StateGone {
                    name: name.to_string(),
                    dir,
                    pid,
                },
                None => not_found(name),
            });
        }
        Err(e) => return Err(Error::Io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text).map_err(|source| Error::BadState {
        name: name.to_string(),
        path,
        source,
    })
}

/// A live supervisor of cluster `name`, found by its process (for when
/// its state files are gone or unreadable).
fn orphan_supervisor(name: &str) -> Option<u32> {
    procs::supervisors_of(name, &paths::home())
        .first()
        .map(|p| p.pid)
}

/// How long a command waits for a running supervisor to rewrite an
/// unreadable `status.json` (it rewrites it at least every 5 s).
const STATUS_REWRITE_WAIT: Duration = Duration::from_secs(10);

/// The status of cluster `name`'s supervisor. When `status.json` is
/// missing or unreadable (truncated, overwritten) while the supervisor
/// runs, waits for the supervisor to write it again; if it does not, a
/// status naming the supervisor, with no components, says what is known.
pub(crate) async fn live_status(name: &str, dir: &Path) -> Status {
    if let Some(st) = read_status(dir) {
        return st;
    }
    let Some(pid) = orphan_supervisor(name) else {
        return Status::default();
    };
    let deadline = Instant::now() + STATUS_REWRITE_WAIT;
    while Instant::now() < deadline && supervisor_alive(pid) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(st) = read_status(dir) {
            return st;
        }
    }
    Status {
        supervisor_pid: pid,
        phase: format!(
            "unknown: {} is unreadable",
            dir.join("status.json").display()
        ),
        ..Status::default()
    }
}

/// Reads the supervisor's status file, if any.
pub fn read_status(dir: &Path) -> Option<Status> {
    let text = fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Atomically replaces the status file.
pub(crate) fn write_status(dir: &Path, status: &Status) {
    let tmp = dir.join("status.json.tmp");
    if let Ok(text) = serde_json::to_vec_pretty(status) {
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, dir.join("status.json"));
        }
    }
}

/// Is `pid` a live process running the sa-lab supervisor?
pub fn supervisor_alive(pid: u32) -> bool {
    if pid == 0 || !pid_alive(pid) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("supervise")
        })
        .unwrap_or(false)
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // A zombie is dead for our purposes.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
                .unwrap_or(true)
        })
        .unwrap_or(false)
}

/// The running supervisor's pid, if the cluster is up (or coming up):
/// by its status file, else (the file gone or unreadable) by its process.
pub fn running_pid(name: &str) -> Option<u32> {
    match read_status(&paths::cluster_dir(name)) {
        Some(st) if supervisor_alive(st.supervisor_pid) => Some(st.supervisor_pid),
        _ => orphan_supervisor(name),
    }
}

pub(crate) fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("choosing a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("choosing a free port"))?
        .port())
}

fn port_in_use(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Is something accepting connections on 127.0.0.1:`port`?
pub fn port_listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Starts a local cluster and waits until it is ready: `/readyz` is 200, the
/// `default` ServiceAccount and `kube-root-ca.crt` exist in `default`, the
/// aggregated `view` ClusterRole has rules, and the sandbox node is Ready.
pub async fn up(opts: &UpOptions) -> Result<ClusterInfo, Error> {
    let name = if opts.name.is_empty() {
        DEFAULT_NAME
    } else {
        &opts.name
    };
    validate_name(name)?;
    let dir = paths::cluster_dir(name);
    if let Some(pid) = running_pid(name) {
        return Err(Error::AlreadyRunning {
            name: name.to_string(),
            pid,
        });
    }
    if let Some(port) = opts.api_port {
        if port_in_use(port) {
            return Err(Error::PortInUse { port });
        }
    }
    let node = match opts.node {
        Some(n) => n,
        None => NodeKind::from_env()?.unwrap_or_default(),
    };
    let pleg = match opts.kubelet_pleg {
        Some(p) => p,
        None => kubelet::Pleg::from_env()?.unwrap_or_default(),
    };
    if node == NodeKind::Kubelet {
        // Say so before building anything.
        kubelet::host::require_root()?;
    }
    let bin_dir = binaries::ensure(opts.kubectl)?;
    let prepared = match node {
        NodeKind::Sandbox => None,
        NodeKind::Kubelet => {
            let ports = [free_port()?, free_port()?, free_port()?];
            let (wait, labs) = (opts.wait_for_node, paths::labs_dir());
            let prepared =
                tokio::task::spawn_blocking(move || kubelet::prepare(wait, pleg, &labs, ports))
                    .await
                    .expect("kubelet node preparation does not panic")?;
            Some(prepared)
        }
    };
    if dir.exists() {
        // Left over from a crash: nothing runs (checked above), so clear it.
        fs::remove_dir_all(&dir).map_err(io_err(format!("removing stale {}", dir.display())))?;
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = prepare_and_start(name, &dir, opts, bin_dir.clone(), prepared.as_ref()).await;
        if result.is_err() {
            // Leave nothing half-made: stop whatever started, remove the
            // state. (Not the port check: a port lost to another program
            // stays that program's.)
            let _ = stop_dir(name, &dir, false);
            let _ = fs::remove_dir_all(&dir);
        }
        // Free ports are found by binding and releasing them, so another
        // program (or another cluster starting at the same moment) can take
        // one before our component binds it. Retry with fresh ports, unless
        // the user chose the port.
        let lost = match &result {
            Err(Error::ComponentFailed {
                component, tail, ..
            }) => lost_port(tail).map(|port| (component.clone(), port)),
            _ => None,
        };
        match lost {
            Some((_, Some(port))) if opts.api_port == Some(port) => {
                return Err(Error::PortInUse { port });
            }
            Some((_, None)) if opts.api_port.is_some() => return result,
            Some((component, port)) if attempt < 3 => {
                let port = port.map(|p| format!("port {p}")).unwrap_or("a port".into());
                ui::note(format!(
                    "{port}, chosen for {component}, was taken by another program \
                     before {component} bound it; retrying with new ports (attempt {})",
                    attempt + 1
                ));
                continue;
            }
            _ => return result,
        }
    }
}

/// Whether a component's log says it could not bind a port another
/// program had taken, and which port when the log names it: Go's `listen
/// tcp 127.0.0.1:PORT: bind: address already in use`, or the sandbox
/// node's `listening on 127.0.0.1:PORT: Address already in use`.
fn lost_port(log_tail: &str) -> Option<Option<u16>> {
    let line = log_tail
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().contains("address already in use"))?;
    let port = line.split_whitespace().find_map(|word| {
        let addr = word.trim_matches(|c: char| c == ':' || c == ',' || c == '"');
        let (host, port) = addr.rsplit_once(':')?;
        host.parse::<std::net::IpAddr>().ok()?;
        port.parse::<u16>().ok()
    });
    Some(port)
}

/// Like [`up`], but a Ctrl-C (SIGINT) or SIGTERM while starting stops and
/// removes the half-made cluster instead of leaving it running.
pub async fn up_interruptible(opts: &UpOptions) -> Result<ClusterInfo, Error> {
    let mut interrupt = crate::interrupt::Interrupt::install()
        .map_err(io_err("installing Ctrl-C and SIGTERM handlers"))?;
    let name = if opts.name.is_empty() {
        DEFAULT_NAME.to_string()
    } else {
        opts.name.clone()
    };
    let signal = tokio::select! {
        r = up(opts) => return r,
        signal = interrupt.recv() => signal,
    };
    let n = name.clone();
    let _ = tokio::task::spawn_blocking(move || down(&n)).await;
    Err(Error::Interrupted(name, signal))
}

async fn prepare_and_start(
    name: &str,
    dir: &Path,
    opts: &UpOptions,
    bin_dir: PathBuf,
    kubelet_node: Option<&kubelet::Prepared>,
) -> Result<ClusterInfo, Error> {
    let info = write_cluster(name, dir, opts, bin_dir, kubelet_node)?;
    start_supervisor(&info, kubelet_node).await?;
    Ok(info)
}

/// Makes a sandbox-node cluster's directory as `up` does (certificates,
/// kubeconfigs, ports, `cluster.json`) and starts nothing: the benchmark's
/// floor runs etcd and kube-apiserver alone from it, with the command lines
/// [`Component::command`] gives the supervisor. `down` removes it.
pub fn prepare(opts: &UpOptions) -> Result<ClusterInfo, Error> {
    validate_name(&opts.name)?;
    if let Some(pid) = running_pid(&opts.name) {
        return Err(Error::AlreadyRunning {
            name: opts.name.clone(),
            pid,
        });
    }
    let dir = paths::cluster_dir(&opts.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(format!("removing stale {}", dir.display())))?;
    }
    write_cluster(
        &opts.name,
        &dir,
        opts,
        binaries::ensure(opts.kubectl)?,
        None,
    )
}

/// The cluster's directory, certificates, kubeconfigs and `cluster.json`.
fn write_cluster(
    name: &str,
    dir: &Path,
    opts: &UpOptions,
    bin_dir: PathBuf,
    kubelet_node: Option<&kubelet::Prepared>,
) -> Result<ClusterInfo, Error> {
    let step = ui::Step::start("Generating certificates and kubeconfigs");
    pki::create_private_dir(dir)?;
    for sub in ["logs", "node"] {
        pki::create_private_dir(&dir.join(sub))?;
    }
    // The kubelet node's API server listens on the node's host-local
    // address, which Pods reach; its certificates name that address and the
    // kubernetes Service's IP.
    let (node_name, host, extra_ips) = match kubelet_node {
        Some(k) => {
            let net = &k.node.net;
            let ips = vec![
                net.node_ip.to_string(),
                net.kubernetes_service_ip().to_string(),
            ];
            (kubelet::NODE_NAME, net.node_ip.to_string(), ips)
        }
        None => (NODE_NAME, "127.0.0.1".to_string(), Vec::new()),
    };
    let pki = pki::generate_with(&dir.join("pki"), node_name, &extra_ips)?;
    let api_port = match opts.api_port {
        Some(p) => p,
        None => free_port()?,
    };
    let info = ClusterInfo {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        kubeconfig: dir.join("kubeconfig"),
        server: format!("https://{host}:{api_port}"),
        api_port,
        etcd_port: free_port()?,
        etcd_peer_port: free_port()?,
        kubelet_port: free_port()?,
        node_name: node_name.to_string(),
        bin_dir,
        labs_dir: paths::labs_dir(),
        kubernetes_version: crate::KUBERNETES_VERSION.to_string(),
        audit_log: !opts.no_audit_log,
        kubelet: kubelet_node.map(|k| Box::new(k.node.clone())),
    };
    let cluster = format!("sa-lab-{name}");
    let kc = |file: &str, user: &str, pair: &pki::Pair| {
        kubeconfig::write(
            &dir.join(file),
            &cluster,
            &info.server,
            &pki.ca.cert_pem,
            user,
            pair,
        )
    };
    kc("kubeconfig", "kubernetes-admin", &pki.admin)?;
    kc(
        "pki/controller-manager.kubeconfig",
        "system:kube-controller-manager",
        &pki.controller_manager,
    )?;
    kc(
        "pki/scheduler.kubeconfig",
        "system:kube-scheduler",
        &pki.scheduler,
    )?;
    kc(
        "pki/node.kubeconfig",
        &format!("system:node:{node_name}"),
        &pki.node,
    )?;
    if info.audit_log {
        crate::audit::prepare(dir)?;
    }
    if kubelet_node.is_some() {
        kc(
            "pki/kube-proxy.kubeconfig",
            "system:kube-proxy",
            &pki.kube_proxy,
        )?;
    }
    let json = serde_json::to_vec_pretty(&info).expect("cluster info serializes");
    pki::write_private(&dir.join("cluster.json"), &json)?;
    step.ok();
    Ok(info)
}

/// Starts the cluster's supervisor and waits until the cluster is ready.
async fn start_supervisor(
    info: &ClusterInfo,
    kubelet_node: Option<&kubelet::Prepared>,
) -> Result<(), Error> {
    let (name, dir) = (info.name.as_str(), info.dir.as_path());
    let log = dir.join("logs/supervisor.log");
    let out = fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("cloning log handle"))?;
    let mut cmd = std::process::Command::new(paths::self_binary());
    cmd.args(["supervise", "--name", name])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("SA_LAB_HOME", paths::home());
    if let Some(k) = kubelet_node {
        // The supervisor holds the host lock for the cluster's life.
        k.lock.pass_to(&mut cmd);
    }
    crate::sys::new_session(&mut cmd);
    let child = cmd.spawn().map_err(io_err(format!(
        "starting {} supervise",
        paths::self_binary().display()
    )))?;
    let pid = child.id();
    // The supervisor is reaped by init once we exit; don't keep a zombie while
    // we wait: a thread waits for it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    wait_ready(info, pid).await
}

/// Shows the supervisor's progress as steps and returns once it is ready.
async fn wait_ready(info: &ClusterInfo, pid: u32) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut shown: Option<(String, ui::Step)> = None;
    loop {
        let st = read_status(&info.dir).unwrap_or_default();
        if let Some(e) = st.error {
            if let Some((_, s)) = shown.take() {
                s.fail();
            }
            return Err(parse_failure(info, &e));
        }
        if st.ready {
            if let Some((_, s)) = shown.take() {
                s.ok();
            }
            return Ok(());
        }
        if !st.phase.is_empty() && shown.as_ref().is_none_or(|(p, _)| *p != st.phase) {
            if let Some((_, s)) = shown.take() {
                s.ok();
            }
            let label = components::phase_label(&st.phase);
            shown = Some((st.phase.clone(), ui::Step::start(label)));
        }
        if !pid_alive(pid) {
            // Give it a moment to have written its final status.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(e) = read_status(&info.dir).and_then(|s| s.error) {
                return Err(parse_failure(info, &e));
            }
            let log = info.logs_dir().join("supervisor.log");
            return Err(Error::ComponentFailed {
                component: "supervisor".into(),
                reason: "exited unexpectedly".into(),
                tail: tail(&log, 20),
                log,
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                name: info.name.clone(),
                secs: READY_TIMEOUT.as_secs(),
                waiting: st.phase,
                logs: info.logs_dir(),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The supervisor writes failures as `component\treason`.
fn parse_failure(info: &ClusterInfo, e: &str) -> Error {
    let (component, reason) = e.split_once('\t').unwrap_or(("cluster", e));
    let log = info.logs_dir().join(format!("{component}.log"));
    Error::ComponentFailed {
        component: component.to_string(),
        reason: reason.to_string(),
        tail: tail(&log, 20),
        log,
    }
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops a cluster: signals its supervisor, waits for every component to
/// exit, checks its ports are free, and removes its state directory.
pub fn down(name: &str) -> Result<(), Error> {
    validate_name(name)?;
    let dir = paths::cluster_dir(name);
    if !dir.join("cluster.json").is_file() {
        // A half-made directory from an interrupted `up`, or a running
        // cluster whose state was deleted: stop what runs, remove the rest.
        if dir.exists() || orphan_supervisor(name).is_some() {
            stop_dir(name, &dir, true)?;
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
            }
            return Ok(());
        }
        return Err(not_found(name));
    }
    stop_dir(name, &dir, true)?;
    fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))
}

/// Stops cluster `name`'s supervisors: the one its status file names and
/// any found by process (the file gone or unreadable). Each stops its
/// components; then every process it had started must be gone (killed if
/// need be), which also frees the ports of a cluster whose `cluster.json`
/// is lost.
fn stop_supervisors(name: &str, status: Option<&Status>) -> Result<(), Error> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut supervisors = procs::supervisors_of(name, &paths::home());
    if let Some(p) = status
        .map(|st| st.supervisor_pid)
        .filter(|p| supervisor_alive(*p))
        .and_then(procs::Proc::of)
    {
        if !supervisors.contains(&p) {
            supervisors.push(p);
        }
    }
    let mut started: Vec<procs::Proc> = Vec::new();
    for sup in &supervisors {
        started.extend(procs::descendants(sup.pid));
        let pid = Pid::from_raw(sup.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        while sup.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if sup.alive() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    // Each dies with its supervisor (parent-death signal) or was stopped by
    // it; a Pod's processes are the node's to stop. Make sure.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<procs::Proc> = started.iter().copied().filter(|p| p.alive()).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::StopFailed {
                name: name.to_string(),
                what: format!(
                    "processes still running: {:?}",
                    left.iter().map(|p| p.pid).collect::<Vec<_>>()
                ),
            });
        }
        for p in &left {
            let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops what runs of cluster `name` (state in `dir`) and, with
/// `check_ports`, waits until its ports are free.
fn stop_dir(name: &str, dir: &Path, check_ports: bool) -> Result<(), Error> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let status = read_status(dir);
    stop_supervisors(name, status.as_ref())?;
    if let Some(st) = &status {
        // Belt and braces: every component also dies with its supervisor
        // (parent-death signal), but make sure.
        for c in &st.components {
            if let Some(p) = c.pid {
                if components::pid_is(p, &c.name) {
                    let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
                }
            }
        }
    }
    crate::node::kill_leftovers(&dir.join("node"));
    let Ok(text) = fs::read_to_string(dir.join("cluster.json")) else {
        return Ok(());
    };
    let Ok(info) = serde_json::from_str::<ClusterInfo>(&text) else {
        return Ok(());
    };
    let mut ports = info.ports().to_vec();
    if let Some(k) = &info.kubelet {
        kubelet_cleanup(name)?;
        // The API server and the kubelet listened on the node's address,
        // which is gone now (a probe would route off this host); their
        // processes are. The node's other ports are on 127.0.0.1.
        ports = vec![
            info.etcd_port,
            info.etcd_peer_port,
            k.kubelet_healthz_port,
            k.proxy_healthz_port,
            k.proxy_metrics_port,
        ];
    }
    if !check_ports {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| port_listening(*p))
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::StopFailed {
                name: name.to_string(),
                what: format!("ports still listening: {busy:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After a kubelet-node cluster's supervisor is gone: if the host's record
/// still names the cluster (it crashed, or was killed), undo its changes.
fn kubelet_cleanup(name: &str) -> Result<(), Error> {
    if kubelet::host::read_record().is_none_or(|r| r.cluster != name) {
        return Ok(());
    }
    // Every supervisor of this cluster is gone, so the host lock is free or
    // about to be (a process that held it is still exiting, or a test reads
    // the host). Wait for it, bounded: giving up silently left a crashed
    // node's containers, mounts and rules behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    let _lock = loop {
        match kubelet::NodeLock::acquire(false) {
            Ok(lock) => break lock,
            Err(kubelet::Error::Busy { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let why = match e {
                    kubelet::Error::Busy { holder } => format!(
                        "the kubelet node's host lock ({}) is still held after 30 s \
                         (the host record names {holder:?})",
                        kubelet::LOCK_FILE
                    ),
                    e => e.to_string(),
                };
                return Err(Error::StopFailed {
                    name: name.to_string(),
                    what: format!(
                        "its changes to this host were not undone: {why}; run \
                         `sa-lab down --name {name}` again once nothing else holds it"
                    ),
                });
            }
        }
    };
    // Whoever held the lock may have cleaned up already.
    if kubelet::host::read_record().is_none_or(|r| r.cluster != name) {
        return Ok(());
    }
    let failed = kubelet::teardown_for(name);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::StopFailed {
            name: name.to_string(),
            what: failed.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::lost_port;

    #[test]
    fn the_port_a_component_lost_is_read_from_its_log() {
        let go = "I1201 started\nE1201 run.go:72] \"command failed\" err=\"failed to create \
                  listener: failed to listen on 127.0.0.1:41234: listen tcp 127.0.0.1:41234: \
                  bind: address already in use\"";
        assert_eq!(lost_port(go), Some(Some(41234)));
        let node = "INFO registering\nerror: listening on 127.0.0.1:39001: Address already \
                    in use (os error 98)";
        assert_eq!(lost_port(node), Some(Some(39001)));
        let kubelet_node = "listen tcp 10.88.0.1:6443: bind: address already in use";
        assert_eq!(lost_port(kubelet_node), Some(Some(6443)));
        assert_eq!(lost_port("error: connection refused to 127.0.0.1:80"), None);
        assert_eq!(lost_port("bind: address already in use"), Some(None));
    }
}
