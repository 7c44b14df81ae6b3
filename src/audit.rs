//! The API server's audit log, read to say *why* a request was allowed:
//! every response carries an `Audit-Id` header, and the event under that id
//! carries the authorizer's decision and reason
//! (`authorization.k8s.io/decision`, `authorization.k8s.io/reason`, e.g.
//! `RBAC: allowed by RoleBinding "pod-manager-binding/production" of Role
//! "pod-editor" to ServiceAccount "pod-manager/production"`).
//!
//! The local provider runs kube-apiserver with [`POLICY`]: Metadata level
//! (who did what to which object, and the decision; never a request or
//! response body, so no token or Secret lands in the log), health checks,
//! Leases and watches left out, the file rotated and bounded in size.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The audit policy of the local provider (and, through
/// `scripts/kind-up.sh`, of kind clusters).
pub const POLICY: &str = include_str!("audit-policy.yaml");

/// Where a local cluster keeps its audit policy, in its state directory.
pub fn policy_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("audit-policy.yaml")
}

/// Where a local cluster's API server writes its audit log.
pub fn log_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("logs").join("audit.log")
}

/// Write the policy, and an empty log (both 0600: the API server keeps the
/// mode of an existing file, and its rotated files take the same).
pub fn prepare(cluster_dir: &Path) -> Result<(), crate::pki::Error> {
    crate::pki::write_private(&policy_path(cluster_dir), POLICY.as_bytes())?;
    let log = log_path(cluster_dir);
    if !log.exists() {
        crate::pki::write_private(&log, b"")?;
    }
    Ok(())
}

/// The API server's audit flags: JSON lines, written before the response
/// completes (blocking), rotated at 20 MB with two backups kept for a day
/// at most.
pub fn apiserver_flags(cluster_dir: &Path) -> Vec<String> {
    vec![
        format!("--audit-policy-file={}", policy_path(cluster_dir).display()),
        format!("--audit-log-path={}", log_path(cluster_dir).display()),
        "--audit-log-format=json".into(),
        "--audit-log-mode=blocking".into(),
        "--audit-log-maxsize=20".into(),
        "--audit-log-maxbackup=2".into(),
        "--audit-log-maxage=1".into(),
    ]
}

/// One audit event, the fields sa-lab reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The request's id (the response's `Audit-Id` header).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// `ResponseComplete`, `Panic`, ...
    #[serde(default)]
    pub stage: String,
    /// The API verb (`get`, `list`, `create`...).
    #[serde(default)]
    pub verb: String,
    /// The request path.
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
    /// Who made it.
    #[serde(default)]
    pub user: User,
    /// What it was about.
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    /// The answer's status.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    /// When the request arrived.
    #[serde(default)]
    pub request_received_timestamp: String,
    /// Annotations: the authorizer's decision and reason among them.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The user of an event.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct User {
    /// `system:serviceaccount:production:pod-manager`...
    #[serde(default)]
    pub username: String,
}

/// The object of an event.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Resource.
    #[serde(default)]
    pub resource: String,
    /// Subresource.
    #[serde(default)]
    pub subresource: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// API group ("" = core).
    #[serde(default)]
    pub api_group: String,
}

/// The status of an event's response.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

/// Why the API server answered as it did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    /// `allow` or `forbid`; none when the request never reached the
    /// authorizer (a 401 is decided by authentication).
    pub decision: Option<String>,
    /// The authorizer's reason, in full.
    pub reason: Option<String>,
}

impl Event {
    /// The authorizer's decision and reason, if it was asked.
    pub fn explanation(&self) -> Explanation {
        Explanation {
            decision: self
                .annotations
                .get("authorization.k8s.io/decision")
                .cloned(),
            reason: self.annotations.get("authorization.k8s.io/reason").cloned(),
        }
    }

    /// The HTTP status code of the response (0 if none was recorded).
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }
}

