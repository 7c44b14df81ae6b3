//! One worker per Pod bound to the node, like the kubelet's pod workers: it
//! owns the Pod's containers from volume set-up to deletion.
//!
//! This file holds the worker and its event loop (the Pod's lifecycle: init
//! containers one after another, then the main containers). Each other job
//! has its own file: [`volumes`] (set-up retried, kept fresh), [`env`] (the
//! container's environment), [`start`] (starting a container), [`exit`] (how
//! a container ended), [`status`] (`pods/status`), [`stop`] (stopping
//! containers, finalising deletion) and [`restore`] (after an agent restart).

mod env;
mod exit;
mod restore;
mod start;
mod status;
mod stop;
mod volumes;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType};
use tokio::sync::{mpsc, watch};

use super::Ctx;
use super::poddir;
use super::tokens::TokenCache;
use exit::Term;

pub use stop::SHUTDOWN_GRACE;

pub type PodTx = watch::Sender<Option<Arc<Pod>>>;
pub type PodRx = watch::Receiver<Option<Arc<Pod>>>;

/// A container's state as the worker tracks it.
#[derive(Clone, Debug, PartialEq)]
enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: jiff::Timestamp,
        pid: i32,
        wrapper_pid: i32,
    },
    Terminated(Term),
}

/// A container of the Pod (init or main) and its state.
struct CRt {
    spec: Container,
    init: bool,
    state: CState,
}

enum Ev {
    Exited(usize, Term),
    PodChanged,
    Gone,
    Shutdown,
}

/// Why the worker stops driving the Pod.
enum Exit {
    Gone,
    Deleting,
    Shutdown,
}

struct Worker {
    ctx: Arc<Ctx>,
    rx: PodRx,
    shutdown: watch::Receiver<bool>,
    pod: Arc<Pod>,
    uid: String,
    ns: String,
    name: String,
    dir: PathBuf,
    containers: Vec<CRt>,
    ready_to_start: bool,
    start_time: jiff::Timestamp,
    cond_times: HashMap<String, (String, jiff::Timestamp)>,
    last_posted: Option<serde_json::Value>,
    tokens: Arc<TokenCache>,
    exit_tx: mpsc::UnboundedSender<(usize, Term)>,
    exit_rx: mpsc::UnboundedReceiver<(usize, Term)>,
    resync: Option<tokio::task::JoinHandle<()>>,
}

/// Runs a pod worker until the Pod is gone from the API (or the node stops).
pub async fn run_pod(ctx: Arc<Ctx>, rx: PodRx) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let mut w = Worker::new(ctx, rx, pod);
    w.register_logs();
    let exit = w.lifecycle().await;
    match exit {
        Exit::Deleting => {
            w.finalize_deletion().await;
            // Wait for the watch to report it gone (or the node to stop).
            loop {
                match w.next_event().await {
                    Ev::Gone | Ev::Shutdown => break,
                    _ => {}
                }
            }
        }
        Exit::Gone => {
            w.stop_containers(Duration::from_secs(2)).await;
        }
        Exit::Shutdown => {
            w.stop_containers(SHUTDOWN_GRACE).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), w.post_status()).await;
            w.stop_resync();
            return; // keep the pod dir: a restarted agent reports what happened.
        }
    }
    w.stop_resync();
    w.unregister_logs();
    poddir::kill(&w.dir);
    let _ = fs::remove_dir_all(&w.dir);
    tracing::debug!(pod = %w.name, ns = %w.ns, "pod cleaned up");
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn ts(t: &Option<Time>) -> Option<jiff::Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn parse_ts(s: &Option<String>) -> Option<jiff::Timestamp> {
    s.as_deref().and_then(|s| s.parse().ok())
}

fn creating() -> CState {
    CState::Waiting {
        reason: "ContainerCreating".into(),
        message: None,
    }
}

