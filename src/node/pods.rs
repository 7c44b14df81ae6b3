//! One worker per Pod bound to the node: volumes, containers, status, deletion.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, ObjectReference, Pod, PodCondition, PodIP,
    PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::Ctx;
use super::exec::{
    self, EXIT_FILE, ExecSpec, ExitRecord, MountSpec, STARTED_FILE, STARTED_LINE_PREFIX,
    StartedRecord,
};
use super::volumes::{self, MountError, POD_IP, TokenCache, VolumeCtx, api_message};

/// Kubelet's `MaxContainerTerminationMessageLength`.
pub const MAX_TERMINATION_MESSAGE: usize = 4 * 1024;
/// Kubelet's `MaxContainerTerminationMessageLogLength` / lines.
const MAX_FALLBACK_LOG_BYTES: usize = 2 * 1024;
const MAX_FALLBACK_LOG_LINES: usize = 80;
/// How long pods get to stop when the node agent itself is stopped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const VOLUME_RESYNC: Duration = Duration::from_secs(30);

pub type PodTx = watch::Sender<Option<Arc<Pod>>>;
pub type PodRx = watch::Receiver<Option<Arc<Pod>>>;

/// `<work_dir>/pods/<uid>`.
pub fn pod_dir(work_dir: &Path, uid: &str) -> PathBuf {
    work_dir.join("pods").join(uid)
}

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

#[derive(Clone, Debug, PartialEq)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<jiff::Timestamp>,
    finished_at: jiff::Timestamp,
    pid: Option<i32>,
}

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
            if let Some(h) = w.resync.take() {
                h.abort();
            }
            return; // keep the pod dir: a restarted agent reports what happened.
        }
    }
    if let Some(h) = w.resync.take() {
        h.abort();
    }
    w.unregister_logs();
    super::kill_pod_dir(&w.dir);
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

/// Is the `pod-exec` wrapper with this pid (still) ours?
pub fn wrapper_alive(wrapper_pid: i32, state_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{wrapper_pid}/cmdline")) else {
        return false;
    };
    let spec = state_dir.join("spec.json");
    let needle = spec.to_string_lossy();
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("pod-exec") && text.contains(needle.as_ref())
}

