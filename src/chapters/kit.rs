//! What a chapter's scenario uses on the cluster: its manifests as
//! compiler-checked constants ([`manifests!`]), server-side apply and
//! delete, running lab Pods and reading their reports, waiting for the
//! authorizer, minting tokens, and turning what happened into [`Row`]s.
//!
//! The scenario runs on the host as the cluster's admin; the lab it starts
//! runs in the Pod as the Pod's ServiceAccount.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt as _};
use lab_kit::probe::Outcome;
use lab_kit::report::{ProbeRow, Report};

use super::Row;
use crate::manifest::{self, ManifestError};

/// The namespace the course's story happens in.
pub const PRODUCTION: &str = "production";
/// The label every object of the course carries.
pub const COURSE_LABEL: &str = "app.kubernetes.io/part-of=sa-lab";
/// The namespaces the course's objects live in.
pub const COURSE_NAMESPACES: [&str; 2] = [PRODUCTION, "staging"];
/// Field manager of everything the runner applies.
pub const FIELD_MANAGER: &str = "sa-lab";
/// How long RBAC changes may take to reach the authorizer.
const AUTHZ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the audit log may take to show a request's event.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a namespace may take to get its `default` ServiceAccount.
const NS_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a scenario could not finish (a mismatch is not an error: it is a
/// failed row).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A chapter's scenario failed.
    #[error("chapter {slug}")]
    Chapter {
        /// The chapter.
        slug: &'static str,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The chapter's expected table is not usable.
    #[error(transparent)]
    Oracle(#[from] super::oracle::OracleError),
    /// An object of a kind the runner cannot apply.
    #[error("{path}: the runner does not know kind {kind}")]
    UnknownKind {
        /// The manifest file.
        path: String,
        /// The object's kind.
        kind: String,
    },
    /// A request the runner needed was refused or failed.
    #[error("{action}")]
    Api {
        /// What the runner tried, e.g. `applying Role/pod-editor -n production`.
        action: String,
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// Watching an object failed.
    #[error("watching {what}")]
    Watch {
        /// The object.
        what: String,
        /// What kube said.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// Something did not happen in time.
    #[error("{what} within {seconds}s{hint}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the runner waited.
        seconds: u64,
        /// What to check (may be empty; starts with a separator).
        hint: String,
    },
    /// A lab Pod ended without a report the runner can read.
    #[error("lab Pod {pod}: {problem}")]
    LabPod {
        /// `namespace/name`.
        pod: String,
        /// What is wrong, with the Pod's own account of it.
        problem: String,
    },
    /// The API server answered, but not with what the scenario needs.
    #[error("{0}")]
    Unexpected(String),
}

/// Where and how a chapter runs: the admin's client and config (the
/// config also lets a scenario send requests with other tokens), the image
/// lab Pods run, and how long a batch of lab Pods may take. Every provider
/// fills every field, so every chapter takes one path everywhere.
#[derive(Clone)]
pub struct RunContext {
    /// The cluster admin's client.
    pub client: Client,
    /// The cluster admin's config.
    pub config: kube::Config,
    /// The image lab Pods run (manifests name [`crate::LAB_IMAGE`]).
    pub image: String,
    /// How long to wait for each batch of lab Pods.
    pub timeout: Duration,
    /// The API server's audit log, where sa-lab can read it: each row then
    /// says which binding allowed its call.
    pub audit_log: Option<crate::audit::AuditLog>,
    /// Where the time goes, by kind of step (shared by clones).
    pub timings: Timings,
}

/// Where a chapter's seconds go: the time spent in each kind of step
/// (applying manifests, lab Pods, token uses...), summed. The tour reports
/// them per chapter (`sa-lab tour -o json`); the benchmark prints medians.
#[derive(Clone, Default, Debug)]
pub struct Timings(Arc<Mutex<BTreeMap<&'static str, f64>>>);

impl Timings {
    /// Counts the time until the returned guard is dropped as `step`.
    pub fn step(&self, step: &'static str) -> StepTimer {
        StepTimer {
            timings: self.clone(),
            step,
            start: Instant::now(),
        }
    }

    /// The seconds counted so far, by step; starts counting afresh.
    pub fn take(&self) -> BTreeMap<&'static str, f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Adds its lifetime to one step of [`Timings`] when dropped.
pub struct StepTimer {
    timings: Timings,
    step: &'static str,
    start: Instant,
}

impl Drop for StepTimer {
    fn drop(&mut self) {
        let mut map = self.timings.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(self.step).or_default() += self.start.elapsed().as_secs_f64();
    }
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("server", &self.config.cluster_url.to_string())
            .field("image", &self.image)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One manifest file of a chapter, embedded at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Path relative to the repository root.
    pub path: &'static str,
    /// The YAML text.
    pub text: &'static str,
}

impl Manifest {
    /// The file name (`03-rolebinding.yaml`).
    pub fn file_name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    /// Its objects.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, ManifestError> {
        manifest::parse(self.path, self.text)
    }
}

/// A chapter's manifests as constants the compiler checks: a constant that
/// names a missing file does not build, and a scenario cannot name a
/// manifest that has no constant.
///
/// ```text
/// manifests! { "03-rolebinding";
///     NAMESPACES = "00-namespaces.yaml",
///     SERVICEACCOUNT = "01-serviceaccount.yaml",
/// }
/// ```
/// defines `manifests::NAMESPACES`, ... and `manifests::ALL` (file order).
macro_rules! manifests {
    ($slug:literal; $($name:ident = $file:literal),* $(,)?) => {
        /// This chapter's manifests (`labs/<slug>/manifests/`).
        pub mod manifests {
            use $crate::chapters::kit::Manifest;
            $(
                #[doc = concat!("`labs/", $slug, "/manifests/", $file, "`")]
                pub const $name: Manifest = Manifest {
                    path: concat!("labs/", $slug, "/manifests/", $file),
                    text: include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/manifests/", $file
                    )),
                };
            )*
            /// Every manifest, in file order.
            pub const ALL: &[Manifest] = &[$($name),*];
        }
    };
}
pub(crate) use manifests;

/// A chapter's definition: `CHAPTER` and its `manifests` (see
/// [`manifests!`]), in the chapter's own `chapter.rs`, whose scenario is
/// its `async fn run(cx: &RunContext)`. The slug is written once. After
/// the manifests, an optional `exercises:` section lists the chapter's
/// exercises (see [`crate::exercises`]); a chapter without exercises
/// leaves it out.
///
/// ```text
/// chapter! { 3, "03-rolebinding", "Binding permissions";
///     NAMESPACES = "00-namespaces.yaml";
///     exercises:
///     PODS_ONLY = "03-pods-only" => ["rbac.yaml", "serviceaccount.yaml"],
/// }
/// ```
macro_rules! chapter {
    ($number:literal, $slug:literal, $title:literal; $($name:ident = $file:literal),* $(,)?) => {
        $crate::chapters::kit::chapter! { $number, $slug, $title; $($name = $file),*; exercises: }
    };
    ($number:literal, $slug:literal, $title:literal; $($name:ident = $file:literal),* $(,)?;
     exercises: $($ex:ident = $id:literal => [$($f:literal),* $(,)?]),* $(,)?) => {
        /// This chapter.
        pub const CHAPTER: $crate::chapters::Chapter = $crate::chapters::Chapter {
            number: $number,
            slug: $slug,
            title: $title,
            manifests: manifests::ALL,
            expected: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/expected.yaml"
            )),
            scenario: |cx| Box::pin(run(cx)),
            exercises: exercises::ALL,
        };
        $crate::chapters::kit::manifests! { $slug; $($name = $file),* }
        $crate::exercises::exercises! { $slug; $($ex = $id => [$($f),*]),* }
    };
}
pub(crate) use chapter;

