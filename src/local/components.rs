//! The command line of every local component, in one place.

use std::path::PathBuf;

use super::ClusterInfo;

/// One process the supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Node,
    /// The kubelet node's container runtime.
    Containerd,
    /// The kubelet node's kubelet and kube-proxy.
    Kubelet,
    KubeProxy,
}

impl Component {
    pub const ALL: [Component; 8] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Node,
        Component::Containerd,
        Component::Kubelet,
        Component::KubeProxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Node => "sandbox-node",
            Component::Containerd => "containerd",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
        }
    }

    /// The program and its arguments.
    pub fn command(self, info: &ClusterInfo) -> (PathBuf, Vec<String>) {
        let (program, mut args) = self.base_command(info);
        if let Some(k) = &info.kubelet {
            kubelet_node_flags(self, &mut args, k);
        }
        (program, args)
    }

    fn base_command(self, info: &ClusterInfo) -> (PathBuf, Vec<String>) {
        let pki = info.pki_dir();
        let p = |f: &str| pki.join(f).display().to_string();
        let bin = |b: &str| info.bin_dir.join(b);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            Component::Etcd => {
                let client = format!("http://127.0.0.1:{}", info.etcd_port);
                let peer = format!("http://127.0.0.1:{}", info.etcd_peer_port);
                let mut a = s(&[
                    "--name=sa-lab",
                    "--log-level=warn",
                    // No fsync, on purpose. etcd still writes (flushes) its
                    // WAL to the kernel before it acknowledges a write
                    // (wal.go `sync()` flushes, then skips only the
                    // fdatasync), so every acknowledged write survives
                    // etcd or the API server exiting or being killed
                    // (e2e/tests/faults.rs proves it). Only a power loss or
                    // kernel crash can lose the last seconds of writes,
                    // and a local cluster does not outlive a reboot
                    // anyway: its processes are gone and `up` starts
                    // afresh. fsync would cost every write a disk flush.
                    "--unsafe-no-fsync=true",
                    "--quota-backend-bytes=536870912",
                ]);
                a.push(format!("--data-dir={}", info.dir.join("etcd").display()));
                a.push(format!("--listen-client-urls={client}"));
                a.push(format!("--advertise-client-urls={client}"));
                a.push(format!("--listen-peer-urls={peer}"));
                a.push(format!("--initial-advertise-peer-urls={peer}"));
                a.push(format!("--initial-cluster=sa-lab={peer}"));
                (bin("etcd"), a)
            }
            Component::ApiServer => {
                let mut a = s(&[
                    "--bind-address=127.0.0.1",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--service-account-max-token-expiration=24h", // chapter 6: longer requests are shortened
                    "--kubelet-preferred-address-types=InternalIP",
                    // Endpoints of the `kubernetes` Service are not reconciled:
                    // the apiserver listens on loopback only, and a loopback
                    // advertise address is invalid. Pods reach it through
                    // KUBERNETES_SERVICE_HOST=127.0.0.1, set by the node.
                    "--endpoint-reconciler-type=none",
                    "--advertise-address=10.0.0.1",
                    "--profiling=false",
                ]);
                a.push(format!("--secure-port={}", info.api_port));
                a.push(format!(
                    "--etcd-servers=http://127.0.0.1:{}",
                    info.etcd_port
                ));
                a.push(format!("--tls-cert-file={}", p("apiserver.crt")));
                a.push(format!("--tls-private-key-file={}", p("apiserver.key")));
                a.push(format!("--client-ca-file={}", p("ca.crt")));
                a.push(format!("--service-account-key-file={}", p("sa.pub")));
                a.push(format!(
                    "--service-account-signing-key-file={}",
                    p("sa.key")
                ));
                a.push(format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ));
                a.push(format!(
                    "--kubelet-client-key={}",
                    p("apiserver-kubelet-client.key")
                ));
                a.push(format!(
                    "--cert-dir={}",
                    pki.join("apiserver-generated").display()
                ));
                if info.audit_log {
                    a.extend(crate::audit::apiserver_flags(&info.dir));
                }
                (bin("kube-apiserver"), a)
            }
            Component::ControllerManager => {
                let kc = p("controller-manager.kubeconfig");
                let mut a = s(&[
                    "--use-service-account-credentials=true",
                    // The controllers ServiceAccounts depend on (see
                    // ARCHITECTURE.md). `*` starts ~40 controllers one by
                    // one, each with its own ServiceAccount token, which
                    // costs ~5 s of start-up on 2 cores.
                    concat!(
                        "--controllers=serviceaccount-controller,serviceaccount-token-controller,",
                        "root-ca-certificate-publisher-controller,namespace-controller,",
                        "garbage-collector-controller,clusterrole-aggregation-controller,",
                        "pod-garbage-collector-controller,node-lifecycle-controller,",
                        "taint-eviction-controller,legacy-serviceaccount-token-cleaner-controller,",
                        "ttl-after-finished-controller,job-controller,replicaset-controller,",
                        "deployment-controller"
                    ),
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    // Its own client-side rate limit (20/s after a burst of
                    // 30 by default) paced its start-up: each controller's
                    // ServiceAccount and token are fetched one by one, ~60
                    // requests 50 ms apart, ~0.7 s before the cluster was
                    // ready. One cluster, one tenant: let it go.
                    "--kube-api-qps=500",
                    "--kube-api-burst=1000",
                ]);
                a.push(format!("--kubeconfig={kc}"));
                a.push(format!("--authentication-kubeconfig={kc}"));
                a.push(format!("--authorization-kubeconfig={kc}"));
                a.push(format!(
                    "--service-account-private-key-file={}",
                    p("sa.key")
                ));
                a.push(format!("--root-ca-file={}", p("ca.crt")));
                a.push(format!(
                    "--cert-dir={}",
                    pki.join("kcm-generated").display()
                ));
                (bin("kube-controller-manager"), a)
            }
            Component::Scheduler => {
                let kc = p("scheduler.kubeconfig");
                let mut a = s(&["--leader-elect=false", "--secure-port=0"]);
                a.push(format!("--kubeconfig={kc}"));
                a.push(format!("--authentication-kubeconfig={kc}"));
                a.push(format!("--authorization-kubeconfig={kc}"));
                (bin("kube-scheduler"), a)
            }
            Component::Node => {
                let opts = info.dir.join("node/options.json").display().to_string();
                (
                    crate::paths::self_binary(),
                    vec!["node".into(), "--options".into(), opts],
                )
            }
            Component::Containerd | Component::Kubelet | Component::KubeProxy => {
                let node = info
                    .kubelet
                    .as_ref()
                    .expect("the kubelet node's components run only in a kubelet-node cluster");
                crate::kubelet::command(self, info, node)
            }
        }
    }
}