impl Explanation {
    /// A short form for a table cell: `via RoleBinding x, Role y`,
    /// `before authorization (401)`, `no rule allows it` for a refusal.
    pub fn short(&self, code: u16) -> String {
        if self.decision.is_none() && code == 401 {
            return "before authorization (401)".into();
        }
        let reason = self.reason.as_deref().unwrap_or_default();
        if let Some(rest) = reason.strip_prefix("RBAC: allowed by ") {
            let via = short_binding(rest);
            if code >= 400 {
                // Authorized, then refused by what comes after (admission,
                // RBAC's escalation check).
                return format!("authorized via {via}; refused after");
            }
            return format!("via {via}");
        }
        match self.decision.as_deref() {
            Some("forbid") if reason.is_empty() => "no rule allows it".into(),
            Some("forbid") => format!("refused: {reason}"),
            Some("allow") if reason.is_empty() => "allowed".into(),
            Some("allow") => reason.to_string(),
            _ => "not in the audit log".into(),
        }
    }
}

/// `RoleBinding "a/ns" of Role "r" to ServiceAccount "s/ns"` →
/// `RoleBinding a, Role r`.
fn short_binding(rbac: &str) -> String {
    let quoted: Vec<&str> = rbac.split('"').collect();
    // [kind, "name/ns", " of Kind ", "role", " to Kind ", "subject", ...]
    if quoted.len() >= 4 {
        let binding_kind = quoted[0].trim();
        let binding = quoted[1].split('/').next().unwrap_or(quoted[1]);
        let role_kind = quoted[2].trim().trim_start_matches("of ").trim();
        return format!("{binding_kind} {binding}, {role_kind} {}", quoted[3]);
    }
    rbac.to_string()
}

/// Why the audit log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading the audit log {}", path.display())]
    Read {
        /// The log.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// A local cluster's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    /// The current log file (rotated files sit beside it).
    pub path: PathBuf,
}

impl AuditLog {
    /// The audit log of the local cluster whose state is in `cluster_dir`.
    pub fn of_cluster(cluster_dir: &Path) -> AuditLog {
        AuditLog {
            path: log_path(cluster_dir),
        }
    }

    /// The audit log kept in `cluster_dir`, if there is one (a kind
    /// cluster made before kind-up kept one has none).
    pub fn kept_in(cluster_dir: &Path) -> Option<AuditLog> {
        log_path(cluster_dir)
            .is_file()
            .then(|| AuditLog::of_cluster(cluster_dir))
    }

