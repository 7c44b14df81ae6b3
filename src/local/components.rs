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
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Node,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Node => "sandbox-node",
        }
    }

    /// The program and its arguments.
    pub fn command(self, info: &ClusterInfo) -> (PathBuf, Vec<String>) {
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
        }
    }
}

/// The progress line shown while the supervisor waits in `phase`.
pub fn phase_label(phase: &str) -> String {
    match phase {
        "etcd" => "Starting etcd".into(),
        "kube-apiserver" => "Starting kube-apiserver".into(),
        "controllers" => "Starting kube-controller-manager, kube-scheduler and the sandbox node".into(),
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
