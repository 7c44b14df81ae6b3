//! The kubelet node (issue 12): the real kubelet, containerd, runc, CNI and
//! kube-proxy run lab Pods. Each test starts its own local cluster with
//! `--node kubelet` (as root; one at a time per host: they wait for the
//! host lock), runs Pods in it and stops it.
//!
//! - the kubelet, not sa-lab, fills and refreshes the Pod's token;
//! - the kubelet hears of a container's exit from containerd's events
//!   (`EventedPLEG`), or only lists containers with the generic PLEG;
//! - Pod traffic stays on this host (a network namespace made for the test,
//!   behind a veth, stands for "outside").
//!
//! That nothing is left behind is e2e/tests/kubelet_cycles.rs.

mod common;
mod pod_kit;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestCluster, eventually};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use pod_kit::{create, make_ns, report, run_to_end, toolbox_pod, wait_running};
use sa_lab::kubelet::Pleg;
use serde_json::{Value, json};

// ---------------------------------------------------------------- helpers

/// The payload of a JWT, decoded.
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("running ip");
    assert!(st.success(), "ip {args:?} failed");
}

// ------------------------------------------------------------------ tests

/// The Node is the real kubelet's, and the kubelet (not sa-lab) requests,
/// writes and refreshes the Pod's projected token. Takes about 8 minutes:
/// the kubelet refreshes a token at 80% of its lifetime, and the API server
/// grants no token shorter than 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_fills_and_refreshes_the_token() {
    if !common::kubelet_node_possible() {
        return;
    }
    let c = TestCluster::start_kubelet("kl-token").await;
    let client = c.client().await;
    let k = c.info.kubelet.clone().expect("a kubelet-node cluster");

    let node = Api::<Node>::all(client.clone())
        .get(sa_lab::kubelet::NODE_NAME)
        .await
        .expect("the kubelet registered its Node");
    let info = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.clone())
        .unwrap();
    assert_eq!(info.kubelet_version, sa_lab::KUBERNETES_VERSION);
    assert!(
        info.container_runtime_version
            .starts_with("containerd://2."),
        "{}",
        info.container_runtime_version
    );
    let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == k.net.node_ip.to_string()),
        "{addresses:?}"
    );

    let ns = make_ns(&client, "kl-token").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // What the kubelet gives a container: the Service's ClusterIP, not the
    // API server's own address.
    let env = run_to_end(&pods, toolbox_pod("env", &["env"]), 60).await;
    let env = report(&env);
    assert_eq!(
        env["KUBERNETES_SERVICE_HOST"],
        k.net.kubernetes_service_ip().to_string()
    );
    assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");

    // A Pod with a short-lived projected token beside kube-api-access.
    let mut pod = toolbox_pod("refresh", &["sleep", "900"]);
    pod["spec"]["volumes"] = json!([{
        "name": "short",
        "projected": {"sources": [{"serviceAccountToken": {
            "path": "token", "expirationSeconds": 600, "audience": "sa-lab-test"
        }}]},
    }]);
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "short", "mountPath": "/var/run/secrets/short"}]);
    create(&pods, pod).await;
    let running = wait_running(&pods, "refresh", 60).await;
    let uid = running.metadata.uid.clone().unwrap();

    // The volume lives in the kubelet's own directory, written by it (no
    // sandbox node runs in this cluster).
    let dir = PathBuf::from(format!(
        "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected/short"
    ));
    let first = std::fs::read_to_string(dir.join("token")).expect("the kubelet wrote the token");
    assert!(
        std::fs::read_link(dir.join("token")).is_ok_and(|t| t == Path::new("..data/token")),
        "the kubelet's atomic writer links token -> ..data/token"
    );
    let c1 = claims(&first);
    assert_eq!(c1["aud"], json!(["sa-lab-test"]));
    assert_eq!(c1["kubernetes.io"]["pod"]["uid"], uid.as_str());
    // Bound to the Pod and to the Node it runs on.
    assert_eq!(
        c1["kubernetes.io"]["node"]["name"],
        sa_lab::kubelet::NODE_NAME
    );
    let ttl = c1["exp"].as_i64().unwrap() - c1["iat"].as_i64().unwrap();
    assert_eq!(ttl, 600, "{c1}");

    // The kubelet refreshes it after 80% of its life (480 s).
    eventually(600, "the kubelet to refresh the token", || async {
        std::fs::read_to_string(dir.join("token")).is_ok_and(|t| t != first)
    })
    .await;
    let second = std::fs::read_to_string(dir.join("token")).unwrap();
    let c2 = claims(&second);
    assert!(c2["iat"].as_i64() > c1["iat"].as_i64(), "{c1} then {c2}");
    assert_eq!(c2["kubernetes.io"]["pod"]["uid"], uid.as_str());
}

