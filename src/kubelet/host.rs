//! What the kubelet node changes on the host, and how all of it is undone.
//!
//! The kubelet, containerd and the CNI plugins use fixed host paths
//! (`/var/lib/kubelet`, `/var/log/containers`, `/var/lib/cni`), global
//! sysctls, the host's iptables and cgroup hierarchies. So at most one
//! kubelet-node cluster runs on a host at a time, enforced by an exclusive
//! `flock` on [`LOCK_FILE`] that the cluster's supervisor holds for its whole
//! life (the file is never removed: removing a lock file races with its
//! waiters).
//!
//! Before changing anything the supervisor writes a [`Record`] to
//! `/run/sa-lab-node/owner.json`: the sysctls as they were, the host
//! directories that did not exist, the iptables chains and nftables tables
//! that did. [`teardown`] undoes everything from that record, in an order
//! that leaves nothing: processes (containerd, shims, containers), mounts,
//! veths, the bridge, the `lo` address, the Service route, iptables chains
//! (ours, kube-proxy's and the kubelet's, in both families), conntrack
//! entries, cgroups (depth first), directories, sysctls. It is idempotent
//! and runs on `down`, on Ctrl-C, after a failed start, and on the next
//! `up` or `down` after a crash.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::FlockArg;
use serde::{Deserialize, Serialize};

use super::net::{self, Network};
use super::{CGROUP_ROOT, Error, HOST_DIR, LOCK_FILE};

/// The global sysctls the node's components change (the kubelet's kernel
/// tunables; kube-proxy's conntrack and route_localnet knobs, which its
/// config tells it to leave alone), recorded and restored. Not the
/// forwarding switches: nothing of the node sets them, and another program
/// on the host (podman, Docker) may have set them meanwhile.
pub const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_udp_timeout_stream",
];

/// Host directories only a kubelet or containerd uses, which they create
/// outside any directory we give them: removed whole if they did not exist
/// before. (`/var/lib/cni`, containerd's CNI cache, is shared with other
/// CNI users such as podman: only our entries go.)
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
];

/// iptables chain prefixes the node creates: ours, kube-proxy's and the
/// kubelet's. (Our CNI network has no plugin that makes chains.)
const CHAIN_PREFIXES: &[&str] = &["SA-LAB-", "KUBE-"];
const TABLES: &[&str] = &["filter", "nat", "mangle", "raw"];
const FAMILIES: &[&str] = &["iptables", "ip6tables"];

/// The record of one kubelet-node cluster's changes to the host.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub cluster: String,
    pub cluster_dir: PathBuf,
    /// The node binaries' cache dir (identifies our processes).
    pub cache_dir: PathBuf,
    pub net: Network,
    /// (path under /proc/sys, value before start).
    pub sysctls: Vec<(String, String)>,
    /// Host directories that did not exist before start.
    pub created: Vec<PathBuf>,
    /// `family/table/chain` of the chains that existed before start.
    pub chains_before: Vec<String>,
    /// `family name` of the nftables tables that existed before start.
    pub nft_tables_before: Vec<String>,
    /// cgroup directories named `k8s.io` that existed before start.
    pub cgroups_before: Vec<PathBuf>,
}

fn record_path() -> PathBuf {
    Path::new(HOST_DIR).join("owner.json")
}

