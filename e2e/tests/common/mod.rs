//! The e2e fixture: a fresh local cluster per test, stopped on drop (also
//! when the test panics). Cluster tests say what they do to the cluster and
//! never depend on each other or on leftovers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use sa_lab::local::{self, ClusterInfo, UpOptions};

/// A cluster for one test: a fresh local cluster it owns (the default), or,
/// with `SA_LAB_PROVIDER=kind`, the kind cluster `scripts/kind-up.sh` made,
/// shared by the provider-agnostic tests that `scripts/test.sh` runs there.
pub struct TestCluster {
    pub info: ClusterInfo,
    /// Stopped on drop (local clusters only).
    owned: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A namespace name unique to this test run.
pub fn unique_ns(prefix: &str) -> String {
    unique(prefix)
}

/// Panics, saying how to build them, when the Kubernetes binaries are
/// missing: e2e tests never skip.
pub fn require_binaries() {
    if std::env::var("SA_LAB_PROVIDER").is_ok_and(|p| p == "kind") {
        // kind runs its own Kubernetes; nothing to build here.
        return;
    }
    if let Err(e) = sa_lab::binaries::find() {
        panic!(
            "e2e tests need the Kubernetes binaries: {e}\n\
             Build them with scripts/install-k8s.sh (or run scripts/test.sh, which does)."
        );
    }
}

/// Whether the kubelet node's tests run: it needs root (with
/// CAP_SYS_ADMIN and CAP_NET_ADMIN). Without, they fail, saying so, unless
/// `SA_LAB_SKIP_KUBELET=1`, which `scripts/test.sh` sets (and says) only
/// when it is not root; CI runs as root.
pub fn kubelet_node_possible() -> bool {
    require_binaries();
    match sa_lab::kubelet::host::require_root() {
        Ok(()) => true,
        Err(e) if std::env::var("SA_LAB_SKIP_KUBELET").is_ok_and(|v| v == "1") => {
            eprintln!("SKIPPED (SA_LAB_SKIP_KUBELET=1): {e}");
            false
        }
        Err(e) => panic!("the kubelet node's tests need root: {e}"),
    }
}

impl TestCluster {
    /// Starts a fresh local cluster named `t-<name>-<pid>-<n>`.
    pub async fn start(name: &str) -> TestCluster {
        Self::try_start(name)
            .await
            .unwrap_or_else(|e| panic!("sa-lab up failed: {e}"))
    }

    /// Starts a fresh local cluster with the kubelet node, whatever
    /// `$SA_LAB_NODE` says (waits while another one runs on this host).
    pub async fn start_kubelet(name: &str) -> TestCluster {
        Self::start_kubelet_with(name, None).await
    }

    /// The same, the kubelet learning of container exits as `pleg` says
    /// (`None`: `$SA_LAB_KUBELET_PLEG`, else evented).
    pub async fn start_kubelet_with(
        name: &str,
        pleg: Option<sa_lab::kubelet::Pleg>,
    ) -> TestCluster {
        let info = local::up(&UpOptions {
            name: unique(&format!("t-{name}")),
            node: Some(sa_lab::kubelet::NodeKind::Kubelet),
            kubelet_pleg: pleg,
            wait_for_node: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("sa-lab up --node kubelet failed: {e}"));
        TestCluster { info, owned: true }
    }

    pub async fn try_start(name: &str) -> Result<TestCluster, local::Error> {
        match sa_lab::provider::select_from_env(None) {
            Ok(sa_lab::provider::Provider::Local) => {}
            Ok(sa_lab::provider::Provider::Kind) => return Ok(kind_cluster()),
            Ok(other) => panic!("the e2e tests run on the local or kind provider, not {other}"),
            Err(e) => panic!("{e}"),
        }
        require_binaries();
        let cluster = unique(&format!("t-{name}"));
        // The node is $SA_LAB_NODE's (sandbox by default). Only one kubelet
        // node runs per host: a test waits for the host lock instead of failing.
        let info = local::up(&UpOptions {
            name: cluster,
            wait_for_node: true,
            ..Default::default()
        })
        .await?;
        Ok(TestCluster { info, owned: true })
    }

    /// An admin client (`system:masters`).
    pub async fn client(&self) -> kube::Client {
        self.info.client().await.expect("admin client")
    }

    /// Runs the built kubectl with this cluster's admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.info.kubectl())
            .args(args)
            .env("KUBECONFIG", &self.info.kubeconfig)
            .output()
            .expect("running kubectl")
    }

    /// Like [`kubectl`](Self::kubectl) but panics unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> PathBuf {
        self.info.dir.clone()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = local::down(&self.info.name) {
            // Don't double-panic while unwinding; report loudly instead.
            eprintln!("sa-lab down {} failed: {e}", self.info.name);
            if !std::thread::panicking() {
                panic!("sa-lab down {} failed: {e}", self.info.name);
            }
        }
    }
}

