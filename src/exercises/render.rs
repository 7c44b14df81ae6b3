//! What the learner reads: a check's rows in a table that fits the
//! terminal, then each failed row's full message (the API server's own
//! words) and what it usually means; the list of exercises with a
//! progress bar.

use comfy_table::{ContentArrangement, Table};

use super::check::CheckResult;
use super::progress::Progress;
use super::{Exercise, catalog};
use crate::chapters::render::wrap;

fn table(width: u16, header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .set_header(header.to_vec());
    t
}

/// A check's result for the learner, `width` columns wide.
pub fn check_result(r: &CheckResult, width: u16) -> String {
    let mut t = table(width, &["#", "", "check", "as", "expected", "actual"]);
    for (i, g) in r.rows.iter().enumerate() {
        let row = &g.row;
        let mut actual = row.actual.clone();
        if let Some(s) = row.status {
            actual = format!("{actual} ({s})");
        }
        t.add_row([
            (i + 1).to_string(),
            if row.pass { "✓" } else { "✗" }.to_string(),
            row.check.clone(),
            row.subject.clone(),
            row.expected.clone(),
            actual,
        ]);
    }
    let mut out = format!("{}: {}\n{t}\n", r.id, r.title);
    let w = usize::from(width);
    for (i, g) in r.rows.iter().enumerate().filter(|(_, g)| !g.row.pass) {
        let row = &g.row;
        let mut text = format!("{}.", capitalize(&row.why));
        if !row.message.is_empty() {
            let said = if row.status.is_some() {
                "The API server said:"
            } else {
                "Observed:"
            };
            text.push_str(&format!(" {said} {}", row.message.replace('\n', " ⏎ ")));
        }
        out.push_str(&wrap(&format!("{:>3}. ", i + 1), &text, w));
        if let Some(a) = &g.advice {
            out.push_str(&wrap("     ", &format!("What it usually means: {a}."), w));
        }
    }
    let failed = r.rows.iter().filter(|g| !g.row.pass).count();
    if r.passed {
        out.push_str(&format!("✓ {} passes: every row as the task asks.\n", r.id));
    } else {
        out.push_str(&format!(
            "✗ {failed} of {} rows differ from what the task asks.\n",
            r.rows.len()
        ));
    }
    out
}

/// A build's output keeps its lines: shown below the table as is.
pub fn build_output(r: &CheckResult) -> Option<&str> {
    r.rows
        .iter()
        .find(|g| g.row.id == super::check::BUILD_ROW && !g.row.pass)
        .map(|g| g.row.message.as_str())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `[#####-----] 5/10`.
pub fn progress_bar(done: usize, total: usize, cells: usize) -> String {
    let filled = (done * cells).checked_div(total).unwrap_or(0);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(cells - filled)
    )
}

/// Where an exercise stands: solved, tried, the next one, or not yet.
pub fn status(progress: &Progress, ex: &Exercise, next: Option<&Exercise>) -> &'static str {
    let e = progress.get(ex.id);
    if e.solved {
        "✓ solved"
    } else if next.is_some_and(|n| n.id == ex.id) {
        "▶ next"
    } else if e.attempts > 0 {
        "✗ tried"
    } else {
        ""
    }
}

/// Every exercise with its status, then the progress bar.
pub fn list(progress: &Progress, width: u16) -> String {
    let next = progress.next_unsolved(catalog());
    let mut t = table(width, &["", "exercise", "kind", "title"]);
    let mut solved = 0;
    let mut total = 0;
    for ex in catalog() {
        let (kind, title) = match ex.def() {
            Ok(d) => (d.kind.as_str().to_string(), d.title),
            Err(e) => ("?".into(), e.to_string()),
        };
        total += 1;
        if progress.solved(ex.id) {
            solved += 1;
        }
        t.add_row([
            status(progress, ex, next).to_string(),
            ex.id.into(),
            kind,
            title,
        ]);
    }
    let mut out = format!(
        "{t}\nProgress: {} exercises solved",
        progress_bar(solved, total, 30)
    );
    match next {
        Some(n) => out.push_str(&format!("; next: sa-lab check {}\n", n.id)),
        None => out.push_str(". All done!\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chapters::Row;
    use crate::exercises::Kind;
    use crate::exercises::check::GradedRow;

    #[test]
    fn bars() {
        assert_eq!(progress_bar(0, 4, 8), "[--------] 0/4");
        assert_eq!(progress_bar(2, 4, 8), "[####----] 2/4");
        assert_eq!(progress_bar(4, 4, 8), "[########] 4/4");
        assert_eq!(progress_bar(0, 0, 4), "[----] 0/0");
    }

    #[test]
    fn failed_rows_say_why_in_full_and_fit() {
        let msg = "pods \"probe-reporter\" is forbidden: User \"system:serviceaccount:shop:reporter\" \
                   cannot get resource \"pods/log\" in API group \"\" in the namespace \"shop\"";
        let r = CheckResult {
            id: "03-pods-only".into(),
            chapter: "03-rolebinding".into(),
            title: "Pods and their logs".into(),
            kind: Kind::Write,
            passed: false,
            rows: vec![
                GradedRow {
                    row: Row {
                        id: "a".into(),
                        check: "list pods in shop".into(),
                        subject: "reporter".into(),
                        expected: "allowed".into(),
                        actual: "allowed".into(),
                        status: Some(200),
                        pass: true,
                        ..Row::default()
                    },
                    advice: None,
                },
                GradedRow {
                    row: Row {
                        id: "b".into(),
                        check: "read its own Pod's log".into(),
                        subject: "reporter".into(),
                        expected: "allowed".into(),
                        actual: "forbidden".into(),
                        status: Some(403),
                        message: msg.into(),
                        why: "expected allowed, got forbidden".into(),
                        ..Row::default()
                    },
                    advice: Some("`pods/log` is a subresource".into()),
                },
            ],
        };
        for width in [60u16, 100] {
            let out = check_result(&r, width);
            assert!(
                out.lines().all(|l| l.chars().count() <= usize::from(width)),
                "{out}"
            );
            let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains("Expected allowed, got forbidden. The API server said: pods"),
                "{out}"
            );
            assert!(
                flat.contains(
                    "cannot get resource \"pods/log\" in API group \"\" in the namespace \"shop\""
                ),
                "{out}"
            );
            assert!(
                flat.contains("What it usually means: `pods/log` is a subresource."),
                "{out}"
            );
            assert!(
                out.ends_with("✗ 1 of 2 rows differ from what the task asks.\n"),
                "{out}"
            );
        }
    }
}
