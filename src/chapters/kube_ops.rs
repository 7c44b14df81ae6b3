//! Cluster operations the runner needs: server-side apply, deleting,
//! running lab Pods and reading their reports, waiting for the authorizer.

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt as _};
use lab_kit::report::Report;

use super::manifests::{Manifest, parse_manifest};

/// Field manager of everything the runner applies.
pub const FIELD_MANAGER: &str = "sa-lab";

fn api_resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Pod" => ("pods", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        other => bail!("the runner does not know kind {other}"),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

fn dyn_api(
    client: &Client,
    obj: &serde_json::Value,
) -> anyhow::Result<(Api<DynamicObject>, String)> {
    let (ar, namespaced) = api_resource(
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    )?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api = if namespaced {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    Ok((api, name))
}

fn describe(obj: &serde_json::Value) -> String {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .map(|n| format!(" -n {n}"))
        .unwrap_or_default();
    format!(
        "{}/{}{ns}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Server-side apply every object in `m` (field manager `sa-lab`).
pub async fn apply(client: &Client, m: &Manifest) -> anyhow::Result<()> {
    for obj in parse_manifest(m.path, m.text)? {
        let (api, name) = dyn_api(client, &obj)?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("{}: applying {}", m.path, describe(&obj)))?;
        tracing::info!("applied {} from {}", describe(&obj), m.path);
    }
    Ok(())
}

/// Delete every object in `m` if it exists, and wait until it is gone.
pub async fn remove(client: &Client, m: &Manifest, timeout: Duration) -> anyhow::Result<()> {
    for obj in parse_manifest(m.path, m.text)? {
        let (api, name) = dyn_api(client, &obj)?;
        delete_dynamic(&api, &name, timeout)
            .await
            .with_context(|| format!("{}: deleting {}", m.path, describe(&obj)))?;
    }
    Ok(())
}

async fn delete_dynamic(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            bail!("{name} still exists after {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Delete `name` (if present) and wait until it is gone.
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str, timeout: Duration) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let existing = match api.get_opt(name).await? {
        Some(o) => o,
        None => return Ok(()),
    };
    let uid = existing.meta().uid.clone().unwrap_or_default();
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tokio::time::timeout(
        timeout,
        await_condition(api.clone(), name, conditions::is_deleted(&uid)),
    )
    .await
    .with_context(|| format!("{name} still exists after {}s", timeout.as_secs()))??;
    Ok(())
}

/// Wait until namespace `ns` can take Pods: its `default` ServiceAccount
/// and `kube-root-ca.crt` ConfigMap exist (a Pod created the instant its
/// namespace appears is rejected before `default` exists).
pub async fn wait_namespace_ready(
    client: &Client,
    ns: &str,
    sas: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let wait = async {
        for sa in std::iter::once(&"default").chain(sas) {
            await_condition(sa_api.clone(), sa, |o: Option<&ServiceAccount>| o.is_some()).await?;
        }
        await_condition(
            cm_api.clone(),
            "kube-root-ca.crt",
            |o: Option<&ConfigMap>| o.is_some(),
        )
        .await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, wait).await.with_context(|| {
        format!(
            "namespace {ns} has no `default` ServiceAccount or kube-root-ca.crt after {}s \
             (is kube-controller-manager running?)",
            timeout.as_secs()
        )
    })?
}

/// The groups every ServiceAccount in `ns` has.
pub fn sa_groups(ns: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]
}

/// Ask the authorizer (SubjectAccessReview) whether ServiceAccount
/// `ns/sa` may do `attrs`.
pub async fn sa_allowed(
    client: &Client,
    ns: &str,
    sa: &str,
    attrs: &ResourceAttributes,
) -> anyhow::Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{sa}")),
            groups: Some(sa_groups(ns)),
            resource_attributes: Some(attrs.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let r = api.create(&PostParams::default(), &review).await?;
    Ok(r.status.map(|s| s.allowed).unwrap_or(false))
}

/// Wait until the authorizer's answer for `ns/sa` doing `attrs` is
/// `want` (RBAC changes reach the authorizer's cache asynchronously).
pub async fn wait_authorizer(
    client: &Client,
    ns: &str,
    sa: &str,
    attrs: &ResourceAttributes,
    want: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if sa_allowed(client, ns, sa, attrs).await? == want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the authorizer still says allowed={} for {sa} ({:?} {:?}) after {}s",
                !want,
                attrs.verb,
                attrs.resource,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lab Pod that ran to completion.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct LabRun {
    /// The Pod as stored after it terminated (spec as admission left it).
    pub pod: Pod,
    /// The report from its termination message.
    pub report: Report,
    /// The container's exit code.
    pub exit_code: i32,
}

/// The Pod object of manifest `m` (its single document), with `image`.
pub fn pod_from_manifest(m: &Manifest, image: &str) -> anyhow::Result<Pod> {
    let docs = parse_manifest(m.path, m.text)?;
    let doc = docs
        .into_iter()
        .find(|d| d["kind"] == "Pod")
        .with_context(|| format!("{}: no Pod", m.path))?;
    let mut pod: Pod =
        serde_json::from_value(doc).with_context(|| format!("{}: not a valid Pod", m.path))?;
    if let Some(spec) = pod.spec.as_mut() {
        for c in &mut spec.containers {
            if c.image.as_deref() == Some(crate::LAB_IMAGE) {
                c.image = Some(image.to_string());
            }
        }
    }
    Ok(pod)
}

/// Run these lab Pods: delete old ones of the same name, create them,
/// wait until all terminated, read their reports.
pub async fn run_pods(
    client: &Client,
    pods: Vec<Pod>,
    timeout: Duration,
) -> anyhow::Result<Vec<LabRun>> {
    for pod in &pods {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        delete_and_wait(&api, &pod.name_any(), timeout).await?;
    }
    for pod in &pods {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), pod)
            .await
            .with_context(|| format!("creating lab Pod {ns}/{}", pod.name_any()))?;
    }
    let waits = pods.iter().map(|pod| wait_report(client, pod, timeout));
    futures::future::try_join_all(waits).await
}

