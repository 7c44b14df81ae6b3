//! The configuration files of the kubelet node's components, rendered from
//! the cluster's facts. Pure functions: the unit tests read them.
//!
//! What each setting is for (and what a kind node sets instead) is said
//! beside it. The knobs this machine needs (cgroup v1, no CAP_SYS_RESOURCE)
//! are in design/REFERENCE-containers.md.

use serde_json::json;

use super::{CGROUP_ROOT, Layout, Pleg, net::Network};

/// containerd's config (version 4, what containerd 2.4 writes itself).
/// Everything lives in our own directories: root (images, snapshots) in the
/// cluster's node dir, state, sockets, shim sockets and runc state under
/// `/run/sa-lab-node`, network namespaces under the state dir. Nothing is
/// imported from `/etc/containerd`.
pub fn containerd(l: &Layout, runc: &str, pause_image: &str, cni_bin_dir: &str) -> String {
    format!(
        r#"# containerd for sa-lab's kubelet node (written by sa-lab; do not edit).
version = 4
root = {root:?}
state = {state:?}
imports = []
# Plugins the node does not use; nri would open /var/run/nri, opt would
# create /opt/containerd.
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.snapshotter.v1.blockfile",
]

[plugins.'io.containerd.server.v1.grpc']
  address = {sock:?}
[plugins.'io.containerd.server.v1.ttrpc']
  address = {ttrpc:?}
[plugins.'io.containerd.server.v1.metrics']
  address = ''
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = {shims:?}

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # Every registry's hosts file sends pulls to a closed local port: an
  # image that is not here fails at once, and no lookup leaves this host.
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = {registries:?}
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # Built here from the kubernetes module's pause.c (no registry).
    sandbox = {pause:?}

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: it cannot write the negative
  # oom_score_adj the kubelet asks for Pod sandboxes (-998).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        # Debian's runc (crun refuses cgroup v1 hybrid mode).
        BinaryName = {runc:?}
        Root = {runc_root:?}
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{cni_bin:?}]
    conf_dir = {cni_conf:?}
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"#,
        root = l.containerd_root.display().to_string(),
        state = l.containerd_state.display().to_string(),
        sock = l.containerd_socket.display().to_string(),
        ttrpc = format!("{}.ttrpc", l.containerd_socket.display()),
        shims = l.shim_socket_dir.display().to_string(),
        pause = pause_image,
        runc = runc,
        runc_root = l.runc_root.display().to_string(),
        cni_bin = cni_bin_dir,
        cni_conf = l.cni_conf_dir.display().to_string(),
        registries = l.registry_dir.display().to_string(),
    )
}

/// The hosts file of every registry (`<registry dir>/_default/hosts.toml`).
pub const NO_REGISTRY: &str = "\
# sa-lab's kubelet node pulls nothing: its images are built on this machine
# and imported. Any other image is looked for at a closed local port, so the
# pull fails here instead of reaching out to a registry.
server = \"https://127.0.0.1:1\"
";

/// The kubelet's KubeletConfiguration (JSON is YAML).
pub fn kubelet(l: &Layout, net: &Network, ports: KubeletPorts, pki: &Pki, pleg: Pleg) -> String {
    let endpoint = format!("unix://{}", l.containerd_socket.display());
    let mut doc = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // Served on the node's host-local address only; no read-only port.
        "address": net.node_ip.to_string(),
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.healthz,
        "tlsCertFile": pki.serving_cert,
        "tlsPrivateKeyFile": pki.serving_key,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        // As kubeadm: x509 client certs signed by the cluster CA, bearer
        // tokens checked with TokenReview, everything else authorized with
        // SubjectAccessReview (the API server's kubelet client holds
        // system:kubelet-api-admin).
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": pki.ca_cert},
        },
        "authorization": {"mode": "Webhook"},
        // No systemd here: the cgroupfs driver, under a root of our own.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{CGROUP_ROOT}"),
        "cgroupsPerQOS": true,
        "enforceNodeAllocatable": ["pods"],
        // This host has cgroup v1 (hybrid); kubelet >= 1.35 refuses it
        // unless told that is intended (KEP-5573).
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "podLogsDir": l.pod_logs_dir,
        // No cluster DNS: lab Pods use KUBERNETES_SERVICE_HOST, and a Pod
        // gets no resolver that could send a query off this host.
        "resolvConf": l.resolv_conf,
        "clusterDomain": "cluster.local",
        // Images are built here and pinned: never collect them; evict only
        // when the host is really short of memory or disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        // The kubelet sets vm.overcommit_memory, kernel.panic and
        // kernel.panic_on_oops at start (true would refuse to start here);
        // sa-lab records them first and restores them on the way down.
        "protectKernelDefaults": false,
        "shutdownGracePeriod": "0s",
        "registerNode": true,
        "maxPods": 110,
    });
    if pleg == Pleg::Evented {
        // containerd's container events make the kubelet relist a Pod the
        // moment a container exits (see `Pleg`).
        doc["featureGates"] = json!({"EventedPLEG": true});
    }
    serde_json::to_string_pretty(&doc).expect("json renders")
}