    /// Every event in the current file (lines that are not events are
    /// skipped).
    pub fn events(&self) -> Result<Vec<Event>, Error> {
        let file = std::fs::File::open(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        Ok(std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect())
    }

    /// The events with these ids, waiting (up to `timeout`) for any not
    /// written yet: the API server writes an event as the response
    /// completes, which may be just after the client has the answer.
    pub async fn find(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, Event>, Error> {
        let mut found = BTreeMap::new();
        let mut offset = 0u64;
        let deadline = tokio::time::Instant::now() + timeout;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut watch = crate::sys::DirWatch::new(&dir).ok();
        loop {
            offset = self.read_from(offset, ids, &mut found)?;
            if ids.iter().all(|id| found.contains_key(id)) {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(found);
            }
            match watch.as_mut() {
                Some(w) => {
                    let _ = tokio::time::timeout(left, w.changed()).await;
                }
                // No inotify: look again shortly (bounded by the deadline).
                None => tokio::time::sleep(left.min(Duration::from_millis(50))).await,
            }
        }
    }

    /// Reads events after `offset` into `found` (those whose id is in
    /// `ids`); returns the new offset. A file shorter than `offset` was
    /// rotated: start again from its beginning.
    fn read_from(
        &self,
        offset: u64,
        ids: &[String],
        found: &mut BTreeMap<String, Event>,
    ) -> Result<u64, Error> {
        let err = |source| Error::Read {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&self.path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let start = if len < offset { 0 } else { offset };
        file.seek(std::io::SeekFrom::Start(start)).map_err(err)?;
        let mut reader = std::io::BufReader::new(file);
        let mut pos = start;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(err)?;
            if n == 0 || !line.ends_with('\n') {
                // Keep a partial last line for the next read.
                return Ok(pos);
            }
            pos += n as u64;
            if let Ok(ev) = serde_json::from_str::<Event>(&line)
                && ids.contains(&ev.audit_id)
                && ev.stage != "RequestReceived"
            {
                found.insert(ev.audit_id.clone(), ev);
            }
        }
    }
}

/// One call of a trace: what a ServiceAccount did and why it got its answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Call {
    /// When the API server received it (RFC 3339).
    pub time: String,
    /// The verb.
    pub verb: String,
    /// `pods`, `pods/log`, `deployments.apps`, or the path of a
    /// non-resource request.
    pub resource: String,
    /// `namespace/name` (either may be empty).
    pub object: String,
    /// The HTTP status code.
    pub code: u16,
    /// The authorizer's decision (`allow`, `forbid`), if it was asked.
    pub decision: Option<String>,
    /// The authorizer's reason, in full.
    pub reason: Option<String>,
}

impl Call {
    /// The call an event records.
    pub fn of(ev: &Event) -> Call {
        let (resource, object) = match &ev.object_ref {
            Some(o) => {
                let mut r = o.resource.clone();
                if !o.api_group.is_empty() {
                    r = format!("{r}.{}", o.api_group);
                }
                if !o.subresource.is_empty() {
                    r = format!("{r}/{}", o.subresource);
                }
                let object = match (o.namespace.is_empty(), o.name.is_empty()) {
                    (true, true) => String::new(),
                    (true, false) => o.name.clone(),
                    (false, true) => format!("{}/", o.namespace),
                    (false, false) => format!("{}/{}", o.namespace, o.name),
                };
                (r, object)
            }
            None => (ev.request_uri.clone(), String::new()),
        };
        let x = ev.explanation();
        Call {
            time: ev.request_received_timestamp.clone(),
            verb: ev.verb.clone(),
            resource,
            object,
            code: ev.code(),
            decision: x.decision,
            reason: x.reason,
        }
    }
}

/// `namespace:name` (or `system:serviceaccount:namespace:name`) as the
/// user name the API server gives that ServiceAccount.
pub fn service_account_user(spec: &str) -> Option<String> {
    let spec = spec.strip_prefix("system:serviceaccount:").unwrap_or(spec);
    let (ns, name) = spec.split_once(':')?;
    let ok = |s: &str| !s.is_empty() && !s.contains(':');
    (ok(ns) && ok(name)).then(|| format!("system:serviceaccount:{ns}:{name}"))
}

/// The calls `user` made, in the order the log has them.
pub fn calls_of(events: &[Event], user: &str) -> Vec<Call> {
    events
        .iter()
        .filter(|e| e.user.username == user && e.stage != "RequestReceived")
        .map(Call::of)
        .collect()
}

/// Calls as a table that fits `width`, full reasons below it.
pub fn render_calls(calls: &[Call], width: u16) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(width)
        .set_header([
            "#",
            "time",
            "verb",
            "resource",
            "namespace/name",
            "code",
            "why",
        ]);
    for (i, c) in calls.iter().enumerate() {
        let x = Explanation {
            decision: c.decision.clone(),
            reason: c.reason.clone(),
        };
        let time = c.time.get(11..19).unwrap_or(&c.time).to_string();
        t.add_row([
            (i + 1).to_string(),
            time,
            c.verb.clone(),
            c.resource.clone(),
            c.object.clone(),
            c.code.to_string(),
            x.short(c.code),
        ]);
    }
    let mut out = format!("{t}\n");
    for (i, c) in calls.iter().enumerate() {
        if let Some(r) = c.reason.as_deref().filter(|r| !r.is_empty()) {
            let label = format!("{:>3}. ", i + 1);
            out.push_str(&crate::chapters::render::wrap(
                &label,
                r,
                usize::from(width),
            ));
        }
    }
    out
}