pub use crate::rbac::{access_review, attrs, sa_user};

/// The word for an HTTP status: the lab kit's outcome words.
pub fn word(status: u16) -> &'static str {
    Outcome::from_status(status).as_str()
}

/// A row with what was observed.
pub fn row(
    id: impl Into<String>,
    subject: &str,
    actual: impl Into<String>,
    message: impl Into<String>,
) -> Row {
    Row {
        id: id.into(),
        subject: subject.into(),
        actual: actual.into(),
        message: message.into(),
        ..Row::default()
    }
}

/// A row from a lab's probe (or "not observed" if the lab has no such row).
pub fn probe_row(id: impl Into<String>, subject: &str, p: Option<&ProbeRow>) -> Row {
    let Some(p) = p else {
        return row(
            id,
            subject,
            "not observed",
            "the lab reported no such probe",
        );
    };
    Row {
        verb: p.verb.clone(),
        group: p.group.clone(),
        resource: p.resource.clone(),
        subresource: p.subresource.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        status: p.status,
        authorizer: p.authorizer.map(|a| a.to_string()),
        audit_id: p.audit_id.clone(),
        ..row(id, subject, p.actual.as_str(), p.message.clone())
    }
}

/// A row for a request the runner sent itself: outcome, status and the
/// server's message.
pub fn api_row<T>(id: impl Into<String>, subject: &str, res: &Result<T, kube::Error>) -> Row {
    let (actual, status, message) = match res {
        Ok(_) => ("allowed".to_string(), None, String::new()),
        Err(kube::Error::Api(s)) => (word(s.code).to_string(), Some(s.code), s.message.clone()),
        Err(e) => ("error".to_string(), None, e.to_string()),
    };
    Row {
        status,
        ..row(id, subject, actual, message)
    }
}

