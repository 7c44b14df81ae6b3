//! The kubelet node leaves nothing behind (issue 12): 20 bring-ups and
//! tear-downs with `--node kubelet`, each running a Pod, one of them ending
//! in a crash (the supervisor killed, then `down`) and one in a Ctrl-C
//! during `up`. After each, the host's processes, mounts, network
//! namespaces, veths, addresses, routes, iptables rules, cgroups,
//! directories and sysctls are as they were. Needs root; the only test in
//! its binary, so nothing else of the run competes for the host lock.

mod common;
mod pod_kit;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{TestCluster, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use pod_kit::{create, run_to_end, toolbox_pod, wait_running};
use serde_json::Value;

/// What the kubelet node can leave on a host, read independently of the
/// code that cleans up.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostState {
    /// Processes running a binary from the node cache.
    processes: BTreeSet<String>,
    /// Mount points under the node's directories, containerd's network
    /// namespaces and the tests' state dir.
    mounts: BTreeSet<String>,
    /// Network namespace files (containerd's; /run/netns but podman's).
    netns: BTreeSet<String>,
    /// Interfaces: the bridge, veths without a master or on our bridge.
    links: BTreeSet<String>,
    /// Addresses on lo.
    lo: BTreeSet<String>,
    /// Unreachable routes.
    routes: BTreeSet<String>,
    /// iptables/ip6tables rules and chains (-S) in KUBE-/SA-LAB- chains or
    /// jumping to them.
    rules: BTreeSet<String>,
    /// cgroup directories named sa-lab-kubelet or k8s.io, at any depth.
    cgroups: BTreeSet<String>,
    /// The host directories the components write.
    dirs: BTreeSet<String>,
    /// The kubelet's and kube-proxy's global sysctls (None: not read).
    sysctls: Option<Vec<(String, String)>>,
}

impl HostState {
    /// The same as `before`, sysctls compared when both were read.
    fn matches(&self, before: &HostState) -> bool {
        let sysctls_ok = match (&self.sysctls, &before.sysctls) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let strip = |h: &HostState| HostState {
            sysctls: None,
            ..h.clone()
        };
        sysctls_ok && strip(self) == strip(before)
    }
}

fn host_state(bin_dir: &Path, state_dir: &Path) -> HostState {
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            exe.starts_with(bin_dir)
                .then(|| format!("{} {}", e.file_name().to_string_lossy(), exe.display()))
        })
        .collect();
    // containerd names network namespaces cni-<uuid> (podman: netns-<uuid>).
    let roots = [
        "/var/lib/kubelet",
        "/run/sa-lab-node",
        "/run/containerd",
        "/run/netns/cni-",
    ];
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| roots.iter().any(|r| m.starts_with(r)) || Path::new(m).starts_with(state_dir))
        .map(String::from)
        .collect();
    let ls = |d: &str| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| format!("{d}/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let netns = [ls("/run/netns"), ls("/run/sa-lab-node/containerd/netns")]
        .concat()
        .into_iter()
        .filter(|n| !n.starts_with("/run/netns/netns-"))
        .collect();
    let links_json = Command::new("ip")
        .args(["-j", "-d", "link"])
        .output()
        .unwrap()
        .stdout;
    let links_v: Value = serde_json::from_slice(&links_json).unwrap();
    let links = links_v
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            let name = l["ifname"].as_str().unwrap_or_default();
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or_default();
            name == "sa-lab0"
                || l["master"] == "sa-lab0"
                || (kind == "veth" && l.get("master").is_none())
        })
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect();
    let lo_out = Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    let lo = String::from_utf8_lossy(&lo_out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect();
    let routes_out = Command::new("ip")
        .args(["route", "show", "type", "unreachable"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes_out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let mut rules = BTreeSet::new();
    for fam in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle", "raw"] {
            let out = Command::new(fam)
                .args(["-w", "-t", table, "-S"])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let ours = ["KUBE-", "SA-LAB-"].iter().any(|p| line.contains(p));
                if ours {
                    rules.insert(format!("{fam} {table} {line}"));
                }
            }
        }
    }
    let mut cgroups = BTreeSet::new();
    for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for name in ["sa-lab-kubelet", "k8s.io"] {
            let p = c.path().join(name);
            if p.exists() {
                cgroups.insert(p.display().to_string());
            }
        }
    }
    // Directories only a kubelet or containerd writes, whole; in the CNI
    // cache (shared with podman's CNI), what is named after our network.
    let mut dirs: BTreeSet<String> = [
        "/var/lib/kubelet",
        "/var/log/containers",
        "/var/log/pods",
        "/run/containerd",
        "/run/sa-lab-node",
        "/opt/containerd",
    ]
    .iter()
    .filter(|d| Path::new(d).exists())
    .map(|d| format!("{d}: {:?}", ls(d)))
    .collect();
    dirs.extend(
        ls("/var/lib/cni/results")
            .into_iter()
            .filter(|f| f.contains("sa-lab")),
    );
    // The kubelet's tunables are global: another kubelet on this host (a
    // kind node's) sets them too. Compared only when none runs.
    let foreign = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        (comm.trim() == "kubelet" && !exe.starts_with(bin_dir)).then_some(exe)
    });
    if let Some(exe) = &foreign {
        eprintln!(
            "sysctls not compared: another kubelet runs on this host ({})",
            exe.display()
        );
    }
    let sysctls = foreign.is_none().then(|| {
        sa_lab::kubelet::host::SYSCTLS
            .iter()
            .chain(&["net/ipv4/ip_forward"])
            .map(|k| {
                let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
                (k.to_string(), v.trim().to_string())
            })
            .collect()
    });
    HostState {
        processes,
        mounts,
        netns,
        links,
        lo,
        routes,
        rules,
        cgroups,
        dirs,
        sysctls,
    }
}

