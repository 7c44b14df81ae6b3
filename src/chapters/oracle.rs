//! The oracle: each chapter's expected tables, kept beside the chapter in
//! `labs/NN-slug/expected.yaml` (a person reads and edits them there).
//!
//! The runner compares every observed row with them ([`compare`]), and
//! `labs/NN-slug/expected.md`, which the book includes, is generated from
//! them ([`markdown`]; a unit test keeps it fresh).
//!
//! The twin rule: every refusal names its allowed twin, the same call with
//! one thing changed (the token, the binding, the namespace, the
//! audience...), which is a row of the same chapter. A refused row passes
//! only if its twin was really allowed in the same run, so a cluster that
//! refuses everything (or allows everything) fails.

use serde::Deserialize;

use super::{Chapter, ChapterResult, Row};

/// A chapter's `expected.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oracle {
    /// The tables, in book order.
    pub tables: Vec<ExpectedTable>,
}

/// One expected table, as the book shows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedTable {
    /// Column headers: the descriptive columns, then one per expectation.
    pub columns: Vec<String>,
    /// The rows' outcomes must agree with the authorizer
    /// (SelfSubjectAccessReview), which the lab asks for each probe: a
    /// missing answer fails the row.
    #[serde(default)]
    pub authorizer: bool,
    /// The rows.
    pub rows: Vec<ExpectedRow>,
}

/// A table row: descriptive cells, then one expectation per phase column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRow {
    /// The leading cells (what is checked).
    pub cells: Vec<String>,
    /// One expectation per remaining column.
    pub expect: Vec<Expect>,
}

/// One expectation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The row id the runner produces.
    pub id: String,
    /// The value it must have (`allowed`, `forbidden`, a username...).
    pub value: String,
    /// For a refusal: the id of its allowed twin.
    #[serde(default)]
    pub twin: Option<String>,
}

/// Values that mean "the API server refused": each needs an allowed twin.
pub fn is_refusal(value: &str) -> bool {
    matches!(
        value,
        "forbidden" | "unauthorized" | "invalid" | "not authenticated"
    ) || value.starts_with("fails")
}

/// Values a twin may have: the call went through.
pub fn is_acceptance(value: &str) -> bool {
    matches!(value, "allowed" | "authenticated")
}

/// An expected table (a chapter's `expected.yaml`, an exercise's rows) is
/// not what the runner can use.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct OracleError {
    /// Where the table is written (`labs/03-rolebinding/expected.yaml`).
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

/// The expected tables of `chapter`, checked by [`validate`].
pub fn tables(chapter: &Chapter) -> Result<Vec<ExpectedTable>, OracleError> {
    let file = format!("labs/{}/expected.yaml", chapter.slug);
    let oracle: Oracle = serde_saphyr::from_str(chapter.expected).map_err(|e| OracleError {
        file: file.clone(),
        problem: format!("invalid YAML: {e}"),
    })?;
    validate(&file, oracle.tables)
}

/// Expected tables checked: unique ids, one expectation per phase column,
/// and every refusal names an acceptance of the same tables as its twin.
/// The chapters' oracles and the exercises' rows are checked alike.
pub fn validate(file: &str, tables: Vec<ExpectedTable>) -> Result<Vec<ExpectedTable>, OracleError> {
    let err = |problem: String| OracleError {
        file: file.into(),
        problem,
    };
    let oracle = Oracle { tables };
    let all: Vec<&Expect> = oracle
        .tables
        .iter()
        .flat_map(|t| &t.rows)
        .flat_map(|r| &r.expect)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for x in &all {
        if !seen.insert(x.id.as_str()) {
            return Err(err(format!("row id {} appears twice", x.id)));
        }
    }
    for t in &oracle.tables {
        for r in &t.rows {
            if r.cells.len() + r.expect.len() != t.columns.len() {
                return Err(err(format!(
                    "row {:?} has {} cells and {} expectations for {} columns",
                    r.cells,
                    r.cells.len(),
                    r.expect.len(),
                    t.columns.len()
                )));
            }
        }
    }
    for x in &all {
        match (&x.twin, is_refusal(&x.value)) {
            (None, true) => {
                return Err(err(format!(
                    "{} is expected {} but names no allowed twin",
                    x.id, x.value
                )));
            }
            (Some(twin), _) => {
                let Some(t) = all.iter().find(|y| &y.id == twin) else {
                    return Err(err(format!("{}'s twin {twin} is not a row", x.id)));
                };
                if !is_acceptance(&t.value) {
                    return Err(err(format!(
                        "{}'s twin {twin} is expected {}, not allowed",
                        x.id, t.value
                    )));
                }
            }
            (None, false) => {}
        }
    }
    Ok(oracle.tables)
}