/// The record of the cluster that owns (or owned) the host, if any.
pub fn read_record() -> Option<Record> {
    let text = fs::read_to_string(record_path()).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(r: &Record) -> Result<(), Error> {
    fs::create_dir_all(HOST_DIR).map_err(Error::io(format!("creating {HOST_DIR}")))?;
    let text = serde_json::to_vec_pretty(r).expect("record serializes");
    crate::pki::write_private(&record_path(), &text).map_err(|e| Error::Setup(e.to_string()))
}

// ---------------------------------------------------------------- the lock

/// The host-wide lock of the kubelet node. `up` takes it and hands its
/// open file description to the supervisor, which keeps it for the
/// cluster's life. Dropping a `NodeLock` only closes its descriptor, never
/// unlocks: an explicit unlock would release the lock for the supervisor
/// too (an flock belongs to the open file description, which both share).
/// The lock goes when the last descriptor of it closes.
pub struct NodeLock {
    file: fs::File,
}

/// The environment variable that hands the lock's descriptor from `up` to
/// the supervisor it starts.
const LOCK_FD_VAR: &str = "SA_LAB_NODE_LOCK_FD";

/// flock(2) on a descriptor, without the unlock-on-drop of nix's `Flock`
/// (see [`NodeLock`]).
#[allow(deprecated)]
fn flock(file: &fs::File, wait: bool) -> nix::Result<()> {
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    nix::fcntl::flock(file.as_raw_fd(), arg)
}

impl NodeLock {
    /// Takes the lock; `wait` blocks until it is free, else a held lock is
    /// an error naming the cluster that holds it.
    pub fn acquire(wait: bool) -> Result<NodeLock, Error> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(LOCK_FILE)
            .map_err(Error::io(format!("opening {LOCK_FILE}")))?;
        match flock(&file, wait) {
            Ok(()) => Ok(NodeLock { file }),
            Err(nix::errno::Errno::EWOULDBLOCK) => {
                let holder = read_record()
                    .map(|r| r.cluster)
                    .unwrap_or_else(|| "another sa-lab cluster".into());
                Err(Error::Busy { holder })
            }
            Err(e) => Err(Error::io(format!("locking {LOCK_FILE}"))(e.into())),
        }
    }

    /// Lets the child `cmd` starts (the supervisor) inherit the lock, and
    /// names the descriptor in its environment.
    pub fn pass_to(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        crate::sys::inherit_fd(cmd, fd);
        cmd.env(LOCK_FD_VAR, fd.to_string());
    }

    /// In the supervisor: the lock `up` handed over (close-on-exec again,
    /// so no component inherits it), else a fresh non-blocking one.
    pub fn inherited_or_acquire() -> Result<NodeLock, Error> {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let inherited = std::env::var(LOCK_FD_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|fd| {
                fs::read_link(format!("/proc/self/fd/{fd}"))
                    .is_ok_and(|p| p == Path::new(LOCK_FILE))
            })
            .and_then(crate::sys::adopt_inherited_fd)
            .map(fs::File::from);
        if let Some(file) = inherited {
            let _ = fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            // This open file description holds the lock already: taking it
            // again succeeds at once (and proves it).
            if flock(&file, false).is_ok() {
                return Ok(NodeLock { file });
            }
        }
        NodeLock::acquire(false)
    }
}

// --------------------------------------------------------------- preflight

/// The kubelet node needs root: mounts, cgroups, namespaces, a bridge,
/// veths and iptables rules, and the kubelet's fixed paths.
pub fn require_root() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    let root = nix::unistd::geteuid().is_root();
    if root && cap_eff & CAP_NET_ADMIN != 0 && cap_eff & CAP_SYS_ADMIN != 0 {
        return Ok(());
    }
    Err(Error::NotRoot {
        why: if root {
            "root here lacks CAP_SYS_ADMIN or CAP_NET_ADMIN".into()
        } else {
            format!("running as uid {}", nix::unistd::geteuid())
        },
    })
}

/// Host tools the node runs: (command, Debian package).
pub const HOST_TOOLS: &[(&str, &str)] = &[
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("conntrack", "conntrack"),
    ("ip", "iproute2"),
    ("mount", "mount"),
];