/// The ServiceAccount a lab Pod ran as (as admission stored it).
pub fn service_account_of(run: &LabRun) -> String {
    run.pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_default()
}

/// The username a lab's SelfSubjectReview returned.
pub fn username(r: &Report) -> String {
    r.identity
        .as_ref()
        .map(|i| i.username.clone())
        .unwrap_or_else(|| "(no identity)".into())
}

/// A lab Pod that ran to completion.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// The Pod as stored after it terminated (spec as admission left it).
    pub pod: Pod,
    /// The report from its termination message.
    pub report: Report,
}

/// The API resource of `obj` (from file `path`), and whether it is namespaced.
pub fn api_resource(path: &str, obj: &serde_json::Value) -> Result<(ApiResource, bool), Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
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
        "Node" => ("nodes", false),
        "ValidatingAdmissionPolicy" => ("validatingadmissionpolicies", false),
        "ValidatingAdmissionPolicyBinding" => ("validatingadmissionpolicybindings", false),
        "Deployment" => ("deployments", true),
        "Job" => ("jobs", true),
        other => {
            return Err(Error::UnknownKind {
                path: path.into(),
                kind: other.into(),
            });
        }
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

impl RunContext {
    /// A context for the cluster `config` reaches as its admin.
    pub fn new(config: kube::Config, image: String, timeout: Duration) -> Result<Self, Error> {
        let client = Client::try_from(config.clone()).map_err(|source| Error::Api {
            action: "building the admin client".into(),
            source,
        })?;
        Ok(RunContext {
            client,
            config,
            image,
            timeout,
            audit_log: None,
            timings: Timings::default(),
        })
    }

    fn dynamic(
        &self,
        path: &str,
        obj: &serde_json::Value,
    ) -> Result<(Api<DynamicObject>, String), Error> {
        let (ar, namespaced) = api_resource(path, obj)?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = if namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        Ok((api, name))
    }

