//! The API "by hand": one HTTPS GET with a bearer token and `ca.crt` as the
//! only trust root, what
//! `curl --cacert ca.crt -H "Authorization: Bearer $TOKEN" URL` does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Status and body of a raw HTTPS answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
    /// The `Audit-Id` header, if the API server sent one.
    pub audit_id: Option<String>,
}

impl RawResponse {
    /// The short message (Status message or object kind) of the answer.
    pub fn message(&self) -> String {
        crate::probe::message_of(self.status, &self.body)
    }
}

// ANCHOR: trust-ca
/// A TLS config that trusts exactly the CA certificates in `ca_pem`.
pub fn tls_trusting(ca_pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("bad PEM in ca.crt")?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "ca.crt holds no certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
// ANCHOR_END: trust-ca

/// GET `url`, trusting only `ca_pem`, sending `Authorization: Bearer
/// <token>` if a token is given (none = anonymous).
pub async fn get(
    url: &str,
    ca_pem: &[u8],
    token: Option<&str>,
) -> anyhow::Result<RawResponse> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_trusting(ca_pem)?)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(https);
    // ANCHOR: bearer
    let mut req = http::Request::get(url);
    if let Some(token) = token {
        let value = format!("Bearer {}", token.trim());
        req = req.header(http::header::AUTHORIZATION, value);
    }
    // ANCHOR_END: bearer
    let req = req.body(Empty::new())?;
    let res = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .context("timed out talking to the API server")?
        .with_context(|| format!("GET {url}"))?;
    let status = res.status().as_u16();
    let audit_id = crate::probe::audit_id(res.headers());
    let body = res.into_body().collect().await?.to_bytes().to_vec();
    Ok(RawResponse {
        status,
        body,
        audit_id,
    })
}
