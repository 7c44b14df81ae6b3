//! Grading one exercise on a real cluster.
//!
//! 1. The learner's files are read and checked ([`super::input`]); a Rust
//!    exercise's crate is built ([`super::rust`]). Nothing touches the
//!    cluster before both are fine.
//! 2. A clean slate: the exercise's namespaces are made if missing (and
//!    refused if they exist but are not sa-lab's); everything in them but
//!    their `default` ServiceAccount and CA bundle is deleted, and so is
//!    every object an earlier check of any exercise left, and every
//!    course-wide ClusterRole and ClusterRoleBinding of sa-lab.
//! 3. Every object is applied as a server-side dry run (strict field
//!    validation) first: if the API server refuses one, that is the
//!    verdict and nothing was applied. Then for real, labelled
//!    `sa-lab.dev/exercise=<id>`.
//! 4. `check` waits until the authorizer has seen every RBAC change (a
//!    sentinel grant applied after them becomes visible) and until the
//!    token controller has filled every legacy token Secret applied, then
//!    runs the probe Pods as the resulting ServiceAccounts.
//! 5. The rows are graded by the chapters' oracle (twin rule included),
//!    with the least-privilege rows and advice for every failed row. An
//!    audit row runs `sa-lab audit`'s rules on the cluster as it is then
//!    (as the admin) and keeps the findings about the exercise's namespace.
//! 6. Whatever it applied is removed: also when it fails, errs or is
//!    interrupted (Ctrl-C or SIGTERM).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt as _};
use serde::Serialize;
use serde_json::{Value, json};

use super::def::{AuditSpec, Definition, Kind, Observe, PROBE_PROGRAM, ProbePod, Program, RowSpec};
use super::input::{self, EXERCISE_LABEL, InputError, LearnerObject, RESERVED_PREFIX};
use super::{Exercise, lint, predict, rust};
use crate::chapters::kit::{self, LabRun, RunContext, probe_row, row, service_account_of};
use crate::chapters::{self, Row, oracle};
use crate::provider::{self, ConnectError, ConnectOptions, Provider};

/// Field manager of everything a check applies.
pub const FIELD_MANAGER: &str = "sa-lab-exercise";
/// The label that marks a namespace as the exercises' own.
pub const NAMESPACE_LABEL: &str = "sa-lab.dev/exercises";
/// The row that says whether the API server took the learner's objects.
pub const APPLY_ROW: &str = "apply";
/// The row that says whether a Rust exercise's crate built.
pub const BUILD_ROW: &str = "build";
/// The user the RBAC sentinel grants to (no one authenticates as it).
const SYNC_USER: &str = "sa-lab:exercise-sync";
/// How long RBAC changes may take to reach the authorizer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a namespace may take to be usable, or to go.
const NS_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster to grade on: the same choice as `sa-lab run`.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The admin's client, config, the lab image and the Pod timeout.
    pub cx: RunContext,
    /// Who runs it.
    pub provider: Provider,
    /// Which cluster, for messages.
    pub describe: String,
    /// Local provider: where its sandbox node finds the programs Pods run.
    pub labs_dir: Option<PathBuf>,
}

impl Cluster {
    /// Reach the cluster `opts` names (starting the local one if it is not
    /// running, as `sa-lab run` does).
    pub async fn connect(
        opts: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Cluster, ConnectError> {
        let conn = provider::connect(opts).await?;
        let labs_dir = match conn.provider {
            Provider::Local => {
                let name = provider::connect::local_name(opts.name.as_deref());
                Some(crate::local::load(&name)?.labs_dir)
            }
            _ => None,
        };
        Ok(Cluster {
            cx: crate::course::context(&conn, timeout),
            provider: conn.provider,
            describe: conn.describe,
            labs_dir,
        })
    }
}

/// A graded row, and what its failure usually means.
#[derive(Debug, Clone, Serialize)]
pub struct GradedRow {
    /// The row (id, check, expected, actual, message, verdict...).
    #[serde(flatten)]
    pub row: Row,
    /// For a failed row: what it usually means, for the learner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The exercise.
    pub id: String,
    /// Its chapter.
    pub chapter: String,
    /// Its title.
    pub title: String,
    /// Its kind.
    pub kind: Kind,
    /// Every row passed.
    pub passed: bool,
    /// The rows, in the exercise's order.
    pub rows: Vec<GradedRow>,
}

impl CheckResult {
    /// The result of `ex` for these rows.
    pub fn new(ex: &Exercise, def: &Definition, rows: Vec<GradedRow>) -> CheckResult {
        CheckResult {
            id: ex.id.into(),
            chapter: ex.chapter.into(),
            title: def.title.clone(),
            kind: def.kind,
            passed: !rows.is_empty() && rows.iter().all(|r| r.row.pass),
            rows,
        }
    }

