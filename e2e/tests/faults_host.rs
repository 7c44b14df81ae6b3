//! Faults of the host around a running local cluster, each asserting what
//! survived and that nothing leaks (no process of the cluster, no port it
//! listened on, no mount, no state directory):
//!
//! - its state directory deleted, or its files corrupted, under it;
//! - the disk full where the sandbox node writes a Pod's volumes;
//! - a port `up` chose taken by another program before the component that
//!   was to bind it started;
//! - the node's wall clock jumping forward past a token's refresh time.
//!
//! Each waits for what it needs with a deadline (the supervisor's status,
//! a file, a watch), never by sleeping.

mod common;
mod pod_kit;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::{
    Down, assert_gone, component, eventually, mounts_under, processes_mentioning, processes_of,
    require_binaries, sa_lab, sa_lab_cmd, stderr, stdout, unique,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use sa_lab::local::{self, ClusterInfo, UpOptions};

/// Starts a sandbox-node cluster in-process; stopped by the returned guard.
async fn start(prefix: &str) -> (ClusterInfo, Down) {
    require_binaries();
    let name = unique(prefix);
    let down = Down(name.clone());
    let info = local::up(&UpOptions {
        name,
        node: Some(sa_lab::kubelet::NodeKind::Sandbox),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("sa-lab up: {e}"));
    (info, down)
}

/// The live supervisors of the cluster, by command line.
fn supervisors(name: &str) -> Vec<(u32, String)> {
    processes_mentioning(&format!("supervise --name {name} "))
}

fn run_chapter_01(name: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut args = vec!["run", "01", "--name", name];
    args.extend_from_slice(extra);
    sa_lab(&args, &[("SA_LAB_QUIET", "0")])
}

fn output(a: &assert_cmd::assert::Assert) -> String {
    format!("{}\n{}", stdout(a), stderr(a))
}

/// The state directory removed under a running cluster: `status` and `run`
/// say the cluster still runs and that `down` stops it (neither starts a
/// second cluster beside it), `up` refuses, and `down` stops every process
/// and frees every port without a single state file to go by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_deleted_under_a_running_cluster() {
    let (info, down) = start("t-gone").await;
    let name = info.name.clone();
    let sup = local::running_pid(&name).expect("a supervisor");
    // Files may appear while it goes (a component writing): try again.
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir_all(&info.dir) {
        tries += 1;
        assert!(tries < 10, "removing {}: {e}", info.dir.display());
    }
    let says_what_to_do = |text: &str| {
        assert!(
            text.contains(&format!("still runs (supervisor pid {sup})"))
                && text.contains("is gone")
                && text.contains(&format!("sa-lab down --name {name}")),
            "{text}"
        );
    };

    let out = sa_lab(&["status", "--name", &name], &[]).code(2);
    says_what_to_do(&stderr(&out));
    let out = run_chapter_01(&name, &[]).code(2);
    says_what_to_do(&stderr(&out));
    let out = sa_lab(&["up", "--name", &name], &[]).code(2);
    assert!(stderr(&out).contains("already running"), "{}", output(&out));
    assert_eq!(
        supervisors(&name).len(),
        1,
        "no second cluster: {:?}",
        supervisors(&name)
    );

    sa_lab(&["down", "--name", &name], &[]).success();
    down.disarm();
    assert_gone(&info);
    assert!(supervisors(&name).is_empty());
}

/// Corrupted state files under a running cluster: a garbage `status.json`
/// is written again by the supervisor and waited for (not reported as "not
/// running", and not taken as leave to start a second cluster over the
/// first); a garbage or truncated admin kubeconfig is written again from
/// the cluster's certificates; a garbage `cluster.json` is an error that
/// says to run `down`, which stops everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_state_files_heal_or_say_what_to_do() {
    let (info, down) = start("t-corrupt").await;
    let name = info.name.clone();
    let sup = local::running_pid(&name).expect("a supervisor");
    let status_json = info.dir.join("status.json");

    // status.json truncated: status reports the cluster as it is.
    let text = std::fs::read(&status_json).unwrap();
    std::fs::write(&status_json, &text[..text.len() / 2]).unwrap();
    let out = sa_lab(&["status", "--name", &name], &[]).success();
    let report = stdout(&out);
    assert!(report.contains(": ready"), "{report}");

    // status.json garbage: a chapter runs on this cluster, no other.
    std::fs::write(&status_json, b"\x00garbage").unwrap();
    let out = run_chapter_01(&name, &[]);
    assert_eq!(out.get_output().status.code(), Some(0), "{}", output(&out));
    assert_eq!(local::running_pid(&name), Some(sup), "the same supervisor");
    assert_eq!(supervisors(&name).len(), 1, "{:?}", supervisors(&name));