impl Worker {
    fn new(ctx: Arc<Ctx>, rx: PodRx, pod: Arc<Pod>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = pod_dir(&ctx.opts.work_dir, &uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers = Vec::new();
        for c in spec.init_containers.unwrap_or_default() {
            containers.push(CRt {
                spec: c,
                init: true,
                state: creating(),
            });
        }
        for c in spec.containers {
            containers.push(CRt {
                spec: c,
                init: false,
                state: creating(),
            });
        }
        let mut cond_times = HashMap::new();
        for c in pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
        {
            if let Some(t) = ts(&c.last_transition_time) {
                cond_times.insert(c.type_.clone(), (c.status.clone(), t));
            }
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| ts(&s.start_time))
            .unwrap_or_else(jiff::Timestamp::now);
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let shutdown = ctx.shutdown.clone();
        Worker {
            ctx,
            rx,
            shutdown,
            pod,
            uid,
            ns,
            name,
            dir,
            containers,
            ready_to_start: false,
            start_time,
            cond_times,
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
        self.dir.join("containers").join(name)
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
            format!(
                "spec.{}{{{}}}",
                if c.init {
                    "initContainers"
                } else {
                    "containers"
                },
                c.spec.name
            )
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

    /// Handles events until `until` holds; Some(exit) when the pod goes away.
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

        // Only the lab image runs here.
        let bad: Vec<usize> = (0..self.containers.len())
            .filter(|&i| {
                self.containers[i].spec.image.as_deref() != Some(self.ctx.opts.lab_image.as_str())
            })
            .collect();
        if !bad.is_empty() {
            for &i in &bad {
                let image = self.containers[i].spec.image.clone().unwrap_or_default();
                let message = format!(
                    "image {image:?} is not available on the local provider: only the lab image {:?} runs there (its programs are the lab binaries cargo built)",
                    self.ctx.opts.lab_image
                );
                self.containers[i].state = CState::Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: Some(message.clone()),
                };
                let c = &self.containers[i];
                self.event(true, "ErrImageNeverPull", message, Some(c));
            }
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

        // Init containers, one after another.
        let n = self.containers.len();
        for i in 0..n {
            if !self.containers[i].init {
                continue;
            }
            let started = match self.containers[i].state {
                CState::Waiting { .. } => self.start_container(i, &volumes).await,
                _ => Ok(()),
            };
            if let Err(e) = started {
                return e;
            }
            loop {
                match &self.containers[i].state {
                    CState::Terminated(t) if t.exit_code == 0 => break,
                    CState::Terminated(_) => {
                        // restartPolicy Never/OnFailure without restarts: the pod fails.
                        self.finish().await;
                        return self.idle().await;
                    }
                    _ => {}
                }
                self.post_status().await;
                if let Some(e) = self.pump().await {
                    return e;
                }
            }
        }
        for i in 0..n {
            let started = match self.containers[i].state {
                CState::Waiting { .. } if !self.containers[i].init => {
                    self.start_container(i, &volumes).await
                }
                _ => Ok(()),
            };
            if let Err(e) = started {
                return e;
            }
        }
        loop {
            let running = self
                .containers
                .iter()
                .any(|c| !matches!(c.state, CState::Terminated(_)));
            if !running {
                break;
            }
            self.post_status().await;
            if let Some(e) = self.pump().await {
                return e;
            }
        }
        self.finish().await;
        self.idle().await
    }

    /// The pod has ended: final status, tokens off the disk.
    async fn finish(&mut self) {
        self.post_status().await;
        if let Some(h) = self.resync.take() {
            h.abort();
        }
        let _ = fs::remove_dir_all(self.dir.join("volumes"));
    }

    fn vctx(&self) -> VolumeCtx<'_> {
        VolumeCtx {
            client: &self.ctx.client,
            pod: &self.pod,
            tokens: &self.tokens,
            node: self.ctx.node_res,
        }
    }

    async fn setup_volumes(&mut self) -> Result<BTreeMap<String, PathBuf>, Exit> {
        let vdir = self.dir.join("volumes");
        let mut failures: u32 = 0;
        let mut last_event: Option<(String, tokio::time::Instant)> = None;
        loop {
            let res = volumes::setup_all(&self.vctx(), &vdir).await;
            match res {
                Ok(v) => return Ok(v),
                Err(MountError { volume, message }) => {
                    failures += 1;
                    let text =
                        format!("MountVolume.SetUp failed for volume {volume:?} : {message}");
                    // The first failures are often the Node authorizer's graph catching up.
                    if failures >= 3 {
                        let due = match &last_event {
                            None => true,
                            Some((m, at)) => *m != text || at.elapsed() > Duration::from_secs(20),
                        };
                        if due {
                            tracing::warn!(pod = %self.name, ns = %self.ns, "{text}");
                            self.event(true, "FailedMount", text.clone(), None);
                            last_event = Some((text, tokio::time::Instant::now()));
                        }
                        self.post_status().await;
                    }
                    self.backoff(failures).await?;
                }
            }
        }
    }

    /// Re-syncs volumes every 30 s (tokens at 80 % of their TTL, configMaps, secrets).
    fn start_resync(&mut self) {
        let ctx = self.ctx.clone();
        let rx = self.rx.clone();
        let tokens = self.tokens.clone();
        let vdir = self.dir.join("volumes");
        self.resync = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(VOLUME_RESYNC);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pod) = rx.borrow().clone() else {
                    break;
                };
                let vctx = VolumeCtx {
                    client: &ctx.client,
                    pod: &pod,
                    tokens: &tokens,
                    node: ctx.node_res,
                };
                if let Err(e) = volumes::setup_all(&vctx, &vdir).await {
                    tracing::warn!(pod = ?pod.metadata.name, "volume re-sync failed: {e}");
                }
            }
        }));
    }

    /// Rebuilds container states from the pod dir (after a node agent restart)
    /// and from the API status: finished containers are never run again.
    fn restore(&mut self) {
        let api_statuses: Vec<ContainerStatus> = self
            .pod
            .status
            .as_ref()
            .map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for i in 0..self.containers.len() {
            let name = self.containers[i].spec.name.clone();
            let cdir = self.container_dir(&name);
            let exit: Option<ExitRecord> = exec::read_json(&cdir.join(EXIT_FILE));
            let started: Option<StartedRecord> = exec::read_json(&cdir.join(STARTED_FILE));
            let api = api_statuses
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.state.clone());
            let state = if let Some(rec) = exit {
                CState::Terminated(self.term_from_record(i, rec, started.as_ref().map(|s| s.pid)))
            } else if let Some(s) = started {
                if wrapper_alive(s.wrapper_pid, &cdir) {
                    tracing::info!(pod = %self.name, container = %name, pid = s.pid, "adopting a running container");
                    let started_at =
                        parse_ts(&Some(s.started_at.clone())).unwrap_or_else(jiff::Timestamp::now);
                    self.spawn_poll_waiter(i, s.wrapper_pid, s.pid, cdir.clone());
                    CState::Running {
                        started_at,
                        pid: s.pid,
                        wrapper_pid: s.wrapper_pid,
                    }
                } else {
                    CState::Terminated(unknown_term())
                }
            } else {
                match api {
                    Some(ContainerState {
                        terminated: Some(t),
                        ..
                    }) => CState::Terminated(Term {
                        exit_code: t.exit_code,
                        signal: t.signal,
                        reason: t.reason.unwrap_or_default(),
                        message: t.message,
                        started_at: ts(&t.started_at),
                        finished_at: ts(&t.finished_at).unwrap_or_else(jiff::Timestamp::now),
                        pid: None,
                    }),
                    Some(ContainerState {
                        running: Some(_), ..
                    }) => CState::Terminated(unknown_term()),
                    _ => continue,
                }
            };
            self.containers[i].state = state;
        }
    }

    fn term_from_record(&self, i: usize, rec: ExitRecord, pid: Option<i32>) -> Term {
        let c = &self.containers[i];
        let fallback =
            c.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        term_from_exit(rec, &self.container_dir(&c.spec.name), fallback, pid)
    }

    /// Waits for an adopted container (not our child) by watching its wrapper.
    fn spawn_poll_waiter(&self, i: usize, wrapper_pid: i32, pid: i32, cdir: PathBuf) {
        let tx = self.exit_tx.clone();
        let (ctx_dir, worker_info) = (cdir, self.term_info(i));
        tokio::spawn(async move {
            loop {
                if ctx_dir.join(EXIT_FILE).exists() || !wrapper_alive(wrapper_pid, &ctx_dir) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let t = worker_info.read(&ctx_dir, Some(pid)).await;
            let _ = tx.send((i, t));
        });
    }

    fn term_info(&self, i: usize) -> TermInfo {
        TermInfo {
            fallback_to_logs: self.containers[i]
                .spec
                .termination_message_policy
                .as_deref()
                == Some("FallbackToLogsOnError"),
        }
    }

    /// Resolves the container's env, the way the kubelet orders it.
    async fn build_env(&self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let o = &self.ctx.opts;
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(e) = env.iter_mut().find(|(ek, _)| *ek == k) {
                e.1 = v;
            } else {
                env.push((k, v));
            }
        };
        set(
            &mut env,
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        set(&mut env, "HOSTNAME".into(), self.name.clone());
        let (h, p) = (o.api_host.clone(), o.api_port);
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", h.clone()),
            ("KUBERNETES_SERVICE_PORT", p.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", p.to_string()),
            ("KUBERNETES_PORT", format!("tcp://{h}:{p}")),
            (
                &format!("KUBERNETES_PORT_{p}_TCP"),
                format!("tcp://{h}:{p}"),
            ),
            (&format!("KUBERNETES_PORT_{p}_TCP_PROTO"), "tcp".into()),
            (&format!("KUBERNETES_PORT_{p}_TCP_PORT"), p.to_string()),
            (&format!("KUBERNETES_PORT_{p}_TCP_ADDR"), h.clone()),
        ] {
            set(&mut env, k.to_string(), v);
        }
        let client = &self.ctx.client;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &self.ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.ns);
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match cms.get_opt(&r.name).await.map_err(|e| api_message(&e))? {
                    Some(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            }
            if let Some(r) = &from.secret_ref {
                match secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| api_message(&e))?
                {
                    Some(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(
                                &mut env,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into_owned(),
                            );
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    volumes::field_value(&self.pod, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    let mut r = r.clone();
                    if r.container_name.as_deref().unwrap_or("").is_empty() {
                        r.container_name = Some(c.name.clone());
                    }
                    volumes::resource_value(&self.pod, &r, self.ctx.node_res)?
                } else if let Some(k) = &from.config_map_key_ref {
                    let cm = cms.get_opt(&k.name).await.map_err(|e| api_message(&e))?;
                    match cm.and_then(|cm| cm.data.unwrap_or_default().get(&k.key).cloned()) {
                        Some(v) => v,
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                k.key, self.ns, k.name
                            ));
                        }
                    }
                } else if let Some(k) = &from.secret_key_ref {
                    let s = secrets
                        .get_opt(&k.name)
                        .await
                        .map_err(|e| api_message(&e))?;
                    match s.and_then(|s| s.data.unwrap_or_default().get(&k.key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                k.key, self.ns, k.name
                            ));
                        }
                    }
                } else {
                    String::new()
                }
            } else {
                expand(e.value.as_deref().unwrap_or(""), &env)
            };
            set(&mut env, e.name.clone(), value);
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), "/root".into()));
        }
        Ok(env)
    }

    /// Starts container `i` through `sa-lab pod-exec`. Errs only when the pod goes away.
    async fn start_container(
        &mut self,
        i: usize,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<(), Exit> {
        let c = self.containers[i].spec.clone();
        let cdir = self.container_dir(&c.name);
        // The program: the basename of command[0] among the lab binaries.
        let Some(cmd0) = c.command.as_ref().and_then(|v| v.first()).cloned() else {
            let t = start_error(format!(
                "the lab image has no default entrypoint: container {:?} must set command (a lab binary name)",
                c.name
            ));
            self.fail_start(i, t);
            return Ok(());
        };
        let base = Path::new(&cmd0)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let program = self.ctx.opts.labs_dir.join(&base);
        if base.is_empty() || !program.is_file() {
            let t = start_error(format!(
                "failed to create containerd task: exec: {cmd0:?}: executable file not found in the lab image (no {} was built)",
                program.display()
            ));
            self.fail_start(i, t);
            return Ok(());
        }
        // Env (may need configMaps/secrets): retried while it fails, as CreateContainerConfigError.
        let mut failures = 0u32;
        let env = loop {
            match self.build_env(&c).await {
                Ok(env) => break env,
                Err(message) => {
                    failures += 1;
                    if failures >= 3 {
                        self.containers[i].state = CState::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(message.clone()),
                        };
                        if failures == 3 {
                            let cr = &self.containers[i];
                            self.event(true, "Failed", format!("Error: {message}"), Some(cr));
                        }
                        self.post_status().await;
                    }
                    self.backoff(failures).await?;
                }
            }
        };
        let lookup = |s: &str| expand(s, &env);
        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten())
            .map(|a| lookup(a))
            .collect();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = volumes.get(&m.name) else {
                let t = start_error(format!(
                    "volumeMount {:?} refers to no volume of the pod",
                    m.name
                ));
                self.fail_start(i, t);
                return Ok(());
            };
            let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sp) => {
                    let p = src.join(sp);
                    if !p.exists() {
                        let _ = fs::create_dir_all(&p);
                    }
                    p
                }
                None => src.clone(),
            };
            mounts.push(MountSpec {
                source: src,
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        // A fresh container dir (no state from an earlier attempt).
        let _ = fs::remove_dir_all(&cdir);
        if let Err(e) = fs::create_dir_all(&cdir) {
            self.fail_start(i, start_error(format!("creating {}: {e}", cdir.display())));
            return Ok(());
        }
        let tlog = cdir.join("termination-log");
        let _ = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o666)
            .open(&tlog);
        let _ = fs::set_permissions(&tlog, fs::Permissions::from_mode(0o666));
        let spec = ExecSpec {
            namespace: self.ns.clone(),
            pod: self.name.clone(),
            container: c.name.clone(),
            program,
            argv0: cmd0.clone(),
            args,
            env,
            working_dir: c.working_dir.clone().unwrap_or_default(),
            hostname: self.name.clone(),
            mounts,
            termination_message_path: c
                .termination_message_path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/dev/termination-log".into()),
            termination_log: tlog,
            log_file: cdir.join("log"),
            state_dir: cdir.clone(),
            run_as_user: self.security(&c, |sc| sc.run_as_user, |psc| psc.run_as_user),
            run_as_group: self.security(&c, |sc| sc.run_as_group, |psc| psc.run_as_group),
        };
        {
            let cr = &self.containers[i];
            let image = c.image.clone().unwrap_or_default();
            self.event(
                false,
                "Pulled",
                format!("Container image {image:?} already present on machine"),
                Some(cr),
            );
            self.event(
                false,
                "Created",
                format!("Created container: {}", c.name),
                Some(cr),
            );
        }
        let spec_path = cdir.join("spec.json");
        if let Err(e) = exec::write_json_atomic(&spec_path, &spec) {
            self.fail_start(
                i,
                start_error(format!("writing {}: {e}", spec_path.display())),
            );
            return Ok(());
        }
        let stderr = fs::File::create(cdir.join("pod-exec.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let spawned = tokio::process::Command::new(&self.ctx.self_bin)
            .arg("pod-exec")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(false)
            .spawn();
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                self.fail_start(i, start_error(format!("starting sa-lab pod-exec: {e}")));
                return Ok(());
            }
        };
        let wrapper_pid = child.id().map(|p| p as i32).unwrap_or(0);
        let mut pid = None;
        if let Some(out) = child.stdout.take() {
            let mut lines = BufReader::new(out).lines();
            if let Ok(Some(line)) = lines.next_line().await {
                pid = line
                    .strip_prefix(STARTED_LINE_PREFIX)
                    .and_then(|p| p.trim().parse::<i32>().ok());
            }
        }
        let info = self.term_info(i);
        let tx = self.exit_tx.clone();
        let dir2 = cdir.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let t = info.read(&dir2, pid).await;
            let _ = tx.send((i, t));
        });
        if let Some(pid) = pid {
            let started: Option<StartedRecord> = exec::read_json(&cdir.join(STARTED_FILE));
            let started_at = started
                .and_then(|s| parse_ts(&Some(s.started_at)))
                .unwrap_or_else(jiff::Timestamp::now);
            self.containers[i].state = CState::Running {
                started_at,
                pid,
                wrapper_pid,
            };
            let cr = &self.containers[i];
            self.event(
                false,
                "Started",
                format!("Started container {}", c.name),
                Some(cr),
            );
        }
        // else: the wrapper failed before the program ran; its waiter reports StartError.
        Ok(())
    }

    /// A securityContext field: the container's value, else the pod's.
    fn security(
        &self,
        c: &Container,
        from_container: impl Fn(&k8s_openapi::api::core::v1::SecurityContext) -> Option<i64>,
        from_pod: impl Fn(&k8s_openapi::api::core::v1::PodSecurityContext) -> Option<i64>,
    ) -> Option<u32> {
        c.security_context
            .as_ref()
            .and_then(from_container)
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.security_context.as_ref())
                    .and_then(from_pod)
            })
            .and_then(|v| u32::try_from(v).ok())
    }

    fn fail_start(&mut self, i: usize, t: Term) {
        let msg = t.message.clone().unwrap_or_default();
        self.containers[i].state = CState::Terminated(t);
        let cr = &self.containers[i];
        self.event(true, "Failed", format!("Error: {msg}"), Some(cr));
    }

    /// SIGTERM every running container, wait up to `grace`, then SIGKILL.
    async fn stop_containers(&mut self, grace: Duration) {
        let running: Vec<usize> = (0..self.containers.len())
            .filter(|&i| matches!(self.containers[i].state, CState::Running { .. }))
            .collect();
        if running.is_empty() {
            return;
        }
        for &i in &running {
            if let CState::Running { pid, .. } = self.containers[i].state {
                let cr = &self.containers[i];
                self.event(
                    false,
                    "Killing",
                    format!("Stopping container {}", cr.spec.name),
                    Some(cr),
                );
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        self.wait_running_until(deadline).await;
        for &i in &running {
            if let CState::Running {
                pid, wrapper_pid, ..
            } = self.containers[i].state
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = wrapper_pid;
            }
        }
        self.wait_running_until(tokio::time::Instant::now() + Duration::from_secs(2))
            .await;
        for &i in &running {
            if let CState::Running {
                wrapper_pid,
                started_at,
                pid,
            } = self.containers[i].state
            {
                if wrapper_pid > 0 {
                    let _ = killpg(Pid::from_raw(wrapper_pid), Signal::SIGKILL);
                }
                self.containers[i].state = CState::Terminated(Term {
                    exit_code: 137,
                    signal: Some(9),
                    reason: "Error".into(),
                    message: None,
                    started_at: Some(started_at),
                    finished_at: jiff::Timestamp::now(),
                    pid: Some(pid),
                });
            }
        }
    }

    async fn wait_running_until(&mut self, deadline: tokio::time::Instant) {
        while self
            .containers
            .iter()
            .any(|c| matches!(c.state, CState::Running { .. }))
        {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                m = self.exit_rx.recv() => match m {
                    Some((i, t)) => self.on_exit(i, t),
                    None => return,
                }
            }
        }
    }

    /// Graceful deletion: stop, final status, then delete with grace 0 and a UID precondition.
    async fn finalize_deletion(&mut self) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        self.stop_containers(Duration::from_secs(grace)).await;
        if !is_terminal(&self.pod)
            && self
                .containers
                .iter()
                .any(|c| !matches!(c.state, CState::Waiting { .. }))
        {
            self.post_status().await;
        }
        if let Some(h) = self.resync.take() {
            h.abort();
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => tracing::info!(pod = %self.name, ns = %self.ns, "pod deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %self.name, ns = %self.ns, error = %e, "deleting the pod failed")
            }
        }
    }

    fn condition(&mut self, type_: &str, ok: bool, reason: Option<&str>) -> PodCondition {
        let status = if ok { "True" } else { "False" }.to_string();
        let t = match self.cond_times.get(type_) {
            Some((s, t)) if *s == status => *t,
            _ => {
                let now = jiff::Timestamp::now();
                self.cond_times
                    .insert(type_.to_string(), (status.clone(), now));
                now
            }
        };
        PodCondition {
            type_: type_.into(),
            status,
            reason: reason.map(str::to_string),
            last_transition_time: Some(Time(t)),
            ..Default::default()
        }
    }

    fn build_status(&mut self) -> PodStatus {
        let regular: Vec<&CRt> = self.containers.iter().filter(|c| !c.init).collect();
        let inits: Vec<&CRt> = self.containers.iter().filter(|c| c.init).collect();
        let term = |c: &CRt| match &c.state {
            CState::Terminated(t) => Some(t.exit_code),
            _ => None,
        };
        let init_failed = inits.iter().any(|c| term(c).is_some_and(|e| e != 0));
        let inits_done = inits.iter().all(|c| term(c) == Some(0));
        let all_done = regular.iter().all(|c| term(c).is_some());
        let any_running = regular
            .iter()
            .any(|c| matches!(c.state, CState::Running { .. }));
        let phase = if init_failed {
            "Failed"
        } else if inits_done && all_done {
            if regular.iter().all(|c| term(c) == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if inits_done && any_running {
            "Running"
        } else {
            "Pending"
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        let all_running = !regular.is_empty()
            && regular
                .iter()
                .all(|c| matches!(c.state, CState::Running { .. }));
        let ready_reason = if terminal {
            Some("PodCompleted")
        } else if all_running {
            None
        } else {
            Some("ContainersNotReady")
        };
        let statuses = |cs: &[&CRt]| -> Vec<ContainerStatus> {
            cs.iter().map(|c| container_status(c)).collect()
        };
        let container_statuses = statuses(&regular);
        let init_statuses = statuses(&inits);
        let has_inits = !inits.is_empty();
        let ready_to_start = self.ready_to_start && !terminal;
        let sched = self.condition("PodScheduled", true, None);
        let rts = self.condition(
            "PodReadyToStartContainers",
            ready_to_start || terminal && self.ready_to_start,
            None,
        );
        let init_reason = if inits_done || !has_inits {
            if terminal && has_inits {
                Some("PodCompleted")
            } else {
                None
            }
        } else {
            Some("ContainersNotInitialized")
        };
        let initialized = self.condition("Initialized", inits_done, init_reason);
        let cready = self.condition("ContainersReady", all_running && !terminal, ready_reason);
        let ready = self.condition("Ready", all_running && !terminal, ready_reason);
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![rts, initialized, ready, cready, sched]),
            container_statuses: Some(container_statuses),
            init_container_statuses: has_inits.then_some(init_statuses),
            host_ip: Some(POD_IP.into()),
            host_ips: Some(vec![HostIP { ip: POD_IP.into() }]),
            pod_ip: Some(POD_IP.into()),
            pod_ips: Some(vec![PodIP { ip: POD_IP.into() }]),
            start_time: Some(Time(self.start_time)),
            ..Default::default()
        }
    }

    async fn post_status(&mut self) {
        let status = self.build_status();
        let value = serde_json::json!({ "status": status });
        if self.last_posted.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        for attempt in 0..3 {
            match api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&value))
                .await
            {
                Ok(_) => {
                    self.last_posted = Some(value);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.name, ns = %self.ns, error = %e, attempt, "updating the pod status failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }
}

fn creating() -> CState {
    CState::Waiting {
        reason: "ContainerCreating".into(),
        message: None,
    }
}

fn start_error(message: String) -> Term {
    Term {
        exit_code: 128,
        signal: None,
        reason: "StartError".into(),
        message: Some(message),
        started_at: None,
        finished_at: jiff::Timestamp::now(),
        pid: None,
    }
}

fn unknown_term() -> Term {
    Term {
        exit_code: 137,
        signal: None,
        reason: "ContainerStatusUnknown".into(),
        message: Some("The container could not be located when the pod was terminated".into()),
        started_at: None,
        finished_at: jiff::Timestamp::now(),
        pid: None,
    }
}

fn container_status(c: &CRt) -> ContainerStatus {
    let image = c.spec.image.clone().unwrap_or_default();
    let (state, ready, started, cid) = match &c.state {
        CState::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            false,
            Some(false),
            None,
        ),
        CState::Running {
            started_at, pid, ..
        } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            true,
            Some(true),
            Some(format!("sandbox://{pid}")),
        ),
        CState::Terminated(t) => {
            let cid = t.pid.map(|p| format!("sandbox://{p}"));
            (
                ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        container_id: cid.clone(),
                        exit_code: t.exit_code,
                        signal: t.signal,
                        reason: Some(t.reason.clone()),
                        message: t.message.clone(),
                        started_at: t.started_at.map(Time),
                        finished_at: Some(Time(t.finished_at)),
                    }),
                    ..Default::default()
                },
                false,
                Some(false),
                cid,
            )
        }
    };
    ContainerStatus {
        name: c.spec.name.clone(),
        image: image.clone(),
        image_id: format!("sa-lab://{image}"),
        container_id: cid,
        ready,
        started,
        restart_count: 0,
        state: Some(state),
        ..Default::default()
    }
}

