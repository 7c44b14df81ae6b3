//! Starting and stopping local clusters: nothing leaks, names are
//! independent, and bad input gets a clear error that leaves nothing behind.

mod common;

use common::{
    Down, TestCluster, processes_mentioning, require_binaries, sa_lab, stderr, stdout, unique,
};
use predicates::str::contains;
use sa_lab::local::{self, ClusterInfo};

/// A refused `up` left no state directory for cluster `name`.
fn assert_nothing_made(name: &str) {
    assert!(
        !sa_lab::paths::cluster_dir(name).exists(),
        "nothing half-made"
    );
}

/// Processes that belong to the cluster: its supervisor and every component
/// (their command lines name the cluster directory).
fn cluster_pids(info: &ClusterInfo) -> Vec<(u32, String)> {
    let mut found = processes_mentioning(&info.dir.display().to_string());
    found.extend(processes_mentioning(&format!(
        "supervise --name {} ",
        info.name
    )));
    found
}

fn assert_gone(info: &ClusterInfo) {
    let pids = cluster_pids(info);
    assert!(
        pids.is_empty(),
        "processes of {} still running: {pids:?}",
        info.name
    );
    for port in info.ports() {
        assert!(
            !local::port_listening(port),
            "port {port} of {} still listening",
            info.name
        );
    }
    assert!(!info.dir.exists(), "{} still exists", info.dir.display());
}

#[tokio::test]
async fn down_stops_every_process_and_frees_ports() {
    let c = TestCluster::start("down").await;
    let info = c.info.clone();
    // Twin: while up, there are processes and listening ports.
    assert!(
        cluster_pids(&info).len() >= 6,
        "supervisor + 5 components: {:?}",
        cluster_pids(&info)
    );
    assert!(local::port_listening(info.api_port));
    let health = local::health(&info.name).await.unwrap();
    assert!(health.healthy, "{}", health.render());
    drop(c); // sa-lab down
    assert_gone(&info);
}

#[tokio::test]
async fn a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = tokio::spawn(async move {
        let c = TestCluster::start("panics").await;
        tx.send(c.info.clone()).unwrap();
        panic!("deliberate panic mid-test");
    });
    let join = handle.await;
    assert!(
        join.is_err_and(|e| e.is_panic()),
        "the inner test must have panicked"
    );
    let info = rx.recv().expect("the cluster had started");
    assert_gone(&info);
}

#[tokio::test]
async fn two_named_clusters_run_side_by_side() {
    let a = TestCluster::start("side-a").await;
    let b = TestCluster::start("side-b").await;
    assert_ne!(a.info.api_port, b.info.api_port);
    for c in [&a, &b] {
        let out = c.kubectl_ok(&["get", "nodes", "-o", "name"]);
        assert_eq!(out.trim(), "node/sandbox-node");
    }
    // Namespaces are per cluster.
    a.kubectl_ok(&["create", "namespace", "only-in-a"]);
    let out = b.kubectl(&["get", "namespace", "only-in-a"]);
    assert!(
        !out.status.success(),
        "cluster b must not see a's namespace"
    );
    let info_a = a.info.clone();
    drop(a);
    assert_gone(&info_a);
    // b is unaffected.
    b.kubectl_ok(&["get", "--raw", "/readyz"]);
}

#[tokio::test]
async fn up_on_a_running_name_is_refused_and_env_prints_the_export() {
    let c = TestCluster::start("twice").await;
    let name = c.info.name.clone();
    sa_lab(&["up", "--name", &name], &[])
        .code(2)
        .stderr(contains("already running"));
    // The running cluster is untouched.
    c.kubectl_ok(&["get", "--raw", "/readyz"]);

    let out = sa_lab(&["env", "--name", &name], &[]).success();
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "export KUBECONFIG={}",
            c.info.kubeconfig.display()
        )),
        "{text}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&c.info.kubeconfig).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "kubeconfig must be private");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&c.info.dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "cluster dir must be private");

    let out = sa_lab(&["status", "--name", &name], &[]).success();
    let text = stdout(&out);
    for comp in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "sandbox-node",
    ] {
        assert!(text.contains(comp), "status lacks {comp}: {text}");
    }
}

#[test]
fn down_and_status_of_a_missing_cluster_say_so() {
    let name = unique("nope");
    for cmd in ["down", "status", "env"] {
        let out = sa_lab(&[cmd, "--name", &name], &[]).code(2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("no local cluster named {name:?}")),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("sa-lab up"),
            "{cmd} must say what to do: {err}"
        );
    }
}

#[test]
fn a_taken_port_is_refused_before_anything_starts() {
    require_binaries();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let name = unique("port");
    let out = sa_lab(&["up", "--name", &name, "--api-port", &port], &[]).code(2);
    assert!(
        stderr(&out).contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{}",
        stderr(&out)
    );
    assert_nothing_made(&name);
}