/// Ports the kubelet serves on.
#[derive(Clone, Copy, Debug)]
pub struct KubeletPorts {
    /// HTTPS (logs, exec) on the node address.
    pub kubelet: u16,
    /// /healthz on 127.0.0.1.
    pub healthz: u16,
}

/// The files of the PKI the node uses.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
}

/// kube-proxy's KubeProxyConfiguration: iptables mode, told to leave the
/// host's conntrack sysctls and oom score alone.
pub fn kube_proxy(
    kubeconfig: &str,
    node_name: &str,
    net: &Network,
    healthz_port: u16,
    metrics_port: u16,
) -> String {
    let doc = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "bindAddress": net.node_ip.to_string(),
        "clusterCIDR": net.pod_cidr.to_string(),
        "detectLocalMode": "ClusterCIDR",
        "healthzBindAddress": format!("127.0.0.1:{healthz_port}"),
        "metricsBindAddress": format!("127.0.0.1:{metrics_port}"),
        "nodePortAddresses": ["primary"],
        // 0 leaves each sysctl as it is.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        // No route_localnet, no masquerading of everything.
        "iptables": {"localhostNodePorts": false, "masqueradeAll": false},
        "oomScoreAdj": 0,
    });
    serde_json::to_string_pretty(&doc).expect("json renders")
}

/// The CNI network's name (libcni names its cache files after it).
pub const CNI_NETWORK: &str = "sa-lab-pods";

/// The CNI network: the bridge plugin on our pre-made bridge (no gateway
/// role, no IP masquerade), host-local addresses from the Pod CIDR with a
/// default route through the bridge. No portmap: lab Pods use no hostPort,
/// and its iptables chains are shared with other CNI users on the host.
pub fn cni_conflist(l: &Layout, net: &Network) -> String {
    let gw = net.gateway().to_string();
    let doc = json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": super::net::BRIDGE,
                "isGateway": false,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr.to_string(), "gateway": gw}]],
                    "routes": [{"dst": "0.0.0.0/0", "gw": gw}],
                    "dataDir": l.ipam_dir,
                },
            },
        ],
    });
    serde_json::to_string_pretty(&doc).expect("json renders")
}

/// The resolv.conf the kubelet gives Pods: no nameserver.
pub const RESOLV_CONF: &str = "\
# sa-lab's kubelet node: no DNS. Lab Pods reach the API server through
# KUBERNETES_SERVICE_HOST, and nothing here forwards a query off this host.
options ndots:1
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn layout() -> Layout {
        Layout::new(Path::new("/state/clusters/c"))
    }

    #[test]
    fn containerd_keeps_to_its_own_directories() {
        let text = containerd(
            &layout(),
            "/usr/sbin/runc",
            "registry.k8s.io/pause:3.10.2",
            "/c/cni",
        );
        assert!(text.contains("version = 4"));
        assert!(text.contains("imports = []"));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("SystemdCgroup = false"));
        assert!(text.contains(r#"BinaryName = "/usr/sbin/runc""#));
        assert!(text.contains(r#"sandbox = "registry.k8s.io/pause:3.10.2""#));
        assert!(text.contains("netns_mounts_under_state_dir = true"));
        assert!(text.contains(r#"config_path = "/state/clusters/c/node/registries""#));
        assert!(text.contains(r#"root = "/state/clusters/c/node/containerd""#));
        for line in text.lines().filter(|l| l.contains('/')) {
            assert!(
                !line.contains("/run/containerd") && !line.contains("/var/lib/containerd"),
                "a default host path: {line}"
            );
        }
    }

    fn pki() -> Pki {
        Pki {
            ca_cert: "/p/ca.crt".into(),
            serving_cert: "/p/s.crt".into(),
            serving_key: "/p/s.key".into(),
        }
    }

    #[test]
    fn kubelet_config_has_the_knobs_this_host_needs() {
        let net = Network::from_vars(|_| None).unwrap();
        let text = kubelet(
            &layout(),
            &net,
            KubeletPorts {
                kubelet: 1,
                healthz: 2,
            },
            &pki(),
            Pleg::Evented,
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["featureGates"], json!({"EventedPLEG": true}));
        assert_eq!(v["failCgroupV1"], false);
        assert_eq!(v["cgroupDriver"], "cgroupfs");
        assert_eq!(v["cgroupRoot"], "/sa-lab-kubelet");
        assert_eq!(v["authorization"]["mode"], "Webhook");
        assert_eq!(v["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(v["readOnlyPort"], 0);
        assert_eq!(v["address"], "10.245.0.1");
    }

    #[test]
    fn the_generic_pleg_is_the_kubelet_as_kind_runs_it() {
        let net = Network::from_vars(|_| None).unwrap();
        let ports = KubeletPorts {
            kubelet: 1,
            healthz: 2,
        };
        let generic: serde_json::Value =
            serde_json::from_str(&kubelet(&layout(), &net, ports, &pki(), Pleg::Generic)).unwrap();
        assert!(generic.get("featureGates").is_none(), "{generic}");
    }

    #[test]
    fn cni_neither_forwards_nor_masquerades() {
        let net = Network::from_vars(|_| None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&cni_conflist(&layout(), &net)).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["isGateway"], false);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["bridge"], "sa-lab0");
        assert_eq!(bridge["ipam"]["routes"][0]["gw"], "10.244.0.1");
    }
}