/// Every row id of `chapter`'s tables, in table order.
pub fn ids(chapter: &Chapter) -> Result<Vec<String>, OracleError> {
    Ok(tables(chapter)?
        .iter()
        .flat_map(|t| &t.rows)
        .flat_map(|r| &r.expect)
        .map(|x| x.id.clone())
        .collect())
}

/// How a value reads in the book: refusals and acceptances marked so the
/// eye can scan a matrix, anything else as code.
pub fn cell(value: &str) -> String {
    if is_acceptance(value) {
        format!("✓ {value}")
    } else if is_refusal(value) {
        format!("✗ {value}")
    } else {
        format!("`{value}`")
    }
}

/// `labs/NN-slug/expected.md`: the expected tables as markdown.
pub fn markdown(chapter: &Chapter) -> Result<String, OracleError> {
    let mut out = format!(
        "<!-- Generated from labs/{}/expected.yaml (the runner's oracle); \
         `UPDATE_EXPECTED=1 cargo test -p sa-lab --lib oracle` rewrites it. -->\n",
        chapter.slug
    );
    for t in tables(chapter)? {
        out.push('\n');
        out.push_str(&format!("| {} |\n", t.columns.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(t.columns.len())));
        for r in &t.rows {
            let mut cells = r.cells.clone();
            cells.extend(r.expect.iter().map(|x| cell(&x.value)));
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    Ok(out)
}

/// Put the observed rows in expected-table order, with expected values,
/// twins and verdicts. An expected row that was not observed fails; so does
/// a row whose authorizer answer is missing or disagrees where the table
/// says the authorizer is asked, and a refusal whose twin was not allowed.
pub fn compare(chapter: &Chapter, observed: Vec<Row>) -> Result<ChapterResult, OracleError> {
    Ok(ChapterResult {
        number: chapter.number,
        slug: chapter.slug.into(),
        title: chapter.title.into(),
        rows: grade(&tables(chapter)?, observed),
    })
}

/// The verdicts of [`compare`] for any checked tables (see [`validate`]):
/// the observed rows in table order, each with its expected value, twin
/// and verdict.
pub fn grade(tables: &[ExpectedTable], observed: Vec<Row>) -> Vec<Row> {
    let mut rows = Vec::new();
    for t in tables {
        for r in &t.rows {
            for (i, x) in r.expect.iter().enumerate() {
                let check = check_text(t, r, i);
                let mut row = observed
                    .iter()
                    .find(|o| o.id == x.id)
                    .cloned()
                    .unwrap_or_else(|| Row {
                        id: x.id.clone(),
                        actual: "not observed".into(),
                        message: "the runner produced no row with this id".into(),
                        ..Row::default()
                    });
                row.check = check;
                row.expected = x.value.clone();
                row.twin = x.twin.clone();
                row.why = verdict(&row, t.authorizer);
                rows.push(row);
            }
        }
    }
    // The twin rule, on what was observed.
    let accepted: Vec<(String, bool)> = rows
        .iter()
        .map(|r| (r.id.clone(), r.why.is_empty() && is_acceptance(&r.actual)))
        .collect();
    for row in &mut rows {
        if let Some(twin) = &row.twin {
            let ok = accepted.iter().any(|(id, ok)| id == twin && *ok);
            if row.why.is_empty() && !ok {
                row.why = format!("its twin {twin} was not allowed");
            }
        }
        row.pass = row.why.is_empty();
    }
    rows
}

/// What expectation `i` of row `r` of table `t` checks, in words: the
/// row's cells, and its phase column when the row has several.
pub fn check_text(t: &ExpectedTable, r: &ExpectedRow, i: usize) -> String {
    let check = r.cells.join(", ").replace('`', "");
    if r.expect.len() > 1 {
        let phase = t.columns.len() - r.expect.len() + i;
        format!("{check} [{}]", t.columns[phase])
    } else {
        check
    }
}

/// Why a row fails on its own ("" if it does not).
fn verdict(row: &Row, authorizer_asked: bool) -> String {
    if row.actual != row.expected {
        return format!("expected {}, got {}", row.expected, row.actual);
    }
    match (authorizer_asked, row.authorizer.as_deref()) {
        (true, None) => "the authorizer was not asked".into(),
        (true, Some(a)) if (a == "allowed") != (row.actual == "allowed") => {
            format!("the authorizer says {a}")
        }
        _ => String::new(),
    }
}

/// For tests of generated files: `path` holds `want`, what its source
/// generates; with `UPDATE_EXPECTED` set it is rewritten instead. `how` is
/// the command that rewrites it.
#[cfg(test)]
pub(crate) fn assert_generated(path: &std::path::Path, want: &str, how: &str) {
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(have, want, "{} is stale: run {how}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chapters::{catalog, find};

    #[test]
    fn every_oracle_is_valid() {
        for c in catalog() {
            let t = tables(c).unwrap_or_else(|e| panic!("{e}"));
            assert!(!t.is_empty(), "{}", c.slug);
        }
    }

    #[test]
    fn expected_md_files_are_generated_from_the_tables() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for c in catalog() {
            let path = root.join("labs").join(c.slug).join("expected.md");
            let how = "UPDATE_EXPECTED=1 cargo test -p sa-lab --lib oracle";
            assert_generated(&path, &markdown(c).unwrap(), how);
        }
    }

    fn chapter_with(expected: &'static str) -> Chapter {
        Chapter {
            expected,
            ..*find("3").unwrap()
        }
    }

    #[test]
    fn a_refusal_without_an_allowed_twin_is_refused() {
        let base = "tables:\n- columns: [c, e]\n  rows:\n";
        let no_twin: &'static str = Box::leak(
            format!("{base}  - cells: [a]\n    expect: [{{id: a, value: forbidden}}]\n")
                .into_boxed_str(),
        );
        let e = tables(&chapter_with(no_twin)).unwrap_err().to_string();
        assert!(
            e.contains("a is expected forbidden but names no allowed twin"),
            "{e}"
        );

        let missing: &'static str = Box::leak(
            format!("{base}  - cells: [a]\n    expect: [{{id: a, value: forbidden, twin: b}}]\n")
                .into_boxed_str(),
        );
        let e = tables(&chapter_with(missing)).unwrap_err().to_string();
        assert!(e.contains("twin b is not a row"), "{e}");

        let refused_twin: &'static str = Box::leak(
            format!(
                "{base}  - cells: [a]\n    expect: [{{id: a, value: forbidden, twin: b}}]\n  \
                 - cells: [b]\n    expect: [{{id: b, value: unauthorized, twin: a}}]\n"
            )
            .into_boxed_str(),
        );
        let e = tables(&chapter_with(refused_twin)).unwrap_err().to_string();
        assert!(
            e.contains("a's twin b is expected unauthorized, not allowed"),
            "{e}"
        );
    }

    fn observed(id: &str, actual: &str, authorizer: Option<&str>) -> Row {
        Row {
            id: id.into(),
            actual: actual.into(),
            authorizer: authorizer.map(Into::into),
            ..Row::default()
        }
    }

    #[test]
    fn compare_checks_values_authorizer_and_twins() {
        let ch = find("3").unwrap();
        let ids = ids(ch).unwrap();
        // Every row exactly as expected, with the authorizer agreeing.
        let tables = tables(ch).unwrap();
        let good: Vec<Row> = tables
            .iter()
            .flat_map(|t| {
                t.rows
                    .iter()
                    .flat_map(|r| &r.expect)
                    .map(move |x| (t.authorizer, x))
            })
            .map(|(asked, x)| {
                let a = asked.then(|| {
                    if x.value == "allowed" {
                        "allowed"
                    } else {
                        "forbidden"
                    }
                });
                observed(&x.id, &x.value, a)
            })
            .collect();
        let r = compare(ch, good.clone()).unwrap();
        assert!(
            r.passed(),
            "{:#?}",
            r.rows.iter().filter(|r| !r.pass).collect::<Vec<_>>()
        );
        assert_eq!(r.rows.len(), ids.len());

        // A missing row fails.
        let r = compare(ch, good[1..].to_vec()).unwrap();
        assert!(!r.row(&good[0].id).unwrap().pass);

        // A missing or disagreeing authorizer answer fails the row.
        let mut no_authz = good.clone();
        let first = no_authz
            .iter_mut()
            .find(|r| r.id == "before.list-pods")
            .unwrap();
        first.authorizer = None;
        let r = compare(ch, no_authz).unwrap();
        assert_eq!(
            r.row("before.list-pods").unwrap().why,
            "the authorizer was not asked"
        );
        let mut disagree = good.clone();
        let first = disagree
            .iter_mut()
            .find(|r| r.id == "before.list-pods")
            .unwrap();
        first.authorizer = Some("allowed".into());
        assert!(
            !compare(ch, disagree)
                .unwrap()
                .row("before.list-pods")
                .unwrap()
                .pass
        );

        // A cluster that refuses everything: the refusals match, but their
        // twins were not allowed, so they fail too.
        let refuse_all: Vec<Row> = good
            .iter()
            .map(|r| {
                observed(
                    &r.id,
                    if r.actual == "allowed" {
                        "forbidden"
                    } else {
                        &r.actual
                    },
                    r.authorizer.as_deref().map(|_| "forbidden"),
                )
            })
            .collect();
        let r = compare(ch, refuse_all).unwrap();
        let before = r.row("before.list-pods").unwrap();
        assert_eq!(before.actual, "forbidden");
        assert!(!before.pass, "{before:#?}");
        assert!(before.why.contains("twin"), "{}", before.why);
    }
}
