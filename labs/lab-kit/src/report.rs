//! The report a lab writes to its termination message, and the table it
//! prints.
//!
//! The report is compact JSON under 4 KiB (the kubelet's limit for a
//! termination message) and never contains a full token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::probe::Outcome;

/// The most a termination message may hold.
pub const MAX_REPORT_BYTES: usize = 4096;
/// The line of the lab's log that carries the whole report (no message
/// cut): the runner reads it from the Pod's log, and falls back to the
/// termination message, which must fit 4 KiB.
pub const REPORT_LINE_PREFIX: &str = "sa-lab-report: ";
/// We stay a little under it.
const BUDGET: usize = 4000;

/// One probe and how the API server answered it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbeRow {
    /// Stable id (`list-pods`, `raw-get-pods`...).
    pub id: String,
    /// RBAC verb.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
    /// API group ("" = core).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Subresource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Namespace ("" = cluster scope).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What happened.
    pub actual: Outcome,
    /// HTTP status, if there was an HTTP answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The server's message (truncated), or the client error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What a SelfSubjectAccessReview for the same attributes said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<Outcome>,
    /// The response's `Audit-Id` header: the API server's audit log has
    /// this request under that id, with the authorizer's decision and
    /// reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
}

impl ProbeRow {
    /// A row for a request sent by hand (not through a kube client): `verb`
    /// on `resource` in `namespace`, classified by its HTTP status.
    pub fn http(
        id: &str,
        verb: &str,
        resource: &str,
        namespace: &str,
        status: u16,
        message: &str,
    ) -> ProbeRow {
        ProbeRow {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            ..ProbeRow::simple(
                id,
                Outcome::from_status(status),
                Some(status),
                message,
            )
        }
    }

    /// A row that is not a resource request (a file check, a raw GET...).
    pub fn simple(
        id: &str,
        actual: Outcome,
        status: Option<u16>,
        message: &str,
    ) -> ProbeRow {
        ProbeRow {
            id: id.into(),
            verb: String::new(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            actual,
            status,
            message: message.into(),
            authorizer: None,
            audit_id: None,
        }
    }

    /// The same row, naming the request's `Audit-Id`.
    pub fn audited(self, audit_id: Option<String>) -> ProbeRow {
        ProbeRow { audit_id, ..self }
    }
}

/// What one lab run found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Chapter number, two digits (`"03"`).
    pub chapter: String,
    /// The lab binary (`lab-03-rolebinding`).
    pub lab: String,
    /// The Pod the lab ran in, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A phase the Pod spec asked for (`before`, `after`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Who the API server says we are (SelfSubjectReview), if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The probes.
    #[serde(default)]
    pub rows: Vec<ProbeRow>,
    /// Observations that are not API calls (files, claims...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// An empty report for `lab` in chapter `chapter`; pod and phase come
    /// from `POD_NAME`/`HOSTNAME` and `SA_LAB_PHASE`.
    pub fn new(chapter: &str, lab: &str) -> Report {
        Report {
            chapter: chapter.into(),
            lab: lab.into(),
            pod: crate::pod_name(),
            phase: std::env::var("SA_LAB_PHASE").ok().filter(|p| !p.is_empty()),
            ..Report::default()
        }
    }

    /// Record a fact.
    pub fn fact(&mut self, key: &str, value: impl Serialize) {
        let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.facts.insert(key.into(), v);
    }

    /// The row with this id.
    pub fn row(&self, id: &str) -> Option<&ProbeRow> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Compact JSON that fits a termination message: messages are shortened
    /// until it is under 4 KiB.
    pub fn to_compact_json(&self) -> String {
        let mut r = self.clone();
        for max in [200, 120, 60, 0] {
            for row in &mut r.rows {
                row.message = crate::truncate(&row.message, max);
            }
            for v in r.facts.values_mut() {
                if let serde_json::Value::String(s) = v {
                    *s = crate::truncate(s, max.max(80));
                }
            }
            let s = serde_json::to_string(&r).unwrap_or_default();
            if s.len() <= BUDGET {
                return s;
            }
        }
        r.identity = r.identity.map(|i| Identity {
            extra: Default::default(),
            ..i
        });
        r.facts.clear();
        r.facts.insert("truncated".into(), true.into());
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// Write the report to the termination message path. Failing to write
    /// is reported on stderr, not fatal (the table is still printed).
    pub fn write_termination_message(&self) {
        let path = crate::termination_log_path();
        if let Err(e) = std::fs::write(&path, self.to_compact_json()) {
            eprintln!("warning: cannot write {}: {e}", path.display());
        }
    }

    /// A readable table of the probes.
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(["probe", "request", "result", "status", "message"]);
        for r in &self.rows {
            let result = match r.authorizer {
                Some(a) if a != r.actual => {
                    format!("{} (authorizer: {a})", r.actual)
                }
                _ => r.actual.to_string(),
            };
            t.add_row([
                r.id.clone(),
                describe(r),
                result,
                r.status.map(|s| s.to_string()).unwrap_or_default(),
                crate::truncate(&r.message, 60),
            ]);
        }
        t.to_string()
    }

