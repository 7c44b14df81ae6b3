//! The chapters and their runner.
//!
//! Everything about one chapter lives in its folder, `labs/NN-slug/`:
//!
//! | file | what it is |
//! |---|---|
//! | `src/main.rs` | the lab: the program that runs in the Pod, as its ServiceAccount |
//! | `manifests/*.yaml` | the exact YAML the book shows and the runner applies |
//! | `chapter.rs` | the chapter's definition: title, manifests (compiler-checked constants), and its *scenario*: what the runner does on the cluster and the rows it observes |
//! | `expected.yaml` | the oracle: every row's expected value and, for each refusal, its allowed twin |
//! | `expected.md` | generated from `expected.yaml`; the book includes it |
//! | `exercises/<id>/` | the chapter's exercises (see [`crate::exercises`]) |
//!
//! [`catalog`] has one line per chapter. The runner ([`run_chapter`]) runs
//! a chapter's scenario, then [`oracle::compare`]s every observed row with
//! the expected table; [`render`] prints the result to fit the terminal.

pub mod catalog;
pub mod kit;
pub mod oracle;
pub mod render;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use catalog::catalog;
pub use kit::{Error, RunContext};
pub use render::render_table;

/// What a chapter's scenario returns: the rows it observed.
pub type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, Error>> + Send + 'a>>;

/// A chapter's scenario: what the runner does on the cluster.
pub type Scenario = for<'a> fn(&'a RunContext) -> ScenarioFuture<'a>;

/// One chapter of the course, defined in `labs/NN-slug/chapter.rs`.
#[derive(Clone, Copy)]
pub struct Chapter {
    /// 1, 2, ...
    pub number: u8,
    /// `03-rolebinding`: the lab directory, package suffix and book page.
    pub slug: &'static str,
    /// Human title.
    pub title: &'static str,
    /// Every manifest in `manifests/`, in file order.
    pub manifests: &'static [kit::Manifest],
    /// `expected.yaml`, the oracle (parsed by [`oracle::tables`]).
    pub expected: &'static str,
    /// What the runner does on the cluster.
    pub scenario: Scenario,
    /// The chapter's exercises (`exercises/`), in order: see
    /// [`crate::exercises`].
    pub exercises: &'static [crate::exercises::Exercise],
}

impl std::fmt::Debug for Chapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chapter")
            .field("number", &self.number)
            .field("slug", &self.slug)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Chapter {
    fn eq(&self, other: &Self) -> bool {
        self.slug == other.slug
    }
}

impl Serialize for Chapter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Chapter", 3)?;
        st.serialize_field("number", &self.number)?;
        st.serialize_field("slug", &self.slug)?;
        st.serialize_field("title", &self.title)?;
        st.end()
    }
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
        .copied()
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
    /// The server's message (or what was observed), never cut.
    pub message: String,
    /// What the authorizer (SelfSubjectAccessReview) said for the same
    /// attributes, where asked; it must agree with `actual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<String>,
    /// For a refusal: the id of its allowed twin, the same call with one
    /// thing changed (the token, the binding, the namespace...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    /// The request's `Audit-Id`, where the lab recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
    /// The authorizer's decision for that request, from the audit log
    /// (`allow`, `forbid`); none if it never reached the authorizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The authorizer's reason, from the audit log: for an allowed call,
    /// the binding and role that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `actual == expected`, the authorizer agrees where it must be asked,
    /// and a refusal's twin was allowed.
    pub pass: bool,
    /// Why the row failed, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
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
}

/// Run `chapter` on the cluster `cx` reaches, and compare every row with
/// its expected table.
pub async fn run_chapter(cx: &RunContext, chapter: &Chapter) -> Result<ChapterResult, Error> {
    let in_chapter = |e: Error| Error::Chapter {
        slug: chapter.slug,
        source: Box::new(e),
    };
    cx.clean_slate().await.map_err(in_chapter)?;
    let mut observed = (chapter.scenario)(cx).await.map_err(in_chapter)?;
    cx.explain(&mut observed).await;
    oracle::compare(chapter, observed).map_err(|e| in_chapter(Error::Oracle(e)))
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
        let err = find("99").unwrap_err().to_string();
        assert!(err.contains("unknown chapter \"99\""), "{err}");
        assert!(
            err.contains("1 (01-identity)") && err.contains("5 (05-automount)"),
            "{err}"
        );
    }

    #[test]
    fn catalog_matches_labs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (i, c) in catalog().iter().enumerate() {
            assert_eq!(
                usize::from(c.number),
                i + 1,
                "chapters are numbered in order"
            );
            assert!(
                c.slug.starts_with(&format!("{:02}-", c.number)),
                "{}",
                c.slug
            );
            let dir = root.join("labs").join(c.slug);
            let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(cargo.contains(&format!("name = \"{}\"", c.lab_binary())));
            assert!(
                root.join(format!("book/src/{}.md", c.slug)).is_file(),
                "{}",
                c.slug
            );
        }
    }
}
