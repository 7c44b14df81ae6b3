//! The node's HTTPS endpoint for `kubectl logs`: the API server dials
//! `https://<InternalIP>:<kubeletEndpoint.port>/containerLogs/{ns}/{pod}/{container}`.
//!
//! Like a kubelet (`--anonymous-auth=false`, `--client-ca-file`, webhook
//! authentication and authorization) it checks who asks, on every path: a
//! client certificate the cluster CA signed names the caller (CN the user,
//! O the groups), else a bearer token the API server vouches for
//! (TokenReview), else the answer is 401. The API server then decides
//! (SubjectAccessReview) whether that caller may `get` the node's `proxy`
//! subresource (`healthz` too for `/healthz`), else 403, with the
//! kubelet's words. The API server's kubelet client certificate is bound
//! to `system:kubelet-api-admin`, as kubeadm binds it. It listens on
//! 127.0.0.1 only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;

use super::Ctx;
use super::exec::EXIT_FILE;

type Body = BoxBody<Bytes, std::io::Error>;

/// Why the container log server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The serving certificate or key file could not be read.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The serving key file holds no private key.
    #[error("no private key in {}", .0.display())]
    NoKey(PathBuf),
    /// The certificate and key do not make a TLS configuration.
    #[error("the serving certificate and key do not make a TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The client CA file holds no usable certificate.
    #[error("no usable CA certificate in {}", .0.display())]
    ClientCa(PathBuf, #[source] rustls::server::VerifierBuilderError),
    /// The port could not be bound or a connection not accepted.
    #[error("listening on 127.0.0.1:{port}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

fn tls_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<rustls::ServerConfig, Error> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Read { path, source }
    };
    let pem_certs = |path: &Path| {
        rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(path).map_err(read(path))?,
        ))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(path))
    };
    let certs = pem_certs(cert)?;
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(read(key))?,
    ))
    .map_err(read(key))?
    .ok_or_else(|| Error::NoKey(key.to_path_buf()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(pem_certs(client_ca)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A certificate is asked for, and checked when given; a caller
    // without one may still present a token (checked per request).
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::ClientCa(client_ca.to_path_buf(), e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .map_err(Error::Tls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Who is calling, as the API server's authenticators would say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The caller a client certificate names (verified by the TLS layer
/// against the cluster CA): CN the user, each O a group.
pub fn cert_caller(der: &[u8]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Caller {
        user,
        groups,
        ..Caller::default()
    })
}

/// The node subresources a request to `path` needs one of, as the
/// kubelet maps them (fine-grained: `/healthz` is `healthz` or `proxy`;
/// everything else here is `proxy`).
pub fn subresources(path: &str) -> &'static [&'static str] {
    if path == "/healthz" || path.starts_with("/healthz/") {
        &["healthz", "proxy"]
    } else {
        &["proxy"]
    }
}

fn bearer(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let h = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = h.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// The caller, by certificate or by a token the API server vouches for;
/// else the 401 to send.
async fn authenticate(
    ctx: &Ctx,
    peer: Option<Caller>,
    req: &Request<hyper::body::Incoming>,
) -> Result<Caller, Response<Body>> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    if let Some(c) = peer {
        return Ok(c);
    }
    let unauthorized = || text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    let Some(token) = bearer(req) else {
        return Err(unauthorized());
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token,
            ..Default::default()
        },
        ..Default::default()
    };
    let api: kube::Api<TokenReview> = kube::Api::all(ctx.client.clone());
    let status = match api.create(&Default::default(), &review).await {
        Ok(r) => r.status.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %super::error_text(&e), "TokenReview failed");
            return Err(unauthorized());
        }
    };
    match (status.authenticated, status.user) {
        (Some(true), Some(u)) => Ok(Caller {
            user: u.username.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
            uid: u.uid,
            extra: u.extra.unwrap_or_default(),
        }),
        _ => Err(unauthorized()),
    }
}

/// Whether the API server lets `caller` `get` one of the node's
/// `subresources`; else the 403 (or 500) to send.
async fn authorize(
    ctx: &Ctx,
    caller: &Caller,
    subresources: &[&str],
) -> Result<(), Response<Body>> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(ctx.client.clone());
    for sub in subresources {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                uid: caller.uid.clone(),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("get".into()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.to_string()),
                    name: Some(ctx.opts.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&Default::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %super::error_text(&e), "SubjectAccessReview failed");
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Authorization error\n",
                ));
            }
        }
    }
    Err(text(
        StatusCode::FORBIDDEN,
        format!(
            "Forbidden (user={}, verb=get, resource=nodes, subresource(s)={subresources:?})\n",
            caller.user
        ),
    ))
}

/// Binds the node's port, before the node registers: a port another
/// program took (between `sa-lab up` choosing it and the node starting) is
/// an error the node exits with, naming the port, so `up` can retry with
/// new ports instead of a Node whose logs nobody can read.
pub async fn listen(port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| Error::Listen { port, source })
}

