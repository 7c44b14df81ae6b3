//! An exercise's definition, `labs/NN-slug/exercises/<id>/exercise.yaml`:
//! what the learner may apply, which probe Pods `check` runs, and the
//! must-allow and must-refuse rows. The rows become expected tables that
//! the chapters' oracle checks (every refusal names an allowed twin) and
//! grades ([`crate::chapters::oracle::grade`]).

use serde::Deserialize;

use super::Exercise;
use crate::chapters::oracle::{self, Expect, ExpectedRow, ExpectedTable, OracleError};
use crate::risks::Severity;
use lab_kit::ask;

/// The kinds an exercise may accept from the learner (and `check` knows
/// how to apply and remove). Namespaces are the exercise's own: `check`
/// creates them.
pub const KNOWN_KINDS: [&str; 8] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "Pod",
    "ConfigMap",
    "Secret",
];

/// The program probe Pods run: it answers the rows' asks.
pub const PROBE_PROGRAM: &str = "lab-exercise-probe";

/// Rows the least-privilege check adds (see [`super::lint`]).
pub const LEAST_PRIVILEGE_ROWS: [(&str, &str); 3] = [
    (
        "least-privilege.wildcards",
        "no `*` and no escalate, bind or impersonate in your rules",
    ),
    (
        "least-privilege.built-in-roles",
        "no binding to a ClusterRole your files do not define (cluster-admin, edit, view...)",
    ),
    (
        "least-privilege.groups-and-users",
        "bindings name ServiceAccounts, not groups or users",
    ),
];

/// What a least-privilege row must find.
pub const NONE_FOUND: &str = "none";

/// `exercise.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// What the learner does, in a few words.
    pub title: String,
    /// The kind of exercise.
    pub kind: Kind,
    /// The exercise's namespaces: `check` creates them; the learner's
    /// objects go there (the first one when they name none).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The kinds the learner may apply.
    #[serde(default)]
    pub accepts: Vec<String>,
    /// The task asks for least privilege: the static check runs and its
    /// rows must find nothing.
    #[serde(default)]
    pub least_privilege: Option<LeastPrivilege>,
    /// The Pods `check` runs.
    #[serde(default)]
    pub pods: Vec<ProbePod>,
    /// The must-allow and must-refuse rows (and the other observations).
    #[serde(default)]
    pub rows: Vec<RowSpec>,
    /// Predict: the chapter's rows to predict, by id.
    #[serde(default)]
    pub predict: Vec<String>,
    /// Two or three hints, from a nudge to nearly the answer.
    pub hints: Vec<String>,
    /// The rows the starter fails: CI checks it fails exactly these.
    pub starter_fails: Vec<String>,
}

/// What kind of exercise it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Write manifests from a task.
    Write,
    /// Fix a broken manifest.
    Fix,
    /// Find and fix planted misconfigurations.
    Find,
    /// Predict a chapter's rows before running it.
    Predict,
    /// Complete the lab code (Rust), which runs in a Pod.
    Rust,
}

impl Kind {
    /// How the list names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Fix => "fix",
            Kind::Find => "find & fix",
            Kind::Predict => "predict",
            Kind::Rust => "Rust",
        }
    }
}

/// The least-privilege check's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastPrivilege {
    /// The ServiceAccount the task is about (in the first namespace): CI
    /// over-grants to it and expects the check to fail.
    pub subject: String,
    /// Built-in ClusterRoles the task may bind.
    #[serde(default)]
    pub allow_cluster_roles: Vec<String>,
}

/// A Pod `check` runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbePod {
    /// The Pod's name.
    pub name: String,
    /// Its namespace (default: the first of the exercise's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The ServiceAccount a Pod `check` makes runs as (default `default`).
    #[serde(default)]
    pub service_account: Option<String>,
    /// The Pod is the learner's (a file defines it); `check` runs it with
    /// the probe (or the learner's program) as its container's command.
    #[serde(default)]
    pub learner: bool,
    /// `automountServiceAccountToken` of a Pod `check` makes.
    #[serde(default)]
    pub automount: Option<bool>,
    /// What its container runs.
    #[serde(default)]
    pub program: Program,
}

