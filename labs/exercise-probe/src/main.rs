//! The exercises' probe: runs in a Pod as its ServiceAccount and answers
//! what `sa-lab check` asks in `SA_LAB_ASKS` (see `lab_kit::ask`): each
//! request as a report row (with what the authorizer says about the same
//! attributes), each other observation as a fact under its id. A missing
//! token is an answer, not a crash: requests then report `error` with
//! kube's own words.

use std::path::Path;

use anyhow::Context as _;
use kube::Client;
use lab_kit::ask::{self, Ask, What};
use lab_kit::probe::Outcome;
use lab_kit::report::Report;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("exercise", "lab-exercise-probe");
    let asks = std::env::var(ask::ASKS_ENV).context(
        "SA_LAB_ASKS is not set: this probe runs in Pods made by `sa-lab check`",
    )?;
    let asks = ask::parse(&asks).context("SA_LAB_ASKS is not a list of asks")?;
    let pod = lab_kit::pod_name().unwrap_or_default();
    // The Pod's own credential, as every client in a Pod finds it.
    let own = kube::Config::incluster()
        .map_err(|e| e.to_string())
        .and_then(|c| Client::try_from(c).map_err(|e| e.to_string()));
    for a in asks {
        answer(&mut report, &a, &pod, &own).await;
    }
    report.finish();
    Ok(())
}

async fn answer(
    report: &mut Report,
    a: &Ask,
    pod: &str,
    own: &Result<Client, String>,
) {
    match &a.what {
        What::Request { request, token } => {
            let probe = request.probe(&a.id, pod);
            let row = match (token, own) {
                (Some(path), _) => match client_with_token(path) {
                    Ok(c) => probe.run(&c).await,
                    Err(e) => probe.row(Outcome::Error, None, &format!("{e:#}")),
                },
                (None, Ok(c)) => probe.run_and_ask(c).await,
                (None, Err(e)) => {
                    probe.row(Outcome::Error, None, &format!("no credentials: {e}"))
                }
            };
            report.rows.push(row);
        }
        What::Whoami => {
            let who = match own {
                Ok(c) => match lab_kit::identity::whoami(c).await {
                    Ok(id) => {
                        let name = id.username.clone();
                        report.identity = Some(id);
                        name
                    }
                    Err(e) => format!(
                        "error: {}",
                        lab_kit::probe::classify::<()>(&Err(e)).2
                    ),
                },
                Err(e) => format!("error: {e}"),
            };
            report.fact(&a.id, who);
        }
        What::File { path } => {
            let state = if Path::new(path).exists() {
                "present"
            } else {
                "absent"
            };
            report.fact(&a.id, state);
        }
        What::Claim { path, claim } => {
            let value =
                read_claim(path, claim).unwrap_or_else(|e| format!("error: {e:#}"));
            report.fact(&a.id, value);
        }
    }
}

/// Claim `claim` of the JWT in `path`, as text.
fn read_claim(path: &str, claim: &str) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let claims = lab_kit::jwt::decode_payload(&token)?;
    Ok(claim_text(&claims, claim))
}

/// Claim `claim` of `claims` as text: `aud` as its values joined by `, `,
/// `ttl` as `exp - iat`, a JSON pointer (`/kubernetes.io/pod/name`) as
/// what it points at, any other claim as written; `(none)` if missing.
fn claim_text(claims: &serde_json::Value, claim: &str) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "(none)".into(),
        v => v.to_string(),
    };
    match claim {
        "aud" => match &claims["aud"] {
            serde_json::Value::Array(a) => {
                a.iter().map(text).collect::<Vec<_>>().join(", ")
            }
            v => text(v),
        },
        "ttl" => {
            let secs = |k: &str| claims[k].as_i64().unwrap_or(0);
            (secs("exp") - secs("iat")).to_string()
        }
        pointer if pointer.starts_with('/') => {
            text(claims.pointer(pointer).unwrap_or(&serde_json::Value::Null))
        }
        other => text(&claims[other]),
    }
}

/// A client that sends the token in `path` and nothing else, trusting the
/// CA `check` passed (else the `ca.crt` next to the token, else the
/// mounted one).
fn client_with_token(path: &str) -> anyhow::Result<Client> {
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let beside = Path::new(path).with_file_name("ca.crt");
    let ca = match std::env::var(ask::CA_ENV) {
        Ok(pem) if !pem.trim().is_empty() => pem.into_bytes(),
        _ => std::fs::read(&beside)
            .or_else(|_| std::fs::read(lab_kit::CA_PATH))
            .with_context(|| {
                format!("no ca.crt beside {path} or at {}", lab_kit::CA_PATH)
            })?,
    };
    let url = lab_kit::apiserver_url_from_env()?;
    let mut cfg = kube::Config::new(url.parse().context("the API server URL")?);
    let certs = CertificateDer::pem_slice_iter(&ca)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .context("bad PEM in ca.crt")?;
    cfg.root_cert = Some(certs);
    let value = format!("Bearer {}", token.trim())
        .parse()
        .context("the token is not a header value")?;
    cfg.headers.push((http::header::AUTHORIZATION, value));
    Ok(Client::try_from(cfg)?)
}

#[cfg(test)]
mod tests {
    use super::claim_text;

    #[test]
    fn claims_as_text() {
        let bound = serde_json::json!({
            "aud": ["a", "b"], "iat": 10, "exp": 610,
            "iss": "https://issuer",
            "kubernetes.io": {"pod": {"name": "reporter"}},
        });
        assert_eq!(claim_text(&bound, "aud"), "a, b");
        assert_eq!(claim_text(&bound, "ttl"), "600");
        assert_eq!(claim_text(&bound, "iss"), "https://issuer");
        assert_eq!(claim_text(&bound, "/kubernetes.io/pod/name"), "reporter");
        let legacy = serde_json::json!({"iss": "kubernetes/serviceaccount"});
        assert_eq!(claim_text(&legacy, "/kubernetes.io/pod/name"), "(none)");
        assert_eq!(claim_text(&legacy, "exp"), "(none)");
    }
}
