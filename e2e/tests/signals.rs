//! Signal storms: SIGINT (to the process group, as a terminal's Ctrl-C
//! sends it) and SIGTERM (to the process, as `kill` sends it) at random
//! points of `sa-lab run`, `sa-lab tour` and `sa-lab check`, sometimes
//! followed by the other signal while the command cleans up. After each
//! interrupted command exits, nothing half-made stays, whatever point was
//! hit: the same assertion every time.
//!
//! The points are drawn from a seeded generator, one per stratum of a
//! range that covers the command's life (bring-up, apply, Pod waits), so a
//! storm hits early and late points alike. The seed is printed; set
//! `SA_LAB_FAULT_SEED` to replay a storm. The random delay before a signal
//! is the experiment's input; everything after it waits on conditions with
//! deadlines.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{TestCluster, eventually, processes_mentioning, require_binaries, sa_lab_cmd};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt as _};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sa_lab::chapters::kit::{COURSE_LABEL, COURSE_NAMESPACES};
use sa_lab::exercises::check::NAMESPACE_LABEL;

/// How long an interrupted command may take to clean up and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(180);

/// splitmix64: a tiny seeded generator whose sequence never changes, so a
/// printed seed replays the same storm.
struct Rng(u64);

impl Rng {
    /// The storm's seed (`SA_LAB_FAULT_SEED`, else fresh), mixed with the
    /// test's name so each test draws its own points; printed.
    fn for_test(test: &str) -> Rng {
        let seed = std::env::var("SA_LAB_FAULT_SEED")
            .ok()
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .expect("SA_LAB_FAULT_SEED is a number")
            })
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        eprintln!("{test}: seed {seed} (replay with SA_LAB_FAULT_SEED={seed})");
        let mut r = Rng(seed);
        for b in test.bytes() {
            r.0 ^= u64::from(b);
            r.next();
        }
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi.saturating_sub(lo)).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.next() % span)
    }

    fn signal(&mut self) -> Signal {
        if self.next() & 1 == 0 {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        }
    }
}

/// One experiment: a signal after `delay`, and maybe the other one `then`
/// later (while the command cleans up, or before it has begun to).
#[derive(Debug, Clone, Copy)]
struct Shot {
    delay: Duration,
    first: Signal,
    then: Option<(Duration, Signal)>,
}

/// `n` shots, shot `i` at a point in the `i`-th of `n` equal strata of
/// `[0, span)`, in a random order.
fn storm(rng: &mut Rng, n: u32, span: Duration) -> Vec<Shot> {
    let mut shots: Vec<Shot> = (0..n)
        .map(|i| {
            let delay = rng.between(span * i / n, span * (i + 1) / n);
            let first = rng.signal();
            let then = (rng.next() & 1 == 0).then(|| {
                let other = if first == Signal::SIGINT {
                    Signal::SIGTERM
                } else {
                    Signal::SIGINT
                };
                (rng.between(Duration::ZERO, Duration::from_secs(2)), other)
            });
            Shot { delay, first, then }
        })
        .collect();
    // Fisher-Yates, so early and late points are not taken in order.
    for i in (1..shots.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        shots.swap(i, j);
    }
    shots
}

/// SIGINT to the command's process group (Ctrl-C in a terminal), SIGTERM
/// to the process.
fn send(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32);
    let _ = match signal {
        Signal::SIGINT => killpg(pid, signal),
        _ => kill(pid, signal),
    };
}

/// How a signalled command ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Whether it exited before the first signal was due (the point drawn
    /// lay past its end: it was not interrupted).
    finished_first: bool,
    /// How long after the first signal it exited (for the log).
    after_signal: Duration,
}

impl Ended {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// How it answered `shot`: it died of the signal before it had
    /// installed a handler (nothing made yet), or caught it, cleaned up and
    /// said so; or it had its verdict already (the signal landed after it:
    /// in a check's final clean-up, which signals do not cut short, or
    /// while a run or a tour printed it) and finished. Anything else fails.
    fn answer(&self, shot: &Shot, what: &str) -> Answer {
        let name = if shot.first == Signal::SIGINT {
            "interrupted (Ctrl-C)"
        } else {
            "interrupted (SIGTERM)"
        };
        if self.status.signal() == Some(shot.first as i32) {
            Answer::Died
        } else if self.status.code() == Some(2) && self.stderr.contains(name) {
            Answer::Interrupted
        } else if matches!(self.status.code(), Some(0 | 1)) {
            Answer::Finished
        } else {
            panic!(
                "{what}, {shot:?}: expected to die of {} or to say {name:?}: {}",
                shot.first,
                self.describe()
            )
        }
    }
}

