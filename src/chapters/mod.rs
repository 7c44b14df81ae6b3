//! The chapter catalog and runner.
//!
//! `run_chapter` applies a chapter's manifests (server-side apply, field
//! manager `sa-lab`), runs its lab Pod(s), reads each lab's report from the
//! container's termination message, runs the chapter's cluster-side checks
//! and compares every row with the chapter's expected table (the oracle,
//! from CURRICULUM.md; `labs/NN-slug/expected.md` is generated from it).

mod expected;
mod kube_ops;
mod labs;
mod manifests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use expected::{Expect, ExpectedRow, ExpectedTable, expected_markdown, expected_tables};
pub use manifests::{Manifest, manifests, parse_manifest};

/// One chapter of the course.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chapter {
    /// 1, 2, ...
    pub number: u8,
    /// `03-rolebinding`: the lab directory, package suffix and book page.
    pub slug: &'static str,
    /// Human title.
    pub title: &'static str,
}

impl Chapter {
    /// `lab-03-rolebinding`: the lab binary (and container command).
    pub fn lab_binary(&self) -> String {
        format!("lab-{}", self.slug)
    }

    /// The slug without its number: `rolebinding`.
    pub fn short_slug(&self) -> &'static str {
        self.slug
            .split_once('-')
            .map(|(_, s)| s)
            .unwrap_or(self.slug)
    }
}

static CATALOG: [Chapter; 5] = [
    Chapter {
        number: 1,
        slug: "01-identity",
        title: "Why Pods need their own identity",
    },
    Chapter {
        number: 2,
        slug: "02-token-mount",
        title: "How the credential gets into the Pod",
    },
    Chapter {
        number: 3,
        slug: "03-rolebinding",
        title: "Binding permissions",
    },
    Chapter {
        number: 4,
        slug: "04-default-sa",
        title: "Why default must stay unprivileged",
    },
    Chapter {
        number: 5,
        slug: "05-automount",
        title: "Disabling automount",
    },
];

/// Every chapter, in order.
pub fn catalog() -> &'static [Chapter] {
    &CATALOG
}

/// No chapter matches the query.
#[derive(Debug, thiserror::Error)]
#[error("unknown chapter {query:?}; the chapters are: {available}")]
pub struct UnknownChapter {
    /// What was asked for.
    pub query: String,
    /// The real chapters, `1 (01-identity), 2 (02-token-mount), ...`.
    pub available: String,
}

/// Find a chapter by number (`3`, `03`), slug (`03-rolebinding`) or slug
/// without number (`rolebinding`).
pub fn find(query: &str) -> Result<&'static Chapter, UnknownChapter> {
    let q = query.trim().to_ascii_lowercase();
    let by_number = q.parse::<u8>().ok();
    catalog()
        .iter()
        .find(|c| Some(c.number) == by_number || c.slug == q || c.short_slug() == q)
        .ok_or_else(|| UnknownChapter {
            query: query.to_string(),
            available: catalog()
                .iter()
                .map(|c| format!("{} ({})", c.number, c.slug))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// How to run a chapter.
#[derive(Clone)]
pub struct RunOptions {
    /// The lab image the Pods run (manifests name `sa-lab-labs:0.1.0`; a
    /// different value replaces it).
    pub image: String,
    /// How long to wait for each batch of lab Pods to finish.
    pub timeout: Duration,
    /// The admin connection's config. Only used to send requests with other
    /// tokens (chapter 2: a token whose Pod was deleted). Without it the
    /// runner asks the authenticator with a TokenReview instead.
    pub config: Option<kube::Config>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            image: crate::LAB_IMAGE.to_string(),
            timeout: Duration::from_secs(90),
            config: None,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("image", &self.image)
            .field("timeout", &self.timeout)
            .field(
                "config",
                &self.config.as_ref().map(|c| c.cluster_url.to_string()),
            )
            .finish()
    }
}

/// One checked row: what was asked, what was expected, what happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Stable id, as in the expected table (`after.list-pods`).
    pub id: String,
    /// What the row checks, in words.
    pub check: String,
    /// Who made the request (`pod-manager`, `default`, `admin`...).
    pub subject: String,
    /// RBAC verb ("" if the row is not an API request).
    pub verb: String,
    /// API group ("" = core).
    pub group: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The expected value (`allowed`, `forbidden`, a username...).
    pub expected: String,
    /// What happened.
    pub actual: String,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// The server's message (or what was observed).
    pub message: String,
    /// What the authorizer (SelfSubjectAccessReview) said for the same
    /// attributes, where asked; it must agree with `actual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<String>,
    /// `actual == expected` (and the authorizer agrees).
    pub pass: bool,
}

/// The outcome of running one chapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChapterResult {
    /// Chapter number.
    pub number: u8,
    /// Chapter slug.
    pub slug: String,
    /// Chapter title.
    pub title: String,
    /// Every checked row, in expected-table order.
    pub rows: Vec<Row>,
}

impl ChapterResult {
    /// True when there are rows and every row passed.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    /// The row with this id.
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// The rows that failed.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| !r.pass).collect()
    }
}

/// Run `chapter` against the cluster `client` (an admin) talks to.
pub async fn run_chapter(
    client: &kube::Client,
    chapter: &Chapter,
    opts: &RunOptions,
) -> anyhow::Result<ChapterResult> {
    let observed = labs::run(client, chapter, opts).await?;
    Ok(expected::compare(chapter, observed))
}

/// The result as a table: one row per check, expected next to actual.
pub fn render_table(result: &ChapterResult) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["", "check", "as", "expected", "actual", "status", "message"]);
    for r in &result.rows {
        let mut actual = r.actual.clone();
        if let Some(a) = &r.authorizer {
            if a != &r.actual {
                actual = format!("{actual} (authorizer: {a})");
            }
        }
        t.add_row([
            if r.pass { "✓" } else { "✗" }.to_string(),
            r.check.clone(),
            r.subject.clone(),
            r.expected.clone(),
            actual,
            r.status.map(|s| s.to_string()).unwrap_or_default(),
            lab_kit::truncate(&r.message, 70),
        ]);
    }
    let passed = result.rows.iter().filter(|r| r.pass).count();
    format!(
        "Chapter {}: {}\n{t}\n{passed}/{} rows as expected{}\n",
        result.number,
        result.title,
        result.rows.len(),
        if result.passed() { "" } else { " — MISMATCH" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_by_number_and_slug() {
        for q in ["3", "03", "03-rolebinding", "rolebinding", " RoleBinding "] {
            assert_eq!(find(q).unwrap().number, 3, "{q}");
        }
        assert_eq!(find("1").unwrap().slug, "01-identity");
        assert_eq!(find("default-sa").unwrap().number, 4);
        let err = find("9").unwrap_err().to_string();
        assert!(err.contains("unknown chapter \"9\""), "{err}");
        assert!(
            err.contains("1 (01-identity)") && err.contains("5 (05-automount)"),
            "{err}"
        );
    }

    #[test]
    fn catalog_matches_labs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for c in catalog() {
            let dir = root.join("labs").join(c.slug);
            assert!(dir.join("Cargo.toml").exists(), "{}", dir.display());
            let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(cargo.contains(&format!("name = \"{}\"", c.lab_binary())));
        }
    }
}