/// Waits for `cond` (polled every 100 ms) up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The kind cluster made by `scripts/kind-up.sh` (`$SA_LAB_KIND_CLUSTER`,
/// default `sa-lab-kind`), described as a [`ClusterInfo`] so tests use it as
/// they use a local one. kubectl is the one on PATH, else sa-lab's build.
fn kind_cluster() -> TestCluster {
    let name = sa_lab::provider::connect::kind_name(None);
    let kubeconfig = sa_lab::provider::kind_kubeconfig_path(&sa_lab::paths::home(), &name);
    assert!(
        kubeconfig.is_file(),
        "SA_LAB_PROVIDER=kind: no kubeconfig at {}; create the cluster with scripts/kind-up.sh --name {name}",
        kubeconfig.display()
    );
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kind kubeconfig");
    let server = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .expect("kind kubeconfig names a server");
    let api_port = server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0);
    let bin_dir = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("kubectl").is_file()))
        .or_else(|| sa_lab::binaries::find().ok())
        .expect("kubectl on PATH (or sa-lab's build: scripts/install-k8s.sh)");
    let audit_log = kubeconfig
        .parent()
        .and_then(sa_lab::audit::AuditLog::kept_in)
        .is_some();
    let info = ClusterInfo {
        name,
        dir: kubeconfig.parent().map(PathBuf::from).unwrap_or_default(),
        kubeconfig,
        server,
        api_port,
        etcd_port: 0,
        etcd_peer_port: 0,
        kubelet_port: 0,
        node_name: String::new(),
        bin_dir,
        labs_dir: sa_lab::paths::labs_dir(),
        kubernetes_version: sa_lab::KUBERNETES_VERSION.to_string(),
        // scripts/kind-up.sh has the API server log to the cluster's state
        // directory, as a local cluster's does (clusters made before that
        // have no log, and their rows no reasons).
        audit_log,
        kubelet: None,
    };
    TestCluster { info, owned: false }
}

/// The built `sa-lab` command, for tests that signal or stream it.
pub fn sa_lab_cmd() -> Command {
    Command::new(sa_lab::paths::self_binary())
}

/// Runs `sa-lab ARGS` with extra environment (assert_cmd): chain
/// `.success()`, `.code(2)`, `.stderr(contains(..))` on the result.
pub fn sa_lab(args: &[&str], envs: &[(&str, &str)]) -> assert_cmd::assert::Assert {
    assert_cmd::Command::new(sa_lab::paths::self_binary())
        .args(args)
        .envs(envs.iter().copied())
        .assert()
}

/// What a finished command wrote on stderr.
pub fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// What a finished command wrote on stdout.
pub fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// Live processes whose command line (arguments joined by spaces, with a
/// trailing space) contains `needle`, as (pid, command line).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
            text.contains(needle).then_some((pid, text))
        })
        .collect()
}

/// A socket as `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listening {
    pub proto: &'static str,
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// The listening sockets of one of those tables: TCP in state LISTEN
/// (`0A`), UDP unconnected (`07`, which is how a bound UDP socket waits for
/// datagrams), bound to a port.
pub fn listening_in(proto: &'static str, table: &str) -> Vec<Listening> {
    let listen_state = if proto.starts_with("tcp") { "0A" } else { "07" };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != listen_state {
                return None;
            }
            let (hex, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            // The address is the kernel's bytes printed as 32-bit words in
            // host (little-endian) order.
            let bytes: Vec<u8> = (0..hex.len() / 8)
                .flat_map(|i| {
                    u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16)
                        .unwrap()
                        .to_le_bytes()
                })
                .collect();
            let addr = match bytes.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
                _ => return None,
            };
            let inode = f[9].parse().ok()?;
            (port != 0).then_some(Listening {
                proto,
                addr,
                port,
                inode,
            })
        })
        .collect()
}

pub fn loopback(addr: &std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        std::net::IpAddr::V6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The socket inodes among `pid`'s open files.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The processes listening on TCP `port` (in this network namespace), as
/// (pid, command line).
pub fn listeners_of(port: u16) -> Vec<(u32, String)> {
    let inodes: Vec<u64> = ["tcp", "tcp6"]
        .iter()
        .flat_map(|proto| {
            let table = std::fs::read_to_string(format!("/proc/net/{proto}")).unwrap_or_default();
            listening_in(proto, &table)
        })
        .filter(|l| l.port == port)
        .map(|l| l.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            socket_inodes(pid)
                .iter()
                .any(|i| inodes.contains(i))
                .then(|| {
                    let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    (pid, String::from_utf8_lossy(&cmd).replace('\0', " "))
                })
        })
        .collect()
}

/// Component `name` as the cluster's supervisor last recorded it.
pub fn component(info: &ClusterInfo, name: &str) -> local::ComponentStatus {
    let st = local::read_status(&info.dir).expect("status.json");
    st.components
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no component {name} in status.json"))
}

/// The live processes of a cluster: its supervisor and whatever names its
/// directory (components, the node, Pods' `pod-exec`).
pub fn processes_of(info: &ClusterInfo) -> Vec<(u32, String)> {
    let mut found = processes_mentioning(&info.dir.display().to_string());
    found.extend(processes_mentioning(&format!(
        "supervise --name {} ",
        info.name
    )));
    found
}

/// Mount points at or under `dir` (in this process's mount namespace).
pub fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| std::path::Path::new(m).starts_with(dir))
        .map(String::from)
        .collect()
}

/// Nothing of the cluster is left: no process, no listening port, no mount,
/// no state directory.
pub fn assert_gone(info: &ClusterInfo) {
    let pids = processes_of(info);
    assert!(pids.is_empty(), "processes of {} left: {pids:?}", info.name);
    for port in info.ports() {
        assert!(!local::port_listening(port), "port {port} still listening");
    }
    let mounts = mounts_under(&info.dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!info.dir.exists(), "{} still exists", info.dir.display());
}

/// Stops a cluster started by command, also when the test panics.
pub struct Down(pub String);

impl Down {
    /// The test stopped the cluster itself (and checks that it did).
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = local::down(&self.0) {
            eprintln!("sa-lab down {} failed: {e}", self.0);
            if !std::thread::panicking() {
                panic!("sa-lab down {} failed: {e}", self.0);
            }
        }
    }
}
