//! The local provider: the real etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler as local processes, plus the sandbox node.
//!
//! `up` prepares the cluster directory (PKI, kubeconfigs, ports) and starts a
//! detached supervisor process (`sa-lab supervise`) that owns every component:
//! it starts them in order, waits until the cluster is ready, restarts any
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
    #[error("cluster state {0} is unreadable; remove it with `sa-lab down --name NAME`")]
    BadState(PathBuf, #[source] serde_json::Error),
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
    /// Kubelet node: wait while another kubelet-node cluster runs on this
    /// host (tests), instead of refusing.
    pub wait_for_node: bool,
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
        self.bin_dir.join("kubectl")
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
    /// The admin's (`system:masters`) config and client.
    pub async fn connect(&self) -> Result<crate::kubeconfig::Loaded, crate::kubeconfig::LoadError> {
        crate::kubeconfig::connect(crate::kubeconfig::Source::File(&self.kubeconfig), None).await
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
    let path = paths::cluster_dir(name).join("cluster.json");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found(name)),
        Err(e) => return Err(Error::Io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text).map_err(|e| Error::BadState(path, e))
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

/// The running supervisor's pid, if the cluster is up (or coming up).
pub fn running_pid(name: &str) -> Option<u32> {
    let st = read_status(&paths::cluster_dir(name))?;
    supervisor_alive(st.supervisor_pid).then_some(st.supervisor_pid)
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
    if node == NodeKind::Kubelet {
        // Say so before building anything.
        kubelet::host::require_root()?;
    }
    let bin_dir = binaries::ensure()?;
    let prepared = match node {
        NodeKind::Sandbox => None,
        NodeKind::Kubelet => {
            let ports = [free_port()?, free_port()?, free_port()?];
            let (wait, labs) = (opts.wait_for_node, paths::labs_dir());
            let prepared =
                tokio::task::spawn_blocking(move || kubelet::prepare(wait, &labs, ports))
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
            // Leave nothing half-made: stop whatever started, remove the state.
            let _ = stop_dir(name, &dir);
            let _ = fs::remove_dir_all(&dir);
        }
        // Free ports are found by binding and releasing them, so another
        // program (or another cluster starting at the same moment) can take
        // one before our component binds it. Retry with fresh ports, unless
        // the user chose the port.
        let lost_port_race = matches!(&result, Err(Error::ComponentFailed { tail, .. })
            if tail.contains("address already in use"));
        if lost_port_race && opts.api_port.is_none() && attempt < 3 {
            ui::note(format!(
                "a port was taken while starting; retrying with new ports (attempt {})",
                attempt + 1
            ));
            continue;
        }
        return result;
    }
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
    wait_ready(&info, pid).await?;
    Ok(info)
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
        if dir.exists() {
            // A half-made directory from an interrupted `up`.
            let _ = stop_dir(name, &dir);
            fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
            return Ok(());
        }
        return Err(not_found(name));
    }
    stop_dir(name, &dir)?;
    fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))
}

fn stop_dir(name: &str, dir: &Path) -> Result<(), Error> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let status = read_status(dir);
    if let Some(st) = &status {
        let pid = st.supervisor_pid;
        if supervisor_alive(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(40);
            while supervisor_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if supervisor_alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
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
    // Held by a live supervisor: that one cleans up itself.
    let Ok(_lock) = kubelet::NodeLock::acquire(false) else {
        return Ok(());
    };
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