    // The admin kubeconfig garbage, then truncated: written again.
    let kubeconfig = std::fs::read(&info.kubeconfig).unwrap();
    std::fs::write(&info.kubeconfig, b"garbage: [\n").unwrap();
    let out = run_chapter_01(&name, &[]);
    assert_eq!(out.get_output().status.code(), Some(0), "{}", output(&out));
    assert!(
        stderr(&out).contains("wrote it again from the cluster's certificates"),
        "{}",
        output(&out)
    );
    assert_eq!(std::fs::read(&info.kubeconfig).unwrap(), kubeconfig);
    std::fs::write(&info.kubeconfig, &kubeconfig[..kubeconfig.len() / 2]).unwrap();
    let out = sa_lab(&["status", "--name", &name], &[]).success();
    assert!(stdout(&out).contains(": ready"), "{}", output(&out));
    assert_eq!(std::fs::read(&info.kubeconfig).unwrap(), kubeconfig);

    // cluster.json garbage: what to do, and no second cluster.
    std::fs::write(info.dir.join("cluster.json"), b"{\"name\": ").unwrap();
    let advice = format!("stop and remove the cluster with `sa-lab down --name {name}`");
    let out = sa_lab(&["status", "--name", &name], &[]).code(2);
    assert!(stderr(&out).contains(&advice), "{}", output(&out));
    let out = run_chapter_01(&name, &[]).code(2);
    assert!(stderr(&out).contains(&advice), "{}", output(&out));
    assert_eq!(supervisors(&name).len(), 1, "{:?}", supervisors(&name));

    sa_lab(&["down", "--name", &name], &[]).success();
    down.disarm();
    assert_gone(&info);
}

/// A small tmpfs mounted over a directory, unmounted on drop (also when
/// the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(at).unwrap();
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs at {} (needs root): {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    /// Fills it with one file until the disk is full; returns the file.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return path,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use nix::mount::{MntFlags, umount2};
        if umount2(&self.0, MntFlags::empty()).is_err() {
            // Busy (a Pod's process still there): detach it now, it goes
            // when the last user does.
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// Every `..<timestamp>` payload dir of every volume under `pods` that is
/// not the one its `..data` link points at: what a failed write left.
fn stray_payloads(pods: &Path) -> Vec<PathBuf> {
    let mut stray = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for pod in dirs(pods) {
        for vol in dirs(&pod.join("volumes")) {
            let current = std::fs::read_link(vol.join("..data")).ok();
            for entry in dirs(&vol) {
                let file = entry.file_name().unwrap().to_string_lossy().into_owned();
                let is_payload = file.starts_with("..") && file != "..data";
                if is_payload && current.as_deref() != Some(Path::new(&file)) {
                    stray.push(entry);
                }
            }
        }
    }
    stray
}

/// The disk where the sandbox node writes Pods' volumes (projected token,
/// ca.crt, namespace) is full: the chapter run fails, naming the full disk
/// and the volume, without a panic or a hang; once space is freed the
/// chapter passes; failed writes left nothing behind, and neither does
/// the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_a_chapter_clearly_and_it_passes_once_freed() {
    let (info, down) = start("t-diskfull").await;
    let name = info.name.clone();
    let pods = info.dir.join("node/pods");
    let disk = Tmpfs::mount(&pods, "256k");
    let filler = disk.fill();

    let out = run_chapter_01(&name, &["--timeout", "20"]);
    let text = output(&out);
    eprintln!("chapter 01 on a full disk:\n{text}");
    assert_ne!(out.get_output().status.code(), Some(0), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("FailedMount")
            && text.contains("No space left on device")
            && text.contains(&pods.display().to_string()),
        "the run names the full disk and where: {text}"
    );
    assert_eq!(component(&info, "sandbox-node").restarts, 0, "no crash");

    std::fs::remove_file(&filler).unwrap();
    let out = run_chapter_01(&name, &[]);
    assert_eq!(
        out.get_output().status.code(),
        Some(0),
        "after freeing space: {}",
        output(&out)
    );
    let stray = stray_payloads(&pods);
    assert!(stray.is_empty(), "half-written payloads left: {stray:?}");

    drop(disk);
    assert!(mounts_under(&info.dir).is_empty());
    drop(down);
    assert_gone(&info);
}

/// Another program takes the port `up` chose for the sandbox node (its
/// container-log port) after `up` chose it and before the node binds it:
/// the node exits naming the port, `up` says so and retries with new
/// ports, and the cluster that results is whole, with one process per
/// component and nothing of the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_before_the_node_binds_it_makes_up_retry_with_new_ports() {
    require_binaries();
    let name = unique("t-portrace");
    let down = Down(name.clone());
    let dir = sa_lab::paths::cluster_dir(&name);
    let up = sa_lab_cmd()
        .args(["up", "--name", &name])
        .env("SA_LAB_QUIET", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `up` writes the chosen ports to cluster.json before it starts the
    // supervisor; the node starts once the API server is ready. Take its
    // port in between.
    let mut thief: Option<(u16, TcpListener)> = None;
    eventually(60, "cluster.json with the chosen ports", || {
        let found = local::load(&name).ok().map(|i| i.kubelet_port);
        if let Some(port) = found {
            let l = TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("taking port {port} before the node: {e}"));
            thief = Some((port, l));
        }
        async move { found.is_some() }
    })
    .await;
    let (stolen, _held) = thief.unwrap();
    let out = tokio::task::spawn_blocking(move || up.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("up, port {stolen} taken:\n{err}");
    assert!(out.status.success(), "up: {err}");
    assert!(
        err.contains(&format!(
            "port {stolen}, chosen for sandbox-node, was taken by another program"
        )) && err.contains("retrying with new ports (attempt 2)"),
        "{err}"
    );

    let info = local::load(&name).unwrap();
    assert!(!info.ports().contains(&stolen), "{:?}", info.ports());
    let health = local::health(&name).await.unwrap();
    assert!(health.healthy, "{}", health.render());
    assert!(local::port_listening(info.kubelet_port), "the node serves");
    // One process per component (each names the state directory), one
    // supervisor: nothing of the first attempt.
    let procs = processes_of(&info);
    assert_eq!(procs.len(), 6, "{procs:#?}");
    assert_eq!(supervisors(&name).len(), 1);

    drop(down);
    assert_gone(&info);
    assert!(!dir.exists());
}

/// libfaketime (Debian's `faketime` package): it moves the clock of the
/// programs it is preloaded into (the Rust ones; Go reads the clock without
/// libc, so etcd and the control plane keep the real time).
fn faketime_lib() -> PathBuf {
    let lib = std::env::var_os("SA_LAB_FAKETIME_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1".into());
    assert!(
        lib.is_file(),
        "{} is missing: `apt-get install faketime`, or set SA_LAB_FAKETIME_LIB",
        lib.display()
    );
    lib
}

/// The Pod's projected ServiceAccount token, as the node wrote it.
fn token_file(info: &ClusterInfo, pod: &Pod) -> PathBuf {
    let uid = pod.metadata.uid.as_deref().unwrap();
    let volumes = info.dir.join("node/pods").join(uid).join("volumes");
    let vol = std::fs::read_dir(&volumes)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("kube-api-access-")
        })
        .unwrap_or_else(|| panic!("no kube-api-access volume in {}", volumes.display()));
    vol.path().join("token")
}