/// What a probe Pod's container runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// The probe lab, answering the rows' asks.
    #[default]
    Probe,
    /// The learner's Rust program (Rust exercises).
    Exercise,
}

/// One row: what is observed, in which Pod, and what it must be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Stable id (`reporter.list-pods`).
    pub id: String,
    /// What it checks, in words.
    pub check: String,
    /// The Pod that observes it (default: the first).
    #[serde(default)]
    pub pod: Option<String>,
    /// An API request.
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// Who the Pod's in-cluster credential says it is.
    #[serde(default)]
    pub whoami: bool,
    /// Whether this file is in the Pod (`present` / `absent`).
    #[serde(default)]
    pub file: Option<String>,
    /// A claim of a token file in the Pod.
    #[serde(default)]
    pub claim: Option<ClaimSpec>,
    /// A row of the learner's program's report (Rust exercises).
    #[serde(default)]
    pub report: Option<String>,
    /// A fact of the learner's program's report (Rust exercises).
    #[serde(default)]
    pub fact: Option<String>,
    /// What `sa-lab audit` finds about the exercise's first namespace,
    /// read by check (as the admin) once the Pods ran: no `pod`.
    #[serde(default)]
    pub audit: Option<AuditSpec>,
    /// The value it must have.
    pub expect: String,
    /// For a refusal: the allowed row that is the same call with one
    /// thing changed.
    #[serde(default)]
    pub twin: Option<String>,
    /// Text the observed message must contain (`$user` is the Pod's
    /// ServiceAccount username), so a result cannot be made up.
    #[serde(default)]
    pub message_contains: Option<String>,
    /// What a failure of this row usually means, for the learner.
    #[serde(default)]
    pub advice: Option<String>,
}

/// An API request of a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// get, list, create, update, patch, delete.
    pub verb: String,
    /// API group ("" = core).
    #[serde(default)]
    pub group: String,
    /// API version (default v1).
    #[serde(default)]
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource.
    #[serde(default)]
    pub subresource: String,
    /// Namespace (default: the Pod's; "" for cluster scope).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object name (`$self`: the probe Pod).
    #[serde(default)]
    pub name: String,
    /// Send it with the token in this file instead of the mounted one.
    #[serde(default)]
    pub token: Option<String>,
    /// The body of a create that needs one (a TokenRequest, a
    /// TokenReview), as YAML.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// An audit row: the findings of `sa-lab audit` about the exercise's
/// first namespace, at a severity or worse (`none`, or each one's rule,
/// name and severity).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// The least severity that counts: low, medium, high or critical.
    pub at_least: String,
}

impl AuditSpec {
    /// [`AuditSpec::at_least`] as a severity.
    pub fn level(&self) -> Option<Severity> {
        <Severity as clap::ValueEnum>::from_str(&self.at_least, true).ok()
    }
}

/// A claim of a token file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSpec {
    /// The token file in the Pod.
    pub path: String,
    /// `aud`, `ttl` (exp - iat), a JSON pointer into the claims
    /// (`/kubernetes.io/pod/name`), or any claim name.
    pub claim: String,
}