/// Finds `cmd` on PATH (and in the sbin directories root has).
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Refuses a host where something else already uses what the node needs.
pub fn refuse_foreign_state() -> Result<(), Error> {
    let foreign = |what: String| Err(Error::Foreign { what });
    if Path::new("/var/lib/kubelet").exists() {
        return foreign(
            "/var/lib/kubelet exists: another kubelet runs (or ran) on this host".into(),
        );
    }
    if Path::new("/sys/class/net").join(net::BRIDGE).exists() {
        return foreign(format!("a network interface named {} exists", net::BRIDGE));
    }
    let chains = chains();
    if let Some(c) = chains
        .iter()
        .find(|c| c.rsplit('/').next().is_some_and(|n| n.starts_with("KUBE-")))
    {
        return foreign(format!(
            "the iptables chain {c} exists: a kube-proxy or kubelet runs on this host"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------- setup

/// Records the host's state, then prepares it: cgroup root, the `lo`
/// address, the bridge, the Service route, the fail-closed rules. Every
/// change is covered by the record before it is made.
pub fn setup(
    cluster: &str,
    cluster_dir: &Path,
    cache_dir: &Path,
    net: &Network,
    api_port: u16,
) -> Result<(), Error> {
    let record = Record {
        cluster: cluster.to_string(),
        cluster_dir: cluster_dir.to_path_buf(),
        cache_dir: cache_dir.to_path_buf(),
        net: net.clone(),
        sysctls: SYSCTLS
            .iter()
            .filter_map(|s| {
                let v = fs::read_to_string(Path::new("/proc/sys").join(s)).ok()?;
                Some((s.to_string(), v.trim().to_string()))
            })
            .collect(),
        created: HOST_PATHS
            .iter()
            .chain(&[CNI_CACHE])
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect(),
        chains_before: chains().into_iter().collect(),
        nft_tables_before: nft_tables().into_iter().collect(),
        cgroups_before: cgroup_mounts()
            .iter()
            .map(|m| m.join("k8s.io"))
            .filter(|p| p.exists())
            .collect(),
    };
    write_record(&record)?;

    create_cgroup_root()?;
    let ip = |args: &[&str]| run_ok("ip", args);
    ip(&["addr", "add", &format!("{}/32", net.node_ip), "dev", "lo"])?;
    ip(&["link", "add", net::BRIDGE, "type", "bridge"])?;
    // Kernel-level fail-closed: nothing received from the Pods is routed
    // on, whatever net.ipv4.ip_forward says; no IPv6 on the bridge.
    write_sysctl(&format!("net/ipv4/conf/{}/forwarding", net::BRIDGE), "0")?;
    write_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", net::BRIDGE), "1")?;
    let gw = format!("{}/{}", net.gateway(), net.pod_cidr.prefix_len());
    ip(&["addr", "add", &gw, "dev", net::BRIDGE])?;
    ip(&["link", "set", net::BRIDGE, "up"])?;
    ip(&["route", "add", "unreachable", &net.service_cidr.to_string()])?;
    for (chain, hook, rules) in net::fail_closed_rules(net, api_port) {
        run_ok("iptables", &["-w", "-N", chain])?;
        for rule in rules {
            let mut args = vec!["-w", "-A", chain];
            args.extend(rule.iter().map(String::as_str));
            run_ok("iptables", &args)?;
        }
        run_ok("iptables", &["-w", "-I", hook, "1", "-j", chain])?;
    }
    Ok(())
}

/// Every cgroup hierarchy: the v1 ones and the v2 one (in hybrid mode the
/// kubelet creates its cgroups in `/sys/fs/cgroup/unified` too), or the v2
/// root alone.
fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mountpoint)
        .collect()
}

/// The kubelet's `cgroupRoot` must exist in every hierarchy; cpuset needs
/// its cpus and mems before a task can join.
fn create_cgroup_root() -> Result<(), Error> {
    for m in cgroup_mounts() {
        let dir = m.join(CGROUP_ROOT);
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(m.join(f)) {
                fs::write(dir.join(f), v.trim())
                    .map_err(Error::io(format!("writing {}", dir.join(f).display())))?;
            }
        }
    }
    Ok(())
}

fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value).map_err(Error::io(format!("writing {}", path.display())))
}

// ---------------------------------------------------------------- teardown

/// Undoes everything the record names. Returns what could not be undone
/// (empty when the host is as it was); the record is kept until then.
pub fn teardown(r: &Record) -> Vec<String> {
    let mut failed = Vec::new();
    kill_processes(r, &mut failed);
    unmount_all(r, &mut failed);
    remove_network(r, &mut failed);
    remove_chains(r, &mut failed);
    flush_conntrack(r);
    remove_cgroups(r, &mut failed);
    remove_dirs(r, &mut failed);
    restore_sysctls(r, &mut failed);
    if failed.is_empty() {
        if let Err(e) = fs::remove_dir_all(HOST_DIR) {
            if e.kind() != std::io::ErrorKind::NotFound {
                failed.push(format!("removing {HOST_DIR}: {e}"));
            }
        }
    }
    failed
}

