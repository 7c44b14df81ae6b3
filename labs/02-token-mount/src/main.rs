//! Chapter 2: how the credential gets into the Pod. The lab looks at the
//! mounted files, decodes the token's claims, calls the API "by hand" (the
//! book's curl) and through kube-rs.

use anyhow::Context as _;
use lab_kit::probe::{Outcome, classify};
use lab_kit::report::{ProbeRow, Report};
use lab_kit::{CA_PATH, SA_DIR, TOKEN_PATH};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("02", "lab-02-token-mount");
    if let Err(e) = run(&mut report).await {
        let msg = format!("{e:#}");
        report
            .rows
            .push(ProbeRow::simple("lab", Outcome::Error, None, &msg));
    }
    report.finish();
    Ok(())
}

async fn run(report: &mut Report) -> anyhow::Result<()> {
    // ANCHOR: files
    // What the admission plugin's projected volume put in the Pod.
    report.fact("files", lab_kit::list_dir(SA_DIR));
    let ns = std::fs::read_to_string(lab_kit::NAMESPACE_PATH)?;
    report.fact("namespace", ns.trim());
    let token = std::fs::read_to_string(TOKEN_PATH)?;
    report.fact("token", lab_kit::redact(&token)); // never the whole token
    // ANCHOR_END: files

    // ANCHOR: claims
    let claims = lab_kit::jwt::decode_payload(&token)?;
    let k8s = &claims["kubernetes.io"];
    let iat = claims["iat"].as_i64().unwrap_or_default();
    let warnafter = k8s["warnafter"].as_i64().unwrap_or_default();
    let exp = claims["exp"].as_i64().unwrap_or_default();
    report.fact("iss", &claims["iss"]);
    report.fact("sub", &claims["sub"]);
    report.fact("aud", &claims["aud"]);
    report.fact("pod", &k8s["pod"]["name"]);
    report.fact("serviceaccount", &k8s["serviceaccount"]["name"]);
    report.fact("node", &k8s["node"]["name"]);
    report.fact("warnafter_minus_iat", warnafter - iat);
    report.fact("exp_minus_iat", exp - iat);
    report.fact(
        "has_jti_nbf",
        claims["jti"].is_string() && claims["nbf"].is_i64(),
    );
    // ANCHOR_END: claims

    // ANCHOR: by-hand
    // curl --cacert $SA/ca.crt -H "Authorization: Bearer $(cat $SA/token)" \
    //      https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT$PATH
    let server = lab_kit::apiserver_url_from_env()?;
    let url = format!("{server}/api/v1/namespaces/production/pods");
    let ca = std::fs::read(CA_PATH).context("read ca.crt")?;
    let res = lab_kit::https::get(&url, &ca, Some(&token)).await?;
    // ANCHOR_END: by-hand
    report.rows.push(pods_row("raw-get-pods", &res));

    // The same call with a token whose signature is broken: 401, not 403.
    let bad = lab_kit::jwt::corrupt(&token);
    let res = lab_kit::https::get(&url, &ca, Some(&bad)).await?;
    let row = pods_row("raw-get-pods-corrupted", &res);
    report.rows.push(row);

    // ANCHOR: client
    // The same credential through kube-rs: Config::incluster() reads the
    // same three files (and re-reads the token as the node refreshes it).
    let config = kube::Config::incluster()?;
    let client = kube::Client::try_from(config)?;
    let res = lab_kit::identity::whoami(&client).await;
    // ANCHOR_END: client
    let (outcome, status, message) = classify(&res);
    if let Ok(identity) = res {
        report.identity = Some(identity);
    }
    report.rows.push(ProbeRow {
        verb: "create".into(),
        group: "authentication.k8s.io".into(),
        resource: "selfsubjectreviews".into(),
        ..ProbeRow::simple("kube-whoami", outcome, status, &message)
    });
    Ok(())
}

/// A raw GET of /api/v1/namespaces/production/pods, as a report row.
fn pods_row(id: &str, res: &lab_kit::https::RawResponse) -> ProbeRow {
    ProbeRow::http(id, "list", "pods", "production", res.status, &res.message())
        .audited(res.audit_id.clone())
}