async fn wait_report(client: &Client, pod: &Pod, timeout: Duration) -> anyhow::Result<LabRun> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let done =
        tokio::time::timeout(timeout, await_condition(api.clone(), &name, is_terminated)).await;
    let pod = match done {
        Ok(Ok(Some(pod))) => pod,
        Ok(Ok(None)) => bail!("lab Pod {ns}/{name} disappeared before it finished"),
        Ok(Err(e)) => return Err(e).with_context(|| format!("watching lab Pod {ns}/{name}")),
        Err(_) => bail!(
            "lab Pod {ns}/{name} did not finish within {}s{}",
            timeout.as_secs(),
            pod_diagnosis(client, &ns, &name).await
        ),
    };
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .with_context(|| {
            format!("lab Pod {ns}/{name} finished but reports no terminated container")
        })?;
    let message = terminated.message.clone().unwrap_or_default();
    let report = lab_kit::report::parse(&message).with_context(|| {
        format!(
            "lab Pod {ns}/{name} (exit code {}, {}) left no report in its termination message: {:?}",
            terminated.exit_code,
            terminated.reason.clone().unwrap_or_default(),
            lab_kit::truncate(&message, 300)
        )
    })?;
    Ok(LabRun {
        pod,
        report,
        exit_code: terminated.exit_code,
    })
}

fn is_terminated(pod: Option<&Pod>) -> bool {
    let phase = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Why a Pod is not done: its phase, waiting reasons and events.
pub async fn pod_diagnosis(client: &Client, ns: &str, name: &str) -> String {
    let mut out = String::new();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Ok(Some(pod)) = api.get_opt(name).await {
        let st = pod.status.unwrap_or_default();
        out.push_str(&format!(
            "\n  phase: {}",
            st.phase.unwrap_or_else(|| "(none)".into())
        ));
        let node = pod
            .spec
            .and_then(|s| s.node_name)
            .unwrap_or_else(|| "(not scheduled)".into());
        out.push_str(&format!("\n  node: {node}"));
        for c in st.container_statuses.unwrap_or_default() {
            if let Some(w) = c.state.and_then(|s| s.waiting) {
                out.push_str(&format!(
                    "\n  container {} waiting: {} {}",
                    c.name,
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                ));
            }
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    match events.list(&lp).await {
        Ok(list) if !list.items.is_empty() => {
            out.push_str("\n  events:");
            for e in list.items {
                out.push_str(&format!(
                    "\n    {} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                ));
            }
        }
        Ok(_) => out.push_str("\n  events: none (is a node running Pods?)"),
        Err(e) => out.push_str(&format!("\n  events: cannot list: {e}")),
    }
    out
}