    /// The ids of the rows that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| !r.row.pass)
            .map(|r| r.row.id.as_str())
            .collect()
    }

    /// The row with this id.
    pub fn row(&self, id: &str) -> Option<&GradedRow> {
        self.rows.iter().find(|r| r.row.id == id)
    }
}

/// Why a check could not grade.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The exercise's definition is broken (a bug in sa-lab).
    #[error(transparent)]
    Definition(#[from] super::def::DefError),
    /// The exercise's rows break the oracle's rules (a bug in sa-lab).
    #[error(transparent)]
    Oracle(#[from] oracle::OracleError),
    /// The learner's files.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The predictions file.
    #[error(transparent)]
    Predict(#[from] predict::PredictError),
    /// Building the learner's Rust code could not start.
    #[error(transparent)]
    Rust(#[from] rust::RustError),
    /// A Rust exercise on a provider whose Pods cannot run a program built here.
    #[error(
        "Rust exercises run on the local provider only: its sandbox node runs the program \
         cargo built here (this is the {provider} provider, where Pods run images)"
    )]
    RustNeedsLocal {
        /// The provider in use.
        provider: Provider,
    },
    /// A namespace of the exercise exists and is not the exercises' own.
    #[error(
        "namespace {namespace} exists and was not made by sa-lab exercises (no label \
         {NAMESPACE_LABEL}): check does not touch it; delete it, or use another cluster"
    )]
    NamespaceNotOurs {
        /// The namespace.
        namespace: String,
    },
    /// A cluster-scoped object of the learner's exists and is not theirs.
    #[error(
        "{file}: {object} already exists in the cluster and is not this exercise's: check never \
         changes what it did not make; give yours another name"
    )]
    Exists {
        /// The file.
        file: String,
        /// `Kind/name`.
        object: String,
    },
    /// Talking to the cluster failed.
    #[error("on the cluster")]
    Cluster(#[from] chapters::Error),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted ({0}); what the check had applied was removed")]
    Interrupted(crate::interrupt::Caught),
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CheckError {
    let action = action.into();
    move |source| CheckError::Cluster(chapters::Error::Api { action, source })
}

/// Read and check the learner's files in `folder` (no cluster needed):
/// what [`check`] does first, so a mistake in them is reported before
/// anything else happens.
pub fn prepare(
    ex: &Exercise,
    folder: &Path,
) -> Result<(Definition, Vec<LearnerObject>), CheckError> {
    let def = ex.def()?;
    if def.kind == Kind::Predict {
        let qs = predict::exercise_questions(ex, &def)?;
        predict::read_predictions(&folder.join(predict::PREDICTIONS_FILE), &qs)?;
        return Ok((def, Vec::new()));
    }
    let files = input::read_files(ex, folder)?;
    let objects = input::objects(ex, &def, folder, &files)?;
    Ok((def, objects))
}

/// Grade exercise `ex` from the files in `folder`, on `cluster`.
pub async fn check(
    cluster: &Cluster,
    ex: &Exercise,
    folder: &Path,
) -> Result<CheckResult, CheckError> {
    let (def, objects) = prepare(ex, folder)?;
    if def.kind == Kind::Predict {
        return predict::check(cluster, ex, &def, folder).await;
    }
    if def.kind == Kind::Rust {
        let labs_dir = cluster
            .labs_dir
            .as_deref()
            .ok_or(CheckError::RustNeedsLocal {
                provider: cluster.provider,
            })?;
        if let rust::Build::Failed(output) = rust::build(ex, folder, labs_dir).await? {
            let r = Row {
                check: "your program builds".into(),
                expected: "builds".into(),
                ..row(BUILD_ROW, "cargo", "does not build", output)
            };
            return Ok(CheckResult::new(ex, &def, vec![failed(r, None)]));
        }
    }
    let run = Grading {
        cluster,
        ex,
        def: &def,
        objects: &objects,
    };
    let mut interrupt = crate::interrupt::Interrupt::install().map_err(|e| {
        chapters::Error::Unexpected(format!("installing Ctrl-C and SIGTERM handlers: {e}"))
    })?;
    let outcome = tokio::select! {
        r = run.grade() => r,
        signal = interrupt.recv() => Err(CheckError::Interrupted(signal)),
    };
    // Whatever happened, take away what was applied. Interrupted, twice: a
    // create that was in flight when grading stopped may land during the
    // first.
    let mut cleaned = run.clean(false).await;
    if matches!(outcome, Err(CheckError::Interrupted(_))) && cleaned.is_ok() {
        cleaned = run.clean(false).await;
    }
    let rows = outcome?;
    cleaned?;
    Ok(CheckResult::new(ex, &def, rows))
}

fn failed(mut r: Row, advice: Option<String>) -> GradedRow {
    r.pass = false;
    if r.why.is_empty() {
        r.why = format!("expected {}, got {}", r.expected, r.actual);
    }
    GradedRow { row: r, advice }
}

/// What a probe Pod did.
enum PodRun {
    /// The API server refused to create it.
    Refused(String),
    /// It ran but left no report.
    NoReport(String),
    /// It ran and reported.
    Ran(Box<LabRun>),
}

struct Grading<'a> {
    cluster: &'a Cluster,
    ex: &'a Exercise,
    def: &'a Definition,
    objects: &'a [LearnerObject],
}

