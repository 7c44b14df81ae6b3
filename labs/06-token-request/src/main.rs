//! Chapter 6: tokens on demand. One program, three roles, chosen by
//! `SA_LAB_PHASE`:
//!
//! - `app`: the application's Pod (tokens get bound to it); it says who it
//!   is.
//! - `mint`: asks the TokenRequest API for a token for pod-manager and for
//!   itself, and asks the authorizer about the same attributes.
//! - `review`: a service that was handed tokens (files under `REVIEW_DIR`).
//!   It checks each one online (TokenReview, with and without its own
//!   audience) and offline (the signature with the issuer's public keys,
//!   then `iss`, `aud` and `exp`), and reads the issuer's discovery
//!   document and keys, with its token and without one.
//!
//! No token is ever printed or reported: only what was decided about it.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use lab_kit::probe::{Outcome, Probe, classify};
use lab_kit::report::{ProbeRow, Report};
use serde_json::json;

const NS: &str = "production";
/// The audience of the service in this story.
const VAULT: &str = "vault";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("06", "lab-06-token-request");

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
    let done = match report.phase.as_deref() {
        Some("mint") => mint(&client, &mut report).await,
        Some("review") => review(&client, &mut report).await,
        // `app`: being there, with an identity, is the whole job.
        _ => Ok(()),
    };
    if let Err(e) = done {
        let msg = format!("{e:#}");
        report
            .rows
            .push(ProbeRow::simple("lab", Outcome::Error, None, &msg));
    }
    report.finish();
    Ok(())
}

// ANCHOR: mint
/// Ask for a 10-minute token for `sa`: `kubectl create token <sa>
/// --duration=10m`, which is `create` on `serviceaccounts/token`.
async fn request_token(
    client: &Client,
    sa: &str,
) -> Result<TokenRequest, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
}
// ANCHOR_END: mint

/// A token for pod-manager, and one for token-minter itself. Each answer
/// goes next to the authorizer's for the same attributes.
async fn mint(client: &Client, report: &mut Report) -> anyhow::Result<()> {
    let me = report
        .identity
        .as_ref()
        .and_then(|i| i.username.rsplit(':').next().map(str::to_owned))
        .unwrap_or_else(|| "token-minter".into());
    for (id, sa) in [
        ("mint-pod-manager", "pod-manager"),
        ("mint-self", me.as_str()),
    ] {
        let probe = Probe::new(id, "create", "serviceaccounts")
            .ns(NS)
            .name(sa)
            .subresource("token");
        let res = request_token(client, sa).await;
        // What was granted, never the token itself.
        let granted = res.as_ref().ok().map(|tr| {
            let token = tr
                .status
                .as_ref()
                .and_then(|s| s.token.as_deref())
                .unwrap_or_default();
            let c = lab_kit::jwt::decode_payload(token).unwrap_or_default();
            let secs =
                c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0);
            format!("a token for {sa}, valid for {secs} s")
        });
        let (outcome, status, message) = classify(&res);
        let mut row = probe.row(outcome, status, &granted.unwrap_or(message));
        row.authorizer = Some(probe.ask_authorizer(client).await.0);
        report.rows.push(row);
    }
    Ok(())
}

/// The issuer's discovery document and keys, read the way a service would
/// (with its own token; and once without any), then every token under
/// `REVIEW_DIR` checked online and offline.
async fn review(client: &Client, report: &mut Report) -> anyhow::Result<()> {
    let server = lab_kit::apiserver_url_from_env()?;
    let ca = std::fs::read(lab_kit::CA_PATH)?;
    let own = std::fs::read_to_string(lab_kit::TOKEN_PATH)?;

    // ANCHOR: discovery
    // OIDC discovery: where the issuer says its keys are, then the keys.
    // The API server serves both to every ServiceAccount (the built-in
    // binding system:service-account-issuer-discovery), not to anonymous.
    let url = format!("{server}/.well-known/openid-configuration");
    let doc = lab_kit::https::get(&url, &ca, Some(&own)).await?;
    let discovery: serde_json::Value =
        serde_json::from_slice(&doc.body).unwrap_or_default();
    let issuer = discovery["issuer"].as_str().unwrap_or_default().to_string();
    let jwks_url = format!("{server}/openid/v1/jwks");
    let keys = lab_kit::https::get(&jwks_url, &ca, Some(&own)).await?;
    let jwks: JwkSet =
        serde_json::from_slice(&keys.body).unwrap_or(JwkSet { keys: vec![] });
    let anonymous = lab_kit::https::get(&jwks_url, &ca, None).await?;
    // ANCHOR_END: discovery

    let jwks_uri = discovery["jwks_uri"].as_str().unwrap_or_default();
    let about_doc =
        format!("issuer {issuer}, jwks_uri …{}", tail(jwks_uri, "/openid"));
    report
        .rows
        .push(http_row("discovery", doc.status, &about_doc, &doc));
    let algs: Vec<String> = jwks
        .keys
        .iter()
        .filter_map(|k| k.common.key_algorithm.map(|a| a.to_string()))
        .collect();
    let about_keys = format!("{} key(s), {}", jwks.keys.len(), algs.join(", "));
    report
        .rows
        .push(http_row("jwks", keys.status, &about_keys, &keys));
    let anon_msg = anonymous.message();
    report.rows.push(http_row(
        "jwks-anonymous",
        anonymous.status,
        &anon_msg,
        &anonymous,
    ));
    report.fact("issuer", &issuer);

    let dir = std::env::var("REVIEW_DIR")
        .unwrap_or_else(|_| "/var/run/sa-lab/review".into());
    for name in lab_kit::list_dir(&dir) {
        let token = std::fs::read_to_string(format!("{dir}/{name}"))?;
        let token = token.trim();
        for (suffix, audiences) in [
            ("review", vec![VAULT.to_string()]),
            ("review-no-aud", vec![]),
        ] {
            let (row, seen) =
                token_review(client, &format!("{name}.{suffix}"), token, audiences)
                    .await;
            report.rows.push(row);
            report.fact(&format!("{name}.{suffix}"), seen);
        }
        let offline =
            |t: &str, aud: &str| match verify_offline(t, &jwks, &issuer, aud) {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
        report.fact(&format!("{name}.offline"), offline(token, VAULT));
        report.fact(&format!("{name}.offline-api-aud"), offline(token, &issuer));
        let corrupted = lab_kit::jwt::corrupt(token);
        report.fact(
            &format!("{name}.offline-corrupted"),
            offline(&corrupted, VAULT),
        );
        if let Ok(claims) = lab_kit::jwt::decode_payload(token) {
            report.fact(&format!("{name}.iss"), &claims["iss"]);
        }
    }
    Ok(())
}

// ANCHOR: review
/// Ask the API server about `token`, as a service does before trusting
/// it: is it valid, whose is it, and is it meant for `audiences`?
/// (Empty: the API server's own audiences.)
async fn token_review(
    client: &Client,
    id: &str,
    token: &str,
    audiences: Vec<String>,
) -> (ProbeRow, serde_json::Value) {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: (!audiences.is_empty()).then_some(audiences),
        },
        ..Default::default()
    };
    let res = api.create(&PostParams::default(), &review).await;
    // ANCHOR_END: review
    let probe = Probe::new(id, "create", "tokenreviews")
        .group("authentication.k8s.io", "v1");
    let (outcome, status, message) = classify(&res);
    let seen = match res {
        Ok(r) => {
            let st = r.status.unwrap_or_default();
            let user = st.user.unwrap_or_default();
            let extra = user.extra.unwrap_or_default();
            json!({
                "authenticated": st.authenticated.unwrap_or(false),
                "user": user.username,
                "pod": extra.get("authentication.kubernetes.io/pod-name"),
                "audiences": st.audiences,
                "error": st.error.map(|e| lab_kit::truncate(&e, 100)),
            })
        }
        Err(_) => json!(null),
    };
    (probe.row(outcome, status, &message), seen)
}