/// Serves on `listener` (from [`listen`]) until the node stops.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) -> Result<(), Error> {
    let o = &ctx.opts;
    let cfg = tls_config(&o.serving_cert, &o.serving_key, &o.client_ca)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let port = ctx.opts.kubelet_port;
    let listen = |source| Error::Listen { port, source };
    tracing::info!(port, "serving container logs");
    loop {
        let (tcp, _) = listener.accept().await.map_err(listen)?;
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cert_caller(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let (ctx, peer) = (ctx.clone(), peer.clone());
                async move { Ok::<_, Infallible>(handle(&ctx, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

#[derive(Default, Debug, PartialEq)]
pub struct LogQuery {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
}

pub fn parse_query(q: Option<&str>) -> LogQuery {
    let mut out = LogQuery::default();
    for kv in q.unwrap_or("").split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "follow" => out.follow = v == "true" || v == "1",
            "tailLines" => out.tail_lines = v.parse().ok(),
            "limitBytes" => out.limit_bytes = v.parse().ok(),
            _ => {}
        }
    }
    out
}

/// The last `n` lines of `data`.
pub fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let mut count = 0;
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn handle(
    ctx: &Ctx,
    peer: Option<Caller>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let caller = match authenticate(ctx, peer, &req).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    if let Err(refused) = authorize(ctx, &caller, subresources(&path)).await {
        return refused;
    }
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            "the sa-lab sandbox node serves only /containerLogs\n",
        );
    };
    let pod_dir = ctx
        .logs
        .read()
        .expect("log index")
        .get(&(ns.to_string(), pod.to_string()))
        .cloned();
    let Some(pod_dir) = pod_dir else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node\n"),
        );
    };
    let cdir = pod_dir.join("containers").join(container);
    let log = cdir.join("log");
    let q = parse_query(req.uri().query());
    let data = match tokio::fs::read(&log).await {
        Ok(d) => d,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod:?} is waiting to start\n"),
            );
        }
    };
    let mut first = match q.tail_lines {
        Some(n) => tail(&data, n).to_vec(),
        None => data.clone(),
    };
    if let Some(l) = q.limit_bytes {
        first.truncate(l);
    }
    if !q.follow {
        return Response::new(
            Full::new(Bytes::from(first))
                .map_err(|e| match e {})
                .boxed(),
        );
    }
    let follower = match Follower::new(data.len() as u64, log, cdir) {
        Ok(f) => f,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot follow the log of container {container:?}: {e}\n"),
            );
        }
    };
    let stream = futures::stream::unfold((Some(first), follower), |(first, mut f)| async move {
        let chunk = match first {
            Some(first) => first,
            None => f.next().await?,
        };
        Some((Ok(Frame::data(Bytes::from(chunk))), (None, f)))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

/// Follows a container's log (`kubectl logs -f`): yields what is appended,
/// woken by inotify events on the container dir (the log written, `exit.json`
/// renamed into place, the dir removed), until the container has ended and
/// everything is read.
struct Follower {
    offset: u64,
    log: PathBuf,
    cdir: PathBuf,
    /// Changes in the container dir.
    watch: crate::sys::DirWatch,
}

impl Follower {
    fn new(offset: u64, log: PathBuf, cdir: PathBuf) -> std::io::Result<Self> {
        let watch = crate::sys::DirWatch::new(&cdir)?;
        Ok(Follower {
            offset,
            log,
            cdir,
            watch,
        })
    }

    /// The next chunk of the log; `None` once the container has ended (or
    /// its dir is gone) and nothing more is left to read.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            // Checked before reading: what was written before the end is read.
            let finished = self.cdir.join(EXIT_FILE).exists() || !self.cdir.exists();
            let mut f = tokio::fs::File::open(&self.log).await.ok()?;
            f.seek(std::io::SeekFrom::Start(self.offset)).await.ok()?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).await.ok()?;
            if !buf.is_empty() {
                self.offset += buf.len() as u64;
                return Some(buf);
            }
            if finished {
                return None;
            }
            self.watch.changed().await.ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query(Some(
                "follow=true&tailLines=3&limitBytes=10&timestamps=false"
            )),
            LogQuery {
                follow: true,
                tail_lines: Some(3),
                limit_bytes: Some(10)
            }
        );
        assert_eq!(parse_query(None), LogQuery::default());
    }

    /// The follower hands out what is appended and ends once the container
    /// has: woken by the writes, not by a timer.
    #[tokio::test]
    async fn following_ends_with_the_container() {
        let d = crate::node::test_dir("follow");
        let log = d.join("log");
        std::fs::write(&log, "first\n").unwrap();
        let mut f = Follower::new(6, log.clone(), d.clone()).unwrap();
        let writer = tokio::spawn({
            let (log, d) = (log.clone(), d.clone());
            async move {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                file.write_all(b"second\n").unwrap();
                crate::node::exec::write_json_atomic(&d.join(EXIT_FILE), &0).unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(chunk) = f.next().await {
            got.extend(chunk);
        }
        writer.await.unwrap();
        assert_eq!(got, b"second\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_client_certificate_names_user_and_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            cert_caller(cert.der()),
            Some(Caller {
                user: "kube-apiserver-kubelet-client".into(),
                groups: vec!["system:masters".into()],
                ..Caller::default()
            })
        );
        assert_eq!(cert_caller(b"not a certificate"), None);
    }

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        assert_eq!(subresources("/healthz"), ["healthz", "proxy"]);
        assert_eq!(subresources("/containerLogs/ns/pod/c"), ["proxy"]);
        assert_eq!(subresources("/anything-else"), ["proxy"]);
    }

    #[test]
    fn tails() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