/// The kubelet's count of container events it took from containerd's stream
/// (the `EventedPLEG` watcher's latency histogram), read from its metrics
/// through the API server; 0 when the histogram has no samples or is absent.
async fn container_events_heard(client: &kube::Client) -> u64 {
    let path = format!("/api/v1/nodes/{}/proxy/metrics", sa_lab::kubelet::NODE_NAME);
    let req = http::Request::get(&path).body(Vec::new()).unwrap();
    let text = client
        .request_text(req)
        .await
        .expect("the kubelet's metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("kubelet_evented_pleg_connection_latency_seconds_count "))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// How the kubelet learns that a container exited. By default from
/// containerd's event stream (the `EventedPLEG` gate; the kubelet's own
/// metrics show it took events); the twin, `SA_LAB_KUBELET_PLEG=generic`,
/// the kubelet as kind runs it, only lists containers (no events taken).
/// A Pod runs to `Succeeded` either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_hears_container_exits_from_containerd() {
    if !common::kubelet_node_possible() {
        return;
    }
    for pleg in [Pleg::Evented, Pleg::Generic] {
        let c = TestCluster::start_kubelet_with(&format!("kl-{}", pleg.as_str()), Some(pleg)).await;
        let client = c.client().await;
        let ns = make_ns(&client, "kl-pleg").await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let done = run_to_end(&pods, toolbox_pod("exits", &["exit", "0"]), 60).await;
        let phase = done.status.and_then(|s| s.phase);
        assert_eq!(phase.as_deref(), Some("Succeeded"), "{pleg:?}");
        let heard = container_events_heard(&client).await;
        match pleg {
            Pleg::Evented => assert!(heard > 0, "no container event reached the kubelet"),
            Pleg::Generic => assert_eq!(heard, 0, "the generic PLEG took events"),
        }
    }
}

/// Pods reach the API server through the kubernetes Service, and nothing
/// else: not another port of this host, not an address outside it. (And a
/// second kubelet node is refused while this one runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_stays_on_this_host() {
    if !common::kubelet_node_possible() {
        return;
    }
    let c = TestCluster::start_kubelet("kl-egress").await;
    let client = c.client().await;
    let k = c.info.kubelet.clone().unwrap();

    // One kubelet node per host: the supervisor holds the host lock for the
    // cluster's life, so a second `up` is refused, naming this cluster.
    let other = common::unique("t-kl-second");
    let out = common::sa_lab(&["up", "--node", "kubelet", "--name", &other], &[]).failure();
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!(
            "the kubelet node of cluster {:?} is running",
            c.info.name
        )),
        "{err}"
    );
    assert!(
        !sa_lab::paths::cluster_dir(&other).exists(),
        "nothing half-made is left"
    );

    // While the cluster runs: the Service CIDR fails closed, the bridge
    // forwards nothing.
    let out = Command::new("ip")
        .args([
            "route",
            "show",
            "type",
            "unreachable",
            &k.net.service_cidr.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        !out.stdout.is_empty(),
        "an unreachable route for the Service CIDR"
    );
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/conf/sa-lab0/forwarding").unwrap();
    assert_eq!(fwd.trim(), "0");

    // "Outside": a network made for this test. Whatever is routed there
    // shows in the counters of its link.
    let outside = Outside::new("sal-egress0", "sal-outside", "198.51.100.0/24");
    let before = outside.tx_packets();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.send_to(b"host", "198.51.100.1:9").unwrap();
    eventually(5, "the host's own packet to be counted", || async {
        outside.tx_packets() > before
    })
    .await;
    let counted = outside.tx_packets();

    let ns = make_ns(&client, "kl-egress").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let connect = async |name: &str, addr: String| {
        let p = run_to_end(&pods, toolbox_pod(name, &["connect", &addr]), 60).await;
        report(&p)["connect"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // Allowed twin: the API server, through the Service.
    let api = format!("{}:443", k.net.kubernetes_service_ip());
    assert_eq!(connect("api", api).await, "connected");
    // Outside the host: no route out, nothing leaves.
    let out = connect("outside", "198.51.100.1:80".into()).await;
    assert_ne!(out, "connected");
    assert_eq!(outside.tx_packets(), counted, "a Pod's packet went outside");
    // Another service of this host on the same address (the kubelet's port).
    let kubelet = format!("{}:{}", k.net.node_ip, c.info.kubelet_port);
    assert_ne!(connect("kubelet", kubelet).await, "connected");
}

/// "Outside the host": a network namespace of the test's own at the end of
/// a veth pair, with 198.51.100.0/24 (TEST-NET-2) routed into it. (This
/// kernel has no dummy interfaces; a veth into an empty namespace stands in,
/// and is closer to a real outside network.) Removed on drop.
struct Outside {
    link: String,
    netns: String,
}

impl Outside {
    fn new(link: &str, netns: &str, route: &str) -> Outside {
        let peer = format!("{link}p");
        // What an earlier run may have left (usually nothing: quietly).
        for args in [["link", "del", link], ["netns", "del", netns]] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
        ip(&["netns", "add", netns]);
        let o = Outside {
            link: link.to_string(),
            netns: netns.to_string(),
        };
        ip(&["link", "add", link, "type", "veth", "peer", "name", &peer]);
        // No IPv6 on the link: its autoconfiguration chatter would count.
        for dev in [link, peer.as_str()] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1").unwrap();
        }
        ip(&["link", "set", &peer, "netns", netns]);
        ip(&["-n", netns, "addr", "add", "198.51.100.1/24", "dev", &peer]);
        ip(&["-n", netns, "link", "set", &peer, "up"]);
        ip(&["link", "set", link, "up"]);
        ip(&["route", "add", route, "dev", link]);
        o
    }

    /// Packets the host sent towards the outside (ARP included). The
    /// outside's address is 198.51.100.1.
    fn tx_packets(&self) -> u64 {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/tx_packets",
            self.link
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Without root, `up --node kubelet` is refused before anything is built
/// or made, saying why and what to use instead.
#[test]
fn without_root_the_kubelet_node_is_refused_clearly() {
    if !common::kubelet_node_possible() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    let out = common::sa_lab_cmd()
        .args(["up", "--node", "kubelet", "--name", "not-root"])
        .uid(65534)
        .gid(65534)
        .env("HOME", home.path())
        .env("SA_LAB_HOME", &state)
        .output()
        .expect("sa-lab up as nobody");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the kubelet node needs root (running as uid 65534)"),
        "{err}"
    );
    assert!(err.contains("use the sandbox node (`sa-lab up`)"), "{err}");
    assert!(!state.exists(), "nothing made");
}
