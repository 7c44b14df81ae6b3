//! `sa-lab status`: each component of a local cluster and its health.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde::Serialize;

use super::{ClusterInfo, Error, Status, load, read_status, supervisor_alive};
use crate::ui;

/// How long a command waits for a local cluster whose supervisor is
/// restarting one of its components.
pub const HEAL_TIMEOUT: Duration = Duration::from_secs(90);

/// What keeps a running cluster from being whole, by its supervisor's status.
#[derive(Debug, PartialEq)]
pub(crate) enum Unwhole<'a> {
    /// These components exited and are being restarted.
    Restarting(Vec<&'a str>),
    /// The supervisor gave up on this one.
    GaveUp(&'a super::ComponentStatus),
}

/// Whether every component runs, by the status file alone.
pub(crate) fn unwhole(st: &Status) -> Option<Unwhole<'_>> {
    if let Some(c) = st.components.iter().find(|c| c.gave_up) {
        return Some(Unwhole::GaveUp(c));
    }
    let down: Vec<&str> = st
        .components
        .iter()
        .filter(|c| !c.running)
        .map(|c| c.name.as_str())
        .collect();
    (!down.is_empty()).then_some(Unwhole::Restarting(down))
}

/// The restarts of every component of a cluster so far.
pub fn restarts(info: &ClusterInfo) -> u32 {
    read_status(&info.dir)
        .map(|st| st.components.iter().map(|c| c.restarts).sum())
        .unwrap_or(0)
}