    /// Server-side apply every object of `manifests` (field manager
    /// `sa-lab`), in order.
    pub async fn apply(&self, manifests: &[Manifest]) -> Result<(), Error> {
        let _t = self.timings.step("apply");
        for m in manifests {
            for obj in m.objects()? {
                let (api, name) = self.dynamic(m.path, &obj)?;
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&name, &pp, &Patch::Apply(&obj))
                    .await
                    .map_err(|source| Error::Api {
                        action: format!("{}: applying {}", m.path, manifest::describe(&obj)),
                        source,
                    })?;
                tracing::info!("applied {} from {}", manifest::describe(&obj), m.path);
            }
        }
        Ok(())
    }

    /// Delete every object of `manifests` that exists, and wait until each
    /// is gone.
    pub async fn remove(&self, manifests: &[Manifest]) -> Result<(), Error> {
        let _t = self.timings.step("remove and wait");
        for m in manifests {
            for obj in m.objects()? {
                let (api, name) = self.dynamic(m.path, &obj)?;
                delete_and_wait(&api, &name, NS_TIMEOUT).await?;
            }
        }
        Ok(())
    }

    /// Adds the authorizer's decision and reason (from the audit log) to
    /// every row whose request the lab recorded by its `Audit-Id`. Without
    /// an audit log, rows keep no reason.
    pub async fn explain(&self, rows: &mut [Row]) {
        let _t = self.timings.step("audit log lookup");
        let Some(log) = &self.audit_log else {
            return;
        };
        let ids: Vec<String> = rows.iter().filter_map(|r| r.audit_id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let found = match log.find(&ids, AUDIT_TIMEOUT).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("{}", crate::ui::error_chain(&e));
                return;
            }
        };
        for row in rows.iter_mut() {
            let Some(ev) = row.audit_id.as_ref().and_then(|id| found.get(id)) else {
                continue;
            };
            let x = ev.explanation();
            row.decision = x.decision;
            row.reason = x.reason;
        }
    }

    /// Delete every object the course made (label
    /// `app.kubernetes.io/part-of=sa-lab`) in `production` and `staging`,
    /// and its cluster-wide roles and bindings, so no earlier chapter,
    /// exercise or attempt changes a verdict. Namespaces stay.
    pub async fn clean_slate(&self) -> Result<(), Error> {
        let _t = self.timings.step("clean slate");
        let lp = ListParams::default().labels(COURSE_LABEL);
        let dp = DeleteParams::default();
        let kinds = [
            ("", "v1", "Pod", "pods", true),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
            ),
            ("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
            ("", "v1", "ServiceAccount", "serviceaccounts", true),
            ("", "v1", "ConfigMap", "configmaps", true),
            ("", "v1", "Secret", "secrets", true),
            ("apps", "v1", "Deployment", "deployments", true),
            ("batch", "v1", "Job", "jobs", true),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
            ),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
            ),
            // Objects a chapter binds tokens to (no kubelet behind them).
            ("", "v1", "Node", "nodes", false),
            // Chapter 8's admission policy: it would refuse chapter 4's
            // binding to `default`.
            (
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
                false,
            ),
            (
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
                false,
            ),
        ];
        for (group, version, kind, plural, namespaced) in kinds {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
            let apis: Vec<Api<DynamicObject>> = if namespaced {
                COURSE_NAMESPACES
                    .iter()
                    .map(|ns| Api::namespaced_with(self.client.clone(), ns, &ar))
                    .collect()
            } else {
                vec![Api::all_with(self.client.clone(), &ar)]
            };
            for api in apis {
                match api.delete_collection(&dp, &lp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => {
                        return Err(Error::Api {
                            action: format!("deleting the course's {plural}"),
                            source,
                        });
                    }
                }
            }
        }
        // Pods go through graceful deletion: wait until each is gone.
        for ns in COURSE_NAMESPACES {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let left = match api.list(&lp).await {
                Ok(l) => l.items,
                Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
                Err(source) => {
                    return Err(Error::Api {
                        action: format!("listing the course's Pods in {ns}"),
                        source,
                    });
                }
            };
            for pod in left {
                delete_and_wait(&api, &pod.name_any(), self.timeout).await?;
            }
        }
        Ok(())
    }

    /// The Pod of manifest `m` (its first Pod document), running this
    /// context's image.
    pub fn pod(&self, m: &Manifest) -> Result<Pod, Error> {
        let doc = m
            .objects()?
            .into_iter()
            .find(|d| d["kind"] == "Pod")
            .ok_or_else(|| Error::Unexpected(format!("{}: no Pod in it", m.path)))?;
        let mut pod: Pod = serde_json::from_value(doc)
            .map_err(|e| Error::Unexpected(format!("{}: not a valid Pod: {e}", m.path)))?;
        for c in pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
            if c.image.as_deref() == Some(crate::LAB_IMAGE) {
                c.image = Some(self.image.clone());
            }
        }
        Ok(pod)
    }

    /// Run the lab Pods of `manifests` and read their reports.
    pub async fn run_pods(&self, manifests: &[Manifest]) -> Result<Vec<LabRun>, Error> {
        let pods = manifests
            .iter()
            .map(|m| self.pod(m))
            .collect::<Result<_, _>>()?;
        self.run_pod_objects(pods).await
    }

    /// Run these lab Pods: delete old ones of the same name, create them,
    /// wait until all terminated, read their reports.
    pub async fn run_pod_objects(&self, pods: Vec<Pod>) -> Result<Vec<LabRun>, Error> {
        let _t = self.timings.step("lab Pods");
        for pod in &pods {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            delete_and_wait(&api, &pod.name_any(), self.timeout).await?;
        }
        for pod in &pods {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let mut attempts = 0;
            loop {
                match api.create(&PostParams::default(), pod).await {
                    Ok(_) => break,
                    // The old Pod of that name was seen gone by a watch
                    // (served from the API server's cache) before its
                    // deletion reached storage: wait for it again.
                    Err(kube::Error::Api(s)) if s.code == 409 && attempts < 3 => {
                        attempts += 1;
                        delete_and_wait(&api, &name, self.timeout).await?;
                    }
                    Err(source) => {
                        return Err(Error::Api {
                            action: format!("creating lab Pod {ns}/{name}"),
                            source,
                        });
                    }
                }
            }
        }
        let waits = pods.iter().map(|pod| self.wait_report(pod));
        futures::future::try_join_all(waits).await
    }

    /// Wait until lab Pod `pod` (by namespace and name) has terminated, and
    /// read its report.
    pub async fn wait_report(&self, pod: &Pod) -> Result<LabRun, Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let what = format!("{ns}/{name}");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let done = tokio::time::timeout(
            self.timeout,
            await_condition(api.clone(), &name, is_terminated),
        )
        .await;
        let pod = match done {
            Ok(Ok(Some(pod))) => pod,
            Ok(Ok(None)) => {
                return Err(Error::LabPod {
                    pod: what,
                    problem: "it disappeared before it finished".into(),
                });
            }
            Ok(Err(source)) => return Err(Error::Watch { what, source }),
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("lab Pod {what} did not finish"),
                    seconds: self.timeout.as_secs(),
                    hint: pod_diagnosis(&self.client, &ns, &name).await,
                });
            }
        };
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone())
            .ok_or_else(|| Error::LabPod {
                pod: what.clone(),
                problem: "it finished but reports no terminated container".into(),
            })?;
        // The whole report is the last line of the lab's log; the
        // termination message holds a version cut to fit 4 KiB.
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let lp = kube::api::LogParams {
            container,
            ..Default::default()
        };
        if let Some(report) = api
            .logs(&name, &lp)
            .await
            .ok()
            .and_then(|log| lab_kit::report::from_log(&log))
        {
            return Ok(LabRun { pod, report });
        }
        let message = terminated.message.clone().unwrap_or_default();
        let report = lab_kit::report::parse(&message).map_err(|e| Error::LabPod {
            pod: what.clone(),
            problem: format!(
                "no report in its termination message (exit code {}, {}; {e}): {:?}",
                terminated.exit_code,
                terminated.reason.clone().unwrap_or_default(),
                lab_kit::truncate(&message, 300)
            ),
        })?;
        Ok(LabRun { pod, report })
    }

    /// Wait until namespace `ns` can take Pods: its `default` ServiceAccount
    /// (and `sas`) and `kube-root-ca.crt` exist. A Pod created the instant
    /// its namespace appears is rejected before `default` exists.
    pub async fn wait_namespace(&self, ns: &str, sas: &[&str]) -> Result<(), Error> {
        let _t = self.timings.step("namespace ready");
        let sa_api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let wait = async {
            for sa in std::iter::once(&"default").chain(sas) {
                await_condition(sa_api.clone(), sa, |o: Option<&ServiceAccount>| o.is_some())
                    .await
                    .map_err(|source| Error::Watch {
                        what: format!("ServiceAccount {ns}/{sa}"),
                        source,
                    })?;
            }
            await_condition(
                cm_api.clone(),
                "kube-root-ca.crt",
                |o: Option<&ConfigMap>| o.is_some(),
            )
            .await
            .map_err(|source| Error::Watch {
                what: format!("ConfigMap {ns}/kube-root-ca.crt"),
                source,
            })?;
            Ok(())
        };
        tokio::time::timeout(NS_TIMEOUT, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("namespace {ns} got no `default` ServiceAccount or kube-root-ca.crt"),
                seconds: NS_TIMEOUT.as_secs(),
                hint: " (is kube-controller-manager running?)".into(),
            })?
    }

    /// What the authorizer (SubjectAccessReview) says about `user` in
    /// `groups` doing `attrs`: allowed, and its reason.
    pub async fn can_i(
        &self,
        user: &str,
        groups: &[String],
        attrs: &ResourceAttributes,
    ) -> Result<(bool, String), Error> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let r = api
            .create(
                &PostParams::default(),
                &access_review(user, groups, attrs.clone()),
            )
            .await
            .map_err(|source| Error::Api {
                action: format!("asking the authorizer about {user}"),
                source,
            })?;
        let st = r.status.unwrap_or_default();
        Ok((st.allowed, st.reason.unwrap_or_default()))
    }

    /// Wait until the authorizer's answer for ServiceAccount `ns/sa` doing
    /// `attrs` is `want`: RBAC changes reach the authorizer's cache
    /// asynchronously, and a SubjectAccessReview cannot be watched.
    pub async fn wait_authorizer(
        &self,
        ns: &str,
        sa: &str,
        attrs: &ResourceAttributes,
        want: bool,
    ) -> Result<(), Error> {
        let _t = self.timings.step("authorizer settle");
        let (user, groups) = sa_user(ns, sa);
        let deadline = tokio::time::Instant::now() + AUTHZ_TIMEOUT;
        loop {
            if self.can_i(&user, &groups, attrs).await?.0 == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "the authorizer did not come to say allowed={want} for {user} ({} {})",
                        attrs.verb.as_deref().unwrap_or_default(),
                        attrs.resource.as_deref().unwrap_or_default()
                    ),
                    seconds: AUTHZ_TIMEOUT.as_secs(),
                    hint: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A token for ServiceAccount `ns/sa` (TokenRequest, as the admin).
    pub async fn token(&self, ns: &str, sa: &str, spec: TokenRequestSpec) -> Result<String, Error> {
        let _t = self.timings.step("token request");
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let req = TokenRequest {
            spec: Some(spec),
            ..Default::default()
        };
        let tr: TokenRequest = api
            .create_subresource("token", sa, &PostParams::default(), &req)
            .await
            .map_err(|source| Error::Api {
                action: format!("requesting a token for {ns}/{sa}"),
                source,
            })?;
        tr.status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unexpected(format!("the TokenRequest for {ns}/{sa} returned no token"))
            })
    }

    /// A client that authenticates with `token` (and nothing else) against
    /// this cluster.
    pub fn client_with_token(&self, token: &str) -> Result<Client, Error> {
        let mut cfg = self.config.clone();
        cfg.auth_info = Default::default();
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|e| Error::Unexpected(format!("a token that is not a header value: {e}")))?;
        cfg.headers.push((http::header::AUTHORIZATION, value));
        Client::try_from(cfg).map_err(|source| Error::Api {
            action: "building a client with a token".into(),
            source,
        })
    }

    /// A row for one use of `token` (and no other credential) by
    /// `subject`: a SelfSubjectReview, the cheapest call every identity may
    /// make. Allowed means authenticated; 401 means the API server no
    /// longer accepts the token. `context` says what state the token's
    /// world is in (its Pod exists, its Secret is gone...).
    pub async fn use_token(
        &self,
        id: &str,
        subject: &str,
        token: &str,
        context: &str,
    ) -> Result<Row, Error> {
        let _t = self.timings.step("token use");
        let client = self.client_with_token(token)?;
        let res = lab_kit::identity::whoami(&client).await;
        let mut r = api_row(id, subject, &res);
        r.verb = "create".into();
        r.group = "authentication.k8s.io".into();
        r.resource = "selfsubjectreviews".into();
        r.message = match res {
            Ok(i) => format!("{context}: authenticated as {}", i.username),
            Err(_) => format!("{context}: {}", r.message),
        };
        Ok(r)
    }

    /// Delete Pod `ns/name` (if present) and wait until it is gone.
    pub async fn delete_pod(&self, ns: &str, name: &str) -> Result<(), Error> {
        let _t = self.timings.step("remove and wait");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        delete_and_wait(&api, name, self.timeout).await
    }
}

/// Wait (a watch) until object `name` meets `cond`, at most `timeout`;
/// `what` says what was awaited when it does not happen.
pub async fn await_object<K>(
    api: &Api<K>,
    name: &str,
    cond: impl kube::runtime::wait::Condition<K>,
    timeout: Duration,
    what: &str,
) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(source)) => Err(Error::Watch {
            what: name.to_string(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            seconds: timeout.as_secs(),
            hint: String::new(),
        }),
    }
}

/// Delete `name` (if present) and wait until it is gone (a watch, not a
/// poll).
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let action = |verb: &str| format!("{verb} {name}");
    let existing = match api.get_opt(name).await {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(()),
        Err(source) => {
            return Err(Error::Api {
                action: action("reading"),
                source,
            });
        }
    };
    let uid = existing.meta().uid.clone().unwrap_or_default();
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Api {
                action: action("deleting"),
                source,
            });
        }
    }
    let what = format!("{name} was not gone");
    await_object(api, name, conditions::is_deleted(&uid), timeout, &what).await?;
    Ok(())
}

fn is_terminated(pod: Option<&Pod>) -> bool {
    let phase = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Why a Pod is not done: its phase, waiting reasons and events (starts
/// with a line break; empty when nothing could be read).
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
