//! Chapter 5: automount off. The lab reports whether a token was mounted,
//! what `Config::incluster()` makes of that, and (in the Pod that asks
//! for one) what the API server thinks of an anonymous request and of a
//! token minted for another audience.

use std::path::Path;

use lab_kit::probe::{Outcome, classify};
use lab_kit::report::{ProbeRow, Report};
use lab_kit::{SA_DIR, TOKEN_PATH};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("05", "lab-05-automount");
    let files = lab_kit::list_dir(SA_DIR);
    report.fact("files", &files);
    let host = std::env::var("KUBERNETES_SERVICE_HOST").is_ok();
    report.fact("kubernetes_service_host_set", host);

    // ANCHOR: client
    // With automount off, KUBERNETES_SERVICE_HOST is still set, but
    // there is nothing at the mount path: in-cluster config fails.
    let row = match kube::Config::incluster() {
        Ok(config) => {
            let client = kube::Client::try_from(config)?;
            let res = lab_kit::identity::whoami(&client).await;
            let (outcome, status, message) = classify(&res);
            let who = res.map(|i| i.username).unwrap_or(message);
            ProbeRow::simple("incluster", outcome, status, &who)
        }
        Err(e) => {
            let msg = if Path::new(TOKEN_PATH).exists() {
                format!("in-cluster config failed: {e}")
            } else {
                format!("no token at {TOKEN_PATH} (automount off): {e}")
            };
            ProbeRow::simple("incluster", Outcome::Error, None, &msg)
        }
    };
    report.rows.push(row);
    // ANCHOR_END: client

    if let Ok(dir) = std::env::var("VAULT_TOKEN_DIR")
        && let Err(e) = without_mounted_token(&mut report, &dir).await
    {
        let msg = format!("{e:#}");
        report
            .rows
            .push(ProbeRow::simple("vault", Outcome::Error, None, &msg));
    }
    report.finish();
    Ok(())
}

async fn without_mounted_token(report: &mut Report, dir: &str) -> anyhow::Result<()> {
    let server = lab_kit::apiserver_url_from_env()?;
    let ca = std::fs::read(format!("{dir}/ca.crt"))?;
    let pods = format!("{server}/api/v1/namespaces/production/pods");

    // ANCHOR: anonymous
    // No Authorization header at all: the API server sees system:anonymous.
    let res = lab_kit::https::get(&pods, &ca, None).await?;
    report
        .rows
        .push(pods_row("anonymous-get-pods", res.status, &res.message()));
    // Anonymous may read a little: /version is public.
    let version = format!("{server}/version");
    let res = lab_kit::https::get(&version, &ca, None).await?;
    let (status, msg) = (res.status, res.message());
    let row = ProbeRow::simple(
        "anonymous-get-version",
        Outcome::from_status(status),
        Some(status),
        &msg,
    );
    report.rows.push(row);
    // ANCHOR_END: anonymous

    // ANCHOR: vault-token
    // A token for "vault", not for the API server: wrong audience, 401.
    let token = std::fs::read_to_string(format!("{dir}/token"))?;
    let claims = lab_kit::jwt::decode_payload(&token)?;
    report.fact("vault_aud", &claims["aud"]);
    let secs = |k: &str| claims[k].as_i64().unwrap_or(0);
    let ttl = secs("exp") - secs("iat");
    report.fact("vault_ttl", ttl);
    let res = lab_kit::https::get(&pods, &ca, Some(&token)).await?;
    report
        .rows
        .push(pods_row("vault-token-get-pods", res.status, &res.message()));
    // ANCHOR_END: vault-token
    Ok(())
}

/// A raw GET of /api/v1/namespaces/production/pods, as a report row.
fn pods_row(id: &str, status: u16, message: &str) -> ProbeRow {
    ProbeRow::http(id, "list", "pods", "production", status, message)
}