/// The processes of ours: anything running a binary from the node cache
/// (containerd, its shims, kubelet, kube-proxy) and anything in our cgroup
/// tree (the containers).
pub fn our_processes(r: &Record) -> Vec<u32> {
    let bin = r.cache_dir.join("bin");
    let mut pids: BTreeSet<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(&bin))
        })
        .collect();
    for m in cgroup_mounts() {
        collect_cgroup_pids(&m.join(CGROUP_ROOT), &mut pids);
    }
    pids.remove(&std::process::id());
    pids.into_iter().collect()
}

fn collect_cgroup_pids(dir: &Path, pids: &mut BTreeSet<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_pids(&e.path(), pids);
        }
    }
}

fn kill_processes(r: &Record, failed: &mut Vec<String>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = our_processes(r);
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            failed.push(format!("processes still running: {pids:?}"));
            return;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        // A killed process leaves /proc once its parent reaps it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug)]
struct MountLine {
    mountpoint: PathBuf,
    fstype: String,
}

fn mountinfo() -> Vec<MountLine> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mountpoint = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountLine {
                mountpoint: PathBuf::from(mountpoint),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
            let n = u8::from_str_radix(&s[i + 1..=i + 3], 8).unwrap_or(b'?');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories whose mounts are ours.
fn mount_roots(r: &Record) -> Vec<PathBuf> {
    vec![
        PathBuf::from("/var/lib/kubelet"),
        PathBuf::from(HOST_DIR),
        PathBuf::from("/run/containerd"),
        r.cluster_dir.join("node"),
    ]
}

/// Mounts at or under our directories, deepest first.
pub fn our_mounts(r: &Record) -> Vec<PathBuf> {
    let roots = mount_roots(r);
    let mut mounts: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|m| roots.iter().any(|root| m.starts_with(root)))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts
}

fn unmount_all(r: &Record, failed: &mut Vec<String>) {
    use nix::mount::{MntFlags, umount2};
    // Shared propagation can show one mount several times: repeat until
    // none is left.
    for _ in 0..20 {
        let mounts = our_mounts(r);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    let left = our_mounts(r);
    if !left.is_empty() {
        failed.push(format!("mounts left: {left:?}"));
    }
}

/// The veths on our bridge.
pub fn our_veths() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "master", net::BRIDGE])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let Ok(serde_json::Value::Array(links)) = serde_json::from_slice(&out.stdout) else {
        return Vec::new();
    };
    links
        .iter()
        .filter_map(|l| l.get("ifname")?.as_str().map(String::from))
        .collect()
}

fn remove_network(r: &Record, failed: &mut Vec<String>) {
    for veth in our_veths() {
        let _ = run_ok("ip", &["link", "del", &veth]);
    }
    if Path::new("/sys/class/net").join(net::BRIDGE).exists() {
        if let Err(e) = run_ok("ip", &["link", "del", net::BRIDGE]) {
            failed.push(e.to_string());
        }
    }
    let addr = format!("{}/32", r.net.node_ip);
    if lo_has(&r.net.node_ip.to_string()) {
        if let Err(e) = run_ok("ip", &["addr", "del", &addr, "dev", "lo"]) {
            failed.push(e.to_string());
        }
    }
    let svc = r.net.service_cidr.to_string();
    let routes = Command::new("ip")
        .args(["route", "show", "type", "unreachable", &svc])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if routes {
        if let Err(e) = run_ok("ip", &["route", "del", "unreachable", &svc]) {
            failed.push(e.to_string());
        }
    }
}

fn lo_has(ip: &str) -> bool {
    Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {ip}/")))
        .unwrap_or(false)
}

/// Every chain of every table and family, as `family/table/chain`.
pub fn chains() -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for fam in FAMILIES {
        for table in TABLES {
            for line in iptables_rules(fam, table) {
                if let Some(name) = line.strip_prefix("-N ") {
                    set.insert(format!("{fam}/{table}/{name}"));
                }
            }
        }
    }
    set
}

