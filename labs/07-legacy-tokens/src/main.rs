//! Chapter 7: a legacy Secret-based token, mounted the way Pods got their
//! token before Kubernetes 1.22. The lab reports the files it finds, the
//! token's claims (no `exp`, the legacy issuer, the Secret's name), and who
//! the API server says it is when in-cluster config uses that token.

use lab_kit::probe::{Outcome, classify};
use lab_kit::report::{ProbeRow, Report};
use lab_kit::{SA_DIR, TOKEN_PATH};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("07", "lab-07-legacy-tokens");
    report.fact("files", lab_kit::list_dir(SA_DIR));

    // ANCHOR: claims
    // The legacy token's claims: a subject and the Secret it lives in,
    // the legacy issuer, and no `exp`, `aud`, `iat` or Pod.
    let token = std::fs::read_to_string(TOKEN_PATH).unwrap_or_default();
    let claims = lab_kit::jwt::decode_payload(&token).unwrap_or_default();
    report.fact("iss", &claims["iss"]);
    report.fact("sub", &claims["sub"]);
    report.fact("has_exp", claims.get("exp").is_some());
    let secret = &claims["kubernetes.io/serviceaccount/secret.name"];
    report.fact("secret_name", secret);
    // ANCHOR_END: claims

    // ANCHOR: client
    // The Secret holds token, ca.crt and namespace: exactly the files
    // in-cluster config reads, so the client works as with a bound token.
    let row = match kube::Config::incluster() {
        Ok(config) => {
            let client = kube::Client::try_from(config)?;
            let res = lab_kit::identity::whoami(&client).await;
            let (outcome, status, message) = classify(&res);
            if let Ok(who) = &res {
                let pod = who.extra.get("authentication.kubernetes.io/pod-name");
                report.fact("extra_pod", pod);
            }
            let who = res.map(|i| i.username).unwrap_or(message);
            ProbeRow::simple("incluster", outcome, status, &who)
        }
        Err(e) => {
            ProbeRow::simple("incluster", Outcome::Error, None, &e.to_string())
        }
    };
    report.rows.push(row);
    // ANCHOR_END: client
    report.finish();
    Ok(())
}
