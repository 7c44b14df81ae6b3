//! The node's HTTPS endpoint for `kubectl logs`: the API server dials
//! `https://<InternalIP>:<kubeletEndpoint.port>/containerLogs/{ns}/{pod}/{container}`.
//!
//! Like a kubelet started with `--anonymous-auth=true --authorization-mode=AlwaysAllow`
//! it does not check who asks; it listens on 127.0.0.1 only.

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
    /// The port could not be bound or a connection not accepted.
    #[error("listening on 127.0.0.1:{port}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Error> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Read { path, source }
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(read(cert))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(read(cert))?;
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(read(key))?,
    ))
    .map_err(read(key))?
    .ok_or_else(|| Error::NoKey(key.to_path_buf()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(Error::Tls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves until the node stops.
pub async fn serve(ctx: Arc<Ctx>) -> Result<(), Error> {
    let cfg = tls_config(&ctx.opts.serving_cert, &ctx.opts.serving_key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let port = ctx.opts.kubelet_port;
    let listen = |source| Error::Listen { port, source };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(listen)?;
    tracing::info!(port, "serving container logs");
    loop {
        let (tcp, _) = listener.accept().await.map_err(listen)?;
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
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

async fn handle(ctx: &Ctx, req: Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    let path = req.uri().path().to_string();
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
    fn tails() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
