//! Chapter 4, the runner's side: the same lab runs as `default` (the `web`
//! Pod), as the dedicated `app` and as `deployer`, first with secret-reader
//! bound to `default` (misconfigured), then bound to `app` only (fixed).

use kube::ResourceExt as _;

use crate::chapters::kit::{self, Error, LabRun, PRODUCTION, RunContext, probe_row, service_account_of};
use crate::chapters::Row;

kit::chapter! { 4, "04-default-sa", "Why default must stay unprivileged";
    NAMESPACE = "00-namespace.yaml",
    ROLE = "01-role.yaml",
    DEFAULT_BINDING = "02-default-binding.yaml",
    WEB_POD = "03-web-pod.yaml",
    APP_SERVICEACCOUNT = "04-app-serviceaccount.yaml",
    APP_BINDING = "05-app-binding.yaml",
    APP_POD = "06-app-pod.yaml",
    DEPLOYER = "07-deployer.yaml",
    DEPLOYER_POD = "08-deployer-pod.yaml";
    exercises:
    OWN_ACCOUNT = "04-own-account" => ["pod.yaml", "rbac.yaml", "serviceaccount.yaml"],
    FIND_THE_LEAKS = "04-find-the-leaks" => ["rbac.yaml", "serviceaccounts.yaml"],
    PREDICT = "04-predict" => ["predictions.yaml"],
}

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    let secrets = kit::attrs("list", "", "secrets", PRODUCTION);
    let pods = [WEB_POD, APP_POD, DEPLOYER_POD];
    let mut rows = Vec::new();

    // Misconfigured: secret-reader bound to `default`.
    cx.apply(&[NAMESPACE, ROLE, DEFAULT_BINDING, APP_SERVICEACCOUNT, DEPLOYER])
        .await?;
    cx.wait_namespace(PRODUCTION, &["app", "deployer"]).await?;
    cx.wait_authorizer(PRODUCTION, "default", &secrets, true).await?;
    cx.wait_authorizer(PRODUCTION, "app", &secrets, false).await?;
    let create_pods = kit::attrs("create", "", "pods", PRODUCTION);
    cx.wait_authorizer(PRODUCTION, "deployer", &create_pods, true).await?;
    rows.extend(phase_rows("misconfigured", &cx.run_pods(&pods).await?));

    // Fixed: bound to the dedicated ServiceAccount, `default` binding gone.
    cx.apply(&[APP_BINDING]).await?;
    cx.remove(&[DEFAULT_BINDING]).await?;
    cx.wait_authorizer(PRODUCTION, "default", &secrets, false).await?;
    cx.wait_authorizer(PRODUCTION, "app", &secrets, true).await?;
    rows.extend(phase_rows("fixed", &cx.run_pods(&pods).await?));
    Ok(rows)
}

fn phase_rows(phase: &str, runs: &[LabRun]) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in runs {
        let pod = run.pod.name_any();
        let subject = service_account_of(run);
        for p in &run.report.rows {
            rows.push(probe_row(format!("{phase}.{pod}.{}", p.id), &subject, Some(p)));
        }
    }
    rows
}
