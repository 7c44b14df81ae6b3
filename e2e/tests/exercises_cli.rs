//! The exercise commands as a learner uses them (assert_cmd): the
//! workspace, hints, solutions, reset, bad input, a cluster that is not
//! there; then `check` and `run --predict` on a fresh local cluster, and
//! `watch` in a pseudo-terminal. Exit codes: 0 passed, 1 failed, 2 could
//! not check.

mod common;

use std::path::{Path, PathBuf};

use common::{sa_lab, stderr, stdout};
use predicates::str::contains;

/// A fresh workspace in a temporary folder.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    sa_lab(&["exercises", "init", ws.to_str().unwrap()], &[])
        .success()
        .stderr(contains("exercises written"));
    (tmp, ws)
}

fn dir(ws: &Path) -> &str {
    ws.to_str().unwrap()
}

/// Runs `sa-lab ARGS` from `cwd`.
fn sa_lab_in(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> assert_cmd::assert::Assert {
    assert_cmd::Command::new(sa_lab::paths::self_binary())
        .current_dir(cwd)
        .args(args)
        .env_remove("SA_LAB_EXERCISES")
        .envs(envs.iter().copied())
        .assert()
}

/// `text` with every run of white space one space (messages are wrapped
/// to the terminal).
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn progress(ws: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ws.join(".sa-lab/progress.json")).unwrap())
        .unwrap()
}

#[test]
fn workspace_hints_solutions_and_reset() {
    let (tmp, ws) = workspace();
    let folder = ws.join("03-rolebinding/03-pods-only");
    assert!(folder.join("README.md").is_file() && folder.join("rbac.yaml").is_file());

    // Found from any folder below it, by --dir, and by $SA_LAB_EXERCISES.
    let a = sa_lab_in(&folder, &["exercises"], &[]).success();
    let out = stdout(&a);
    assert!(
        out.contains("▶ next") && out.contains("03-pods-only"),
        "{out}"
    );
    let total = sa_lab::exercises::catalog().count();
    let bar = format!("Progress: [------------------------------] 0/{total}");
    assert!(out.contains(&bar), "{out}");
    let a = sa_lab_in(
        tmp.path(),
        &["exercises", "-o", "json", "--dir", dir(&ws)],
        &[],
    )
    .success();
    let list: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert!(list.as_array().unwrap().len() >= 15, "{list}");
    sa_lab_in(
        tmp.path(),
        &["exercises"],
        &[("SA_LAB_EXERCISES", dir(&ws))],
    )
    .success();
    sa_lab_in(tmp.path(), &["exercises"], &[])
        .code(2)
        .stderr(contains("not inside an exercises workspace"))
        .stderr(contains("sa-lab exercises init DIR"));
    sa_lab_in(
        tmp.path(),
        &["exercises", "init", tmp.path().to_str().unwrap()],
        &[],
    )
    .code(2)
    .stderr(contains("is not empty and is not an exercises workspace"));
    sa_lab_in(&ws, &["hint", "99-nope"], &[])
        .code(2)
        .stderr(contains("unknown exercise \"99-nope\""))
        .stderr(contains("03-pods-only"));

    // Hints come one at a time, then the last one again.
    for n in 1..=3 {
        sa_lab_in(&folder, &["hint", "03-pods-only"], &[])
            .success()
            .stdout(contains(format!("hint {n} of 3")));
    }
    sa_lab_in(&folder, &["hint", "03-pods-only"], &[])
        .success()
        .stdout(contains("hint 3 of 3"))
        .stdout(contains("That was the last hint"));
    assert_eq!(progress(&ws)["exercises"]["03-pods-only"]["hints_shown"], 3);

    // The solution stays hidden until solved or revealed.
    sa_lab_in(&ws, &["solution", "03-pods-only"], &[])
        .code(1)
        .stderr(contains("is not solved yet"));
    sa_lab_in(&ws, &["solution", "03-pods-only", "--reveal"], &[])
        .success()
        .stdout(contains("── rbac.yaml ──"))
        .stdout(contains("pods/log"));
    std::fs::write(folder.join("rbac.yaml"), "# mine\n").unwrap();
    sa_lab_in(
        &folder,
        &["solution", "03-pods-only", "--reveal", "--write"],
        &[],
    )
    .success();
    let written = std::fs::read_to_string(folder.join("rbac.yaml")).unwrap();
    assert!(written.contains("kind: RoleBinding"), "{written}");
    let kept = ws.join(".sa-lab/reset/03-pods-only/rbac.yaml");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "# mine\n");
    assert_eq!(progress(&ws)["exercises"]["03-pods-only"]["revealed"], true);

    // reset: the starter again, in the same folder; the learner's copy kept.
    std::fs::write(folder.join("extra.yaml"), "x: 1\n").unwrap();
    sa_lab_in(&folder, &["reset", "03-pods-only"], &[])
        .success()
        .stderr(contains("back to its starter"));
    assert!(!folder.join("extra.yaml").exists());
    assert!(
        std::fs::read_to_string(folder.join("rbac.yaml"))
            .unwrap()
            .starts_with("# TODO")
    );
    assert!(ws.join(".sa-lab/reset/03-pods-only/extra.yaml").is_file());

    // A Rust exercise's crate names lab-kit by its absolute path.
    let cargo =
        std::fs::read_to_string(ws.join("02-token-mount/02-rust-by-hand/Cargo.toml")).unwrap();
    let lab_kit = sa_lab::paths::repo_root().join("labs/lab-kit");
    assert!(
        cargo.contains(&format!("{:?}", lab_kit.display().to_string())),
        "{cargo}"
    );
    assert!(
        ws.join("02-token-mount/02-rust-by-hand/Cargo.lock")
            .is_file()
    );
}

