//! The sandbox node: a small kubelet stand-in that runs lab Pods as local
//! processes (local provider only).
//!
//! It authenticates as `system:node:<name>` (group `system:nodes`), so the Node
//! authorizer and the NodeRestriction admission plugin treat it as they treat
//! a kubelet. It registers its Node, renews its Lease, watches the Pods bound
//! to it, sets up their volumes (projected ServiceAccount tokens through a
//! TokenRequest bound to the Pod, configMap, secret, downwardAPI, emptyDir),
//! runs each container through `sa-lab pod-exec` in its own mount namespace,
//! reports status through `pods/status` and finalises deletions.
//!
//! On disk (`work_dir`, mode 0700):
//! ```text
//! agent.lock                          one agent per work dir (flock)
//! pods/<uid>/volumes/<volume>/        atomic-writer volume dirs (removed once the pod ends)
//! pods/<uid>/containers/<c>/spec.json what pod-exec runs
//!                          /started.json, exit.json, log, termination-log, pod-exec.log
//! ```

mod atomic;
mod downward;
mod exec;
mod heartbeat;
mod logs;
mod mountns;
mod pod;
mod poddir;
mod tokens;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub use exec::{ExecSpec, ExitRecord, MountSpec, StartedRecord, pod_exec_main};
pub use poddir::kill_leftovers;

/// How the supervisor starts the node agent (`sa-lab node --options FILE`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NodeOptions {
    /// Node name, e.g. "sandbox-node".
    pub name: String,
    /// Node identity kubeconfig (embedded certs, CN=system:node:<name>, O=system:nodes).
    pub kubeconfig: PathBuf,
    /// `<cluster dir>/node`: pod dirs, logs, state; 0700.
    pub work_dir: PathBuf,
    /// Directory holding the lab binaries (lab-01-identity, lab-toolbox, ...).
    pub labs_dir: PathBuf,
    /// KUBERNETES_SERVICE_HOST for pods ("127.0.0.1").
    pub api_host: String,
    /// KUBERNETES_SERVICE_PORT for pods.
    pub api_port: u16,
    /// HTTPS port for /containerLogs (kubectl logs), published as daemonEndpoints.kubeletEndpoint.
    pub kubelet_port: u16,
    /// PEM cert and key for that port.
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// The cluster CA (PEM): that port accepts client certificates it
    /// signed, as a kubelet's `--client-ca-file`.
    pub client_ca: PathBuf,
    /// The lab image (sa_lab::LAB_IMAGE).
    pub lab_image: String,
}

/// Errors of the node agent's set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The work dir (or its lock file) could not be created.
    #[error("cannot create the node work dir {}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The node kubeconfig gave no client.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::LoadError),
    /// Another node agent still holds the work dir's lock after [`LOCK_WAIT`].
    #[error("another node agent holds {}", .0.display())]
    Locked(PathBuf),
    /// The node's port (container logs) could not be bound.
    #[error(transparent)]
    Listen(#[from] logs::Error),
}

/// An error and its sources on one line, joined by ": ", the way the kubelet
/// words events and container messages ("failed to fetch token: ..."). An
/// API error contributes only the API server's message.
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if !out.is_empty() {
            out.push_str(": ");
        }
        if let Some(k) = err.downcast_ref::<kube::Error>() {
            match k {
                kube::Error::Api(s) => out.push_str(&s.message),
                other => out.push_str(&other.to_string()),
            }
            break;
        }
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// State shared by the node agent's tasks.
pub(crate) struct Ctx {
    pub opts: NodeOptions,
    pub client: Client,
    pub self_bin: PathBuf,
    pub node_res: downward::NodeResources,
    pub events: mpsc::UnboundedSender<(ObjectReference, Event)>,
    /// (namespace, pod name) -> pod dir, for the log server.
    pub logs: RwLock<HashMap<(String, String), PathBuf>>,
    pub shutdown: watch::Receiver<bool>,
}

