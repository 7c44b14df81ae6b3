//! Lab Pods for node tests: a namespace to put them in, a Pod running
//! `lab-toolbox`, waiting (watching) for it, and reading what it reported.
//! Shared by the sandbox node's tests and the kubelet node's.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStateWaiting, Namespace, Pod, ServiceAccount,
};
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::common::unique_ns;

pub async fn make_ns(client: &kube::Client, prefix: &str) -> String {
    let ns = unique_ns(prefix);
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("create namespace");
    // The ServiceAccount admission plugin needs `default` (made by the KCM).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for(&sas, "default", 30, "the default ServiceAccount", |sa| {
        sa.is_some()
    })
    .await;
    ns
}

/// Waits, watching the object, until `cond` holds for it (`None`: it does
/// not exist), for at most `secs`; returns the object as last seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    let wait = await_condition(api.clone(), name, cond);
    match tokio::time::timeout(Duration::from_secs(secs), wait).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching for {what}: {e}"),
        Err(_) => panic!(
            "timed out after {secs}s waiting for {what}; last seen: {:#?}",
            api.get_opt(name).await
        ),
    }
}

pub fn toolbox_container(name: &str, args: &[&str]) -> Value {
    json!({
        "name": name,
        "image": sa_lab::LAB_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["lab-toolbox"],
        "args": args,
    })
}

/// A lab Pod running `lab-toolbox ARGS`, restartPolicy Never.
pub fn toolbox_pod(name: &str, args: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "sa-lab"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [toolbox_container("main", args)],
        }
    })
}

pub async fn create(api: &Api<Pod>, pod: Value) -> Pod {
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pod).expect("pod json"),
    )
    .await
    .expect("create pod")
}

pub fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

pub fn is_phase(p: Option<&Pod>, phases: &[&str]) -> bool {
    p.is_some_and(|p| phases.contains(&phase(p).as_str()))
}

/// Waits (watching) until the Pod is Succeeded or Failed; returns it.
pub async fn wait_done(api: &Api<Pod>, name: &str, secs: u64) -> Pod {
    let what = format!("pod {name} Succeeded or Failed");
    wait_for(api, name, secs, &what, |p| {
        is_phase(p, &["Succeeded", "Failed"])
    })
    .await
    .expect("a finished pod")
}

/// Waits (watching) until the Pod is Running.
pub async fn wait_running(api: &Api<Pod>, name: &str, secs: u64) -> Pod {
    let what = format!("pod {name} Running");
    wait_for(api, name, secs, &what, |p| is_phase(p, &["Running"]))
        .await
        .expect("a running pod")
}

/// The first container's waiting state.
pub fn waiting(p: &Pod) -> Option<ContainerStateWaiting> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.clone())
}

pub fn terminated(p: &Pod, container: &str) -> ContainerStateTerminated {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("container {container} not terminated: {:#?}", p.status))
}

pub fn message_json(t: &ContainerStateTerminated) -> Value {
    serde_json::from_str(t.message.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
}

/// Creates the Pod and waits (watching) until it is Succeeded or Failed.
pub async fn run_to_end(api: &Api<Pod>, pod: Value, secs: u64) -> Pod {
    let name = pod["metadata"]["name"]
        .as_str()
        .expect("a named pod")
        .to_string();
    create(api, pod).await;
    wait_done(api, &name, secs).await
}

/// What the lab program of the Pod's container `main` wrote to its
/// termination message, once it exited 0.
pub fn report(p: &Pod) -> Value {
    let t = terminated(p, "main");
    assert_eq!(t.exit_code, 0, "{t:#?}");
    message_json(&t)
}
