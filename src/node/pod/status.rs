//! The Pod's status as a kubelet reports it through `pods/status`: the phase
//! from the containers' states, the five conditions with stable transition
//! times, and one status per container.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::{CRt, CState, Worker, ts};
use crate::node::downward::POD_IP;

/// When the Pod started: as the API says, else now.
pub(super) fn start_time(pod: &Pod) -> jiff::Timestamp {
    pod.status
        .as_ref()
        .and_then(|s| ts(&s.start_time))
        .unwrap_or_else(jiff::Timestamp::now)
}

/// Each condition's (status, last transition) as the API has it, so a
/// restarted agent keeps the transition times.
pub(super) fn condition_times(pod: &Pod) -> HashMap<String, (String, jiff::Timestamp)> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let t = ts(&c.last_transition_time)?;
            Some((c.type_.clone(), (c.status.clone(), t)))
        })
        .collect()
}

fn exit_code(c: &CRt) -> Option<i32> {
    match &c.state {
        CState::Terminated(t) => Some(t.exit_code),
        _ => None,
    }
}

fn is_running(c: &CRt) -> bool {
    matches!(c.state, CState::Running { .. })
}

/// The Pod phase from its containers' states (restartPolicy Never).
fn phase(inits: &[&CRt], regular: &[&CRt]) -> &'static str {
    let init_failed = inits.iter().any(|c| exit_code(c).is_some_and(|e| e != 0));
    let inits_done = inits.iter().all(|c| exit_code(c) == Some(0));
    let all_done = regular.iter().all(|c| exit_code(c).is_some());
    if init_failed {
        "Failed"
    } else if inits_done && all_done {
        if regular.iter().all(|c| exit_code(c) == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if inits_done && regular.iter().any(|c| is_running(c)) {
        "Running"
    } else {
        "Pending"
    }
}

impl Worker {
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
        let phase = phase(&inits, &regular);
        let inits_done = inits.iter().all(|c| exit_code(c) == Some(0));
        let terminal = phase == "Succeeded" || phase == "Failed";
        let all_running = !regular.is_empty() && regular.iter().all(|c| is_running(c));
        let ready_reason = if terminal {
            Some("PodCompleted")
        } else if all_running {
            None
        } else {
            Some("ContainersNotReady")
        };
        let container_statuses: Vec<ContainerStatus> =
            regular.iter().map(|c| container_status(c)).collect();
        let init_statuses: Vec<ContainerStatus> =
            inits.iter().map(|c| container_status(c)).collect();
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

    /// Patches `pods/status` when it changed since the last post; retried
    /// three times, a Pod that is gone is left alone.
    pub(super) async fn post_status(&mut self) {
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

fn container_status(c: &CRt) -> ContainerStatus {
    let image = c.spec.image.clone().unwrap_or_default();
    let (state, ready, cid) = match &c.state {
        CState::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            false,
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
        started: Some(ready),
        restart_count: 0,
        state: Some(state),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::pod::exit::Term;
    use k8s_openapi::api::core::v1::Container;

    fn crt(init: bool, state: CState) -> CRt {
        CRt {
            spec: Container {
                name: "c".into(),
                ..Default::default()
            },
            init,
            state,
        }
    }

    fn ended(exit_code: i32) -> CState {
        CState::Terminated(Term {
            exit_code,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: jiff::Timestamp::now(),
            pid: None,
        })
    }

    fn running() -> CState {
        CState::Running {
            started_at: jiff::Timestamp::now(),
            pid: 2,
            wrapper_pid: 1,
        }
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
        let s = container_status(&crt(false, CState::Terminated(t)));
        let term = s.state.unwrap().terminated.unwrap();
        assert_eq!(
            (term.exit_code, term.signal, term.reason.as_deref()),
            (143, Some(15), Some("Error"))
        );
        assert_eq!(term.container_id.as_deref(), Some("sandbox://7"));
        assert_eq!((s.ready, s.started), (false, Some(false)));
    }

    #[test]
    fn phases_follow_the_containers() {
        let (init_ok, init_bad) = (crt(true, ended(0)), crt(true, ended(1)));
        let (run, ok, bad) = (
            crt(false, running()),
            crt(false, ended(0)),
            crt(false, ended(2)),
        );
        let waiting = crt(false, super::super::creating());
        assert_eq!(phase(&[], &[&waiting]), "Pending");
        assert_eq!(phase(&[&init_ok], &[&run]), "Running");
        assert_eq!(phase(&[&init_ok], &[&ok]), "Succeeded");
        assert_eq!(phase(&[], &[&ok, &bad]), "Failed");
        assert_eq!(phase(&[&init_bad], &[&waiting]), "Failed");
        assert_eq!(phase(&[], &[&ok, &run]), "Running");
    }
}
