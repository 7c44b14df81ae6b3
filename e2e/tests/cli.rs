//! The sa-lab CLI as a learner uses it: run, tour, and the errors they meet.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::assert::OutputAssertExt as _;
use common::{TestCluster, processes_mentioning, sa_lab, sa_lab_cmd, stderr, stdout};
use predicates::str::contains;

#[test]
fn unknown_chapter_lists_the_real_ones() {
    let out = sa_lab(&["run", "42"], &[]).code(2);
    let err = stderr(&out);
    assert!(err.contains("unknown chapter \"42\""), "{err}");
    for slug in [
        "01-identity",
        "02-token-mount",
        "03-rolebinding",
        "04-default-sa",
        "05-automount",
        "06-token-request",
        "07-legacy-tokens",
        "08-audit",
    ] {
        assert!(err.contains(slug), "the error must list {slug}: {err}");
    }
    // Twin: a real chapter name is accepted by `list`.
    sa_lab(&["list"], &[])
        .success()
        .stdout(contains("03-rolebinding"));
}

#[test]
fn an_unreachable_cluster_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    // A kubeconfig pointing at a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\ncurrent-context: gone\n"
        ),
    )
    .unwrap();
    let out = sa_lab(
        &[
            "run",
            "01",
            "--provider",
            "current",
            "--image",
            "example.invalid/sa-lab-labs:0.1.0",
        ],
        &[("KUBECONFIG", kc.to_str().unwrap())],
    )
    .code(2);
    let err = stderr(&out);
    assert!(err.contains("no cluster reachable"), "{err}");
    assert!(
        err.contains("context gone"),
        "the error must name the cluster: {err}"
    );
}

#[tokio::test]
async fn run_prints_json_rows_and_reruns_safely() {
    let c = TestCluster::start("cli-run").await;
    let name = c.info.name.clone();
    for _ in 0..2 {
        let out = sa_lab(&["run", "04", "-o", "json", "--name", &name], &[]).success();
        let v: serde_json::Value =
            serde_json::from_slice(&out.get_output().stdout).expect("JSON on stdout");
        let rows = v["rows"].as_array().expect("rows");
        assert!(!rows.is_empty());
        for row in rows {
            for field in [
                "verb",
                "group",
                "resource",
                "subresource",
                "namespace",
                "name",
                "expected",
                "actual",
                "status",
                "message",
            ] {
                assert!(row.get(field).is_some(), "row lacks {field}: {row}");
            }
        }
        // Both outcomes appear: the table is not all-allowed or all-forbidden.
        let actual: Vec<&str> = rows.iter().filter_map(|r| r["actual"].as_str()).collect();
        assert!(
            actual.contains(&"allowed") && actual.contains(&"forbidden"),
            "{actual:?}"
        );
    }
    // The table form shows expected and actual columns.
    let out = sa_lab(&["run", "default-sa", "--name", &name], &[]).success();
    let table = stdout(&out);
    assert!(
        table.contains("expected") && table.contains("actual"),
        "{table}"
    );
}

#[test]
fn tour_runs_every_chapter_and_tears_down() {
    common::require_binaries();
    let out = sa_lab(&["tour", "-o", "json"], &[]).success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("JSON");
    assert_eq!(v["passed"], true);
    let chapters = v["chapters"].as_array().unwrap();
    assert_eq!(chapters.len(), 8);
    for ch in chapters {
        assert_eq!(ch["passed"], true, "{}", ch["chapter"]);
        assert_eq!(ch["mismatches"], 0);
    }
    let cluster = v["cluster"].as_str().unwrap();
    assert!(
        !sa_lab::paths::cluster_dir(cluster).exists(),
        "tour must remove its cluster"
    );
    assert!(processes_mentioning(&format!("clusters/{cluster}/")).is_empty());
}

