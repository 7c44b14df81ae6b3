//! Chapter 8 on a fresh local cluster: one misconfiguration per audit rule
//! next to its clean twin; ci-bot runs a Pod as secret-reader; `sa-lab
//! audit` before and after the fix (as the admin, and as the auditor);
//! the ValidatingAdmissionPolicy refuses bindings to `default` and to
//! ServiceAccount groups. Then the CLI: `--fail-on high` passes on the
//! fixed cluster and fails once a risky binding is back, `-o json` names
//! it, and the audit never writes.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};
use common::{sa_lab, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_08_audit() {
    common::require_binaries();
    let c = common::TestCluster::start("ch08").await;
    let kc = c.info.kubeconfig.to_str().unwrap().to_string();

    // A fresh cluster: Kubernetes' own bindings give no finding at high.
    sa_lab(&["audit", "--kubeconfig", &kc, "--fail-on", "high"], &[]).success();

    let r = chapter_kit::run(&c, "audit").await;
    let mut ids: Vec<String> = Vec::new();
    let check = |id: &str, value: &str| {
        expect(&r, id, value);
        id.to_string()
    };
    let planted = [
        ("SA001", "high"),
        ("SA002", "high"),
        ("SA010", "high"),
        ("SA011", "high"),
        ("SA012", "high"),
        ("SA013", "high"),
        ("SA014", "critical"),
        ("SA015", "critical"),
        ("SA016", "high"),
        ("SA020", "low"),
        ("SA030", "medium"),
    ];
    for (rule, severity) in planted {
        ids.push(check(&format!("audit.{rule}.planted"), severity));
        ids.push(check(&format!("audit.{rule}.twin"), "not flagged"));
        ids.push(check(&format!("audit.{rule}.fixed"), "not flagged"));
    }
    for (id, value) in [
        ("audit.builtin", "none"),
        ("audit.confirmed", "all"),
        ("audit.auditor-runs", "allowed"),
        ("steal.create-pod", "allowed"),
        ("steal.stolen-list-secrets", "allowed"),
        ("admission.named-sa", "allowed"),
        ("admission.crb-named-sa", "allowed"),
    ] {
        ids.push(check(id, value));
    }
    let msg = &r.row("audit.auditor-runs").unwrap().message;
    assert!(msg.contains("SA030 not checked"), "{msg}");
    for id in [
        "audit.auditor-write",
        "steal.list-secrets",
        "fixed.create-pod",
        "admission.default-sa",
        "admission.default-user",
        "admission.sa-group",
        "admission.crb-all-sas",
    ] {
        expect_status(&r, id, "forbidden", 403);
        ids.push(id.to_string());
    }
    for id in [
        "admission.default-sa",
        "admission.sa-group",
        "admission.crb-all-sas",
    ] {
        let msg = &r.row(id).unwrap().message;
        assert!(msg.contains("ValidatingAdmissionPolicy"), "{id}: {msg}");
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), 47);
    all_rows_checked(&r, &ids);

    // The fixed cluster passes --fail-on high; a binding that hands
    // Secrets to a ServiceAccount makes it fail, and -o json names it.
    sa_lab(&["audit", "--kubeconfig", &kc, "--fail-on", "high"], &[]).success();
    c.kubectl_ok(&[
        "create",
        "rolebinding",
        "reads-secrets-again",
        "-n",
        "production",
        "--role=secret-reader",
        "--serviceaccount=production:config-reader",
    ]);
    // The course's label: the next chapter's clean slate removes it even
    // if this test stops early (kind runs every chapter on one cluster).
    c.kubectl_ok(&[
        "label",
        "rolebinding",
        "reads-secrets-again",
        "-n",
        "production",
        "app.kubernetes.io/part-of=sa-lab",
    ]);
    let before = c.kubectl_ok(&[
        "get",
        "rolebindings,clusterrolebindings",
        "-A",
        "-o",
        "name",
    ]);
    let out = sa_lab(
        &[
            "audit",
            "--kubeconfig",
            &kc,
            "--fail-on",
            "high",
            "-o",
            "json",
        ],
        &[],
    )
    .code(1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    let hit = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["evidence"]["binding"] == "RoleBinding production/reads-secrets-again")
        .unwrap_or_else(|| panic!("not found: {v:#}"));
    assert_eq!(hit["rule"], "SA010");
    assert_eq!(hit["severity"], "high");
    assert_eq!(
        hit["evidence"]["subject"],
        "serviceaccount production/config-reader"
    );
    assert_eq!(hit["evidence"]["role"], "Role production/secret-reader");
    assert_eq!(hit["confirmed"], true);
    // --fail-on critical does not fail on a high finding.
    sa_lab(
        &["audit", "--kubeconfig", &kc, "--fail-on", "critical"],
        &[],
    )
    .success();
    // Read-only: the audit changed no binding.
    let after = c.kubectl_ok(&[
        "get",
        "rolebindings,clusterrolebindings",
        "-A",
        "-o",
        "name",
    ]);
    assert_eq!(before, after);
    c.kubectl_ok(&[
        "delete",
        "rolebinding",
        "reads-secrets-again",
        "-n",
        "production",
    ]);
    // The role it ships is what --print-role prints.
    let role = stdout(&sa_lab(&["audit", "--print-role"], &[]).success());
    assert!(
        role.contains("name: sa-lab-audit") && !role.contains("\"delete\""),
        "{role}"
    );
}

#[test]
fn audit_without_a_cluster_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = sa_lab(
        &["audit", "--name", "nothing-here"],
        &[("SA_LAB_HOME", tmp.path().to_str().unwrap())],
    )
    .code(2);
    let err = common::stderr(&out);
    assert!(
        err.contains("no local cluster \"nothing-here\" is running"),
        "{err}"
    );
    assert!(err.contains("--kubeconfig"), "{err}");
}