/// What `after` has that `before` has not (or differs in), for messages.
fn diff(before: &HostState, after: &HostState) -> String {
    format!("before: {before:#?}\nafter: {after:#?}")
}

/// 20 bring-ups and tear-downs, each running a Pod; one ends in a crash
/// (the supervisor killed, then `down`), one in a Ctrl-C during `up`. After
/// each, the host is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_up_down_cycles_leave_nothing() {
    if !common::kubelet_node_possible() {
        return;
    }
    let bin_dir = sa_lab::kubelet::ensure_bins()
        .expect("node binaries")
        .join("bin");
    let state_dir = sa_lab::paths::home();
    // Waits for, and then holds, the host: no other kubelet node may start
    // while the baseline is read.
    let lock = host_lock().await;
    let baseline = host_state(&bin_dir, &state_dir);
    drop(lock);
    assert!(baseline.processes.is_empty(), "{baseline:#?}");

    for cycle in 0..20 {
        match cycle {
            18 => crash_cycle().await,
            19 => interrupt_cycle().await,
            _ => {
                let c = TestCluster::start_kubelet("kl-cycle").await;
                let client = c.client().await;
                let pods: Api<Pod> = Api::namespaced(client, "default");
                let p = run_to_end(&pods, toolbox_pod("cycle", &["exit", "0"]), 60).await;
                assert_eq!(p.status.unwrap().phase.as_deref(), Some("Succeeded"));
                drop(c);
            }
        }
        let lock = host_lock().await;
        let now = host_state(&bin_dir, &state_dir);
        drop(lock);
        assert!(
            now.matches(&baseline),
            "cycle {cycle} left something:\n{}",
            diff(&baseline, &now)
        );
    }
}

/// Waits for, then holds, the host: no kubelet node runs meanwhile.
async fn host_lock() -> sa_lab::kubelet::NodeLock {
    tokio::task::spawn_blocking(|| sa_lab::kubelet::NodeLock::acquire(true))
        .await
        .unwrap()
        .expect("the host lock")
}

/// Up with a running Pod, then the supervisor is killed (SIGKILL: no
/// clean-up of its own; containers and shims keep running), then `down`
/// while the test holds the host lock (it fails and says why), then `down`.
async fn crash_cycle() {
    let c = TestCluster::start_kubelet("kl-crash").await;
    let client = c.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    create(&pods, toolbox_pod("crash", &["sleep", "600"])).await;
    wait_running(&pods, "crash", 60).await;
    let st = sa_lab::local::read_status(&c.info.dir).expect("status");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(st.supervisor_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(30, "the supervisor to die", || async {
        !sa_lab::local::supervisor_alive(st.supervisor_pid)
    })
    .await;
    // While something else holds the host lock, `down` cannot undo the
    // node's host changes: it says so and keeps the cluster's state (it
    // once returned Ok and left everything behind).
    let lock = host_lock().await;
    let name = c.info.name.clone();
    let held = tokio::task::spawn_blocking(move || sa_lab::local::down(&name))
        .await
        .unwrap();
    let err = held.expect_err("down with the host lock held elsewhere");
    assert!(err.to_string().contains("not undone"), "{err}");
    assert!(c.info.dir.join("cluster.json").is_file());
    drop(lock);
    // The container outlives it, until `down` (the fixture's drop).
    drop(c);
}

/// `sa-lab up --node kubelet` interrupted by Ctrl-C once containerd runs:
/// it stops and removes everything it had started.
async fn interrupt_cycle() {
    let name = common::unique("t-kl-int");
    let mut child = common::sa_lab_cmd()
        .args(["up", "--node", "kubelet", "--name", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sa-lab up");
    let dir = sa_lab::paths::cluster_dir(&name);
    eventually(120, "containerd to start", || async {
        sa_lab::local::read_status(&dir).is_some_and(|s| {
            s.components
                .iter()
                .any(|c| c.name == "containerd" && c.running)
        })
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let st = child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (st, err)
    })
    .await
    .unwrap();
    assert!(!out.0.success(), "interrupted up must fail");
    assert!(out.1.contains("interrupted"), "{}", out.1);
    assert!(!dir.exists(), "the half-made cluster's state is removed");
}