/// How a command answered a signal.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Killed by it, before it had made anything.
    Died,
    /// Caught it, removed what it had made, and said so.
    Interrupted,
    /// Had its verdict already, and finished.
    Finished,
}

/// Ctrl-C's default action (end the process) in the child, as in a
/// terminal's foreground job, also where this test runs with SIGINT
/// ignored (a background job of a non-interactive shell), which a child
/// would inherit until it installs a handler.
#[allow(unsafe_code)]
fn default_sigint(cmd: &mut Command) {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: between fork and exec only async-signal-safe calls are
    // allowed: signal(2) is one, and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            signal(Signal::SIGINT, SigHandler::SigDfl)
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

/// Runs `cmd` in its own process group (its stdout and stderr to files),
/// fires `shot` at it, and waits for it to exit (within
/// [`EXIT_DEADLINE`]; past it, kills it and fails). `watch` is called
/// with its process id while it runs, before the first signal.
fn fire(mut cmd: Command, shot: &Shot, mut watch: impl FnMut(u32)) -> Ended {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    default_sigint(&mut cmd);
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let start = Instant::now();
    // The experiment's input: the command runs undisturbed for `delay`.
    let mut finished_first = false;
    while start.elapsed() < shot.delay {
        watch(pid);
        if child.try_wait().unwrap().is_some() {
            finished_first = true;
            break;
        }
        let left = shot.delay.saturating_sub(start.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    let mut second = None;
    let signalled = Instant::now();
    if !finished_first {
        send(pid, shot.first);
        second = shot.then.map(|(after, s)| (Instant::now() + after, s));
    }
    let deadline = Instant::now() + EXIT_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if second.is_some_and(|(at, _)| Instant::now() >= at) {
            let (_, s) = second.take().unwrap();
            send(pid, s);
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "{shot:?}: still running {}s after the signal",
                EXIT_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap();
    Ended {
        status,
        stdout: read(&out),
        stderr: read(&err),
        finished_first,
        after_signal: signalled.elapsed(),
    }
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// Every namespaced kind the chapters and exercises make.
fn namespaced_kinds() -> Vec<ApiResource> {
    vec![
        ar("", "v1", "Pod", "pods"),
        ar("", "v1", "ServiceAccount", "serviceaccounts"),
        ar("", "v1", "ConfigMap", "configmaps"),
        ar("", "v1", "Secret", "secrets"),
        ar(RBAC, "v1", "Role", "roles"),
        ar(RBAC, "v1", "RoleBinding", "rolebindings"),
        ar("apps", "v1", "Deployment", "deployments"),
        ar("batch", "v1", "Job", "jobs"),
    ]
}

/// Every cluster-scoped kind they make.
fn cluster_kinds() -> Vec<ApiResource> {
    let adm = "admissionregistration.k8s.io";
    vec![
        ar(RBAC, "v1", "ClusterRole", "clusterroles"),
        ar(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings"),
        ar("", "v1", "Node", "nodes"),
        ar(
            adm,
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
        ),
        ar(
            adm,
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    ]
}

/// `kind name` (with `-n ns`) of every object `api` lists with `lp`.
async fn names(api: Api<DynamicObject>, kind: &str, lp: &ListParams) -> Vec<String> {
    api.list_metadata(lp)
        .await
        .unwrap_or_else(|e| panic!("listing {kind}: {e}"))
        .items
        .into_iter()
        .map(|o| match o.metadata.namespace.as_deref() {
            Some(ns) => format!("{kind} {ns}/{}", o.name_any()),
            None => format!("{kind} {}", o.name_any()),
        })
        .collect()
}

/// What a chapter run made that is still there: a course namespace (none
/// exists before a storm's run), any object in one, and any object of the
/// course anywhere (label `app.kubernetes.io/part-of=sa-lab`).
async fn course_leftovers(client: &Client) -> Vec<String> {
    let mut left = Vec::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in COURSE_NAMESPACES {
        if let Some(n) = namespaces.get_opt(ns).await.unwrap() {
            let terminating = n.metadata.deletion_timestamp.is_some();
            left.push(format!("namespace {ns} (terminating: {terminating})"));
        }
    }
    let course = ListParams::default().labels(COURSE_LABEL);
    for ar in namespaced_kinds() {
        let api = Api::all_with(client.clone(), &ar);
        left.extend(names(api, &ar.kind, &course).await);
    }
    for ar in cluster_kinds() {
        let api = Api::all_with(client.clone(), &ar);
        left.extend(names(api, &ar.kind, &course).await);
    }
    left.sort();
    left.dedup();
    left
}

/// Removes what finished chapter runs left (they leave their objects for
/// the learner), so a storm starts with no course namespace.
async fn remove_course_objects(client: &Client) {
    let course = ListParams::default().labels(COURSE_LABEL);
    for ar in cluster_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        api.delete_collection(&DeleteParams::default(), &course)
            .await
            .unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in COURSE_NAMESPACES {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    eventually(120, "the course's objects and namespaces gone", || async {
        course_leftovers(client).await.is_empty()
    })
    .await;
}

fn run_cmd(cluster: &str, chapter: &str) -> Command {
    let mut cmd = sa_lab_cmd();
    cmd.args(["run", chapter, "--name", cluster])
        .env("SA_LAB_QUIET", "0");
    cmd
}

/// `sa-lab run`: calibrated on a finished run of each chapter, then
/// interrupted at points across its length. After each, no course
/// namespace or object of the course is left (a finished run leaves them;
/// an interrupted one must not leave half of them), and after the storm
/// each chapter runs and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_interrupted_anywhere_leaves_nothing_half_made() {
    let c = TestCluster::start("sigrun").await;
    let client = c.client().await;
    let name = c.info.name.clone();
    let mut rng = Rng::for_test("run");
    // Chapter 1 (one namespace, Pods) and chapter 3 (two namespaces,
    // cluster-wide roles and bindings).
    let chapters = ["01", "03"];
    let mut spans = Vec::new();
    for ch in chapters {
        // The shorter of two finished runs (the first also makes the
        // namespaces).
        let mut span = Duration::MAX;
        for _ in 0..2 {
            let start = Instant::now();
            let out = tokio::task::block_in_place(|| run_cmd(&name, ch).output().unwrap());
            assert!(
                out.status.success(),
                "chapter {ch}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            span = span.min(start.elapsed());
        }
        eprintln!("run: a finished run of chapter {ch} took {span:?}");
        spans.push(span);
        // The scan sees what a run makes (else "nothing left" proves
        // nothing).
        let left = course_leftovers(&client).await;
        assert!(
            left.iter().any(|l| l.starts_with("namespace production"))
                && left.iter().any(|l| l.starts_with("Pod production/")),
            "chapter {ch} left: {left:?}"
        );
        if ch == "03" {
            assert!(
                left.iter().any(|l| l.starts_with("ClusterRoleBinding ")),
                "{left:?}"
            );
        }
        remove_course_objects(&client).await;
    }
    let mut interrupted = 0;
    for (i, ch) in chapters.iter().enumerate() {
        // Up to 90% of a finished run: connect, clean slate, apply, Pods.
        let shots = storm(&mut rng, 4, spans[i] * 9 / 10);
        for shot in shots {
            let end = tokio::task::block_in_place(|| fire(run_cmd(&name, ch), &shot, |_| {}));
            let what = format!("sa-lab run {ch}");
            if end.finished_first {
                // The point lay past the end of this run: not an
                // interruption. It must have passed; start over clean.
                assert!(end.status.success(), "{what}: {}", end.describe());
                eprintln!("{what}: finished before {shot:?}");
                remove_course_objects(&client).await;
                continue;
            }
            let answer = end.answer(&shot, &what);
            eprintln!(
                "{what}: {shot:?}: {answer:?} ({}, {:?} after the signal)",
                end.status, end.after_signal
            );
            if answer == Answer::Finished {
                // The signal landed after the verdict: a finished run,
                // whose objects are whole. It must have passed.
                assert!(end.status.success(), "{what}: {}", end.describe());
                remove_course_objects(&client).await;
                continue;
            }
            interrupted += 1;
            let left = course_leftovers(&client).await;
            assert!(
                left.is_empty(),
                "{what} interrupted by {shot:?} left: {left:#?}\n{}",
                end.describe()
            );
        }
    }
    assert!(interrupted >= 4, "only {interrupted} runs were interrupted");
    // The next runs pass.
    for ch in chapters {
        let out = tokio::task::block_in_place(|| run_cmd(&name, ch).output().unwrap());
        assert!(
            out.status.success(),
            "chapter {ch} after the storm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The exercise the check storm grades: a ServiceAccount and Pods in
/// `shop`, a ClusterRole and a ClusterRoleBinding.
const EXERCISE: &str = "03-read-namespaces";
const EXERCISE_NS: &str = "shop";

/// What a check left: any object labelled as an exercise's, anywhere; in
/// the exercise's namespace, anything but `default` (unlabelled) and the
/// CA bundle. The namespace itself stays, as a finished check leaves it.
async fn exercise_leftovers(client: &Client) -> Vec<String> {
    let label = sa_lab::exercises::input::EXERCISE_LABEL;
    let ours = ListParams::default().labels(label);
    let mut left = Vec::new();
    for ar in namespaced_kinds().iter().chain(&cluster_kinds()) {
        let api = Api::all_with(client.clone(), ar);
        left.extend(names(api, &ar.kind, &ours).await);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Some(n) = namespaces.get_opt(EXERCISE_NS).await.unwrap() {
        assert!(n.labels().contains_key(NAMESPACE_LABEL), "{n:?}");
        for ar in namespaced_kinds() {
            let api = Api::namespaced_with(client.clone(), EXERCISE_NS, &ar);
            let all = names(api, &ar.kind, &ListParams::default()).await;
            left.extend(all.into_iter().filter(|n| {
                n != &format!("ServiceAccount {EXERCISE_NS}/default")
                    && n != &format!("ConfigMap {EXERCISE_NS}/kube-root-ca.crt")
            }));
        }
    }
    left.sort();
    left.dedup();
    left
}

/// `sa-lab check` of a solved exercise: interrupted at points across a
/// finished check's length (namespaces, apply, the RBAC sync, probe
/// Pods). After each, what the check applied is gone, as after a finished
/// check, and after the storm the check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_interrupted_anywhere_leaves_nothing_half_made() {
    let c = TestCluster::start("sigcheck").await;
    let client = c.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let sa_lab = |args: &[&str]| {
        let mut cmd = sa_lab_cmd();
        cmd.args(args)
            .arg("--dir")
            .arg(&ws)
            .env("SA_LAB_CLUSTER", &c.info.name)
            .env_remove("SA_LAB_EXERCISES");
        cmd
    };
    let ok = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut init = sa_lab_cmd();
    init.args(["exercises", "init"]).arg(&ws);
    ok(init);
    ok(sa_lab(&["solution", EXERCISE, "--reveal", "--write"]));
    let mut rng = Rng::for_test("check");

    // The shorter of two finished checks (the first also makes the
    // namespace).
    let mut span = Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        tokio::task::block_in_place(|| ok(sa_lab(&["check", EXERCISE])));
        span = span.min(start.elapsed());
        assert!(exercise_leftovers(&client).await.is_empty());
    }
    // The scan sees what a check applies (else "nothing left" proves
    // nothing): a labelled ServiceAccount in the namespace, and a labelled
    // ClusterRole.
    let label = sa_lab::exercises::input::EXERCISE_LABEL;
    let planted_sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "planted", "labels": {label: EXERCISE}}
    }))
    .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), EXERCISE_NS);
    sas.create(&PostParams::default(), &planted_sa)
        .await
        .unwrap();
    let crs: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    let planted_cr = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "planted", "labels": {label: EXERCISE}}
    }))
    .unwrap();
    crs.create(&PostParams::default(), &planted_cr)
        .await
        .unwrap();
    let left = exercise_leftovers(&client).await;
    assert!(
        left.contains(&"ServiceAccount shop/planted".to_string())
            && left.contains(&"ClusterRole planted".to_string()),
        "{left:?}"
    );
    sas.delete("planted", &DeleteParams::default())
        .await
        .unwrap();
    crs.delete("planted", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "the planted objects gone", || async {
        exercise_leftovers(&client).await.is_empty()
    })
    .await;

    eprintln!("check: a finished check took {span:?}");
    let mut interrupted = 0;
    for shot in storm(&mut rng, 8, span * 9 / 10) {
        let end = tokio::task::block_in_place(|| fire(sa_lab(&["check", EXERCISE]), &shot, |_| {}));
        if end.finished_first {
            assert!(end.status.success(), "check: {}", end.describe());
            eprintln!("check: finished before {shot:?}");
        } else {
            let answer = end.answer(&shot, "sa-lab check");
            eprintln!(
                "sa-lab check: {shot:?}: {answer:?} ({}, {:?} after the signal)",
                end.status, end.after_signal
            );
            if answer != Answer::Finished {
                interrupted += 1;
            }
        }
        let left = exercise_leftovers(&client).await;
        assert!(
            left.is_empty(),
            "sa-lab check interrupted by {shot:?} left: {left:#?}\n{}",
            end.describe()
        );
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} checks were interrupted"
    );
    tokio::task::block_in_place(|| ok(sa_lab(&["check", EXERCISE])));
    assert!(exercise_leftovers(&client).await.is_empty());
}