fn ar(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// The namespaced kinds a clean slate empties, with a field selector for
/// what stays (the namespace's own `default` and CA bundle).
fn namespaced_kinds() -> [(ApiResource, Option<&'static str>); 6] {
    [
        (ar("", "Pod", "pods"), None),
        (ar(RBAC, "RoleBinding", "rolebindings"), None),
        (ar(RBAC, "Role", "roles"), None),
        (
            ar("", "ServiceAccount", "serviceaccounts"),
            Some("metadata.name!=default"),
        ),
        (
            ar("", "ConfigMap", "configmaps"),
            Some("metadata.name!=kube-root-ca.crt"),
        ),
        (ar("", "Secret", "secrets"), None),
    ]
}

fn cluster_kinds() -> [ApiResource; 2] {
    [
        ar(RBAC, "ClusterRoleBinding", "clusterrolebindings"),
        ar(RBAC, "ClusterRole", "clusterroles"),
    ]
}

impl Grading<'_> {
    fn client(&self) -> Client {
        self.cluster.cx.client.clone()
    }

    fn file(&self) -> String {
        format!("{}/exercise.yaml", self.ex.source_dir())
    }

    async fn grade(&self) -> Result<Vec<GradedRow>, CheckError> {
        self.ensure_namespaces().await?;
        self.clean(true).await?;
        self.refuse_existing().await?;
        let mut order: Vec<&LearnerObject> =
            self.objects.iter().filter(|o| o.kind() != "Pod").collect();
        order.sort_by_key(|o| apply_order(o.kind()));
        for dry_run in [true, false] {
            if let Some((o, message)) = self.apply(&order, dry_run).await? {
                let r = Row {
                    check: "the API server accepts your objects".into(),
                    expected: "accepted".into(),
                    ..row(
                        APPLY_ROW,
                        "admin",
                        "refused",
                        format!("{}: {}: {message}", o.file, o.describe()),
                    )
                };
                return Ok(vec![failed(r, Some(
                    "the API server refused this object as written: its message says which field; \
                     nothing of yours was applied"
                        .into(),
                ))]);
            }
        }
        self.sync_rbac().await?;
        self.legacy_tokens_filled().await?;
        let runs = self.run_pods().await?;
        self.rows(&runs).await
    }

    /// Make the exercise's namespaces (labelled as the exercises' own) and
    /// wait until Pods can run there; refuse one that is not ours.
    async fn ensure_namespaces(&self) -> Result<(), CheckError> {
        let api: Api<Namespace> = Api::all(self.client());
        for ns in &self.def.namespaces {
            let existing = api
                .get_opt(ns)
                .await
                .map_err(api_err(format!("reading namespace {ns}")))?;
            let create = match existing {
                Some(n) if !n.labels().contains_key(NAMESPACE_LABEL) => {
                    return Err(CheckError::NamespaceNotOurs {
                        namespace: ns.clone(),
                    });
                }
                Some(n) if n.metadata.deletion_timestamp.is_some() => {
                    kit::delete_and_wait(&api, ns, NS_TIMEOUT).await?;
                    true
                }
                Some(_) => false,
                None => true,
            };
            if create {
                let obj: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": ns, "labels": {
                        "app.kubernetes.io/part-of": "sa-lab", NAMESPACE_LABEL: "true"
                    }}
                }))
                .map_err(|e| chapters::Error::Unexpected(e.to_string()))?;
                api.create(&PostParams::default(), &obj)
                    .await
                    .map_err(api_err(format!("creating namespace {ns}")))?;
            }
            // Cheap when it is ready: both objects exist.
            self.cluster.cx.wait_namespace(ns, &[]).await?;
        }
        Ok(())
    }

    /// The clean slate (`start`) or the clean-up after grading: empty the
    /// exercise's namespaces (but `default` and the CA bundle), give
    /// `default` back what the learner applied to it, delete every
    /// object an earlier check of any exercise left, and the cluster-wide
    /// roles and bindings of sa-lab (at the start: the course's too).
    async fn clean(&self, start: bool) -> Result<(), CheckError> {
        let client = self.client();
        let dp = DeleteParams::default();
        let ours = format!("{EXERCISE_LABEL}={}", self.ex.id);
        let namespaces = self.our_namespaces().await?;
        for ns in &namespaces {
            for (ar, keep) in namespaced_kinds() {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
                let mut lp = ListParams::default();
                if let Some(k) = keep {
                    lp = lp.fields(k);
                }
                match api.delete_collection(&dp, &lp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(api_err(format!("emptying {} in {ns}", ar.plural))(e)),
                }
            }
            self.restore_default(ns).await?;
        }
        // Anything an earlier check of another exercise left, anywhere.
        let leftovers = if start {
            ListParams::default().labels(EXERCISE_LABEL)
        } else {
            ListParams::default().labels(&ours)
        };
        for (ar, _) in namespaced_kinds() {
            let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let found = all
                .list_metadata(&leftovers)
                .await
                .map_err(api_err(format!("listing {}", ar.plural)))?;
            for o in found.items {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                let name = o.metadata.name.clone().unwrap_or_default();
                if ar.kind == "ServiceAccount" && name == "default" {
                    self.restore_default(&ns).await?;
                    continue;
                }
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                kit::delete_and_wait(&api, &name, self.cluster.cx.timeout).await?;
            }
        }
        let cluster_wide = if start {
            ListParams::default().labels(kit::COURSE_LABEL)
        } else {
            ListParams::default().labels(&ours)
        };
        for ar in cluster_kinds() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            api.delete_collection(&dp, &cluster_wide)
                .await
                .map_err(api_err(format!("deleting sa-lab's {}", ar.plural)))?;
        }
        // Pods end gracefully: wait until every one is gone, so the next
        // Pod of the same name is a new one.
        for ns in &namespaces {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let left = api
                .list_metadata(&ListParams::default())
                .await
                .map_err(api_err(format!("listing Pods in {ns}")))?;
            for p in left.items {
                let name = p.metadata.name.unwrap_or_default();
                kit::delete_and_wait(&api, &name, self.cluster.cx.timeout).await?;
            }
        }
        Ok(())
    }

    /// The exercise's namespaces that exist and are the exercises' own
    /// (only those are ever emptied).
    async fn our_namespaces(&self) -> Result<Vec<String>, CheckError> {
        let api: Api<Namespace> = Api::all(self.client());
        let mut out = Vec::new();
        for ns in &self.def.namespaces {
            let n = api
                .get_opt(ns)
                .await
                .map_err(api_err(format!("reading namespace {ns}")))?;
            if n.is_some_and(|n| n.labels().contains_key(NAMESPACE_LABEL)) {
                out.push(ns.clone());
            }
        }
        Ok(out)
    }

    /// Give `default` in `ns` back what a check applied to it: an apply
    /// of nothing by the same field manager removes every field it set.
    async fn restore_default(&self, ns: &str) -> Result<(), CheckError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), ns);
        let Some(sa) = api
            .get_opt("default")
            .await
            .map_err(api_err(format!("reading {ns}/default")))?
        else {
            return Ok(());
        };
        if !sa.labels().contains_key(EXERCISE_LABEL) {
            return Ok(());
        }
        let nothing = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns}
        });
        api.patch(
            "default",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&nothing),
        )
        .await
        .map_err(api_err(format!("restoring ServiceAccount {ns}/default")))?;
        Ok(())
    }

    /// After the clean slate, a cluster-scoped object of the learner's that
    /// exists belongs to someone else (`view`, `cluster-admin`...).
    async fn refuse_existing(&self) -> Result<(), CheckError> {
        for o in self.objects.iter().filter(|o| o.cluster_scoped()) {
            let (api, name) = self.dynamic(o)?;
            if api
                .get_metadata_opt(&name)
                .await
                .map_err(api_err(format!("reading {}", o.describe())))?
                .is_some()
            {
                return Err(CheckError::Exists {
                    file: o.file.clone(),
                    object: o.describe(),
                });
            }
        }
        Ok(())
    }

    fn dynamic(&self, o: &LearnerObject) -> Result<(Api<DynamicObject>, String), CheckError> {
        let (ar, namespaced) = kit::api_resource(&o.file, &o.obj)?;
        let api = match o.namespace() {
            Some(ns) if namespaced => Api::namespaced_with(self.client(), ns, &ar),
            _ => Api::all_with(self.client(), &ar),
        };
        Ok((api, o.name().to_string()))
    }

    /// Server-side apply `objects` in order (a dry run, or for real); the
    /// first one the API server refuses, with its message.
    async fn apply<'o>(
        &self,
        objects: &[&'o LearnerObject],
        dry_run: bool,
    ) -> Result<Option<(&'o LearnerObject, String)>, CheckError> {
        let mut pp = PatchParams::apply(FIELD_MANAGER).force();
        pp.dry_run = dry_run;
        pp.field_validation = Some(ValidationDirective::Strict);
        for o in objects {
            let (api, name) = self.dynamic(o)?;
            match api.patch(&name, &pp, &Patch::Apply(&o.obj)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if refused(&s) => return Ok(Some((o, s.message))),
                Err(e) => return Err(api_err(format!("applying {}", o.describe()))(e)),
            }
        }
        Ok(None)
    }

    /// Wait until the authorizer has seen every RBAC change so far: a
    /// Role, RoleBinding, ClusterRole and ClusterRoleBinding applied after
    /// them grant a user nobody is; once both grants are visible, each of
    /// the four informers behind the RBAC authorizer has caught up (each
    /// sees its kind's changes in order).
    async fn sync_rbac(&self) -> Result<(), CheckError> {
        let ns = &self.def.namespaces[0];
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        );
        let name = format!("{RESERVED_PREFIX}sync");
        let labels = json!({"app.kubernetes.io/part-of": "sa-lab", EXERCISE_LABEL: self.ex.id});
        let rule = |res: &str| json!([{"apiGroups": [""], "resources": [res], "verbs": ["get"], "resourceNames": [nonce]}]);
        let subject = json!([{"kind": "User", "name": SYNC_USER, "apiGroup": RBAC}]);
        let docs = [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": ns, "labels": labels}, "rules": rule("configmaps")}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": name, "labels": labels}, "rules": rule("secrets")}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": ns, "labels": labels}, "subjects": subject,
                   "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": name, "labels": labels}, "subjects": subject,
                   "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name}}),
        ];
        let sentinel: Vec<LearnerObject> = docs
            .into_iter()
            .map(|obj| LearnerObject {
                file: "(check's RBAC sentinel)".into(),
                obj,
            })
            .collect();
        let refs: Vec<&LearnerObject> = sentinel.iter().collect();
        if let Some((o, m)) = self.apply(&refs, false).await? {
            return Err(
                chapters::Error::Unexpected(format!("applying {}: {m}", o.describe())).into(),
            );
        }
        let attrs = |res: &str, ns: &str| ResourceAttributes {
            verb: Some("get".into()),
            group: Some(String::new()),
            resource: Some(res.into()),
            namespace: Some(ns.into()),
            name: Some(nonce.clone()),
            ..Default::default()
        };
        let (role, cluster_role) = (attrs("configmaps", ns), attrs("secrets", "kube-system"));
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            let cx = &self.cluster.cx;
            let (a, b) = futures::try_join!(
                cx.can_i(SYNC_USER, &[], &role),
                cx.can_i(SYNC_USER, &[], &cluster_role)
            )?;
            if a.0 && b.0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(chapters::Error::Timeout {
                    what: "the authorizer did not see the exercise's RBAC changes".into(),
                    seconds: SYNC_TIMEOUT.as_secs(),
                    hint: String::new(),
                }
                .into());
            }
            // A SubjectAccessReview cannot be watched.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Pod `check` runs for `p`: made from the definition, or the
    /// learner's own with the probe (or their program) as its command.
    fn pod_object(&self, p: &ProbePod) -> Result<Pod, CheckError> {
        let ns = p.namespace(self.def);
        let program = match p.program {
            Program::Probe => PROBE_PROGRAM.to_string(),
            Program::Exercise => self.ex.binary(),
        };
        let asks = serde_json::to_string(&self.def.asks(p)).unwrap_or_default();
        let env = json!([
            {"name": lab_kit::ask::ASKS_ENV, "value": asks},
            {"name": lab_kit::ask::CA_ENV, "value": ca_pem(&self.cluster.cx.config)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]);
        let mut obj = if p.learner {
            let o = self
                .objects
                .iter()
                .find(|o| o.kind() == "Pod" && o.name() == p.name && o.namespace() == Some(ns))
                .ok_or_else(|| InputError::MissingPod {
                    name: p.name.clone(),
                })?;
            o.obj.clone()
        } else {
            let mut spec = json!({
                "serviceAccountName": p.service_account.clone().unwrap_or_else(|| "default".into()),
                "containers": [{"name": "probe"}],
            });
            if let Some(a) = p.automount {
                spec["automountServiceAccountToken"] = a.into();
            }
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": p.name, "namespace": ns, "labels": {
                       "app.kubernetes.io/part-of": "sa-lab", EXERCISE_LABEL: self.ex.id}},
                   "spec": spec})
        };
        obj["spec"]["restartPolicy"] = "Never".into();
        let c = &mut obj["spec"]["containers"][0];
        c["image"] = self.cluster.cx.image.clone().into();
        c["imagePullPolicy"] = "IfNotPresent".into();
        c["command"] = json!([program]);
        if let Some(m) = c.as_object_mut() {
            m.remove("args");
        }
        let mut all = env.as_array().cloned().unwrap_or_default();
        for e in c["env"].as_array().into_iter().flatten() {
            if !all.iter().any(|x| x["name"] == e["name"]) {
                all.push(e.clone());
            }
        }
        c["env"] = Value::Array(all);
        serde_json::from_value(obj).map_err(|e| {
            CheckError::Cluster(chapters::Error::Unexpected(format!(
                "Pod {}: not a Pod: {e}",
                p.name
            )))
        })
    }

    async fn run_pods(&self) -> Result<Vec<PodRun>, CheckError> {
        let mut created = Vec::new();
        let mut runs: Vec<Option<PodRun>> = Vec::new();
        for p in &self.def.pods {
            let pod = self.pod_object(p)?;
            let api: Api<Pod> = Api::namespaced(self.client(), p.namespace(self.def));
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    created.push((runs.len(), pod));
                    runs.push(None);
                }
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                    runs.push(Some(PodRun::Refused(s.message)));
                }
                Err(e) => return Err(api_err(format!("creating Pod {}", p.name))(e)),
            }
        }
        let waits = created
            .iter()
            .map(|(_, pod)| self.cluster.cx.wait_report(pod));
        let done = futures::future::join_all(waits).await;
        for ((i, pod), res) in created.iter().zip(done) {
            runs[*i] = Some(match res {
                Ok(run) => PodRun::Ran(Box::new(run)),
                Err(chapters::Error::LabPod { problem, .. }) => {
                    PodRun::NoReport(format!("{problem}{}", self.output(pod).await))
                }
                Err(e) => return Err(e.into()),
            });
        }
        Ok(runs.into_iter().flatten().collect())
    }

    /// The end of what a Pod printed (its panic, for one).
    async fn output(&self, pod: &Pod) -> String {
        let api: Api<Pod> = Api::namespaced(self.client(), &pod.namespace().unwrap_or_default());
        let lp = LogParams {
            tail_lines: Some(12),
            ..LogParams::default()
        };
        match api.logs(&pod.name_any(), &lp).await {
            Ok(text) if !text.trim().is_empty() => {
                format!("\nwhat it printed last:\n{}", text.trim_end())
            }
            _ => String::new(),
        }
    }

    async fn rows(&self, runs: &[PodRun]) -> Result<Vec<GradedRow>, CheckError> {
        let mut observed = Vec::new();
        let mut accounts = Vec::new();
        let mut audit = None;
        for spec in &self.def.rows {
            if let Observe::Audit(a) = spec.observe() {
                if audit.is_none() {
                    audit = Some(self.audit().await?);
                }
                let found = audit.as_deref().unwrap_or_default();
                observed.push(audit_row(&spec.id, found, &self.def.namespaces[0], a));
                accounts.push((String::new(), String::new()));
                continue;
            }
            let (i, p) = self
                .def
                .pods
                .iter()
                .enumerate()
                .find(|(_, p)| self.def.pod_of(spec).is_some_and(|q| q.name == p.name))
                .ok_or_else(|| {
                    chapters::Error::Unexpected(format!("row {} has no pod", spec.id))
                })?;
            let (r, account) = self.observe(spec, p, &runs[i]);
            observed.push(r);
            accounts.push(account);
        }
        if let Some(lp) = &self.def.least_privilege {
            observed.extend(lint::least_privilege_rows(
                self.objects,
                &lp.allow_cluster_roles,
            ));
        }
        // The authorizer's decision and reason for each call, from the
        // audit log (the binding that let an over-granted call through).
        self.cluster.cx.explain(&mut observed).await;
        let graded = oracle::grade(&self.def.tables(&self.file())?, observed);
        let mut out = Vec::new();
        for r in graded {
            if r.pass {
                out.push(GradedRow {
                    row: r,
                    advice: None,
                });
                continue;
            }
            let spec_i = self.def.rows.iter().position(|s| s.id == r.id);
            let advice = match spec_i {
                Some(i) => self.advice(&self.def.rows[i], &r, &accounts[i]).await?,
                None => Some(
                    "grant only what the task asks: Roles that name the resources and verbs it \
                     needs, bound to the ServiceAccount that needs them"
                        .into(),
                ),
            };
            out.push(GradedRow { row: r, advice });
        }
        Ok(out)
    }

    /// What `sa-lab audit` finds on the cluster now (as the admin; the
    /// authorizer is not asked to confirm).
    async fn audit(&self) -> Result<Vec<crate::risks::Finding>, CheckError> {
        let (snapshot, _) = crate::risks::collect(&self.client())
            .await
            .map_err(|e| chapters::Error::Unexpected(crate::ui::error_chain(&e)))?;
        Ok(crate::risks::analyse(&snapshot))
    }

    /// Wait (a watch) until the token controller has filled every legacy
    /// token Secret of the learner's, as a Pod that mounts one expects.
    async fn legacy_tokens_filled(&self) -> Result<(), CheckError> {
        for o in self
            .objects
            .iter()
            .filter(|o| o.kind() == "Secret" && o.obj["type"] == LEGACY_TOKEN_TYPE)
        {
            let ns = o.namespace().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(self.client(), ns);
            let filled = |s: Option<&Secret>| {
                s.and_then(|s| s.data.as_ref())
                    .is_some_and(|d| d.get("token").is_some_and(|t| !t.0.is_empty()))
            };
            let what = format!(
                "Secret {ns}/{} was not filled (is the serviceaccount-token controller running?)",
                o.name()
            );
            kit::await_object(&api, o.name(), filled, self.cluster.cx.timeout, &what).await?;
        }
        Ok(())
    }

    /// A row as observed in its Pod, and who the Pod ran as.
    fn observe(&self, spec: &RowSpec, p: &ProbePod, run: &PodRun) -> (Row, (String, String)) {
        let ns = p.namespace(self.def).to_string();
        let mut sa = match p.learner {
            true => self
                .objects
                .iter()
                .find(|o| o.kind() == "Pod" && o.name() == p.name)
                .and_then(|o| o.obj["spec"]["serviceAccountName"].as_str())
                .unwrap_or("default")
                .to_string(),
            false => p
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
        };
        let subject = p.subject();
        let mut r = match run {
            PodRun::Refused(m) => row(&spec.id, &subject, "Pod refused", m.clone()),
            PodRun::NoReport(m) => row(&spec.id, &subject, "no report", m.clone()),
            PodRun::Ran(lab) => {
                let stored = service_account_of(lab);
                if !stored.is_empty() {
                    sa = stored;
                }
                let report = &lab.report;
                let fact = |key: &str| match report.facts.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "(not reported)".into(),
                };
                match spec.observe() {
                    Observe::Request(_) => probe_row(&spec.id, &subject, report.row(&spec.id)),
                    Observe::Report(id) => probe_row(&spec.id, &subject, report.row(id)),
                    Observe::Fact(key) => row(&spec.id, &subject, fact(key), ""),
                    Observe::Whoami | Observe::File(_) | Observe::Claim(_) | Observe::Audit(_) => {
                        row(&spec.id, &subject, fact(&spec.id), "")
                    }
                }
            }
        };
        if let Some(want) = &spec.message_contains {
            let want = want.replace("$user", &format!("system:serviceaccount:{ns}:{sa}"));
            if r.actual == spec.expect && !r.message.contains(&want) {
                r.actual = format!("{} (but its message lacks {want:?})", r.actual);
            }
        }
        (r, (ns, sa))
    }

    /// What a failed row usually means; for a refusal that was allowed,
    /// the authorizer's own reason (which names the binding).
    async fn advice(
        &self,
        spec: &RowSpec,
        r: &Row,
        account: &(String, String),
    ) -> Result<Option<String>, CheckError> {
        let (ns, sa) = account;
        if spec.audit.is_some() {
            let own = spec.advice.as_deref().map(str::trim);
            return Ok(Some(own.map_or_else(
                || {
                    "each finding names its evidence and its fix (`sa-lab audit` shows the same)"
                        .to_string()
                },
                str::to_string,
            )));
        }
        if r.actual == r.expected {
            // It failed by its twin (or the authorizer): the fix is there.
            return Ok(r.twin.as_ref().map(|t| {
                format!("a refusal counts once its twin {t} is allowed: fix that row first")
            }));
        }
        let mut parts = Vec::new();
        let over_granted = r.actual == "allowed" && oracle::is_refusal(&r.expected);
        let audited = r.reason.as_deref().filter(|x| x.contains("allowed by"));
        if let Some(why) = audited.filter(|_| over_granted) {
            // The real call's reason, as the API server logged it.
            let why = why.trim_start_matches("RBAC: ");
            parts.push(format!(
                "the API server's audit log says the call was {why}"
            ));
        } else if over_granted && !r.verb.is_empty() {
            let (user, groups) = kit::sa_user(ns, sa);
            let attrs = ResourceAttributes {
                verb: Some(r.verb.clone()),
                group: Some(r.group.clone()),
                resource: Some(r.resource.clone()),
                subresource: (!r.subresource.is_empty()).then(|| r.subresource.clone()),
                namespace: (!r.namespace.is_empty()).then(|| r.namespace.clone()),
                name: (!r.name.is_empty()).then(|| r.name.clone()),
                ..Default::default()
            };
            let (_, reason) = self.cluster.cx.can_i(&user, &groups, &attrs).await?;
            if !reason.is_empty() {
                parts.push(format!("the authorizer says: {reason}"));
            }
        }
        if let Some(a) = lint::advise(spec, r, Some((ns, sa)), self.objects) {
            parts.push(a);
        }
        if let Some(a) = &spec.advice {
            parts.push(a.trim().to_string());
        }
        let sentences: Vec<String> = parts
            .iter()
            .map(|p| {
                let p = p.trim_end_matches('.');
                let mut c = p.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            })
            .collect();
        Ok((!sentences.is_empty()).then(|| sentences.join(". ")))
    }
}