/// Returns once every component of the running cluster `info` runs, its
/// API server answers `/readyz` and its Node is Ready: at once on a whole cluster; while its
/// supervisor restarts a component, after a progress line, for up to
/// [`HEAL_TIMEOUT`]. Fails at once when the supervisor gave up on a
/// component or stopped.
pub async fn await_whole(info: &ClusterInfo, client: &kube::Client) -> Result<(), Error> {
    let deadline = Instant::now() + HEAL_TIMEOUT;
    let mut step: Option<ui::Step> = None;
    let finish = |step: Option<ui::Step>, ok: bool| match (step, ok) {
        (Some(s), true) => s.ok(),
        (Some(s), false) => s.fail(),
        (None, _) => {}
    };
    loop {
        let st = super::live_status(&info.name, &info.dir).await;
        if !supervisor_alive(st.supervisor_pid) {
            finish(step, false);
            return Err(Error::Stopped(info.name.clone()));
        }
        let waiting = match unwhole(&st) {
            Some(Unwhole::GaveUp(c)) => {
                finish(step, false);
                return Err(Error::GaveUp(Box::new(super::GaveUp {
                    name: info.name.clone(),
                    component: c.name.clone(),
                    restarts: c.restarts,
                    last_exit: c.last_exit.clone().unwrap_or_else(|| "unknown".into()),
                    tail: super::tail(&c.log, super::supervisor::TAIL_LINES),
                    log: c.log.clone(),
                })));
            }
            Some(Unwhole::Restarting(down)) => {
                format!("its supervisor is restarting {}", down.join(", "))
            }
            None if !api_ready(client).await => "kube-apiserver to be ready".into(),
            // After a long outage the node-lifecycle controller marks the
            // Node NotReady (and taints it) until the node's next status.
            None if !node_health(client, &info.node_name).await.1 => {
                format!("node {} to be Ready", info.node_name)
            }
            None => {
                finish(step, true);
                return Ok(());
            }
        };
        if Instant::now() > deadline {
            finish(step, false);
            return Err(Error::NotHealed {
                name: info.name.clone(),
                secs: HEAL_TIMEOUT.as_secs(),
                waiting,
            });
        }
        if step.is_none() {
            step = Some(ui::Step::start(format!(
                "Waiting for cluster {:?} to heal: {waiting} (up to {}s)",
                info.name,
                HEAL_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn api_ready(client: &kube::Client) -> bool {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("valid request");
    matches!(
        tokio::time::timeout(Duration::from_secs(3), client.request_text(req)).await,
        Ok(Ok(_))
    )
}

/// One cluster's health.
#[derive(Serialize, Debug)]
pub struct HealthReport {
    pub name: String,
    pub server: String,
    pub kubeconfig: String,
    /// Supervisor phase ("ready", "stopping", ...) or "not running".
    pub phase: String,
    pub components: Vec<ComponentHealth>,
    pub healthy: bool,
}

/// One component's health.
#[derive(Serialize, Debug)]
pub struct ComponentHealth {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    /// How its last run ended, once one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// It kept crashing and the supervisor stopped restarting it.
    pub gave_up: bool,
    /// The end of its log, when it was given up on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// What the health probe said ("ok", "/readyz 200", "Ready, lease renewed 3s ago", ...).
    pub health: String,
    pub healthy: bool,
}

/// Probes every component of cluster `name`.
pub async fn health(name: &str) -> Result<HealthReport, Error> {
    let info = load(name)?;
    let st = super::live_status(name, &info.dir).await;
    let alive = supervisor_alive(st.supervisor_pid);
    let client = if alive {
        info.client().await.ok()
    } else {
        None
    };
    let mut components = Vec::new();
    for c in &st.components {
        let running = alive && c.running;
        let last = c.last_exit.as_deref().unwrap_or("unknown");
        let (health, healthy) = if !alive {
            ("not running".to_string(), false)
        } else if c.gave_up {
            let msg = format!(
                "kept crashing, given up after {} restarts (last: {last})",
                c.restarts
            );
            (msg, false)
        } else if !running {
            (format!("restarting (exited: {last})"), false)
        } else {
            probe(&c.name, &info, client.as_ref()).await
        };
        components.push(ComponentHealth {
            name: c.name.clone(),
            pid: c.pid,
            running,
            restarts: c.restarts,
            last_exit: c.last_exit.clone(),
            gave_up: c.gave_up,
            log_tail: (alive && c.gave_up)
                .then(|| super::tail(&c.log, super::supervisor::TAIL_LINES)),
            health,
            healthy,
        });
    }
    let healthy = alive && st.ready && components.iter().all(|c| c.healthy);
    Ok(HealthReport {
        name: info.name.clone(),
        server: info.server.clone(),
        kubeconfig: info.kubeconfig.display().to_string(),
        phase: if alive {
            st.phase
        } else {
            "not running".into()
        },
        components,
        healthy,
    })
}

async fn probe(
    name: &str,
    info: &super::ClusterInfo,
    client: Option<&kube::Client>,
) -> (String, bool) {
    let timeout = Duration::from_secs(3);
    match name {
        "etcd" => {
            let ok = super::supervisor_etcd_health(info.etcd_port);
            (if ok { "/health ok" } else { "/health failing" }.into(), ok)
        }
        "kube-apiserver" => {
            let Some(c) = client else {
                return ("no client".into(), false);
            };
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("valid request");
            match tokio::time::timeout(timeout, c.request_text(req)).await {
                Ok(Ok(_)) => ("/readyz ok".into(), true),
                Ok(Err(e)) => (format!("/readyz: {e}"), false),
                Err(_) => ("/readyz timed out".into(), false),
            }
        }
        "sandbox-node" | "kubelet" => {
            let Some(c) = client else {
                return ("no client".into(), false);
            };
            node_health(c, &info.node_name).await
        }
        _ => ("running".into(), true),
    }
}

async fn node_health(client: &kube::Client, node: &str) -> (String, bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let ready = match nodes.get_opt(node).await {
        Ok(Some(n)) => n
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True")
            .unwrap_or(false),
        _ => return ("Node not registered".into(), false),
    };
    let renewed = leases
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| {
            let now = jiff::Timestamp::now();
            let age = now.as_second() - t.0.as_second();
            format!("lease renewed {age}s ago")
        })
        .unwrap_or_else(|| "no lease".into());
    let word = if ready { "Ready" } else { "NotReady" };
    (format!("{word}, {renewed}"), ready)
}

impl HealthReport {
    /// A table for humans.
    pub fn render(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING);
        t.set_header(vec!["COMPONENT", "PID", "RESTARTS", "LAST EXIT", "HEALTH"]);
        for c in &self.components {
            let mark = if c.healthy { "✓" } else { "✗" };
            t.add_row(vec![
                format!("{mark} {}", c.name),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                c.restarts.to_string(),
                c.last_exit.clone().unwrap_or_else(|| "-".into()),
                c.health.clone(),
            ]);
        }
        let mut out = format!(
            "cluster {} ({}): {}\nkubeconfig: {}\n{t}",
            self.name, self.server, self.phase, self.kubeconfig
        );
        for c in &self.components {
            if let Some(tail) = &c.log_tail {
                out.push_str(&format!("\n--- last lines of {}'s log ---\n{tail}", c.name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::ComponentStatus;
    use super::*;

    fn comp(name: &str, running: bool, gave_up: bool) -> ComponentStatus {
        ComponentStatus {
            name: name.into(),
            pid: Some(1),
            running,
            restarts: 0,
            log: format!("/x/{name}.log").into(),
            last_exit: None,
            gave_up,
        }
    }

    #[test]
    fn a_cluster_is_whole_when_every_component_runs() {
        let mut st = Status {
            components: vec![
                comp("etcd", true, false),
                comp("kube-apiserver", true, false),
            ],
            ..Status::default()
        };
        assert_eq!(unwhole(&st), None);
        st.components[1].running = false;
        assert_eq!(
            unwhole(&st),
            Some(Unwhole::Restarting(vec!["kube-apiserver"]))
        );
        // Given up outranks restarting: waiting would be in vain.
        st.components[0] = comp("etcd", false, true);
        assert!(matches!(unwhole(&st), Some(Unwhole::GaveUp(c)) if c.name == "etcd"));
    }

    #[test]
    fn old_status_files_still_parse() {
        // Written before restarts were recorded: no last_exit, no gave_up.
        let old = r#"{"supervisor_pid":1,"phase":"ready","ready":true,"error":null,
            "components":[{"name":"etcd","pid":2,"running":true,"restarts":0,"log":"/l"}]}"#;
        let st: Status = serde_json::from_str(old).unwrap();
        assert_eq!(unwhole(&st), None);
    }
}