/// The tour's cluster, as seen while it ran.
#[derive(Default)]
struct Seen {
    ports: Vec<u16>,
    /// Whether its processes were seen running (the scan can find them).
    processes: bool,
}

fn tour_processes(dir: &Path, name: &str) -> Vec<(u32, String)> {
    let mut found = processes_mentioning(&dir.display().to_string());
    found.extend(processes_mentioning(&format!("supervise --name {name} ")));
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(String::from)
        .collect()
}

/// `sa-lab tour` brings up its own cluster: interrupted at points across
/// bring-up and its first chapters. After each, no process of the tour's
/// cluster runs, none of its ports listens, nothing is mounted under its
/// directory, and no cluster directory is left under its `SA_LAB_HOME`
/// (one of its own, so other tests' clusters are not in the way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tour_interrupted_anywhere_leaves_no_cluster() {
    require_binaries();
    let mut rng = Rng::for_test("tour");
    // Bring-up takes about 5 s here and the eight chapters 10 to 15 s more;
    // a loaded machine takes longer, so the points cover bring-up and the
    // chapters, and rarely the tear-down.
    let shots = storm(&mut rng, 4, Duration::from_secs(16));
    let mut seen_running = 0;
    let mut interrupted = 0;
    for shot in shots {
        let home = tempfile::tempdir().unwrap();
        let clusters = home.path().join("clusters");
        let mut cmd = sa_lab_cmd();
        cmd.args(["tour"])
            .env("SA_LAB_HOME", home.path())
            .env("SA_LAB_QUIET", "0");
        // The tour names its cluster after its process id.
        let mut tour: Option<(String, PathBuf)> = None;
        let mut seen = Seen::default();
        let end = tokio::task::block_in_place(|| {
            fire(cmd, &shot, |pid| {
                let (name, dir) = tour.get_or_insert_with(|| {
                    let name = format!("tour-{pid}");
                    let dir = clusters.join(&name);
                    (name, dir)
                });
                if seen.ports.is_empty() {
                    let info = std::fs::read(dir.join("cluster.json")).ok().and_then(|b| {
                        serde_json::from_slice::<sa_lab::local::ClusterInfo>(&b).ok()
                    });
                    if let Some(info) = info {
                        seen.ports = info.ports().to_vec();
                    }
                }
                if !seen.processes && !tour_processes(dir, name).is_empty() {
                    seen.processes = true;
                }
            })
        });
        if end.finished_first {
            // A whole tour: its verdict, then its tear-down.
            assert!(
                matches!(end.status.code(), Some(0 | 1)),
                "tour: {}",
                end.describe()
            );
            eprintln!("tour: finished before {shot:?}");
        } else {
            let answer = end.answer(&shot, "sa-lab tour");
            eprintln!(
                "sa-lab tour: {shot:?}: {answer:?} ({}; its cluster seen running: {})",
                end.status, seen.processes
            );
            if answer != Answer::Finished {
                interrupted += 1;
                seen_running += usize::from(seen.processes);
            }
        }
        let dirs: Vec<PathBuf> = std::fs::read_dir(&clusters)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            dirs.is_empty(),
            "tour {shot:?} left cluster directories {dirs:?}\n{}",
            end.describe()
        );
        if let Some((name, dir)) = &tour {
            let procs = tour_processes(dir, name);
            assert!(procs.is_empty(), "tour {shot:?} left processes {procs:?}");
            let mounts = mounts_under(dir);
            assert!(mounts.is_empty(), "tour {shot:?} left mounts {mounts:?}");
        }
        // A port of the tour's cluster may since have been taken by
        // another cluster (tests run side by side): only a listener that
        // is not another sa-lab cluster's counts.
        for port in &seen.ports {
            let owners = common::listeners_of(*port);
            let strangers: Vec<&(u32, String)> = owners
                .iter()
                .filter(|(_, cmd)| {
                    let ours = tour.as_ref().is_some_and(|(name, dir)| {
                        cmd.contains(&dir.display().to_string()) || cmd.contains(name.as_str())
                    });
                    ours || !cmd.contains("/clusters/")
                })
                .collect();
            assert!(
                strangers.is_empty(),
                "tour {shot:?}: port {port} still listening: {strangers:?}"
            );
        }
    }
    // The scan is not empty-handed by luck: tours were interrupted, at
    // least one while its cluster ran.
    assert!(
        interrupted >= 2,
        "only {interrupted} tours were interrupted"
    );
    assert!(
        seen_running >= 1,
        "no tour was interrupted while its cluster ran"
    );
}