/// How long a starting agent waits for the previous one (a restart may
/// briefly overlap the old agent's exit) to release the work dir's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the work dir's lock, waiting for a previous agent to release it
/// (a blocking flock(2) wakes when it does) for at most [`LOCK_WAIT`].
async fn lock_work_dir(work_dir: &Path) -> Result<Flock<fs::File>, Error> {
    let path = work_dir.join("agent.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::WorkDir {
            path: path.clone(),
            source,
        })?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, _)) => file,
    };
    tracing::warn!("waiting for {} (another node agent?)", path.display());
    // A plain thread, not the runtime's blocking pool: if the wait times
    // out, the agent exits without waiting for the thread.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive));
    });
    match tokio::time::timeout(LOCK_WAIT, rx).await {
        Ok(Ok(Ok(lock))) => Ok(lock),
        _ => Err(Error::Locked(path)),
    }
}

/// Reads [`NodeOptions`] (JSON) from `path` and [`run`]s the node agent.
pub async fn run_from_file(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let opts: NodeOptions = serde_json::from_slice(
        &fs::read(path).with_context(|| format!("reading node options {}", path.display()))?,
    )
    .with_context(|| format!("parsing node options {}", path.display()))?;
    Ok(run(opts).await?)
}

/// Runs the node agent until SIGTERM/SIGINT. Then it stops every pod process
/// it started (SIGTERM, a grace of up to [`pod::SHUTDOWN_GRACE`], SIGKILL),
/// records their final status where it can, and returns.
pub async fn run(opts: NodeOptions) -> Result<(), Error> {
    let wd = opts.work_dir.clone();
    fs::create_dir_all(wd.join("pods")).map_err(|source| Error::WorkDir {
        path: wd.clone(),
        source,
    })?;
    fs::set_permissions(&wd, fs::Permissions::from_mode(0o700)).map_err(|source| {
        Error::WorkDir {
            path: wd.clone(),
            source,
        }
    })?;
    let _lock = lock_work_dir(&wd).await?;
    let listener = match opts.kubelet_port {
        0 => None,
        port => Some(logs::listen(port).await?),
    };
    if opts.lab_image != crate::LAB_IMAGE {
        tracing::warn!(configured = %opts.lab_image, built = %crate::LAB_IMAGE, "lab image differs from the built one");
    }
    let client =
        crate::kubeconfig::connect(crate::kubeconfig::Source::File(&opts.kubeconfig), None)
            .await?
            .client;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping the node agent"),
            _ = int.recv() => tracing::info!("SIGINT: stopping the node agent"),
        }
        let _ = shutdown_tx.send(true);
    });

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(ObjectReference, Event)>();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubelet".into(),
            instance: Some(opts.name.clone()),
        },
    );
    tokio::spawn(async move {
        while let Some((r, ev)) = ev_rx.recv().await {
            if let Err(e) = recorder.publish(&ev, &r).await {
                tracing::debug!(error = %e, "publishing an event failed");
            }
        }
    });

    let self_bin = crate::paths::self_binary();
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        client: client.clone(),
        self_bin,
        node_res: heartbeat::node_resources(),
        events: ev_tx,
        logs: RwLock::new(HashMap::new()),
        shutdown: shutdown_rx.clone(),
    });

    // Register before any Pod can be bound here.
    let ready_since = Time(jiff::Timestamp::now());
    let mut stop = shutdown_rx.clone();
    let node_uid = loop {
        match heartbeat::register(&ctx, ready_since.clone()).await {
            Ok(uid) => break uid,
            Err(e) => {
                tracing::warn!(error = %error_text(&e), "registering the Node failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|v| *v) => return Ok(()),
                }
            }
        }
    };
    if let Err(e) = heartbeat::renew_lease(&ctx, &node_uid).await {
        tracing::warn!(error = %error_text(&e), "creating the node Lease failed");
    }
    let hb = tokio::spawn(heartbeat::heartbeat_loop(
        ctx.clone(),
        node_uid,
        ready_since,
    ));
    let log_server = listener.map(|listener| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = logs::serve(ctx, listener).await {
                tracing::error!(error = %error_text(&e), "the container log server stopped");
            }
        })
    });

    watch_pods(&ctx, shutdown_rx.clone()).await;

    hb.abort();
    if let Some(h) = log_server {
        h.abort();
    }
    tracing::info!("node agent stopped");
    Ok(())
}