    /// The whole report on one line of the log, [`REPORT_LINE_PREFIX`]
    /// first.
    pub fn report_line(&self) -> String {
        format!(
            "{REPORT_LINE_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Print identity, facts and the table on stdout, then the whole report
    /// on its own line, then write the termination message.
    pub fn finish(&self) {
        if let Some(pod) = &self.pod {
            println!("pod: {pod}");
        }
        if let Some(id) = &self.identity {
            println!("identity: {}", id.username);
            println!("groups: {}", id.groups.join(", "));
        }
        for (k, v) in &self.facts {
            println!("{k}: {v}");
        }
        if !self.rows.is_empty() {
            println!("{}", self.table());
        }
        println!("{}", self.report_line());
        self.write_termination_message();
    }
}

/// `list pods -n production`, `get pods/log x -n production`.
pub fn describe(r: &ProbeRow) -> String {
    if r.verb.is_empty() {
        return String::new();
    }
    let mut res = r.resource.clone();
    if !r.group.is_empty() {
        res = format!("{res}.{}", r.group);
    }
    if !r.subresource.is_empty() {
        res = format!("{res}/{}", r.subresource);
    }
    let mut s = format!("{} {res}", r.verb);
    if !r.name.is_empty() {
        s = format!("{s} {}", r.name);
    }
    if !r.namespace.is_empty() {
        s = format!("{s} -n {}", r.namespace);
    }
    s
}

/// Read a report back from a termination message.
pub fn parse(message: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(message)
}

/// The report in a lab's log (its last [`REPORT_LINE_PREFIX`] line), if
/// there is one.
pub fn from_log(log: &str) -> Option<Report> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(REPORT_LINE_PREFIX))
        .and_then(|json| serde_json::from_str(json).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_4k() {
        let mut r = Report::new("03", "lab-03-rolebinding");
        for i in 0..20 {
            r.rows.push(ProbeRow::simple(
                &format!("probe-{i}"),
                Outcome::Forbidden,
                Some(403),
                &"pods is forbidden: User cannot list ".repeat(20),
            ));
        }
        r.fact("long", "x".repeat(3000));
        let s = r.to_compact_json();
        assert!(s.len() <= MAX_REPORT_BYTES, "{}", s.len());
        let back = parse(&s).unwrap();
        assert_eq!(back.rows.len(), 20);
    }

    #[test]
    fn the_log_line_keeps_every_message_whole() {
        let mut r = Report::new("03", "lab-03-rolebinding");
        let long = "is attempting to grant RBAC permissions not currently held: "
            .repeat(40);
        r.rows.push(
            ProbeRow::simple("bind-edit", Outcome::Forbidden, Some(403), &long)
                .audited(Some("3f0e-aa".into())),
        );
        let log = format!("a table\n{}\n", r.report_line());
        let back = from_log(&log).unwrap();
        assert_eq!(back.rows[0].message, long);
        assert_eq!(back.rows[0].audit_id.as_deref(), Some("3f0e-aa"));
        assert!(from_log("no report here").is_none());
        // The termination message still fits.
        assert!(r.to_compact_json().len() <= MAX_REPORT_BYTES);
    }

    #[test]
    fn roundtrip_and_table() {
        let mut r = Report::new("01", "lab-01-identity");
        r.rows.push(ProbeRow {
            verb: "list".into(),
            resource: "pods".into(),
            namespace: "production".into(),
            ..ProbeRow::simple("list-pods", Outcome::Allowed, Some(200), "PodList")
        });
        let s = r.to_compact_json();
        assert!(s.contains(r#""actual":"allowed""#));
        assert!(!s.contains("subresource"));
        assert_eq!(parse(&s).unwrap(), r);
        let t = r.table();
        assert!(t.contains("list pods -n production"), "{t}");
    }
}
