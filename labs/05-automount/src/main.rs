//! Chapter 5: automount off. The lab reports what is at the mount path,
//! what `Config::incluster()` makes of that, and (in the Pod that asks for
//! explicit tokens) what the API server thinks of an anonymous request, of
//! a token minted for the API server and of one minted for another
//! audience.

use lab_kit::probe::{Outcome, classify};
use lab_kit::report::{ProbeRow, Report};
use lab_kit::{SA_DIR, TOKEN_PATH};

/// What is at `dir`: `absent`, `empty`, or `files`.
fn dir_state(dir: &str) -> &'static str {
    match std::fs::read_dir(dir) {
        Err(_) => "absent",
        Ok(mut entries) => match entries.next() {
            None => "empty",
            Some(_) => "files",
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("05", "lab-05-automount");
    // ANCHOR: observe
    // What is there, observed: the directory, its files, the token file.
    report.fact("sa_dir", dir_state(SA_DIR));
    report.fact("files", lab_kit::list_dir(SA_DIR));
    report.fact("token_file", std::path::Path::new(TOKEN_PATH).exists());
    let host = std::env::var("KUBERNETES_SERVICE_HOST").is_ok();
    report.fact("kubernetes_service_host_set", host);
    // ANCHOR_END: observe

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
        // kube's own error, word for word.
        Err(e) => {
            ProbeRow::simple("incluster", Outcome::Error, None, &e.to_string())
        }
    };
    report.rows.push(row);
    // ANCHOR_END: client

    for (var, run) in [("VAULT_TOKEN_DIR", "vault"), ("API_TOKEN_DIR", "api")] {
        let Ok(dir) = std::env::var(var) else {
            continue;
        };
        let done = match run {
            "vault" => without_mounted_token(&mut report, &dir).await,
            _ => with_explicit_api_token(&mut report, &dir).await,
        };
        if let Err(e) = done {
            let msg = format!("{e:#}");
            report
                .rows
                .push(ProbeRow::simple(run, Outcome::Error, None, &msg));
        }
    }
    report.finish();
    Ok(())
}

async fn without_mounted_token(
    report: &mut Report,
    dir: &str,
) -> anyhow::Result<()> {
    let server = lab_kit::apiserver_url_from_env()?;
    let ca = std::fs::read(format!("{dir}/ca.crt"))?;
    let pods = format!("{server}/api/v1/namespaces/production/pods");

    // ANCHOR: anonymous
    // No Authorization header at all: the API server sees system:anonymous.
    let res = lab_kit::https::get(&pods, &ca, None).await?;
    report.rows.push(pods_row("anonymous-get-pods", &res));
    // Anonymous may read a little here: /version is public (clusters may
    // restrict anonymous access to a few endpoints, or turn it off).
    let version = format!("{server}/version");
    let res = lab_kit::https::get(&version, &ca, None).await?;
    let (status, msg) = (res.status, res.message());
    let row = ProbeRow::simple(
        "anonymous-get-version",
        Outcome::from_status(status),
        Some(status),
        &msg,
    );
    report.rows.push(row.audited(res.audit_id));
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
    report.rows.push(pods_row("vault-token-get-pods", &res));
    // ANCHOR_END: vault-token
    Ok(())
}

/// The same GET with a token projected explicitly for the API server.
async fn with_explicit_api_token(
    report: &mut Report,
    dir: &str,
) -> anyhow::Result<()> {
    let server = lab_kit::apiserver_url_from_env()?;
    let ca = std::fs::read(format!("{dir}/ca.crt"))?;
    let pods = format!("{server}/api/v1/namespaces/production/pods");
    let token = std::fs::read_to_string(format!("{dir}/token"))?;
    let res = lab_kit::https::get(&pods, &ca, Some(&token)).await?;
    report.rows.push(pods_row("api-token-get-pods", &res));
    Ok(())
}

/// A raw GET of /api/v1/namespaces/production/pods, as a report row.
fn pods_row(id: &str, res: &lab_kit::https::RawResponse) -> ProbeRow {
    ProbeRow::http(id, "list", "pods", "production", res.status, &res.message())
        .audited(res.audit_id.clone())
}
