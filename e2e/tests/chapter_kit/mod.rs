//! Shared by the chapter_NN tests: run a chapter through the same runner
//! `sa-lab run` uses, and assert rows by id.
#![allow(dead_code)]

use std::collections::BTreeSet;

use sa_lab::chapters::{self, ChapterResult, RunContext, oracle};

use crate::common::TestCluster;

/// What runs chapters (and exercises) on `c`, as its admin.
pub async fn context(c: &TestCluster) -> RunContext {
    let admin = c.info.connect().await.expect("admin config");
    RunContext {
        client: admin.client,
        config: admin.config,
        image: sa_lab::LAB_IMAGE.to_string(),
        timeout: std::time::Duration::from_secs(90),
        audit_log: c
            .info
            .audit_log
            .then(|| sa_lab::audit::AuditLog::of_cluster(&c.info.dir)),
        timings: Default::default(),
    }
}

/// Run chapter `query` on `c`, as its admin.
pub async fn run(c: &TestCluster, query: &str) -> ChapterResult {
    let cx = context(c).await;
    let chapter = chapters::find(query).expect("chapter");
    let result = chapters::run_chapter(&cx, chapter)
        .await
        .unwrap_or_else(|e| panic!("running chapter {query}: {}", sa_lab::ui::error_chain(&e)));
    eprintln!("{}", chapters::render::render(&result, 120));
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
/// passed, and every refusal's twin is a row of this run that was allowed
/// (so a cluster that refuses everything, or allows everything, fails).
pub fn all_rows_checked(r: &ChapterResult, asserted: &[&str]) {
    let chapter = chapters::find(&r.number.to_string()).unwrap();
    let ids = oracle::ids(chapter).expect("the chapter's oracle");
    let oracle_ids: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let asserted: BTreeSet<&str> = asserted.iter().copied().collect();
    assert_eq!(
        oracle_ids, asserted,
        "the test must assert every row of the chapter's tables"
    );
    for row in &r.rows {
        if !oracle::is_refusal(&row.actual) {
            continue;
        }
        let twin = row
            .twin
            .as_deref()
            .unwrap_or_else(|| panic!("refused row {} names no twin", row.id));
        let t = r
            .row(twin)
            .unwrap_or_else(|| panic!("{}'s twin {twin} is not a row of the run", row.id));
        assert!(
            oracle::is_acceptance(&t.actual),
            "{}'s twin {twin} was {}, not allowed",
            row.id,
            t.actual
        );
    }
    assert!(r.passed(), "{}", chapters::render_table(r));
}
