//! The kind scripts' own checks, run without a cluster: the network check
//! `scripts/kind-up.sh` makes before creating anything (no range of the
//! cluster's may collide with the host's routes, addresses or resolvers), and
//! the pins the locally built node image depends on.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs `check_networks` from scripts/kind-lib.sh for the local node image,
/// with the node network `subnet`.
fn check_networks(subnet: &str) -> Output {
    Command::new("bash")
        .current_dir(repo_root())
        .env("SA_LAB_KIND_SUBNET", subnet)
        .env("ENGINE", "podman")
        .args([
            "-c",
            "REPO_ROOT=$PWD; source scripts/lib.sh; source scripts/kind-lib.sh; \
             podman() { return 1; }; check_networks sa-lab-test local",
        ])
        .output()
        .expect("running bash")
}

#[test]
fn network_check_refuses_a_node_network_on_a_host_address() {
    // Every Linux host has 127.0.0.1 on lo: a node network over it collides.
    let out = check_networks("127.0.0.0/24");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted 127.0.0.0/24: {err}");
    assert!(
        err.contains("node network 127.0.0.0/24")
            && err.contains("collides with the host's address 127.0.0.1"),
        "the refusal names both ranges: {err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
}

#[test]
fn network_check_refuses_overlapping_cluster_ranges() {
    // A /24 inside kind/cluster-local.yaml's podSubnet.
    let config = read("kind/cluster-local.yaml");
    let pod = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("podSubnet:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("podSubnet");
    let octets: Vec<&str> = pod.split(['.', '/']).collect();
    let inside = format!("{}.{}.7.0/24", octets[0], octets[1]);
    let out = check_networks(&inside);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted a node network inside the Pod network: {err}"
    );
    assert!(
        err.contains(&format!("overlaps the node network {inside}")),
        "{err}"
    );
}

#[test]
fn network_check_passes_free_ranges() {
    // A node network in TEST-NET-2 (198.51.100.0/24, documentation only,
    // never routed here) and the configured Pod and Service networks: on
    // this machine none of them is the host's.
    let out = check_networks("198.51.100.0/24");
    assert!(
        out.status.success(),
        "free ranges refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn local_node_config_matches_what_the_node_image_carries() {
    let config = read("kind/cluster-local.yaml");
    for needed in [
        "disableDefaultCNI: true",
        "failCgroupV1: false",
        "disabled: true",
        "podSubnet:",
        "serviceSubnet:",
    ] {
        assert!(
            config.contains(needed),
            "kind/cluster-local.yaml lacks {needed:?}"
        );
    }
    // The etcd kubeadm is told to run is the one tools/etcdbin builds.
    let etcd = read("tools/etcdbin/go.mod");
    let version = etcd
        .lines()
        .find_map(|l| l.trim().strip_prefix("go.etcd.io/etcd/server/v3 v"))
        .and_then(|v| v.split_whitespace().next())
        .expect("etcd version in tools/etcdbin/go.mod");
    assert!(
        config.contains(&format!("imageTag: \"{version}-0\"")),
        "kind/cluster-local.yaml must ask kubeadm for etcd {version}-0"
    );
    // CoreDNS answers cluster names only: no forwarding anywhere.
    let coredns = read("kind/coredns.yaml");
    let corefile: String = coredns
        .split("Corefile: |")
        .nth(1)
        .and_then(|rest| rest.split("\n---").next())
        .expect("kind/coredns.yaml has a Corefile")
        .to_owned();
    assert!(corefile.contains("kubernetes cluster.local"), "{corefile}");
    for plugin in ["forward", "grpc", "proxy"] {
        assert!(
            !corefile.lines().any(|l| l.trim_start().starts_with(plugin)),
            "kind/coredns.yaml's Corefile uses {plugin}: {corefile}"
        );
    }
    let main = read("tools/corednsbin/main.go");
    for plugin in ["forward", "grpc", "etcd"] {
        assert!(
            !main.contains(&format!("plugin/{plugin}\"")),
            "tools/corednsbin builds the {plugin} plugin"
        );
    }
    // The kube-dns Service sits where kubeadm points the kubelet: the 10th
    // address of the Service network.
    let service = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("serviceSubnet:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("serviceSubnet");
    let base = service.split('/').next().unwrap();
    let prefix: Vec<&str> = base.split('.').collect();
    let dns = format!("{}.{}.{}.10", prefix[0], prefix[1], prefix[2]);
    assert!(
        coredns.contains(&format!("clusterIP: {dns}")),
        "kind/coredns.yaml's Service must be at {dns}"
    );
}
