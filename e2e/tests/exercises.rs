//! The exercises' own check, like `rustlings dev check`, on one fresh
//! local cluster: every starter fails for the reason its exercise says
//! (exactly the rows of its `starter_fails`), every solution passes, and
//! every least-privilege solution plus an over-grant fails, on a static
//! row and on a must-refuse row the API server really allowed. There are
//! four over-grants (cluster-admin or edit in the namespace, a wildcard
//! Role, view for every ServiceAccount of the namespace); each exercise
//! gets two, in turn, so each kind is tried on several exercises and the
//! check stays short. Afterwards nothing of the exercises is left in the
//! cluster.
//!
//! `SA_LAB_EXERCISES_ONLY=06,07-predict` checks only the exercises whose
//! id starts with one of those (a maintainer's quick loop); each of them
//! then gets all four over-grants.

mod chapter_kit;
mod common;

use std::collections::BTreeSet;

use sa_lab::exercises::check::{self, CheckError, CheckResult, Cluster};
use sa_lab::exercises::def::LEAST_PRIVILEGE_ROWS;
use sa_lab::exercises::workspace::Version;
use sa_lab::exercises::{Definition, Exercise, Kind, Workspace, catalog};
use sa_lab::provider::Provider;

async fn grade(cluster: &Cluster, ws: &Workspace, ex: &Exercise) -> CheckResult {
    check::check(cluster, ex, &ws.folder(ex))
        .await
        .unwrap_or_else(|e| panic!("{}: {}", ex.id, sa_lab::ui::error_chain(&e)))
}

fn shown(r: &CheckResult) -> String {
    sa_lab::exercises::render::check_result(r, 120)
}

/// Over-grants to the task's ServiceAccount, each one file.
fn overgrants(def: &Definition) -> Vec<(&'static str, String)> {
    let Some(lp) = &def.least_privilege else {
        return Vec::new();
    };
    let ns = &def.namespaces[0];
    let sa = &lp.subject;
    let rb = |name: &str, kind: &str, role: &str, subject: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {{name: {name}, namespace: {ns}}}\nsubjects: [{subject}]\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {role}}}\n"
        )
    };
    let to_sa = format!("{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}");
    let group = format!(
        "{{kind: Group, name: 'system:serviceaccounts:{ns}', apiGroup: rbac.authorization.k8s.io}}"
    );
    vec![
        (
            "cluster-admin",
            rb("overgrant", "ClusterRole", "cluster-admin", &to_sa),
        ),
        ("edit", rb("overgrant", "ClusterRole", "edit", &to_sa)),
        (
            "wildcard",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
                 metadata: {{name: overgrant, namespace: {ns}}}\n\
                 rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n---\n{}",
                rb("overgrant", "Role", "overgrant", &to_sa)
            ),
        ),
        (
            "group-wide view",
            rb("overgrant", "ClusterRole", "view", &group),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starters_fail_solutions_pass_overgrants_fail() {
    common::require_binaries();
    let c = common::TestCluster::start("exercises").await;
    let local = sa_lab::provider::select_from_env(None).unwrap() == Provider::Local;
    let cluster = Cluster {
        cx: chapter_kit::context(&c).await,
        provider: if local {
            Provider::Local
        } else {
            Provider::Kind
        },
        describe: c.info.name.clone(),
        labs_dir: local.then(|| c.info.labs_dir.clone()),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ws, _) = Workspace::init(&tmp.path().join("ws")).unwrap();
    let only: Vec<String> = std::env::var("SA_LAB_EXERCISES_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let mut overgranted = std::collections::BTreeMap::new();
    for ex in catalog() {
        if !only.is_empty() && !only.iter().any(|p| ex.id.starts_with(p.as_str())) {
            continue;
        }
        let def = ex.def().unwrap();
        if def.kind == Kind::Rust && !local {
            // Pods on kind run images: a program cargo built here is not in one.
            let e = check::check(&cluster, ex, &ws.folder(ex))
                .await
                .unwrap_err();
            assert!(
                matches!(e, CheckError::RustNeedsLocal { .. }),
                "{}: {e}",
                ex.id
            );
            continue;
        }
        let r = grade(&cluster, &ws, ex).await;
        let failed: BTreeSet<&str> = r.failed().into_iter().collect();
        let intended: BTreeSet<&str> = def.starter_fails.iter().map(String::as_str).collect();
        assert_eq!(
            failed,
            intended,
            "{}: the starter fails exactly the rows starter_fails names\n{}",
            ex.id,
            shown(&r)
        );
        assert!(!r.passed);

        ws.write(ex, Version::Solution).unwrap();
        let r = grade(&cluster, &ws, ex).await;
        assert!(r.passed, "{}: the solution passes\n{}", ex.id, shown(&r));
        assert_eq!(r.rows.len(), def.row_ids().len().max(def.predict.len()));

        let all = overgrants(&def);
        let turn = overgranted.values().sum::<usize>() / 2;
        let two = [turn % 4, (turn + 2) % 4];
        for (what, yaml) in all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !only.is_empty() || two.contains(i))
            .map(|(_, o)| o)
        {
            let file = ws.folder(ex).join("overgrant.yaml");
            std::fs::write(&file, yaml).unwrap();
            let r = grade(&cluster, &ws, ex).await;
            std::fs::remove_file(&file).unwrap();
            let is_static = |id: &str| LEAST_PRIVILEGE_ROWS.iter().any(|(s, _)| *s == id);
            let failed = r.failed();
            assert!(
                failed.iter().any(|id| is_static(id)),
                "{}: {what}: the least-privilege check sees it\n{}",
                ex.id,
                shown(&r)
            );
            assert!(
                r.rows.iter().any(|g| !g.row.pass
                    && !is_static(&g.row.id)
                    && g.row.actual == "allowed"
                    && g.row.expected != "allowed"),
                "{}: {what}: a must-refuse row was allowed by the API server\n{}",
                ex.id,
                shown(&r)
            );
            // Its advice names the binding that let the call through, from
            // the API server's audit log of that very call.
            assert!(
                r.rows.iter().any(|g| g.row.actual == "allowed"
                    && g.row.expected != "allowed"
                    && g.advice.as_deref().is_some_and(
                        |a| a.contains("audit log") && a.contains("Binding \"overgrant")
                    )),
                "{}: {what}: the advice names the over-granting binding\n{}",
                ex.id,
                shown(&r)
            );
            *overgranted.entry(what).or_insert(0) += 1;
        }
    }
    if only.is_empty() {
        assert_eq!(
            overgranted.len(),
            4,
            "every kind of over-grant was tried: {overgranted:?}"
        );
        assert!(overgranted.values().all(|n| *n >= 3), "{overgranted:?}");
    }

    // Nothing of the exercises is left: no object with their label, in
    // their namespaces or cluster-wide.
    for kind in [
        "pods",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "configmaps",
        "secrets",
        "clusterroles",
        "clusterrolebindings",
    ] {
        let out = c.kubectl_ok(&["get", kind, "-A", "-l", "sa-lab.dev/exercise", "-o", "name"]);
        assert!(out.trim().is_empty(), "{kind} left behind: {out}");
    }
    let sas = c.kubectl_ok(&["get", "serviceaccounts", "-n", "shop", "-o", "name"]);
    assert_eq!(sas.trim(), "serviceaccount/default", "{sas}");
}