/// A JWT's `iat` claim.
fn issued_at(jwt: &str) -> i64 {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["iat"].as_i64().unwrap()
}

/// The node's wall clock jumps two hours forward (a suspended laptop
/// resumes, NTP steps the clock), past the 80 % refresh time of the Pod's
/// token (48 min of its 3607 s): the node refreshes the token, the API
/// server authenticates the new one as the Pod's, the node does not then
/// refresh it over and over (its clock is now ahead of the API server's),
/// and nothing crashed. Only the Rust processes' clocks move
/// (libfaketime); the monotonic clock does not, as in a real jump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jump_forward_past_the_refresh_time_refreshes_the_token() {
    require_binaries();
    let lib = faketime_lib();
    let clock = tempfile::tempdir().unwrap();
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let name = unique("t-clock");
    let down = Down(name.clone());
    sa_lab(
        &["up", "--name", &name],
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .success();
    let info = local::load(&name).unwrap();
    let node_pid = component(&info, "sandbox-node").pid.unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{node_pid}/maps")).unwrap();
    assert!(
        maps.contains("libfaketime"),
        "the node runs on the fake clock"
    );

    let client = info.client().await.unwrap();
    let ns = pod_kit::make_ns(&client, "clock").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pod_kit::create(&pods, pod_kit::toolbox_pod("sleeper", &["sleep", "3600"])).await;
    let pod = pod_kit::wait_running(&pods, "sleeper", 60).await;
    let file = token_file(&info, &pod);
    let before = std::fs::read_to_string(&file).unwrap();

    // The jump: the node's clock reads two hours later from now on.
    std::fs::write(&offset, "+7200\n").unwrap();
    let real_now = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.unwrap().as_secs() as i64
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = || async {
        let lease = leases.get_opt(&info.node_name).await.ok().flatten();
        lease
            .and_then(|l| l.spec?.renew_time)
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    };
    // The node's next lease renewal carries its new time.
    eventually(60, "a lease renewed on the node's new clock", || async {
        renewed().await > real_now() + 3600
    })
    .await;
    eventually(60, "the token refreshed after the jump", || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t != before)
    })
    .await;
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(issued_at(&after) > issued_at(&before));

    // The API server (on the real clock) authenticates it as the Pod's.
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: after.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let st = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.authenticated, Some(true), "{st:?}");
    let user = st.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:default").as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["sleeper".to_string()])
    );

    // Not refreshed again and again: two more lease renewals (10 s each)
    // pass with the same token.
    for _ in 0..2 {
        let last = renewed().await;
        eventually(60, "the next lease renewal", || async {
            renewed().await > last
        })
        .await;
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);
    let pod = pods.get("sleeper").await.unwrap();
    assert_eq!(pod_kit::phase(&pod), "Running");
    assert_eq!(component(&info, "sandbox-node").restarts, 0, "no crash");

    drop(down);
    assert_gone(&info);
}