/// What an observation row is.
#[derive(Debug, Clone)]
pub enum Observe<'a> {
    /// An API request.
    Request(&'a RequestSpec),
    /// Who the Pod is.
    Whoami,
    /// A file's presence.
    File(&'a str),
    /// A token claim.
    Claim(&'a ClaimSpec),
    /// A row of the learner's program's report.
    Report(&'a str),
    /// A fact of the learner's program's report.
    Fact(&'a str),
    /// What `sa-lab audit` finds.
    Audit(&'a AuditSpec),
}

/// An exercise's definition is not usable.
#[derive(Debug, thiserror::Error)]
pub enum DefError {
    /// Not YAML of the definition's shape.
    #[error("{file}: invalid definition")]
    Yaml {
        /// `labs/.../exercise.yaml`.
        file: String,
        /// What the parser said.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// Parsed, but inconsistent.
    #[error("{file}: {problem}")]
    Invalid {
        /// `labs/.../exercise.yaml`.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// Its rows break the oracle's rules.
    #[error(transparent)]
    Oracle(#[from] OracleError),
}

impl RowSpec {
    /// What the row observes (definitions are checked to name exactly one).
    pub fn observe(&self) -> Observe<'_> {
        if let Some(r) = &self.request {
            Observe::Request(r)
        } else if let Some(f) = &self.file {
            Observe::File(f)
        } else if let Some(c) = &self.claim {
            Observe::Claim(c)
        } else if let Some(r) = &self.report {
            Observe::Report(r)
        } else if let Some(f) = &self.fact {
            Observe::Fact(f)
        } else if let Some(a) = &self.audit {
            Observe::Audit(a)
        } else {
            Observe::Whoami
        }
    }

    fn observations(&self) -> usize {
        [
            self.request.is_some(),
            self.whoami,
            self.file.is_some(),
            self.claim.is_some(),
            self.report.is_some(),
            self.fact.is_some(),
            self.audit.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }

    /// The row is graded against the authorizer too: a request sent with
    /// the Pod's own credential.
    pub fn asks_authorizer(&self) -> bool {
        matches!(self.observe(), Observe::Request(r) if r.token.is_none())
    }
}

impl ProbePod {
    /// Its namespace in `def`.
    pub fn namespace<'a>(&'a self, def: &'a Definition) -> &'a str {
        self.namespace
            .as_deref()
            .or(def.namespaces.first().map(String::as_str))
            .unwrap_or_default()
    }

    /// Who it runs as, for tables: the ServiceAccount of a Pod `check`
    /// makes, or the learner's Pod.
    pub fn subject(&self) -> String {
        if self.learner {
            format!("your Pod {}", self.name)
        } else {
            self.service_account
                .clone()
                .unwrap_or_else(|| "default".into())
        }
    }
}

impl Definition {
    /// `ex`'s definition, parsed and checked.
    pub fn parse(ex: &Exercise) -> Result<Definition, DefError> {
        let file = format!("{}/exercise.yaml", ex.source_dir());
        let def: Definition =
            serde_saphyr::from_str(ex.definition).map_err(|source| DefError::Yaml {
                file: file.clone(),
                source: Box::new(source),
            })?;
        def.check(ex, &file)?;
        Ok(def)
    }

    /// The Pod a row observes in (none for an audit row).
    pub fn pod_of(&self, row: &RowSpec) -> Option<&ProbePod> {
        if row.audit.is_some() {
            return None;
        }
        match &row.pod {
            Some(name) => self.pods.iter().find(|p| &p.name == name),
            None => self.pods.first(),
        }
    }

    /// The asks of probe Pod `pod` (its rows, namespaces resolved).
    pub fn asks(&self, pod: &ProbePod) -> Vec<ask::Ask> {
        self.rows
            .iter()
            .filter(|r| self.pod_of(r).is_some_and(|p| p.name == pod.name))
            .filter_map(|r| {
                let what = match r.observe() {
                    Observe::Request(q) => ask::What::Request {
                        request: ask::Request {
                            verb: q.verb.clone(),
                            group: q.group.clone(),
                            version: q.version.clone(),
                            resource: q.resource.clone(),
                            subresource: q.subresource.clone(),
                            namespace: q
                                .namespace
                                .clone()
                                .unwrap_or_else(|| pod.namespace(self).to_string()),
                            name: q.name.clone(),
                            body: q.body.clone(),
                        },
                        token: q.token.clone(),
                    },
                    Observe::Whoami => ask::What::Whoami,
                    Observe::File(f) => ask::What::File { path: f.into() },
                    Observe::Claim(c) => ask::What::Claim {
                        path: c.path.clone(),
                        claim: c.claim.clone(),
                    },
                    Observe::Report(_) | Observe::Fact(_) | Observe::Audit(_) => return None,
                };
                Some(ask::Ask {
                    id: r.id.clone(),
                    what,
                })
            })
            .collect()
    }

    /// The rows as expected tables, checked by the oracle: the requests
    /// made with the Pod's own credential (graded against the authorizer
    /// too), then every other observation, then the least-privilege rows.
    pub fn tables(&self, file: &str) -> Result<Vec<ExpectedTable>, OracleError> {
        let expect_row =
            |cells: Vec<String>, id: &str, value: &str, twin: Option<String>| ExpectedRow {
                cells,
                expect: vec![Expect {
                    id: id.into(),
                    value: value.into(),
                    twin,
                }],
            };
        let table = |authorizer: bool, rows: Vec<ExpectedRow>| ExpectedTable {
            columns: vec!["check".into(), "expected".into()],
            authorizer,
            rows,
        };
        let (asked, other): (Vec<&RowSpec>, Vec<&RowSpec>) =
            self.rows.iter().partition(|r| r.asks_authorizer());
        let cells = |rows: Vec<&RowSpec>| -> Vec<ExpectedRow> {
            rows.into_iter()
                .map(|r| expect_row(vec![r.check.clone()], &r.id, &r.expect, r.twin.clone()))
                .collect()
        };
        let mut other = cells(other);
        if self.least_privilege.is_some() {
            for (id, check) in LEAST_PRIVILEGE_ROWS {
                other.push(expect_row(vec![check.into()], id, NONE_FOUND, None));
            }
        }
        let tables = [table(true, cells(asked)), table(false, other)]
            .into_iter()
            .filter(|t| !t.rows.is_empty())
            .collect();
        oracle::validate(file, tables)
    }

    /// Every row id `check` grades, in order.
    pub fn row_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.rows.iter().map(|r| r.id.clone()).collect();
        if self.least_privilege.is_some() {
            ids.extend(LEAST_PRIVILEGE_ROWS.iter().map(|(id, _)| id.to_string()));
        }
        ids
    }

    fn check(&self, ex: &Exercise, file: &str) -> Result<(), DefError> {
        let bad = |problem: String| DefError::Invalid {
            file: file.into(),
            problem,
        };
        if !(2..=3).contains(&self.hints.len()) {
            return Err(bad(format!(
                "{} hints: give two or three, from a nudge to nearly the answer",
                self.hints.len()
            )));
        }
        if self.starter_fails.is_empty() {
            return Err(bad("starter_fails is empty: a starter must fail".into()));
        }
        if self.kind == Kind::Predict {
            if self.predict.is_empty() || !self.rows.is_empty() || !self.pods.is_empty() {
                return Err(bad(
                    "a predict exercise lists chapter rows in `predict`, and no pods or rows"
                        .into(),
                ));
            }
            let ids = oracle::ids(ex.chapter())?;
            for id in self.predict.iter().chain(&self.starter_fails) {
                if !ids.contains(id) {
                    return Err(bad(format!("{id} is not a row of chapter {}", ex.chapter)));
                }
            }
            return Ok(());
        }
        if self.namespaces.is_empty() || self.pods.is_empty() || self.rows.is_empty() {
            return Err(bad("an exercise needs namespaces, pods and rows".into()));
        }
        for k in &self.accepts {
            if !KNOWN_KINDS.contains(&k.as_str()) {
                return Err(bad(format!(
                    "accepts {k}, which check cannot apply; known: {}",
                    KNOWN_KINDS.join(", ")
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.pods {
            if !names.insert(&p.name) {
                return Err(bad(format!("pod {} appears twice", p.name)));
            }
            if !self.namespaces.iter().any(|n| n == p.namespace(self)) {
                return Err(bad(format!(
                    "pod {} is outside the exercise's namespaces",
                    p.name
                )));
            }
            if p.learner && !self.accepts.iter().any(|k| k == "Pod") {
                return Err(bad(format!(
                    "pod {} is the learner's, but Pod is not accepted",
                    p.name
                )));
            }
            if p.learner && (p.service_account.is_some() || p.automount.is_some()) {
                return Err(bad(format!(
                    "pod {}: the learner's Pod says its own service account and automount",
                    p.name
                )));
            }
            if (p.program == Program::Exercise) != (self.kind == Kind::Rust && !p.learner) {
                return Err(bad(format!(
                    "pod {}: Rust exercises run the learner's program in Pods check makes; \
                     other Pods run the probe",
                    p.name
                )));
            }
        }
        for r in &self.rows {
            if r.observations() != 1 {
                return Err(bad(format!(
                    "row {} must observe exactly one of request, whoami, file, claim, report, fact, \
                     audit",
                    r.id
                )));
            }
            if let Some(a) = &r.audit {
                if r.pod.is_some() || a.level().is_none() {
                    return Err(bad(format!(
                        "row {}: an audit row names no pod, and at_least is low, medium, high \
                         or critical",
                        r.id
                    )));
                }
                continue;
            }
            let Some(pod) = self.pod_of(r) else {
                return Err(bad(format!("row {} names no pod of the exercise", r.id)));
            };
            let of_program = matches!(r.observe(), Observe::Report(_) | Observe::Fact(_));
            if of_program != (pod.program == Program::Exercise) {
                return Err(bad(format!(
                    "row {}: report and fact rows come from the learner's program, the others \
                     from the probe",
                    r.id
                )));
            }
            if let Some(q) = &r.request
                && q.token.is_some()
                && !matches!(q.verb.as_str(), "get" | "list")
            {
                return Err(bad(format!(
                    "row {}: requests with a token file are reads",
                    r.id
                )));
            }
        }
        if self.kind == Kind::Rust && !ex.files.iter().any(|f| f.path == "Cargo.toml") {
            return Err(bad("a Rust exercise has a Cargo.toml".into()));
        }
        let ids = self.row_ids();
        for id in &self.starter_fails {
            if !ids.contains(id) {
                return Err(bad(format!("starter_fails names {id}, which is not a row")));
            }
        }
        self.tables(file)?;
        Ok(())
    }

    /// The rows as the README shows them: what is checked, as whom, and
    /// what it must be.
    pub fn rows_markdown(&self) -> String {
        let mut out = String::from("| check | as | must be |\n|---|---|---|\n");
        for r in &self.rows {
            let who = match self.pod_of(r) {
                Some(p) => p.subject(),
                None => "`sa-lab audit`".into(),
            };
            out.push_str(&format!(
                "| {} | {who} | {} |\n",
                r.check,
                oracle::cell(&r.expect)
            ));
        }
        if self.least_privilege.is_some() {
            for (_, check) in LEAST_PRIVILEGE_ROWS {
                out.push_str(&format!(
                    "| {check} | your files | {} |\n",
                    oracle::cell(NONE_FOUND)
                ));
            }
        }
        out
    }
}

/// Where the README's generated table starts and ends.
pub const README_BEGIN: &str = "<!-- BEGIN rows: generated from exercise.yaml by `UPDATE_EXPECTED=1 cargo test -p sa-lab --lib exercises` -->";
/// See [`README_BEGIN`].
pub const README_END: &str = "<!-- END rows -->";

/// `readme` with its generated table replaced by `table`, or `None` if
/// it has no markers.
pub fn with_rows(readme: &str, table: &str) -> Option<String> {
    let (head, rest) = readme.split_once(README_BEGIN)?;
    let (_, tail) = rest.split_once(README_END)?;
    Some(format!("{head}{README_BEGIN}\n{table}{README_END}{tail}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::exercises::catalog;

    #[test]
    fn every_definition_is_valid() {
        for ex in catalog() {
            ex.def()
                .unwrap_or_else(|e| panic!("{}", crate::ui::error_chain(&e)));
        }
    }

    #[test]
    fn readmes_show_the_rows_of_their_definition() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for ex in catalog() {
            let def = ex.def().unwrap();
            if def.kind == Kind::Predict {
                continue;
            }
            let path = root.join(ex.source_dir()).join("README.md");
            let have = std::fs::read_to_string(&path).unwrap();
            let want = with_rows(&have, &def.rows_markdown()).unwrap_or_else(|| {
                panic!("{}: no {README_BEGIN} ... {README_END}", path.display())
            });
            crate::chapters::oracle::assert_generated(&path, &want, UPDATE);
        }
    }

    /// How the generated files of the exercises are rewritten.
    pub(crate) const UPDATE: &str = "UPDATE_EXPECTED=1 cargo test -p sa-lab --lib exercises";

    fn def(yaml: &str) -> Definition {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn rows_become_checked_tables() {
        let d = def(r#"
title: t
kind: write
namespaces: [shop]
accepts: [Role]
least_privilege: {subject: reporter}
pods: [{name: p, service_account: reporter}]
rows:
- {id: a, check: list pods, request: {verb: list, resource: pods}, expect: allowed}
- {id: b, check: list secrets, request: {verb: list, resource: secrets}, expect: forbidden, twin: a}
- {id: c, check: who, whoami: true, expect: "system:serviceaccount:shop:reporter"}
hints: [x, y]
starter_fails: [a]
"#);
        let t = d.tables("f").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].authorizer && t[0].rows.len() == 2);
        assert_eq!(t[1].rows.len(), 1 + LEAST_PRIVILEGE_ROWS.len());
        let asks = d.asks(&d.pods[0]);
        assert_eq!(asks.len(), 3);
        let ask::What::Request { request, .. } = &asks[0].what else {
            panic!("{asks:?}")
        };
        assert_eq!(request.namespace, "shop");
        let md = d.rows_markdown();
        assert!(
            md.contains("| list secrets | reporter | ✗ forbidden |"),
            "{md}"
        );

        // A refusal without a twin is refused, by the oracle's rule.
        let mut no_twin = d.clone();
        no_twin.rows[1].twin = None;
        let e = no_twin.tables("f").unwrap_err().to_string();
        assert!(
            e.contains("b is expected forbidden but names no allowed twin"),
            "{e}"
        );
    }

    #[test]
    fn audit_rows_and_request_bodies() {
        const YAML: &str = r#"
title: t
kind: find
namespaces: [shop]
accepts: [ServiceAccount, Role, RoleBinding]
pods: [{name: p, service_account: broker}]
rows:
- id: mint
  check: mint a token for worker
  request:
    verb: create
    resource: serviceaccounts
    subresource: token
    name: worker
    body: {apiVersion: authentication.k8s.io/v1, kind: TokenRequest, spec: {}}
  expect: allowed
- {id: clean, check: findings, audit: {at_least: high}, expect: none}
hints: [x, y]
starter_fails: [clean]
"#;
        let ex = Exercise {
            id: "03-test",
            chapter: "03-rolebinding",
            definition: YAML,
            readme: "",
            files: &[],
        };
        let d = ex.def().unwrap();
        assert_eq!(
            d.rows[1].audit.as_ref().unwrap().level(),
            Some(Severity::High)
        );
        assert!(d.pod_of(&d.rows[1]).is_none());
        // Only the request goes to the Pod, with its body.
        let asks = d.asks(&d.pods[0]);
        assert_eq!(asks.len(), 1);
        let ask::What::Request { request, .. } = &asks[0].what else {
            panic!("{asks:?}")
        };
        assert_eq!(request.body.as_ref().unwrap()["kind"], "TokenRequest");
        assert_eq!(
            request.probe("mint", "p").path(),
            "/api/v1/namespaces/shop/serviceaccounts/worker/token?dryRun=All"
        );
        assert!(
            d.rows_markdown()
                .contains("| findings | `sa-lab audit` | `none` |")
        );

        let bad = |from: &str, to: &str| Exercise {
            definition: Box::leak(YAML.replace(from, to).into_boxed_str()),
            ..ex
        };
        let e = bad("at_least: high", "at_least: severe").def().unwrap_err();
        assert!(e.to_string().contains("at_least is low, medium"), "{e}");
        let e = bad("audit: {", "pod: p, audit: {").def().unwrap_err();
        assert!(e.to_string().contains("an audit row names no pod"), "{e}");
    }

    #[test]
    fn generated_readme_section_is_replaced() {
        let readme = format!("# T\n\ntext\n\n{README_BEGIN}\nold\n{README_END}\n\nafter\n");
        let new = with_rows(&readme, "| new |\n").unwrap();
        assert_eq!(
            new,
            format!("# T\n\ntext\n\n{README_BEGIN}\n| new |\n{README_END}\n\nafter\n")
        );
        assert!(with_rows("no markers", "x").is_none());
    }
}
