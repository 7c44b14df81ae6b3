//! Chapter 4 on a fresh local cluster: a Role bound to `default`, an
//! unrelated `web` Pod, a `deployer` that may create Pods and Deployments,
//! then the fix (dedicated ServiceAccount).

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_04_default_sa() {
    common::require_binaries();
    let c = common::TestCluster::start("ch04").await;
    let r = chapter_kit::run(&c, "4").await;

    let mut ids = Vec::new();
    for phase in ["misconfigured", "fixed"] {
        let id = |pod: &str, probe: &str| format!("{phase}.{pod}.{probe}");
        let fixed = phase == "fixed";
        // The blast radius reaches `web` until the fix.
        let (web, app) = if fixed {
            ("forbidden", "allowed")
        } else {
            ("allowed", "forbidden")
        };
        let code = |o: &str| if o == "allowed" { 200 } else { 403 };
        expect_status(&r, &id("web", "list-secrets"), web, code(web));
        expect_status(&r, &id("app", "list-secrets"), app, code(app));
        expect_status(&r, &id("web", "list-pods"), "forbidden", 403);
        // Who may create Pods may run as any ServiceAccount of the
        // namespace, fix or not: deployer reads no Secrets itself, yet its
        // Pods and Deployments may run as `app`.
        expect_status(&r, &id("deployer", "list-pods"), "allowed", 200);
        expect_status(&r, &id("deployer", "list-secrets"), "forbidden", 403);
        expect_status(&r, &id("web", "create-pod-as-app"), "forbidden", 403);
        expect_status(&r, &id("deployer", "create-pod-as-app"), "allowed", 201);
        expect_status(
            &r,
            &id("deployer", "create-deployment-as-app"),
            "allowed",
            201,
        );
        for (pod, probe) in [
            ("web", "list-secrets"),
            ("app", "list-secrets"),
            ("web", "list-pods"),
            ("deployer", "list-pods"),
            ("deployer", "list-secrets"),
            ("web", "create-pod-as-app"),
            ("deployer", "create-pod-as-app"),
            ("deployer", "create-deployment-as-app"),
        ] {
            ids.push(id(pod, probe));
        }
    }
    assert_eq!(r.row("fixed.web.list-secrets").unwrap().subject, "default");
    assert_eq!(r.row("fixed.app.list-secrets").unwrap().subject, "app");
    assert_eq!(
        r.row("fixed.deployer.create-pod-as-app").unwrap().subject,
        "deployer"
    );
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    all_rows_checked(&r, &ids);

    // The dry runs stored nothing.
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("as-app"), "{pods}");
    let deployments = c.kubectl_ok(&["get", "deployments", "-n", "production", "-o", "name"]);
    assert!(deployments.trim().is_empty(), "{deployments}");

    // Re-running starts from the misconfiguration again.
    let again = chapter_kit::run(&c, "default-sa").await;
    assert!(again.passed(), "{}", sa_lab::chapters::render_table(&again));
}