/// The type of a legacy token Secret, filled by the token controller.
const LEGACY_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";

/// An audit row: `none`, or the findings about `ns` at the row's level or
/// worse (`SA001 default-sa-rights (high)`), each with its evidence in
/// the message.
fn audit_row(id: &str, found: &[crate::risks::Finding], ns: &str, spec: &AuditSpec) -> Row {
    let level = spec.level().unwrap_or(crate::risks::Severity::Low);
    let about = crate::risks::about_namespace(found, ns, level);
    let actual = if about.is_empty() {
        super::def::NONE_FOUND.to_string()
    } else {
        about
            .iter()
            .map(|f| format!("{} {} ({})", f.rule.id(), f.name, f.severity))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let message = about
        .iter()
        .map(|f| {
            let e = &f.evidence;
            let chain: Vec<&str> = [e.subject.as_str(), &e.object, &e.binding, &e.role, &e.rule]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            format!("{}: {}; fix: {}", f.rule.id(), chain.join(" → "), f.fix)
        })
        .collect::<Vec<_>>()
        .join("\n");
    row(id, "sa-lab audit", actual, message)
}

/// The API server refused the object as written: a 4xx, or the 500 that
/// server-side apply answers for a field the schema does not have
/// ("failed to create typed patch object ... field not declared in
/// schema").
fn refused(s: &kube::core::Status) -> bool {
    (400..500).contains(&s.code)
        || (s.code == 500 && s.message.contains("failed to create typed patch object"))
}

/// The cluster's CA bundle as PEM (the admin's config holds it as DER).
fn ca_pem(config: &kube::Config) -> String {
    use base64::Engine as _;
    if let Some(file) = &config.root_cert_file {
        return std::fs::read_to_string(file).unwrap_or_default();
    }
    let mut pem = String::new();
    for der in config.root_cert.iter().flatten() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

/// Applied in this order, so what an object refers to exists first.
fn apply_order(kind: &str) -> u8 {
    match kind {
        "ServiceAccount" => 0,
        "ConfigMap" | "Secret" => 1,
        "ClusterRole" | "Role" => 2,
        _ => 3,
    }
}