impl AuditLog {
    /// Follow the log: `each` sees every event written from now on (until
    /// it returns false), woken by changes in the log's directory.
    pub async fn follow(&self, mut each: impl FnMut(&Event) -> bool) -> Result<(), Error> {
        let err = |source| Error::Read {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut watch = crate::sys::DirWatch::new(&dir).map_err(err)?;
        let mut offset = std::fs::metadata(&self.path).map_err(err)?.len();
        loop {
            let mut file = std::fs::File::open(&self.path).map_err(err)?;
            let len = file.metadata().map_err(err)?.len();
            if len < offset {
                offset = 0; // rotated
            }
            file.seek(std::io::SeekFrom::Start(offset)).map_err(err)?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(err)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                offset += n as u64;
                if let Ok(ev) = serde_json::from_str::<Event>(&line)
                    && !each(&ev)
                {
                    return Ok(());
                }
            }
            watch.changed().await.map_err(err)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"6e2f-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/production/pods","verb":"list","user":{"username":"system:serviceaccount:production:pod-manager","groups":["system:serviceaccounts"]},"objectRef":{"resource":"pods","namespace":"production","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-11-30T10:00:00.000000Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by RoleBinding \"pod-manager-binding/production\" of Role \"pod-editor\" to ServiceAccount \"pod-manager/production\""}}"#;

    #[test]
    fn an_event_explains_itself() {
        let ev: Event = serde_json::from_str(EVENT).unwrap();
        assert_eq!(ev.audit_id, "6e2f-1");
        assert_eq!(ev.code(), 200);
        let x = ev.explanation();
        assert_eq!(x.decision.as_deref(), Some("allow"));
        assert_eq!(
            x.short(200),
            "via RoleBinding pod-manager-binding, Role pod-editor"
        );
        let crb = Explanation {
            decision: Some("allow".into()),
            reason: Some(
                "RBAC: allowed by ClusterRoleBinding \"oops\" of ClusterRole \"cluster-admin\" to Group \"system:serviceaccounts\"".into(),
            ),
        };
        assert_eq!(
            crb.short(200),
            "via ClusterRoleBinding oops, ClusterRole cluster-admin"
        );
        assert_eq!(
            Explanation::default().short(401),
            "before authorization (401)"
        );
        assert_eq!(
            x.short(403),
            "authorized via RoleBinding pod-manager-binding, Role pod-editor; refused after"
        );
        let no = Explanation {
            decision: Some("forbid".into()),
            reason: Some(String::new()),
        };
        assert_eq!(no.short(403), "no rule allows it");
    }

    #[tokio::test]
    async fn find_waits_for_the_events_it_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::of_cluster(dir.path());
        std::fs::create_dir_all(log.path.parent().unwrap()).unwrap();
        std::fs::write(&log.path, "not json\n").unwrap();
        let path = log.path.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str(EVENT);
            text.push('\n');
            std::fs::write(&path, text).unwrap();
        });
        let ids = vec!["6e2f-1".to_string()];
        let found = log.find(&ids, Duration::from_secs(10)).await.unwrap();
        writer.await.unwrap();
        assert_eq!(found["6e2f-1"].verb, "list");
        // An id that never comes: the map lacks it once the time is up.
        let missing = vec!["nope".to_string()];
        let found = log
            .find(&missing, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn calls_of_a_service_account() {
        let ev: Event = serde_json::from_str(EVENT).unwrap();
        let user = service_account_user("production:pod-manager").unwrap();
        assert_eq!(user, "system:serviceaccount:production:pod-manager");
        let calls = calls_of(std::slice::from_ref(&ev), &user);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].resource, "pods");
        assert_eq!(calls[0].object, "production/");
        assert!(calls_of(&[ev], "system:serviceaccount:production:other").is_empty());
        assert_eq!(service_account_user("nope"), None);
        assert_eq!(service_account_user("a:b:c"), None);
        let table = render_calls(&calls, 80);
        assert!(table.contains("via RoleBinding"), "{table}");
        assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    }

    #[test]
    fn the_policy_never_logs_bodies() {
        assert!(POLICY.contains("level: Metadata"));
        assert!(!POLICY.contains("Request\n") && !POLICY.contains("RequestResponse"));
    }
}
