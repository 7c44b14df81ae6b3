//! Chapter 1: who is this Pod? The lab asks the API server
//! (SelfSubjectReview) which identity its mounted credential stands for.

use lab_kit::probe::{Outcome, classify};
use lab_kit::report::{ProbeRow, Report};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("01", "lab-01-identity");

    // ANCHOR: client
    // In a Pod: KUBERNETES_SERVICE_HOST/PORT plus the mounted token,
    // ca.crt and namespace. Never a kubeconfig.
    let client = match kube::Config::incluster() {
        Ok(config) => kube::Client::try_from(config)?,
        Err(e) => {
            let msg = format!("no in-cluster config: {e}");
            let row = ProbeRow::simple("whoami", Outcome::Error, None, &msg);
            report.rows.push(row);
            report.finish();
            return Ok(());
        }
    };
    // ANCHOR_END: client

    // ANCHOR: probes
    // `kubectl auth whoami`, from inside the Pod.
    let res = lab_kit::identity::whoami(&client).await;
    let (outcome, status, message) = classify(&res);
    if let Ok(identity) = res {
        report.identity = Some(identity);
    }
    let row = ProbeRow {
        verb: "create".into(),
        group: "authentication.k8s.io".into(),
        resource: "selfsubjectreviews".into(),
        ..ProbeRow::simple("whoami", outcome, status, &message)
    };
    report.rows.push(row);
    // ANCHOR_END: probes

    report.finish();
    Ok(())
}