/// Each mistake gets a message naming the file (and line), exit 2, and
/// no cluster is contacted: the check points at a kind cluster that does
/// not exist, and is never told so.
#[test]
fn bad_input_is_named_before_any_cluster() {
    let (_tmp, ws) = workspace();
    let folder = ws.join("03-rolebinding/03-pods-only");
    let nowhere = ["--provider", "kind", "--name", "sa-lab-no-such-cluster"];
    let check = |files: &[(&str, &str)]| {
        for e in std::fs::read_dir(&folder).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (name, text) in files {
            std::fs::write(folder.join(name), text).unwrap();
        }
        let mut args = vec!["check", "03-pods-only"];
        args.extend(nowhere);
        let a = sa_lab_in(&ws, &args, &[]).code(2);
        let err = stderr(&a);
        assert!(
            !err.contains("no kind cluster"),
            "the files come first: {err}"
        );
        err
    };
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reporter}\n";

    let e = check(&[("rbac.yaml", "kind: Role\nrules: [\n  - a\n")]);
    assert!(e.contains("rbac.yaml: invalid YAML"), "{e}");
    assert!(e.contains("line"), "file and line: {e}");

    let e = check(&[("rbac.yaml", "# nothing yet\n")]);
    assert!(
        e.contains("no objects in") && e.contains("03-pods-only"),
        "{e}"
    );

    let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: x}\nsubjects: []\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n";
    let e = check(&[("sa.yaml", sa), ("rbac.yaml", crb)]);
    assert!(e.contains("rbac.yaml: ClusterRoleBinding/x: this exercise takes ServiceAccount, Role, RoleBinding, not ClusterRoleBinding"), "{e}");

    let other = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reporter, namespace: kube-system}\n";
    let e = check(&[("sa.yaml", other)]);
    assert!(
        e.contains("is in namespace \"kube-system\"; this exercise's objects go in shop"),
        "{e}"
    );

    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
    let e = check(&[("ns.yaml", ns)]);
    assert!(
        e.contains("check makes this exercise's namespaces (shop) itself"),
        "{e}"
    );

    let reserved = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: sa-lab-exercise-sync}\nrules: []\n";
    let e = check(&[("rbac.yaml", reserved)]);
    assert!(
        e.contains("keeps for its own objects: give yours another name"),
        "{e}"
    );

    let e = check(&[("a.yaml", sa), ("b.yaml", sa)]);
    assert!(
        e.contains("ServiceAccount/reporter -n shop is defined twice: in a.yaml and in b.yaml"),
        "{e}"
    );

    // A Pod named like check's own probe Pod.
    let pods = ws.join("04-default-sa/04-own-account");
    let probe = "apiVersion: v1\nkind: Pod\nmetadata: {name: probe-default}\nspec: {containers: [{name: c}]}\n";
    std::fs::write(pods.join("extra.yaml"), probe).unwrap();
    let mut args = vec!["check", "04-own-account"];
    args.extend(nowhere);
    sa_lab_in(&ws, &args, &[]).code(2).stderr(contains(
        "Pod/probe-default is the name of check's own probe Pod",
    ));

    // An answer that is not a verdict.
    let predict = ws.join("03-rolebinding/03-predict/predictions.yaml");
    let text = std::fs::read_to_string(&predict).unwrap();
    let first = text.lines().find(|l| !l.starts_with('#')).unwrap();
    let wrong = text.replacen(first, &first.replacen("TODO", "maybe", 1), 1);
    std::fs::write(&predict, wrong).unwrap();
    let mut args = vec!["check", "03-predict"];
    args.extend(nowhere);
    sa_lab_in(&ws, &args, &[]).code(2).stderr(contains(
        "\"maybe\" is not one of allowed, forbidden, unauthorized, invalid",
    ));

    // Good files, and no cluster there: it says which and how to make it.
    sa_lab_in(&ws, &["reset", "03-pods-only"], &[]).success();
    let mut args = vec!["check", "03-pods-only"];
    args.extend(nowhere);
    sa_lab_in(&ws, &args, &[])
        .code(2)
        .stderr(contains("no kind cluster \"sa-lab-no-such-cluster\""))
        .stderr(contains("scripts/kind-up.sh"));
    let p = progress(&ws);
    assert_eq!(
        p["exercises"]["03-pods-only"]["last_result"], "error",
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_grades_on_a_cluster_and_cleans_up() {
    common::require_binaries();
    let c = common::TestCluster::start("excli").await;
    let env = [("SA_LAB_CLUSTER", c.info.name.as_str()), ("COLUMNS", "120")];
    let (_tmp, ws) = workspace();
    let folder = ws.join("03-rolebinding/03-pods-only");

    // The starter fails: the table, the API server's own 403, what it
    // usually means, and what to do next.
    let a = sa_lab_in(&folder, &["check", "03-pods-only"], &env).code(1);
    let (out, err) = (flat(&stdout(&a)), stderr(&a));
    assert!(out.contains("✗ 8 of 11 rows differ"), "{out}");
    assert!(
        out.contains("User \"system:serviceaccount:shop:reporter\" cannot list resource \"pods\""),
        "{out}"
    );
    assert!(
        out.contains("What it usually means: Nothing binds a role to ServiceAccount shop/reporter"),
        "{out}"
    );
    assert!(
        err.contains("`sa-lab hint 03-pods-only` gives hint 1 of 3"),
        "{err}"
    );

    // A Role with a field that does not exist: the API server's strict
    // validation refuses it, and nothing was applied.
    let typo = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\nrules:\n- apiGroups: ['']\n  resource: [pods]\n  verbs: [get]\n";
    std::fs::write(folder.join("rbac.yaml"), typo).unwrap();
    let a = sa_lab_in(&ws, &["check", "03-pods-only", "-o", "json"], &env).code(1);
    let r: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(r["rows"][0]["id"], "apply", "{r}");
    assert_eq!(r["rows"][0]["actual"], "refused", "{r}");
    let msg = r["rows"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("rbac.yaml: Role/reader -n shop")
            && msg.contains(".rules[0].resource: field not declared in schema"),
        "{msg}"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "roles,serviceaccounts", "-n", "shop", "-o", "name"])
            .trim(),
        "serviceaccount/default"
    );

    // The solution passes; the progress says so.
    sa_lab_in(
        &ws,
        &["solution", "03-pods-only", "--reveal", "--write"],
        &env,
    )
    .success();
    let a = sa_lab_in(&ws, &["check", "03-pods-only", "-o", "json"], &env).success();
    let r: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["rows"].as_array().unwrap().len(), 11);
    assert!(stderr(&a).contains("Solved!"), "{}", stderr(&a));
    let p = progress(&ws);
    let e = &p["exercises"]["03-pods-only"];
    assert_eq!(
        (e["solved"].clone(), e["attempts"].clone()),
        (true.into(), 3.into()),
        "{p}"
    );

    // Without an id: the next unsolved one.
    let a = sa_lab_in(&ws, &["check"], &env).code(1);
    let first = sa_lab::exercises::catalog().next().unwrap().id;
    assert!(
        stdout(&a).starts_with(&format!("{first}: ")),
        "{}",
        stdout(&a)
    );

    // A namespace of the exercise that is not the exercises' own is not
    // touched.
    c.kubectl_ok(&["create", "namespace", "ci"]);
    c.kubectl_ok(&["create", "serviceaccount", "someone", "-n", "ci"]);
    sa_lab_in(&ws, &["check", "03-fix-subject-namespace"], &env)
        .code(2)
        .stderr(contains(
            "namespace ci exists and was not made by sa-lab exercises",
        ));
    let sas = c.kubectl_ok(&["get", "serviceaccounts", "-n", "ci", "-o", "name"]);
    assert!(sas.contains("serviceaccount/someone"), "{sas}");
    c.kubectl_ok(&["delete", "namespace", "ci", "--wait=false"]);

    // A cluster-scoped object named like one that exists (and is not the
    // exercise's) is refused; the existing one is not changed.
    let view = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: view}\nrules: []\n";
    std::fs::write(ws.join("03-rolebinding/03-read-namespaces/rbac.yaml"), view).unwrap();
    sa_lab_in(&ws, &["check", "03-read-namespaces"], &env)
        .code(2)
        .stderr(contains(
            "rbac.yaml: ClusterRole/view already exists in the cluster and is not this exercise's",
        ));
    let labels = c.kubectl_ok(&[
        "get",
        "clusterrole",
        "view",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(!labels.contains("sa-lab.dev/exercise"), "{labels}");

    // Nothing of the checks is left.
    for kind in [
        "pods",
        "roles",
        "rolebindings",
        "clusterroles",
        "clusterrolebindings",
    ] {
        let left = c.kubectl_ok(&["get", kind, "-A", "-l", "sa-lab.dev/exercise", "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind}: {left}");
    }

    // run --predict: answers on stdin, scored after the run.
    let answers = "a\nf\na\ni\na\n";
    let a = assert_cmd::Command::new(sa_lab::paths::self_binary())
        .args(["run", "1", "--predict"])
        .envs(env)
        .write_stdin(answers)
        .assert()
        .success();
    let (out, err) = (stdout(&a), stderr(&a));
    assert!(
        err.contains(" 1/5 whoami (SelfSubjectReview) from the pod-manager Pod? "),
        "{err}"
    );
    assert!(out.contains("Your predictions: 5 of 5 right."), "{out}");
}

/// `watch` in a pseudo-terminal: the first result, a hint, a re-check on
/// save, the list, quit; the terminal is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_rechecks_on_save_in_a_terminal() {
    use nix::pty::{Winsize, openpty};
    use nix::sys::termios::{LocalFlags, tcgetattr};
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::time::Duration;

    common::require_binaries();
    let c = common::TestCluster::start("exwatch").await;
    let (_tmp, ws) = workspace();
    let folder = ws.join("03-rolebinding/03-pods-only");
    let size = Winsize {
        ws_row: 60,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = std::process::Command::new(sa_lab::paths::self_binary())
        .args(["watch", "03-pods-only", "--dir", dir(&ws)])
        .env("SA_LAB_CLUSTER", &c.info.name)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut cursor = 0;
    // Waits for `text` to appear after the last text waited for.
    let mut wait_for = |text: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(at) = seen[cursor..].find(text) {
                cursor += at + text.len();
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&chunk),
                Err(_) => panic!("watch never printed {text:?}; it printed:\n{seen}"),
            }
        }
    };
    wait_for("✗ 8 of 11 rows differ");
    wait_for("keys: h hint");
    master.write_all(b"h").unwrap();
    wait_for("hint 1 of 3");
    // Save the solution: watch checks again by itself.
    let sol = sa_lab::exercises::find("03-pods-only").unwrap();
    for f in sol.files {
        std::fs::write(folder.join(f.path), f.solution).unwrap();
    }
    wait_for("✓ 03-pods-only passes");
    wait_for("Press n for the next exercise");
    master.write_all(b"l").unwrap();
    wait_for("✓ solved");
    master.write_all(b"q").unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("watch quits on q")
        .unwrap();
    assert!(status.success(), "{status}");
    let t = tcgetattr(&slave).unwrap();
    assert!(
        t.local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "the terminal is restored"
    );
    let p = progress(&ws);
    assert_eq!(p["exercises"]["03-pods-only"]["solved"], true, "{p}");
}
