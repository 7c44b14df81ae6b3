//! Stopping containers and finalising a Pod's deletion, as the kubelet does:
//! SIGTERM, the grace period, SIGKILL; then the final status and a delete
//! with grace 0 and a UID precondition, so the namespace can terminate.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Preconditions};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::exit::Term;
use super::{CState, Worker, is_terminal};

/// How long pods get to stop when the node agent itself is stopped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Worker {
    fn running(&self) -> Vec<usize> {
        (0..self.containers.len())
            .filter(|&i| matches!(self.containers[i].state, CState::Running { .. }))
            .collect()
    }

    /// SIGTERM every running container, wait up to `grace`, then SIGKILL.
    pub(super) async fn stop_containers(&mut self, grace: Duration) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        for &i in &running {
            if let CState::Running { pid, .. } = self.containers[i].state {
                let cr = &self.containers[i];
                let note = format!("Stopping container {}", cr.spec.name);
                self.event(false, "Killing", note, Some(cr));
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        self.wait_running_until(tokio::time::Instant::now() + grace)
            .await;
        for &i in &running {
            if let CState::Running { pid, .. } = self.containers[i].state {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.wait_running_until(tokio::time::Instant::now() + Duration::from_secs(2))
            .await;
        // Still no exit seen: kill the whole container and record the kill.
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

    /// Handles container exits until none runs or the deadline passes.
    async fn wait_running_until(&mut self, deadline: tokio::time::Instant) {
        while !self.running().is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                m = self.exit_rx.recv() => match m {
                    Some((i, t)) => self.on_exit(i, t),
                    None => return,
                }
            }
        }
    }

    /// The grace period of a deletion: the one the delete asked for, else the Pod's.
    fn grace_period(&self) -> Duration {
        let secs = self
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
            .max(0);
        Duration::from_secs(secs as u64)
    }

    /// Graceful deletion: stop, final status, then delete with grace 0 and a UID precondition.
    pub(super) async fn finalize_deletion(&mut self) {
        self.stop_containers(self.grace_period()).await;
        if !is_terminal(&self.pod)
            && self
                .containers
                .iter()
                .any(|c| !matches!(c.state, CState::Waiting { .. }))
        {
            self.post_status().await;
        }
        self.stop_resync();
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
}
