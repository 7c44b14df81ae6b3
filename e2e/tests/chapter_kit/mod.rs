//! Shared by the chapter_NN tests: run a chapter through the same runner
//! `sa-lab run` uses, and assert rows by id.
#![allow(dead_code)]

use std::collections::BTreeSet;

use sa_lab::chapters::{self, ChapterResult, RunOptions};

use crate::common::TestCluster;

/// Run chapter `query` on `c` (admin client, kubeconfig for token checks).
pub async fn run(c: &TestCluster, query: &str) -> ChapterResult {
    let client = c.client().await;
    let kc = kube::config::Kubeconfig::read_from(&c.info.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let opts = RunOptions {
        config: Some(config),
        ..RunOptions::default()
    };
    let chapter = chapters::find(query).expect("chapter");
    let result = chapters::run_chapter(&client, chapter, &opts)
        .await
        .unwrap_or_else(|e| panic!("running chapter {query}: {e:?}"));
    eprintln!("{}", chapters::render_table(&result));
    result
}

/// Row `id` has `actual == expected` and passed.
pub fn expect(r: &ChapterResult, id: &str, expected: &str) {
    let row = r
        .row(id)
        .unwrap_or_else(|| panic!("no row {id}\n{}", chapters::render_table(r)));
    assert_eq!(row.actual, expected, "row {id}: {row:#?}");
    assert_eq!(
        row.expected, expected,
        "row {id}: the oracle disagrees with the test"
    );
    assert!(row.pass, "row {id} did not pass: {row:#?}");
}

/// Like [`expect`], and the HTTP status is `status`.
pub fn expect_status(r: &ChapterResult, id: &str, expected: &str, status: u16) {
    expect(r, id, expected);
    assert_eq!(r.row(id).unwrap().status, Some(status), "row {id} status");
}

/// The test asserted exactly the chapter's expected ids, the whole chapter
/// passed, and every forbidden/unauthorized row has an allowed twin (so a
/// cluster that refuses everything, or allows everything, fails).
pub fn all_rows_checked(r: &ChapterResult, asserted: &[&str]) {
    let chapter = chapters::find(&r.number.to_string()).unwrap();
    let oracle: BTreeSet<&str> = chapters::expected_tables(chapter)
        .iter()
        .flat_map(|t| t.rows)
        .flat_map(|row| row.expect)
        .map(|x| x.id)
        .collect();
    let asserted: BTreeSet<&str> = asserted.iter().copied().collect();
    assert_eq!(
        oracle, asserted,
        "the test must assert every row of the chapter's tables"
    );
    assert!(r.passed(), "{}", chapters::render_table(r));
    let refused = r
        .rows
        .iter()
        .any(|x| x.actual == "forbidden" || x.actual == "unauthorized");
    let allowed = r.rows.iter().any(|x| x.actual == "allowed");
    assert!(!refused || allowed, "no allowed twin");
}