impl Worker {
    fn new(ctx: Arc<Ctx>, rx: PodRx, pod: Arc<Pod>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = poddir::pod_dir(&ctx.opts.work_dir, &uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.unwrap_or_default().into_iter();
        let containers = inits
            .map(|c| (c, true))
            .chain(spec.containers.into_iter().map(|c| (c, false)))
            .map(|(spec, init)| CRt {
                spec,
                init,
                state: creating(),
            })
            .collect();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let shutdown = ctx.shutdown.clone();
        Worker {
            ctx,
            rx,
            shutdown,
            start_time: status::start_time(&pod),
            cond_times: status::condition_times(&pod),
            pod,
            uid,
            ns,
            name,
            dir,
            containers,
            ready_to_start: false,
            last_posted: None,
            tokens: Arc::new(TokenCache::default()),
            exit_tx,
            exit_rx,
            resync: None,
        }
    }

    fn register_logs(&self) {
        self.ctx
            .logs
            .write()
            .expect("log index")
            .insert((self.ns.clone(), self.name.clone()), self.dir.clone());
    }

    fn unregister_logs(&self) {
        let mut logs = self.ctx.logs.write().expect("log index");
        if logs.get(&(self.ns.clone(), self.name.clone())) == Some(&self.dir) {
            logs.remove(&(self.ns.clone(), self.name.clone()));
        }
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    fn container_dir(&self, name: &str) -> PathBuf {
        poddir::container_dir(&self.dir, name)
    }

    fn obj_ref(&self, field_path: Option<String>) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.ns.clone()),
            uid: Some(self.uid.clone()),
            field_path,
            ..Default::default()
        }
    }

    fn event(&self, warning: bool, reason: &str, note: String, container: Option<&CRt>) {
        let field_path = container.map(|c| {
            let list = if c.init {
                "initContainers"
            } else {
                "containers"
            };
            format!("spec.{list}{{{}}}", c.spec.name)
        });
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let _ = self.ctx.events.send((self.obj_ref(field_path), ev));
    }

    /// Waits out a retry backoff (25 ms, doubling, at most 5 s) while still
    /// reacting to the Pod being deleted or gone, to shutdown, and to
    /// container exits, as the kubelet's sync loop does.
    async fn backoff(&mut self, failures: u32) -> Result<(), Exit> {
        let sleep =
            tokio::time::sleep(Duration::from_millis((25u64 << failures.min(8)).min(5_000)));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                ev = self.next_event() => match ev {
                    Ev::Gone => return Err(Exit::Gone),
                    Ev::Shutdown => return Err(Exit::Shutdown),
                    Ev::PodChanged if self.deleting() => return Err(Exit::Deleting),
                    Ev::Exited(i, t) => self.on_exit(i, t),
                    Ev::PodChanged => {}
                }
            }
        }
    }

    async fn next_event(&mut self) -> Ev {
        tokio::select! {
            Some((i, t)) = self.exit_rx.recv() => Ev::Exited(i, t),
            r = self.rx.changed() => {
                if r.is_err() {
                    return Ev::Gone;
                }
                let p = self.rx.borrow_and_update().clone();
                match p {
                    None => Ev::Gone,
                    Some(p) => {
                        self.pod = p;
                        Ev::PodChanged
                    }
                }
            }
            _ = self.shutdown.wait_for(|v| *v) => Ev::Shutdown,
        }
    }

    /// Handles one event; Some(exit) when the pod goes away.
    async fn pump(&mut self) -> Option<Exit> {
        match self.next_event().await {
            Ev::Exited(i, t) => {
                self.on_exit(i, t);
                None
            }
            Ev::PodChanged if self.deleting() => Some(Exit::Deleting),
            Ev::PodChanged => None,
            Ev::Gone => Some(Exit::Gone),
            Ev::Shutdown => Some(Exit::Shutdown),
        }
    }

    fn on_exit(&mut self, i: usize, t: Term) {
        let c = &mut self.containers[i];
        if matches!(c.state, CState::Terminated(_)) {
            return;
        }
        tracing::info!(pod = %self.name, ns = %self.ns, container = %c.spec.name, exit_code = t.exit_code, signal = ?t.signal, "container exited");
        c.state = CState::Terminated(t);
    }

    /// Waits (handling events) until the pod goes away; used once nothing runs.
    async fn idle(&mut self) -> Exit {
        loop {
            if self.deleting() {
                return Exit::Deleting;
            }
            if let Some(e) = self.pump().await {
                return e;
            }
        }
    }

    /// Posts the status and handles events until `done` holds for the
    /// containers; `Err` when the pod goes away first.
    async fn run_until(&mut self, done: impl Fn(&[CRt]) -> bool) -> Result<(), Exit> {
        while !done(&self.containers) {
            self.post_status().await;
            if let Some(e) = self.pump().await {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn lifecycle(&mut self) -> Exit {
        if is_terminal(&self.pod) {
            return self.idle().await;
        }
        self.restore();
        if self.deleting() {
            return Exit::Deleting;
        }
        if self
            .containers
            .iter()
            .all(|c| matches!(c.state, CState::Terminated(_)))
        {
            self.post_status().await;
            return self.idle().await;
        }
        if self.refuse_foreign_images() {
            self.post_status().await;
            return self.idle().await;
        }
        // Volumes, retried like the kubelet does (the Pod stays ContainerCreating).
        let volumes = match self.setup_volumes().await {
            Ok(v) => v,
            Err(e) => return e,
        };
        self.ready_to_start = true;
        self.start_resync();
        match self.run_containers(&volumes).await {
            Ok(()) => {
                self.finish().await;
                self.idle().await
            }
            Err(e) => e,
        }
    }

    /// Only the lab image runs here: every other container waits with
    /// `ErrImageNeverPull`. Returns whether any container was refused.
    fn refuse_foreign_images(&mut self) -> bool {
        let lab_image = self.ctx.opts.lab_image.clone();
        let bad: Vec<usize> = (0..self.containers.len())
            .filter(|&i| self.containers[i].spec.image.as_deref() != Some(lab_image.as_str()))
            .collect();
        for &i in &bad {
            let image = self.containers[i].spec.image.clone().unwrap_or_default();
            let message = format!(
                "image {image:?} is not available on the local provider: only the lab image {lab_image:?} runs there (its programs are the lab binaries cargo built)"
            );
            self.containers[i].state = CState::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: Some(message.clone()),
            };
            self.event(
                true,
                "ErrImageNeverPull",
                message,
                Some(&self.containers[i]),
            );
        }
        !bad.is_empty()
    }

    /// Init containers one after another, then every main container, until
    /// all have ended. `Err` when the pod goes away first. A failed init
    /// container ends the pod (restartPolicy Never/OnFailure without restarts).
    async fn run_containers(
        &mut self,
        volumes: &std::collections::BTreeMap<String, PathBuf>,
    ) -> Result<(), Exit> {
        let (inits, mains): (Vec<usize>, Vec<usize>) =
            (0..self.containers.len()).partition(|&i| self.containers[i].init);
        for i in inits {
            if matches!(self.containers[i].state, CState::Waiting { .. }) {
                self.start_container(i, volumes).await?;
            }
            self.run_until(|cs| matches!(cs[i].state, CState::Terminated(_)))
                .await?;
            if !matches!(&self.containers[i].state, CState::Terminated(t) if t.exit_code == 0) {
                return Ok(());
            }
        }
        for i in mains {
            if matches!(self.containers[i].state, CState::Waiting { .. }) {
                self.start_container(i, volumes).await?;
            }
        }
        self.run_until(|cs| cs.iter().all(|c| matches!(c.state, CState::Terminated(_))))
            .await
    }

    /// The pod has ended: final status, tokens off the disk.
    async fn finish(&mut self) {
        self.post_status().await;
        self.stop_resync();
        let _ = fs::remove_dir_all(self.dir.join("volumes"));
    }
}
