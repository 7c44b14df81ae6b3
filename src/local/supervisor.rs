//! The supervisor: the one long-lived process of a local cluster. It owns
//! every component (each dies with it), reports progress and health in
//! `status.json`, and stops everything in reverse order on SIGTERM.
//!
//! Once the cluster is ready it heals it, as a kubelet restarts a crashed
//! static Pod: a component that exits is started again after a capped
//! exponential back-off (see [`super::restart`]), once what it needs is up
//! (etcd before the API server, the API server before everything that talks
//! to it). Each restart and the last exit are recorded in `status.json`, so
//! `sa-lab status` shows them; a component that keeps crashing is given up
//! on, and reported with the tail of its log.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::components::Component;
use super::restart::{self, Decision, History, Policy};
use super::{ClusterInfo, ComponentStatus, Status, write_status};

const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How many lines of a given-up component's log its report shows.
pub(crate) const TAIL_LINES: usize = 20;
/// How often a restart that waits for what it needs looks again.
const DEPENDENCY_POLL: Duration = Duration::from_millis(250);
/// How long one readiness probe of a dependency may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the supervisor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster's facts could not be read.
    #[error(transparent)]
    Cluster(#[from] Box<super::Error>),
    /// The kubelet node's host lock could not be taken.
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::Error),
    /// The runtime or a signal handler could not be set up.
    #[error("setting up the supervisor ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A component's log could not be opened, or its program not started.
    #[error("starting {component} ({what})")]
    Spawn {
        component: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox node's options could not be written.
    #[error("writing the sandbox node's options")]
    NodeOptions(#[source] crate::pki::Error),
    /// The admin kubeconfig gave no client.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::LoadError),
    /// A component exited, or never became ready, while the cluster started.
    #[error("{component}: {reason}")]
    Start { component: String, reason: String },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Setup { what, source }
}

/// One component and its process (the last one, if it exited).
struct Running {
    component: Component,
    child: Child,
    /// When `child` was started.
    started: Instant,
    restarts: u32,
    /// How the last run ended, once one has.
    last_exit: Option<String>,
    history: History,
    /// Exited and to be started again at this moment (or later, once what
    /// it needs is up).
    due: Option<Instant>,
    /// What it waits for, as last said in the supervisor's log.
    waiting_for: Option<Component>,
    /// It kept crashing: no more restarts.
    gave_up: bool,
}

impl Running {
    /// Its process runs (as far as the last reap knows).
    fn up(&mut self) -> bool {
        self.due.is_none() && !self.gave_up && matches!(self.child.try_wait(), Ok(None))
    }
}

struct Supervisor {
    info: ClusterInfo,
    status: Status,
    running: Vec<Running>,
    started: Instant,
    policy: Policy,
    /// The admin client, once the API server was first ready.
    client: Option<kube::Client>,
}

/// Outcome of waiting for a condition while watching the children.
enum Wait {
    Done,
    Stop,
}

/// Runs the supervisor for cluster `name` until SIGTERM/SIGINT (or a failed
/// start). Blocks; builds its own single-threaded runtime so every child is
/// spawned from the main thread (the parent-death signal follows the thread).
pub fn supervise(name: &str) -> Result<(), Error> {
    let info = super::load(name).map_err(Box::new)?;
    // The kubelet node's host lock, handed over by `up`: held until every
    // host change is undone (it is released when this process exits).
    let _lock = match &info.kubelet {
        Some(_) => Some(crate::kubelet::NodeLock::inherited_or_acquire()?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(setup("building its runtime"))?;
    rt.block_on(async move {
        let mut sup = Supervisor {
            status: Status {
                supervisor_pid: std::process::id(),
                ..Status::default()
            },
            info,
            running: Vec::new(),
            started: Instant::now(),
            policy: Policy::DEFAULT,
            client: None,
        };
        let result = sup.run().await;
        sup.stop_all();
        if let Err(e) = &result {
            eprintln!("supervisor: {}", crate::ui::error_chain(e));
        }
        result
    })
}

impl Supervisor {
    async fn run(&mut self) -> Result<(), Error> {
        let mut term = signal(SignalKind::terminate()).map_err(setup("SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(setup("SIGINT handler"))?;
        if let Some(k) = self.info.kubelet.clone() {
            // Before the API server: it binds the node's address.
            self.phase("node-host");
            crate::kubelet::setup(&self.info, &k)
                .map_err(|e| self.fail("node-host", &e.to_string()))?;
        } else {
            self.write_node_options()?;
        }

        // etcd and kube-apiserver start together, as kubeadm's static Pods
        // do: the API server retries etcd until it answers, and its
        // `/readyz` includes etcd. Waiting for etcd's `/health` first cost
        // up to a second here and bought nothing.
        self.phase("kube-apiserver");
        self.spawn(Component::Etcd)?;
        self.spawn(Component::ApiServer)?;
        let client = self.info.client().await?;
        let c = client.clone();
        if let Wait::Stop = self
            .wait("kube-apiserver", &mut term, &mut int, async || {
                readyz(&c).await
            })
            .await?
        {
            return Ok(());
        }
        self.client = Some(client.clone());
        if let Some(k) = self.info.kubelet.clone() {
            if let Wait::Stop = self.start_kubelet_node(&k, &mut term, &mut int).await? {
                return Ok(());
            }
        } else {
            // What talks to the API server starts the moment it is ready.
            self.phase("controllers");
            self.spawn(Component::ControllerManager)?;
            self.spawn(Component::Scheduler)?;
            self.spawn(Component::Node)?;
        }
        // While those start, the API server's client for the node (`kubectl
        // logs`) gets the role kubeadm gives it, in place before the cluster
        // is ready; either node asks the API server whether a caller may
        // (SubjectAccessReview), as a kubelet does.
        crate::kubelet::bind_kubelet_api_admin(&client)
            .await
            .map_err(|e| {
                self.fail(
                    "kube-apiserver",
                    &format!("binding system:kubelet-api-admin: {e:#}"),
                )
            })?;
        self.phase("ready");
        let node = self.info.node_name.clone();
        if let Wait::Stop = self
            .wait("ready", &mut term, &mut int, async || {
                cluster_ready(&client, &node).await
            })
            .await?
        {
            return Ok(());
        }
        self.status.ready = true;
        self.milestone("cluster ready");
        self.status.phase = "ready".into();
        self.refresh_status();
        eprintln!(
            "supervisor: cluster ready after {:.2}s",
            self.started.elapsed().as_secs_f64()
        );
        self.heal(&mut term, &mut int).await
    }

    /// The kubelet node: containerd (and the images), then the
    /// controllers, the kubelet and kube-proxy; waits for kube-proxy's first
    /// sync so Pods can reach the API server from their first moment.
    async fn start_kubelet_node(
        &mut self,
        k: &crate::kubelet::KubeletNode,
        term: &mut Signal,
        int: &mut Signal,
    ) -> Result<Wait, Error> {
        self.phase("containerd");
        self.spawn(Component::Containerd)?;
        let info = self.info.clone();
        if let Wait::Stop = self
            .wait("containerd", term, int, async || {
                crate::kubelet::containerd_ready(&info).await
            })
            .await?
        {
            return Ok(Wait::Stop);
        }
        crate::kubelet::import_images(&self.info, k)
            .map_err(|e| self.fail("containerd", &e.to_string()))?;
        self.phase("controllers-kubelet");
        self.spawn(Component::ControllerManager)?;
        self.spawn(Component::Scheduler)?;
        self.spawn(Component::Kubelet)?;
        self.spawn(Component::KubeProxy)?;
        self.wait("kube-proxy", term, int, async || {
            crate::kubelet::proxy_ready(k).await
        })
        .await
    }

    fn write_node_options(&self) -> Result<(), Error> {
        let i = &self.info;
        let pki = i.pki_dir();
        let opts = crate::node::NodeOptions {
            name: i.node_name.clone(),
            kubeconfig: pki.join("node.kubeconfig"),
            work_dir: i.dir.join("node"),
            labs_dir: i.labs_dir.clone(),
            api_host: "127.0.0.1".into(),
            api_port: i.api_port,
            kubelet_port: i.kubelet_port,
            serving_cert: pki.join("node-serving.crt"),
            serving_key: pki.join("node-serving.key"),
            client_ca: pki.join("ca.crt"),
            lab_image: crate::LAB_IMAGE.into(),
        };
        let path = i.dir.join("node/options.json");
        let json = serde_json::to_string_pretty(&opts).expect("node options serialize");
        crate::pki::write_private(&path, json.as_bytes()).map_err(Error::NodeOptions)
    }

    fn phase(&mut self, phase: &str) {
        self.status.phase = phase.to_string();
        self.milestone(phase);
        self.refresh_status();
    }

    /// Notes in the timeline that `what` began now.
    fn milestone(&mut self, what: &str) {
        self.status.timeline.push(super::Milestone {
            what: what.to_string(),
            at: self.started.elapsed().as_secs_f64(),
        });
    }

    fn log_path(&self, component: Component) -> PathBuf {
        self.info
            .logs_dir()
            .join(format!("{}.log", component.name()))
    }

    fn refresh_status(&mut self) {
        let logs = self.info.logs_dir();
        self.status.components = self
            .running
            .iter_mut()
            .map(|r| ComponentStatus {
                name: r.component.name().to_string(),
                pid: Some(r.child.id()),
                running: r.up(),
                restarts: r.restarts,
                log: logs.join(format!("{}.log", r.component.name())),
                last_exit: r.last_exit.clone(),
                gave_up: r.gave_up,
            })
            .collect();
        if self.status.ready {
            let down: Vec<&str> = self
                .status
                .components
                .iter()
                .filter(|c| !c.running)
                .map(|c| c.name.as_str())
                .collect();
            self.status.phase = if self.status.components.iter().any(|c| c.gave_up) {
                "degraded".into()
            } else if down.is_empty() {
                "ready".into()
            } else {
                format!("restarting {}", down.join(", "))
            };
        }
        write_status(&self.info.dir, &self.status);
    }

    fn spawn(&mut self, component: Component) -> Result<(), Error> {
        let child = self.start_process(component)?;
        self.running.push(Running {
            component,
            child,
            started: Instant::now(),
            restarts: 0,
            last_exit: None,
            history: History::default(),
            due: None,
            waiting_for: None,
            gave_up: false,
        });
        self.refresh_status();
        Ok(())
    }

    fn start_process(&self, component: Component) -> Result<Child, Error> {
        let (program, args) = component.command(&self.info);
        let log_path = self.log_path(component);
        let spawn = |what: String| {
            move |source| Error::Spawn {
                component: component.name(),
                what,
                source,
            }
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(spawn(format!("opening {}", log_path.display())))?;
        let out = log
            .try_clone()
            .map_err(spawn(format!("sharing {}", log_path.display())))?;
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .env("SA_LAB_HOME", crate::paths::home());
        if component == Component::Node {
            // The node's own log (logs/sandbox-node.log) at info level,
            // unless the user asked for more.
            let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
            cmd.env("RUST_LOG", level);
        }
        if let Some(k) = &self.info.kubelet {
            cmd.env("PATH", crate::kubelet::path_env(k));
        }
        crate::sys::die_with_parent(&mut cmd);
        cmd.spawn()
            .map_err(spawn(format!("running {}", program.display())))
    }

    /// Polls `ready` until it is true, failing if a started component exits
    /// or the start timeout passes; returns `Stop` on SIGTERM/SIGINT.
    async fn wait<F>(
        &mut self,
        what: &str,
        term: &mut Signal,
        int: &mut Signal,
        mut ready: F,
    ) -> Result<Wait, Error>
    where
        F: AsyncFnMut() -> bool,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some((name, how)) = self.first_exited() {
                return Err(self.fail(name, &format!("exited ({how}) while waiting for {what}")));
            }
            if ready().await {
                return Ok(Wait::Done);
            }
            if Instant::now() > deadline {
                let name = match what {
                    "ready" => "kube-controller-manager",
                    // Started together: name the one that does not answer.
                    "kube-apiserver" if !etcd_healthy(self.info.etcd_port) => "etcd",
                    other => other,
                };
                return Err(self.fail(
                    name,
                    &format!("not ready after {}s", START_TIMEOUT.as_secs()),
                ));
            }
            tokio::select! {
                _ = term.recv() => return Ok(Wait::Stop),
                _ = int.recv() => return Ok(Wait::Stop),
                _ = tokio::time::sleep(Duration::from_millis(30)) => {}
            }
        }
    }

    fn first_exited(&mut self) -> Option<(&'static str, String)> {
        self.running
            .iter_mut()
            .find_map(|r| match r.child.try_wait() {
                Ok(Some(st)) => Some((r.component.name(), st.to_string())),
                _ => None,
            })
    }

    fn fail(&mut self, component: &str, reason: &str) -> Error {
        self.status.error = Some(format!("{component}\t{reason}"));
        self.refresh_status();
        Error::Start {
            component: component.to_string(),
            reason: reason.to_string(),
        }
    }

    /// After start-up: wake on every child's exit (SIGCHLD) and when a
    /// restart is due, restart what exited once what it needs is up, keep
    /// the status fresh, stop on a signal.
    async fn heal(&mut self, term: &mut Signal, int: &mut Signal) -> Result<(), Error> {
        let mut chld = signal(SignalKind::child()).map_err(setup("SIGCHLD handler"))?;
        loop {
            self.reap();
            let blocked = self.restart_due().await;
            self.refresh_status();
            let now = Instant::now();
            let next = self
                .running
                .iter()
                .filter_map(|r| r.due)
                .filter(|due| *due > now)
                .min();
            let wake = match (next, blocked) {
                (_, true) => now + DEPENDENCY_POLL,
                (Some(due), false) => due,
                // Nothing to do until a child exits; look anyway now and
                // then, to keep the status file honest.
                (None, false) => now + Duration::from_secs(5),
            };
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = chld.recv() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Notes every component whose process has exited since last time.
    fn reap(&mut self) {
        for i in 0..self.running.len() {
            let r = &mut self.running[i];
            if r.due.is_some() || r.gave_up {
                continue;
            }
            if let Ok(Some(st)) = r.child.try_wait() {
                self.exited(i, st.to_string());
            }
        }
    }

    /// Records that component `i` ended (`how`), and decides on its restart.
    fn exited(&mut self, i: usize, how: String) {
        let now = Instant::now();
        let log = self.log_path(self.running[i].component);
        let policy = self.policy;
        let r = &mut self.running[i];
        let name = r.component.name();
        r.last_exit = Some(how.clone());
        match r.history.exited(&policy, r.started, now) {
            Decision::RestartAfter(delay) => {
                r.due = Some(now + delay);
                eprintln!(
                    "supervisor: {name} exited ({how}); restarting it in {:.2}s",
                    delay.as_secs_f64()
                );
            }
            Decision::GiveUp => {
                r.gave_up = true;
                eprintln!(
                    "supervisor: giving up on {name}: it exited more than {} times within {}s \
                     (last: {how}); `sa-lab down` and `up` start afresh\n\
                     --- last lines of {} ---\n{}",
                    policy.burst,
                    policy.window.as_secs(),
                    log.display(),
                    super::tail(&log, TAIL_LINES)
                );
            }
        }
    }

    /// Restarts every component that is due and whose needs are up;
    /// returns whether one is due but waits for another.
    async fn restart_due(&mut self) -> bool {
        let now = Instant::now();
        let mut blocked = false;
        for i in 0..self.running.len() {
            let r = &self.running[i];
            if r.gave_up || r.due.is_none_or(|due| due > now) {
                continue;
            }
            let component = r.component;
            if let Some(need) = self.first_not_ready(restart::needs(component)).await {
                let r = &mut self.running[i];
                if r.waiting_for != Some(need) {
                    eprintln!(
                        "supervisor: {} waits for {} before restarting",
                        component.name(),
                        need.name()
                    );
                    r.waiting_for = Some(need);
                }
                blocked = true;
                continue;
            }
            self.restart(i);
        }
        blocked
    }

    /// The first of `needs` that is not up and ready, if any.
    async fn first_not_ready(&mut self, needs: &[Component]) -> Option<Component> {
        for &need in needs {
            let up = self
                .running
                .iter_mut()
                .find(|r| r.component == need)
                // Not part of this cluster's kind of node.
                .is_none_or(|r| r.up());
            let ready = up
                && match need {
                    Component::Etcd => etcd_healthy(self.info.etcd_port),
                    Component::ApiServer => match &self.client {
                        Some(c) => tokio::time::timeout(PROBE_TIMEOUT, readyz(c))
                            .await
                            .unwrap_or(false),
                        None => true,
                    },
                    _ => true,
                };
            if !ready {
                return Some(need);
            }
        }
        None
    }

    fn restart(&mut self, i: usize) {
        let component = self.running[i].component;
        let how = self.running[i].last_exit.clone().unwrap_or_default();
        // A line in the component's own log, so its reader sees the seam.
        let log = self.log_path(component);
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&log) {
            let _ = writeln!(
                f,
                "--- sa-lab supervisor: {} exited ({how}); restarting it ---",
                component.name()
            );
        }
        match self.start_process(component) {
            Ok(child) => {
                let r = &mut self.running[i];
                r.child = child;
                r.started = Instant::now();
                r.restarts += 1;
                r.due = None;
                r.waiting_for = None;
                eprintln!(
                    "supervisor: restarted {} (pid {}, restart {})",
                    component.name(),
                    r.child.id(),
                    r.restarts
                );
            }
            Err(e) => {
                // As good as a crash: the policy decides on another try.
                let why = crate::ui::error_chain(&e);
                self.running[i].due = None;
                self.running[i].started = Instant::now();
                self.exited(i, format!("could not be started: {why}"));
            }
        }
    }

    /// Stops components in reverse start order: SIGTERM, a grace period,
    /// then SIGKILL.
    fn stop_all(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        self.status.phase = "stopping".into();
        self.status.ready = false;
        write_status(&self.info.dir, &self.status);
        while let Some(mut r) = self.running.pop() {
            let grace = match r.component {
                Component::Node => Duration::from_secs(35),
                _ => Duration::from_secs(10),
            };
            if let (Component::Containerd, Some(k)) = (r.component, &self.info.kubelet) {
                // The kubelet is stopped: remove every Pod sandbox through
                // the CRI while containerd still runs.
                crate::kubelet::remove_sandboxes(&self.info, k);
            }
            if let Ok(None) = r.child.try_wait() {
                let _ = kill(Pid::from_raw(r.child.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while matches!(r.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
        }
        if self.info.kubelet.is_some() {
            for f in crate::kubelet::teardown_for(&self.info.name) {
                eprintln!("supervisor: could not undo on the host: {f}");
            }
        } else {
            crate::node::kill_leftovers(&self.info.dir.join("node"));
        }
        self.status.phase = "stopped".into();
        self.status
            .components
            .iter_mut()
            .for_each(|c| c.running = false);
        write_status(&self.info.dir, &self.status);
    }
}

pub(crate) fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

async fn readyz(client: &kube::Client) -> bool {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("valid request");
    client.request_text(req).await.is_ok()
}

async fn cluster_ready(client: &kube::Client, node: &str) -> bool {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cr: Api<ClusterRole> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let Ok(Some(_)) = sa.get_opt("default").await else {
        return false;
    };
    let Ok(Some(_)) = cm.get_opt("kube-root-ca.crt").await else {
        return false;
    };
    let Ok(Some(view)) = cr.get_opt("view").await else {
        return false;
    };
    if view.rules.is_none_or(|r| r.is_empty()) {
        return false;
    }
    let Ok(Some(n)) = nodes.get_opt(node).await else {
        return false;
    };
    n.status
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
