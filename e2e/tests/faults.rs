//! Faults on a running local cluster, each asserting what survived: every
//! component killed in turn (SIGKILL, and SIGTERM for etcd) is restarted by the supervisor, acknowledged writes are still
//! there, a chapter then passes, `sa-lab status` shows the restart and how
//! the process ended, and `down` leaves nothing behind. A component that
//! keeps crashing is given up on and reported, and a chapter run says so at
//! once instead of waiting.
//!
//! Restarts are awaited through the supervisor's status file (polled with a
//! deadline), never by sleeping.

mod common;

use std::collections::BTreeMap;

use common::{
    Down, TestCluster, assert_gone, component, eventually, require_binaries, sa_lab, stderr, stdout,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sa_lab::local::{self, ClusterInfo, ComponentStatus};

/// Sends `signal` to component `name` and waits until the supervisor has
/// started a new process for it.
async fn kill_and_await_restart(info: &ClusterInfo, name: &str, signal: Signal) -> ComponentStatus {
    let before = component(info, name);
    let pid = before.pid.expect("a pid");
    assert!(before.running, "{name} runs before the fault: {before:?}");
    kill(Pid::from_raw(pid as i32), signal).unwrap();
    let what = format!("{name} restarted after {signal}");
    eventually(60, &what, || async {
        let now = component(info, name);
        now.running && now.pid != Some(pid) && now.restarts == before.restarts + 1
    })
    .await;
    component(info, name)
}

fn run_chapter_01(info: &ClusterInfo) -> assert_cmd::assert::Assert {
    sa_lab(
        &["run", "01", "--name", &info.name],
        &[("SA_LAB_QUIET", "0")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_killed_in_turn_comes_back_and_a_chapter_passes() {
    let c = TestCluster::start("faults").await;
    let info = c.info.clone();
    let client = c.client().await;

    // An acknowledged write, before any fault.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let data = BTreeMap::from([("written".to_string(), "before the faults".to_string())]);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("durable".into()),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let faults = [
        ("etcd", Signal::SIGTERM),
        ("etcd", Signal::SIGKILL),
        ("kube-apiserver", Signal::SIGKILL),
        ("kube-controller-manager", Signal::SIGKILL),
        ("kube-scheduler", Signal::SIGKILL),
        ("sandbox-node", Signal::SIGKILL),
    ];
    for (name, signal) in faults {
        let after = kill_and_await_restart(&info, name, signal).await;
        let how = after.last_exit.clone().unwrap_or_default();
        // SIGTERM: a clean exit (status 0) or death by the signal, as the
        // program chooses; SIGKILL: always the signal.
        match signal {
            Signal::SIGKILL => assert_eq!(how, "signal: 9 (SIGKILL)", "{name}"),
            _ => assert!(
                how == "exit status: 0" || how.contains("SIGTERM"),
                "{name}: {how}"
            ),
        }
        // What `sa-lab run` waits for: every component up, /readyz.
        local::await_whole(&info, &client)
            .await
            .unwrap_or_else(|e| panic!("after {signal} of {name}: {e}"));
        // The write survived.
        let got = cms.get("durable").await.unwrap();
        assert_eq!(got.data.as_ref(), Some(&data), "after {signal} of {name}");
        // A chapter passes on the healed cluster.
        let out = run_chapter_01(&info);
        let code = out.get_output().status.code();
        assert_eq!(
            code,
            Some(0),
            "chapter 01 after {signal} of {name}:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // `sa-lab status` shows each restart and how the process ended.
    let health = local::health(&info.name).await.unwrap();
    assert!(health.healthy, "{}", health.render());
    let restarts: BTreeMap<&str, u32> = health
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.restarts))
        .collect();
    assert_eq!(
        restarts,
        BTreeMap::from([
            ("etcd", 2),
            ("kube-apiserver", 1),
            ("kube-controller-manager", 1),
            ("kube-scheduler", 1),
            ("sandbox-node", 1),
        ])
    );
    let out = sa_lab(&["status", "--name", &info.name], &[]).success();
    let text = stdout(&out);
    assert!(text.contains("LAST EXIT"), "{text}");
    assert_eq!(
        text.matches("signal: 9 (SIGKILL)").count(),
        5,
        "every component's last exit was a SIGKILL: {text}"
    );

    drop(c); // sa-lab down
    assert_gone(&info);
}

/// The API server killed while `sa-lab run` runs a chapter: the run waits
/// for it to come back and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_killed_during_a_chapter_run_still_passes() {
    let c = TestCluster::start("midrun").await;
    let info = c.info.clone();
    let client = c.client().await;
    let run = common::sa_lab_cmd()
        .args(["run", "01", "--name", &info.name])
        .env("SA_LAB_QUIET", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The chapter has begun once its namespace exists.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually(60, "chapter 01's namespace", || async {
        namespaces
            .get_opt("production")
            .await
            .is_ok_and(|n| n.is_some())
    })
    .await;
    kill_and_await_restart(&info, "kube-apiserver", Signal::SIGKILL).await;
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "chapter 01:\n{so}\n{se}");
    drop(c);
    assert_gone(&info);
}

/// A component that crashes again each time it is started is given up on
/// after a few quick restarts, reported with its log tail in `status`, and
/// `sa-lab run` says so at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_keeps_crashing_is_given_up_on_and_reported() {
    require_binaries();
    // The cluster's binaries are links to the real ones, so one can be
    // swapped for a crashing program once the cluster runs. `up` runs as a
    // command, so only it sees the changed SA_LAB_K8S_BIN.
    let real = sa_lab::binaries::find().unwrap();
    let fake = tempfile::tempdir().unwrap();
    for b in sa_lab::binaries::REQUIRED {
        std::os::unix::fs::symlink(real.join(b), fake.path().join(b)).unwrap();
    }
    let name = common::unique("t-giveup");
    let down = Down(name.clone());
    sa_lab(
        &["up", "--name", &name],
        &[("SA_LAB_K8S_BIN", fake.path().to_str().unwrap())],
    )
    .success();
    let info = local::load(&name).unwrap();
    assert_eq!(
        info.bin_dir,
        fake.path(),
        "the cluster runs the linked binaries"
    );
    let sched = fake.path().join("kube-scheduler");
    std::fs::remove_file(&sched).unwrap();
    std::fs::write(
        &sched,
        "#!/bin/sh\necho 'E1130 simulated crash loop: cannot start' >&2\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&sched, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid = component(&info, "kube-scheduler").pid.unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    eventually(
        60,
        "the supervisor to give up on kube-scheduler",
        || async { component(&info, "kube-scheduler").gave_up },
    )
    .await;
    let s = component(&info, "kube-scheduler");
    assert_eq!(s.last_exit.as_deref(), Some("exit status: 7"));
    assert_eq!(s.restarts, local::RestartPolicy::DEFAULT.burst as u32);

    let out = sa_lab(&["status", "--name", &name], &[]).code(1);
    let text = stdout(&out);
    assert!(text.contains("degraded"), "{text}");
    assert!(
        text.contains("kept crashing, given up after 5 restarts"),
        "{text}"
    );
    assert!(text.contains("simulated crash loop"), "log tail: {text}");

    let out = run_chapter_01(&info).code(2);
    let err = stderr(&out);
    assert!(err.contains("kube-scheduler of cluster"), "{err}");
    assert!(err.contains("keeps crashing"), "{err}");
    assert!(err.contains("simulated crash loop"), "{err}");

    drop(down);
    assert_gone(&info);
}