struct WorkerHandle {
    tx: pod::PodTx,
    task: tokio::task::JoinHandle<()>,
}

/// Watches the Pods bound to this node and feeds one worker per Pod UID.
async fn watch_pods(ctx: &Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.opts.name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let Some(ev) = ev else { break };
        // Forget the workers whose pods are done with.
        workers.retain(|_, w| !w.task.is_finished());
        match ev {
            Ok(watcher::Event::Init) => seen.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(uid) = pod.metadata.uid.clone() {
                    seen.insert(uid);
                }
                dispatch(ctx, &mut workers, pod);
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(ctx, &mut workers, pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                match workers.get(&uid) {
                    Some(w) => {
                        let _ = w.tx.send(None);
                    }
                    None => poddir::remove(&ctx.opts.work_dir, &uid),
                }
            }
            Ok(watcher::Event::InitDone) => {
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.tx.send(None);
                    }
                }
                // Pod dirs of pods deleted while the agent was down.
                if let Ok(rd) = fs::read_dir(ctx.opts.work_dir.join("pods")) {
                    for e in rd.flatten() {
                        let uid = e.file_name().to_string_lossy().into_owned();
                        if !seen.contains(&uid) && !workers.contains_key(&uid) {
                            tracing::info!(uid = %uid, "removing the dir of a pod that no longer exists");
                            poddir::remove(&ctx.opts.work_dir, &uid);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching pods failed; retrying"),
        }
    }
    // Shutdown: every worker stops its containers.
    let tasks: Vec<_> = workers.into_values().map(|w| w.task).collect();
    let _ = tokio::time::timeout(
        pod::SHUTDOWN_GRACE + Duration::from_secs(6),
        futures::future::join_all(tasks),
    )
    .await;
}

fn dispatch(ctx: &Arc<Ctx>, workers: &mut HashMap<String, WorkerHandle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(w) = workers.get(&uid).filter(|w| !w.task.is_finished()) {
        let _ = w.tx.send(Some(Arc::new(pod)));
        return;
    }
    let (tx, rx) = watch::channel(Some(Arc::new(pod)));
    let task = tokio::spawn(pod::run_pod(ctx.clone(), rx));
    workers.insert(uid, WorkerHandle { tx, task });
}

#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sa-lab-node-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("test dir");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_json_shape() {
        let o: NodeOptions = serde_json::from_value(serde_json::json!({
            "name": "sandbox-node", "kubeconfig": "/k", "work_dir": "/w", "labs_dir": "/l",
            "api_host": "127.0.0.1", "api_port": 6443, "kubelet_port": 10250,
            "serving_cert": "/c", "serving_key": "/k2", "client_ca": "/ca",
            "lab_image": "sa-lab-labs:0.1.0"
        }))
        .unwrap();
        assert_eq!(o.name, "sandbox-node");
        assert_eq!(o.kubelet_port, 10250);
        assert_eq!(o.client_ca, PathBuf::from("/ca"));
    }

    #[tokio::test]
    async fn a_second_agent_gets_the_lock_once_the_first_lets_go() {
        let d = test_dir("lock");
        let first = lock_work_dir(&d).await.unwrap();
        let second = tokio::spawn({
            let d = d.clone();
            async move { lock_work_dir(&d).await }
        });
        drop(first);
        second.await.unwrap().expect("the lock, once released");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn error_text_joins_sources_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = Error::WorkDir {
            path: "/w".into(),
            source: io,
        };
        assert_eq!(error_text(&e), "cannot create the node work dir /w: gone");
        let status = kube::core::Status::failure("serviceaccounts \"x\" not found", "NotFound")
            .with_code(404);
        let api = kube::Error::Api(Box::new(status));
        let t = tokens::Error::Fetch(api);
        assert_eq!(
            error_text(&t),
            "failed to fetch token: serviceaccounts \"x\" not found"
        );
    }
}