/// With the kubelet node, the API server listens on the node's host-local
/// address (Pods reach it through the kubernetes Service, whose endpoint it
/// advertises and keeps with the lease reconciler, as on kubeadm), and the
/// Service range is the node's.
fn kubelet_node_flags(c: Component, args: &mut Vec<String>, k: &crate::kubelet::KubeletNode) {
    let set = |args: &mut Vec<String>, flag: &str, value: String| {
        args.retain(|a| !a.starts_with(&format!("{flag}=")));
        args.push(format!("{flag}={value}"));
    };
    let range = k.net.service_cidr.to_string();
    match c {
        Component::ApiServer => {
            set(args, "--bind-address", k.net.node_ip.to_string());
            set(args, "--advertise-address", k.net.node_ip.to_string());
            set(args, "--endpoint-reconciler-type", "lease".into());
            set(args, "--service-cluster-ip-range", range);
        }
        Component::ControllerManager => set(args, "--service-cluster-ip-range", range),
        _ => {}
    }
}

/// The progress line shown while the supervisor waits in `phase`.
pub fn phase_label(phase: &str) -> String {
    match phase {
        "kube-apiserver" => "Starting etcd and kube-apiserver".into(),
        "controllers" => "Starting kube-controller-manager, kube-scheduler and the sandbox node".into(),
        "node-host" => "Preparing the host for the kubelet node (address, bridge, cgroups, rules)".into(),
        "containerd" => "Starting containerd and importing the pause and lab images".into(),
        "controllers-kubelet" => "Starting kube-controller-manager, kube-scheduler, kubelet and kube-proxy".into(),
        "ready" => "Waiting for the default ServiceAccount, kube-root-ca.crt, view ClusterRole and Ready node".into(),
        other => format!("Waiting for {other}"),
    }
}

/// Does `pid` still run the component called `name`? (Guards against pid
/// reuse before signalling.)
pub fn pid_is(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let exe = String::from_utf8_lossy(first);
    match name {
        "sandbox-node" => String::from_utf8_lossy(&cmdline).contains("node"),
        n => exe.ends_with(n),
    }
}