/// A node setting the environment names wrongly is refused before anything
/// starts, saying what the choices are. Twin: the same `up` with values it
/// knows (the kubelet's PLEG, which the sandbox node leaves alone) starts.
#[test]
fn a_misnamed_node_setting_is_refused_before_anything_starts() {
    require_binaries();
    for (var, value, says) in [
        (
            "SA_LAB_NODE",
            "kublet",
            "use `sandbox` (the default) or `kubelet`",
        ),
        ("SA_LAB_KUBELET_PLEG", "fast", "is neither `evented`"),
    ] {
        let name = unique("badenv");
        let out = sa_lab(&["up", "--name", &name], &[(var, value)]).code(2);
        let err = stderr(&out);
        assert!(err.contains(&format!("{var}=\"{value}\"")), "{err}");
        assert!(err.contains(says), "{err}");
        assert_nothing_made(&name);
    }
    let name = unique("goodenv");
    let down = Down(name.clone());
    sa_lab(
        &["up", "--name", &name],
        &[
            ("SA_LAB_NODE", "sandbox"),
            ("SA_LAB_KUBELET_PLEG", "generic"),
        ],
    )
    .success();
    drop(down);
}

#[test]
fn no_binaries_and_no_go_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("nogo");
    let out = sa_lab(
        &["up", "--name", &name],
        &[
            ("SA_LAB_CACHE", tmp.path().to_str().unwrap()),
            ("SA_LAB_K8S_BIN", ""),
            ("KUBEBUILDER_ASSETS", ""),
            ("PATH", "/nonexistent"),
        ],
    )
    .code(2);
    let err = stderr(&out);
    assert!(err.contains("Go is not installed"), "{err}");
    assert!(err.contains("SA_LAB_K8S_BIN"), "{err}");
    assert_nothing_made(&name);
}

/// kubectl is the learner's, not the cluster's: the tour (whose cluster is
/// gone when it ends) runs every chapter without it, while `up`, whose
/// cluster the learner goes on to use with kubectl, wants it in sa-lab's
/// own build (it would build it; with building off it says what is missing
/// and makes nothing). Twin: the same `up` with kubectl there starts.
#[test]
fn the_tour_needs_no_kubectl_but_up_does() {
    require_binaries();
    let real = sa_lab::binaries::find().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let rel = sa_lab::binaries::cache_bin_dir();
    let rel = rel.strip_prefix(sa_lab::paths::cache()).unwrap();
    let bin = cache.path().join(rel);
    std::fs::create_dir_all(&bin).unwrap();
    for b in sa_lab::binaries::REQUIRED {
        std::os::unix::fs::symlink(real.join(b), bin.join(b)).unwrap();
    }
    let envs = [
        ("SA_LAB_CACHE", cache.path().to_str().unwrap()),
        ("SA_LAB_K8S_BIN", ""),
        ("KUBEBUILDER_ASSETS", ""),
        ("SA_LAB_NO_BUILD", "1"),
    ];

    let tour = sa_lab(&["tour", "-o", "json"], &envs).success();
    let report: serde_json::Value = serde_json::from_str(&stdout(&tour)).unwrap();
    let chapters = report["chapters"].as_array().unwrap();
    assert_eq!(chapters.len(), 8, "{report}");
    assert!(
        report["passed"] == true && chapters.iter().all(|c| c["passed"] == true),
        "every chapter as expected without kubectl: {report}"
    );

    let name = unique("kubectl");
    let out = sa_lab(&["up", "--name", &name], &envs).code(2);
    let err = stderr(&out);
    assert!(err.contains("lacks kubectl"), "{err}");
    assert!(err.contains("scripts/install-k8s.sh"), "{err}");
    assert_nothing_made(&name);

    std::os::unix::fs::symlink(real.join("kubectl"), bin.join("kubectl")).unwrap();
    let down = Down(name.clone());
    sa_lab(&["up", "--name", &name], &envs)
        .success()
        .stderr(contains("is ready"));
    sa_lab(&["down", "--name", &name], &[]).success();
    down.disarm();
}

/// `up` with `component`'s binary replaced by one that fails at once:
/// the component is named, with its log tail, and everything already
/// started is stopped and removed.
fn crash_at_start(component: &str) {
    require_binaries();
    let real = sa_lab::binaries::find().unwrap();
    let fake = tempfile::tempdir().unwrap();
    for b in sa_lab::binaries::REQUIRED {
        std::os::unix::fs::symlink(real.join(b), fake.path().join(b)).unwrap();
    }
    let broken = fake.path().join(component);
    std::fs::remove_file(&broken).unwrap();
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'E0101 simulated crash: bad flag' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let name = unique("crash");
    let out = sa_lab(
        &["up", "--name", &name],
        &[("SA_LAB_K8S_BIN", fake.path().to_str().unwrap())],
    )
    .code(2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{component} failed to start")),
        "{err}"
    );
    assert!(
        err.contains("simulated crash"),
        "log tail must be shown: {err}"
    );
    assert_nothing_made(&name);
    // What started beside it is gone too.
    let leftover = processes_mentioning(&format!("clusters/{name}/"));
    assert!(leftover.is_empty(), "processes left: {leftover:?}");
}

/// A component that crashes during start-up is named, with its log tail,
/// and everything already started is stopped.
#[test]
fn a_crashing_component_is_reported_and_cleaned_up() {
    crash_at_start("kube-apiserver");
}

/// etcd starts together with kube-apiserver: when it fails, it is etcd
/// that is named, not the API server waiting for it.
#[test]
fn a_crashing_etcd_is_named_though_the_api_server_started_beside_it() {
    crash_at_start("etcd");
}