#[test]
fn ctrl_c_during_the_tour_tears_the_cluster_down() {
    common::require_binaries();
    let mut child = sa_lab_cmd()
        .args(["tour"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cluster = format!("tour-{}", child.id());
    // Wait until the tour's cluster is up (its status file says ready).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = sa_lab::local::read_status(&sa_lab::paths::cluster_dir(&cluster))
            .is_some_and(|s| s.ready);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "tour cluster never became ready");
        assert!(child.try_wait().unwrap().is_none(), "tour exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Twin: while the tour runs, its processes exist.
    assert!(!processes_mentioning(&format!("clusters/{cluster}/")).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "an interrupted tour must not report success"
    );
    assert!(
        !sa_lab::paths::cluster_dir(&cluster).exists(),
        "state removed"
    );
    let left = processes_mentioning(&format!("clusters/{cluster}/"));
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
}

#[test]
fn ctrl_c_during_up_leaves_nothing_half_made() {
    common::require_binaries();
    let name = common::unique("intr");
    let child = sa_lab_cmd()
        .args(["up", "--name", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = sa_lab::paths::cluster_dir(&name);
    // Wait until the supervisor has started components (past PKI generation).
    let deadline = Instant::now() + Duration::from_secs(60);
    while sa_lab::local::read_status(&dir).is_none_or(|s| s.components.is_empty()) {
        assert!(Instant::now() < deadline, "up never started its components");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    child
        .wait_with_output()
        .unwrap()
        .assert()
        .code(2)
        .stderr(contains("interrupted (Ctrl-C) while starting"));
    assert!(!dir.exists(), "half-made state removed");
    let left = processes_mentioning(&format!("clusters/{name}/"));
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[tokio::test]
async fn a_lab_pod_that_never_starts_shows_its_events() {
    let c = TestCluster::start("cli-pending").await;
    let name = c.info.name.clone();
    // No node will take the Pod: it stays Pending, unscheduled.
    c.kubectl_ok(&["cordon", "sandbox-node"]);
    let out = sa_lab(&["run", "01", "--name", &name, "--timeout", "5"], &[]).code(2);
    let err = stderr(&out);
    assert!(err.contains("did not finish within 5s"), "{err}");
    assert!(err.contains("(not scheduled)"), "{err}");
    assert!(
        err.contains("FailedScheduling"),
        "the events must be shown: {err}"
    );
    // Twin: once the node takes Pods again, the same chapter passes.
    c.kubectl_ok(&["uncordon", "sandbox-node"]);
    sa_lab(&["run", "01", "--name", &name], &[]).success();
}

#[tokio::test]
async fn credentials_without_permissions_are_refused_clearly() {
    let c = TestCluster::start("cli-noperm").await;
    let tmp = tempfile::tempdir().unwrap();
    // A learner whose kubeconfig holds a ServiceAccount token with no rights:
    // it cannot create namespaces, nor check the cluster's RBAC.
    c.kubectl_ok(&["create", "serviceaccount", "learner", "-n", "default"]);
    let token = c.kubectl_ok(&["create", "token", "learner", "-n", "default"]);
    let ca = std::fs::read_to_string(c.info.pki_dir().join("ca.crt")).unwrap();
    let ca_path = tmp.path().join("ca.crt");
    std::fs::write(&ca_path, ca).unwrap();
    let kc = tmp.path().join("learner.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: learner\n  user:\n    token: {}\ncontexts:\n- name: learner\n  context:\n    cluster: c\n    user: learner\ncurrent-context: learner\n",
            c.info.server,
            ca_path.display(),
            token.trim()
        ),
    )
    .unwrap();
    let out = sa_lab(
        &["run", "01", "--provider", "current"],
        &[("KUBECONFIG", kc.to_str().unwrap())],
    )
    .code(2);
    let err = stderr(&out);
    assert!(err.contains("refusing to teach on this cluster"), "{err}");
    assert!(
        err.contains("cluster admin"),
        "must say whose credentials are needed: {err}"
    );
    assert!(
        !err.contains(token.trim()),
        "the token must never be printed"
    );
    // Twin: the admin kubeconfig of the same cluster, as `current`, runs it.
    sa_lab(
        &["run", "01", "--provider", "current"],
        &[("KUBECONFIG", c.info.kubeconfig.to_str().unwrap())],
    )
    .success();
}