// ANCHOR: offline
/// Verify a ServiceAccount token without asking the API server: find the
/// key the token names (`kid`) in the issuer's JWKS, check the signature
/// with that key's own algorithm (never the one the token claims), then
/// `iss`, `aud` and `exp`. That is all a verifier can do offline: it
/// cannot know whether the Pod the token is bound to still exists.
fn verify_offline(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> jsonwebtoken::errors::Result<serde_json::Value> {
    use jsonwebtoken::errors::ErrorKind;
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.ok_or(ErrorKind::InvalidToken)?;
    let jwk = jwks.find(&kid).ok_or(ErrorKind::InvalidKeyFormat)?;
    let alg = jwk
        .common
        .key_algorithm
        .ok_or(ErrorKind::MissingAlgorithm)?;
    let alg = Algorithm::try_from(alg)?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    let key = DecodingKey::from_jwk(jwk)?;
    Ok(jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?.claims)
}
// ANCHOR_END: offline

/// The part of `s` from `from` on (or all of it).
fn tail<'a>(s: &'a str, from: &str) -> &'a str {
    s.find(from).map_or(s, |i| &s[i..])
}

/// A raw GET of a non-resource path, as a report row.
fn http_row(
    id: &str,
    status: u16,
    ok_message: &str,
    res: &lab_kit::https::RawResponse,
) -> ProbeRow {
    let message = if (200..300).contains(&status) {
        ok_message.to_string()
    } else {
        res.message()
    };
    let mut row =
        ProbeRow::simple(id, Outcome::from_status(status), Some(status), &message);
    row.verb = "get".into();
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    #[test]
    fn tail_keeps_the_path() {
        assert_eq!(
            tail("https://10.0.0.1:6443/openid/v1/jwks", "/openid"),
            "/openid/v1/jwks"
        );
        assert_eq!(tail("nothing", "/openid"), "nothing");
    }

    /// A JWKS with one HMAC key: offline checks see a good token, a wrong
    /// audience, a wrong issuer and a corrupted signature for what they are.
    #[test]
    fn offline_checks_signature_issuer_and_audience() {
        let secret = b"a test key, not a ServiceAccount key";
        let jwks: JwkSet = serde_json::from_value(json!({"keys": [{
            "kty": "oct", "kid": "k1", "alg": "HS256",
            "k": "YSB0ZXN0IGtleSwgbm90IGEgU2VydmljZUFjY291bnQga2V5"
        }]}))
        .unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = json!({"iss": "https://issuer", "aud": ["vault"], "sub": "s", "exp": exp});
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        assert!(verify_offline(&token, &jwks, "https://issuer", "vault").is_ok());
        let kind = |r: jsonwebtoken::errors::Result<serde_json::Value>| {
            format!("{:?}", r.unwrap_err().kind())
        };
        assert_eq!(
            kind(verify_offline(&token, &jwks, "https://issuer", "api")),
            "InvalidAudience"
        );
        assert_eq!(
            kind(verify_offline(&token, &jwks, "https://other", "vault")),
            "InvalidIssuer"
        );
        let bad = lab_kit::jwt::corrupt(&token);
        assert_eq!(
            kind(verify_offline(&bad, &jwks, "https://issuer", "vault")),
            "InvalidSignature"
        );
        let no_key = JwkSet { keys: vec![] };
        assert_eq!(
            kind(verify_offline(&token, &no_key, "https://issuer", "vault")),
            "InvalidKeyFormat"
        );
    }
}
