//! Chapter 4: the blast radius of `default`. The same program runs in the
//! unrelated `web` Pod (ServiceAccount `default`), in the `app` Pod (its
//! own ServiceAccount) and in the `deployer` Pod (may create Pods and
//! Deployments); what each may do depends only on the bindings.

use lab_kit::probe::{Outcome, Probe};
use lab_kit::report::{ProbeRow, Report};
use serde_json::json;

// ANCHOR: steal
/// A Pod that runs as `app`, and a Deployment whose Pods do: whoever may
/// create either in production can use app's permissions.
fn runs_as_app() -> (serde_json::Value, serde_json::Value) {
    let spec = json!({
        "serviceAccountName": "app",
        "containers": [{ "name": "c", "image": lab_kit::LAB_IMAGE }]
    });
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "as-app-" },
        "spec": spec
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "as-app" },
        "spec": {
            "selector": { "matchLabels": { "app": "as-app" } },
            "template": {
                "metadata": { "labels": { "app": "as-app" } },
                "spec": spec
            }
        }
    });
    (pod, deployment)
}
// ANCHOR_END: steal

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("04", "lab-04-default-sa");

    // ANCHOR: client
    let client = match kube::Config::incluster() {
        Ok(config) => kube::Client::try_from(config)?,
        Err(e) => {
            let msg = format!("no in-cluster config: {e}");
            let row = ProbeRow::simple("client", Outcome::Error, None, &msg);
            report.rows.push(row);
            report.finish();
            return Ok(());
        }
    };
    // ANCHOR_END: client

    report.identity = lab_kit::identity::whoami(&client).await.ok();
    // ANCHOR: probes
    let (pod, deployment) = runs_as_app();
    let probes = [
        Probe::new("list-secrets", "list", "secrets").ns("production"),
        Probe::new("list-pods", "list", "pods").ns("production"),
        // Mutating probes are dry runs: nothing is created.
        Probe::new("create-pod-as-app", "create", "pods")
            .ns("production")
            .body(pod),
        Probe::new("create-deployment-as-app", "create", "deployments")
            .group("apps", "v1")
            .ns("production")
            .body(deployment),
    ];
    for probe in probes {
        report.rows.push(probe.run_and_ask(&client).await);
    }
    // ANCHOR_END: probes

    report.finish();
    Ok(())
}