/// What's needed to turn a container's exit files into a [`Term`].
#[derive(Clone, Copy)]
struct TermInfo {
    fallback_to_logs: bool,
}

impl TermInfo {
    async fn read(self, cdir: &Path, pid: Option<i32>) -> Term {
        // exit.json is written just before the wrapper exits; allow a moment.
        let mut rec: Option<ExitRecord> = None;
        for _ in 0..20 {
            rec = exec::read_json(&cdir.join(EXIT_FILE));
            if rec.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(rec) = rec else {
            let why = fs::read_to_string(cdir.join("pod-exec.log")).unwrap_or_default();
            let mut t = unknown_term();
            if !why.trim().is_empty() {
                t.reason = "StartError".into();
                t.exit_code = 128;
                t.message = Some(truncate(why.trim(), MAX_TERMINATION_MESSAGE));
            }
            t.pid = pid;
            return t;
        };
        term_from_exit(rec, cdir, self.fallback_to_logs, pid)
    }
}

/// The terminated state a kubelet reports for a container's exit record:
/// reason Completed/Error (StartError if it never ran), the termination
/// message (or, with FallbackToLogsOnError, the log tail after a failure).
fn term_from_exit(rec: ExitRecord, cdir: &Path, fallback_to_logs: bool, pid: Option<i32>) -> Term {
    let finished_at = parse_ts(&Some(rec.finished_at.clone())).unwrap_or_else(jiff::Timestamp::now);
    if let Some(err) = rec.start_error {
        return Term {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(err),
            started_at: None,
            finished_at,
            pid,
        };
    }
    let mut message = read_capped(&cdir.join("termination-log"), MAX_TERMINATION_MESSAGE);
    if message.is_empty() && rec.exit_code != 0 && fallback_to_logs {
        message = log_tail(&cdir.join("log"));
    }
    Term {
        exit_code: rec.exit_code,
        signal: rec.signal,
        reason: if rec.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        message: (!message.is_empty()).then_some(message),
        started_at: parse_ts(&rec.started_at),
        finished_at,
        pid,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn read_capped(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(mut d) => {
            d.truncate(max);
            let s = String::from_utf8_lossy(&d).into_owned();
            truncate(&s, max)
        }
        Err(_) => String::new(),
    }
}

fn log_tail(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(MAX_FALLBACK_LOG_LINES);
    let tail = lines[start..].join("\n");
    if tail.len() > MAX_FALLBACK_LOG_BYTES {
        let mut cut = tail.len() - MAX_FALLBACK_LOG_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail
    }
}

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is `$`,
/// anything else is left as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            let close = if b[i + 1] == b'(' {
                input[i + 2..].find(')')
            } else {
                None
            };
            if let Some(close) = close {
                let name = &input[i + 2..i + 2 + close];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                } else {
                    out.push_str(&input[i..i + 3 + close]);
                }
                i += 3 + close;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        assert_eq!(expand("x$(A)y", &env()), "x1y");
        assert_eq!(expand("$(B)/$(C)", &env()), "two/$(C)");
        assert_eq!(expand("$$(A)", &env()), "$(A)");
        assert_eq!(expand("$(A", &env()), "$(A");
        assert_eq!(expand("ünï$(A)", &env()), "ünï1");
    }

    #[test]
    fn caps_and_tails() {
        assert_eq!(truncate("héllo", 2), "h");
        let d = crate::node::test_dir("tail");
        let p = d.join("log");
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        fs::write(&p, text).unwrap();
        let t = log_tail(&p);
        assert!(t.ends_with("line 199"));
        assert_eq!(t.lines().count(), MAX_FALLBACK_LOG_LINES);
        fs::write(d.join("msg"), "x".repeat(5000)).unwrap();
        assert_eq!(
            read_capped(&d.join("msg"), MAX_TERMINATION_MESSAGE).len(),
            4096
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn status_of_a_finished_pod() {
        let t = Term {
            exit_code: 143,
            signal: Some(15),
            reason: "Error".into(),
            message: Some("bye".into()),
            started_at: None,
            finished_at: jiff::Timestamp::now(),
            pid: Some(7),
        };
        let c = CRt {
            spec: Container {
                name: "c".into(),
                ..Default::default()
            },
            init: false,
            state: CState::Terminated(t),
        };
        let s = container_status(&c);
        let term = s.state.unwrap().terminated.unwrap();
        assert_eq!(
            (term.exit_code, term.signal, term.reason.as_deref()),
            (143, Some(15), Some("Error"))
        );
        assert_eq!(term.container_id.as_deref(), Some("sandbox://7"));
    }
}