fn iptables_rules(fam: &str, table: &str) -> Vec<String> {
    Command::new(fam)
        .args(["-w", "-t", table, "-S"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The chains ours now: our prefixes, not there before start.
pub fn our_chains(r: &Record) -> Vec<String> {
    let before: BTreeSet<&String> = r.chains_before.iter().collect();
    chains()
        .into_iter()
        .filter(|c| {
            let name = c.rsplit('/').next().unwrap_or_default();
            CHAIN_PREFIXES.iter().any(|p| name.starts_with(p)) && !before.contains(c)
        })
        .collect()
}

fn remove_chains(r: &Record, failed: &mut Vec<String>) {
    let ours = our_chains(r);
    for fam in FAMILIES {
        for table in TABLES {
            let prefix = format!("{fam}/{table}/");
            let names: BTreeSet<&str> = ours
                .iter()
                .filter_map(|c| c.strip_prefix(&prefix))
                .collect();
            if names.is_empty() {
                continue;
            }
            // Jumps into our chains from chains that are not ours.
            for line in iptables_rules(fam, table) {
                let Some(rest) = line.strip_prefix("-A ") else {
                    continue;
                };
                let args = split_args(rest);
                let Some(from) = args.first() else { continue };
                let target = args
                    .windows(2)
                    .find(|w| w[0] == "-j" || w[0] == "-g")
                    .map(|w| w[1].as_str());
                if !names.contains(from.as_str()) && target.is_some_and(|t| names.contains(t)) {
                    let mut a = vec![
                        "-w".to_string(),
                        "-t".into(),
                        table.to_string(),
                        "-D".into(),
                    ];
                    a.extend(args);
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    if let Err(e) = run_ok(fam, &a) {
                        failed.push(e.to_string());
                    }
                }
            }
            for name in &names {
                let _ = run_ok(fam, &["-w", "-t", table, "-F", name]);
            }
            for name in &names {
                if let Err(e) = run_ok(fam, &["-w", "-t", table, "-X", name]) {
                    failed.push(e.to_string());
                }
            }
        }
    }
    // iptables-nft creates an nftables table the first time a chain goes
    // into it; remove the ones that were not there and hold no rule.
    let before: BTreeSet<&String> = r.nft_tables_before.iter().collect();
    for t in nft_tables() {
        if before.contains(&t) || nft_rule_count(&t) != 0 {
            continue;
        }
        let mut args = vec!["delete", "table"];
        args.extend(t.split(' '));
        if let Err(e) = run_ok("nft", &args) {
            failed.push(e.to_string());
        }
    }
}

/// Splits an `iptables -S` rule: words, with "double quoted" ones whole.
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// nftables tables as `family name` (empty without `nft`).
pub fn nft_tables() -> BTreeSet<String> {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("table "))
                .map(|t| t.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Rules in an nftables table (`family name`); u32::MAX if unreadable.
pub fn nft_rule_count(table: &str) -> u32 {
    let mut args = vec!["-j", "list", "table"];
    args.extend(table.split(' '));
    let Ok(out) = Command::new("nft").args(&args).output() else {
        return u32::MAX;
    };
    if !out.status.success() {
        return u32::MAX;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return u32::MAX;
    };
    v.get("nftables")
        .and_then(|n| n.as_array())
        .map(|items| items.iter().filter(|i| i.get("rule").is_some()).count() as u32)
        .unwrap_or(u32::MAX)
}

fn flush_conntrack(r: &Record) {
    let pods = r.net.pod_cidr.to_string();
    let svc = r.net.service_cidr.to_string();
    for args in [["-D", "-s", &pods], ["-D", "-d", &pods], ["-D", "-d", &svc]] {
        // Exit status 1 means "nothing to delete".
        let _ = Command::new("conntrack")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Our cgroup directories (any depth), deepest first.
pub fn our_cgroups(r: &Record) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in cgroup_mounts() {
        collect_dirs(&m.join(CGROUP_ROOT), &mut dirs);
        let k8s = m.join("k8s.io");
        if !r.cgroups_before.contains(&k8s) {
            collect_dirs(&k8s, &mut dirs);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
    out.push(dir.to_path_buf());
}

fn remove_cgroups(r: &Record, failed: &mut Vec<String>) {
    // A cgroup whose last task just exited can stay busy a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dirs = our_cgroups(r);
        let mut errors = Vec::new();
        for d in &dirs {
            if let Err(e) = fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("removing cgroup {}: {e}", d.display()));
                }
            }
        }
        if errors.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            failed.extend(errors);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_dirs(r: &Record, failed: &mut Vec<String>) {
    for p in r.created.iter().filter(|p| *p != Path::new(CNI_CACHE)) {
        if let Err(e) = fs::remove_dir_all(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                failed.push(format!("removing {}: {e}", p.display()));
            }
        }
    }
    // Directories that existed before: only our entries. The container log
    // links point into our Pod log dir; the CNI cache is per network name.
    let logs = r.cluster_dir.join("node");
    for e in fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&logs)) {
            let _ = fs::remove_file(e.path());
        }
    }
    prune_cni_cache(r.created.iter().any(|p| p == Path::new(CNI_CACHE)));
    if let Err(e) = fs::remove_dir_all(r.cluster_dir.join("node/containerd")) {
        if e.kind() != std::io::ErrorKind::NotFound {
            failed.push(format!("removing containerd's root: {e}"));
        }
    }
}

/// containerd's CNI cache (libcni's): `results/<network>-<sandbox>-<if>`.
const CNI_CACHE: &str = "/var/lib/cni";

/// Removes the CNI cache entries of our network (named after it), and the
/// cache directories if we created them and they are empty now.
fn prune_cni_cache(created: bool) {
    let results = Path::new(CNI_CACHE).join("results");
    for e in fs::read_dir(&results).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(super::config::CNI_NETWORK)
        {
            let _ = fs::remove_file(e.path());
        }
    }
    if created {
        let _ = fs::remove_dir(&results);
        let _ = fs::remove_dir(CNI_CACHE);
    }
}

