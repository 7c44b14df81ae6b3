//! The supervisor: the one long-lived process of a local cluster. It owns
//! every component (each dies with it), reports progress and health in
//! `status.json`, restarts the sandbox node if it dies, and stops everything
//! in reverse order on SIGTERM.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use tokio::signal::unix::{SignalKind, signal};

use super::components::Component;
use super::{ClusterInfo, ComponentStatus, Status, write_status};

const START_TIMEOUT: Duration = Duration::from_secs(90);

struct Running {
    component: Component,
    child: Child,
    restarts: u32,
}

struct Supervisor {
    info: ClusterInfo,
    status: Status,
    running: Vec<Running>,
    started: Instant,
}

/// Outcome of waiting for a condition while watching the children.
enum Wait {
    Done,
    Stop,
}

/// Runs the supervisor for cluster `name` until SIGTERM/SIGINT (or a failed
/// start). Blocks; builds its own single-threaded runtime so every child is
/// spawned from the main thread (the parent-death signal follows the thread).
pub fn supervise(name: &str) -> anyhow::Result<()> {
    let info = super::load(name)?;
    // The kubelet node's host lock, handed over by `up`: held until every
    // host change is undone (it is released when this process exits).
    let _lock = match &info.kubelet {
        Some(_) => Some(crate::kubelet::NodeLock::inherited_or_acquire()?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the supervisor runtime")?;
    rt.block_on(async move {
        let mut sup = Supervisor {
            status: Status {
                supervisor_pid: std::process::id(),
                ..Status::default()
            },
            info,
            running: Vec::new(),
            started: Instant::now(),
        };
        let result = sup.run().await;
        sup.stop_all();
        if let Err(e) = &result {
            eprintln!("supervisor: {e:#}");
        }
        result
    })
}

impl Supervisor {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        if let Some(k) = self.info.kubelet.clone() {
            // Before the API server: it binds the node's address.
            self.phase("node-host");
            crate::kubelet::setup(&self.info, &k)
                .map_err(|e| self.fail("node-host", &e.to_string()))?;
        } else {
            self.write_node_options()?;
        }

        self.phase("etcd");
        self.spawn(Component::Etcd)?;
        let etcd_port = self.info.etcd_port;
        if let Wait::Stop = self
            .wait("etcd", &mut term, &mut int, async || {
                etcd_healthy(etcd_port)
            })
            .await?
        {
            return Ok(());
        }

        self.phase("kube-apiserver");
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

        if let Some(k) = self.info.kubelet.clone() {
            if let Wait::Stop = self
                .start_kubelet_node(&k, &client, &mut term, &mut int)
                .await?
            {
                return Ok(());
            }
        } else {
            self.phase("controllers");
            self.spawn(Component::ControllerManager)?;
            self.spawn(Component::Scheduler)?;
            self.spawn(Component::Node)?;
        }
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
        self.phase("ready");
        eprintln!(
            "supervisor: cluster ready after {:.2}s",
            self.started.elapsed().as_secs_f64()
        );
        self.monitor(&mut term, &mut int).await
    }

    /// The kubelet node: containerd (and the images), then the
    /// controllers, the kubelet and kube-proxy; waits for kube-proxy's first
    /// sync so Pods can reach the API server from their first moment.
    async fn start_kubelet_node(
        &mut self,
        k: &crate::kubelet::KubeletNode,
        client: &kube::Client,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<Wait> {
        crate::kubelet::bind_kubelet_api_admin(client)
            .await
            .map_err(|e| {
                self.fail(
                    "kube-apiserver",
                    &format!("binding system:kubelet-api-admin: {e:#}"),
                )
            })?;
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

    fn write_node_options(&self) -> anyhow::Result<()> {
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
            lab_image: crate::LAB_IMAGE.into(),
        };
        let path = i.dir.join("node/options.json");
        crate::pki::write_private(&path, serde_json::to_string_pretty(&opts)?.as_bytes())?;
        Ok(())
    }

    fn phase(&mut self, phase: &str) {
        self.status.phase = phase.to_string();
        self.refresh_status();
    }

    fn refresh_status(&mut self) {
        let logs = self.info.logs_dir();
        self.status.components = self
            .running
            .iter_mut()
            .map(|r| ComponentStatus {
                name: r.component.name().to_string(),
                pid: Some(r.child.id()),
                running: matches!(r.child.try_wait(), Ok(None)),
                restarts: r.restarts,
                log: logs.join(format!("{}.log", r.component.name())),
            })
            .collect();
        write_status(&self.info.dir, &self.status);
    }

    fn spawn(&mut self, component: Component) -> anyhow::Result<()> {
        let child = self.start_process(component)?;
        self.running.push(Running {
            component,
            child,
            restarts: 0,
        });
        self.refresh_status();
        Ok(())
    }

    fn start_process(&self, component: Component) -> anyhow::Result<Child> {
        let (program, args) = component.command(&self.info);
        let log_path = self
            .info
            .logs_dir()
            .join(format!("{}.log", component.name()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
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
            .with_context(|| format!("starting {}", program.display()))
    }

    /// Polls `ready` until it is true, failing if a started component exits
    /// or the start timeout passes; returns `Stop` on SIGTERM/SIGINT.
    async fn wait<F>(
        &mut self,
        what: &str,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        mut ready: F,
    ) -> anyhow::Result<Wait>
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

    fn fail(&mut self, component: &str, reason: &str) -> anyhow::Error {
        self.status.error = Some(format!("{component}\t{reason}"));
        self.refresh_status();
        anyhow::anyhow!("{component}: {reason}")
    }

    /// After start-up: keep the status fresh, restart the node agent if it
    /// dies (as systemd restarts a kubelet), stop on a signal.
    async fn monitor(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let mut restart = None;
            for (i, r) in self.running.iter_mut().enumerate() {
                if let Ok(Some(st)) = r.child.try_wait() {
                    if r.component == Component::Node {
                        restart = Some(i);
                    } else {
                        eprintln!("supervisor: {} exited ({st})", r.component.name());
                    }
                }
            }
            if let Some(i) = restart {
                eprintln!("supervisor: sandbox node exited; restarting it");
                match self.start_process(Component::Node) {
                    Ok(child) => {
                        self.running[i].child = child;
                        self.running[i].restarts += 1;
                    }
                    Err(e) => eprintln!("supervisor: restarting the node failed: {e:#}"),
                }
            }
            self.refresh_status();
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
