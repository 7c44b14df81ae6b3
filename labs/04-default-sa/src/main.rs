//! Chapter 4: the blast radius of `default`. The same program runs in the
//! unrelated `web` Pod (ServiceAccount `default`) and in the `app` Pod (its
//! own ServiceAccount); what each may do depends only on the bindings.

use lab_kit::probe::{Outcome, Probe};
use lab_kit::report::{ProbeRow, Report};

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
    let probes = [
        Probe::new("list-secrets", "list", "secrets").ns("production"),
        Probe::new("list-pods", "list", "pods").ns("production"),
    ];
    for probe in probes {
        report.rows.push(probe.run_and_ask(&client).await);
    }
    // ANCHOR_END: probes

    report.finish();
    Ok(())
}