/// Another kubelet on this host (a kind node's, say): `(pid, exe)`.
pub fn foreign_kubelet(r: &Record) -> Option<(u32, PathBuf)> {
    let ours = r.cache_dir.join("bin");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        let exe = fs::read_link(e.path().join("exe")).ok()?;
        (comm.trim() == "kubelet" && !exe.starts_with(&ours)).then_some((pid, exe))
    })
}

fn restore_sysctls(r: &Record, failed: &mut Vec<String>) {
    // The kubelet's tunables are global: a kubelet that runs on this host
    // now (in a kind node, say) set the same values and wants them kept.
    if let Some((pid, exe)) = foreign_kubelet(r) {
        eprintln!(
            "sa-lab: leaving the kubelet's sysctls as they are: another kubelet runs here (pid {pid}, {})",
            exe.display()
        );
        return;
    }
    for (key, value) in &r.sysctls {
        let path = Path::new("/proc/sys").join(key);
        let now = fs::read_to_string(&path).map(|v| v.trim().to_string());
        if now.as_deref().is_ok_and(|n| n != value) {
            if let Err(e) = fs::write(&path, value) {
                failed.push(format!("restoring {}={value}: {e}", key.replace('/', ".")));
            }
        }
    }
}

/// What the host still holds of a kubelet node (for tests and `down`'s
/// check): processes, mounts, veths, the bridge, our chains, cgroups.
pub fn leftovers(r: &Record) -> Vec<String> {
    let mut left = Vec::new();
    let p = our_processes(r);
    if !p.is_empty() {
        left.push(format!("processes {p:?}"));
    }
    let m = our_mounts(r);
    if !m.is_empty() {
        left.push(format!("mounts {m:?}"));
    }
    let v = our_veths();
    if !v.is_empty() {
        left.push(format!("veths {v:?}"));
    }
    if Path::new("/sys/class/net").join(net::BRIDGE).exists() {
        left.push(format!("the bridge {}", net::BRIDGE));
    }
    let c = our_chains(r);
    if !c.is_empty() {
        left.push(format!("iptables chains {c:?}"));
    }
    let g = our_cgroups(r);
    if !g.is_empty() {
        left.push(format!("cgroups {g:?}"));
    }
    left
}

/// Runs a command; an error names it and carries its stderr.
pub fn run_ok(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(Error::io(format!("running {program}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            split_args(
                r#"INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODEPORTS"#
            ),
            vec![
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes health check rules",
                "-j",
                "KUBE-NODEPORTS"
            ]
        );
        assert_eq!(
            split_args(r#"X --comment "" -j Y"#),
            vec!["X", "--comment", "", "-j", "Y"]
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
