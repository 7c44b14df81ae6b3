//! A chapter's result for a person: a table that fits the terminal (or
//! [`DEFAULT_WIDTH`] columns when stdout is not one, as in the book's
//! transcripts), then every row's full message on its own lines, never cut.

use comfy_table::{ContentArrangement, Table};

use super::ChapterResult;

/// The width used when stdout is not a terminal and `COLUMNS` is not set:
/// what fits the book's code blocks.
pub const DEFAULT_WIDTH: u16 = 100;

/// The width to render for: the terminal's, else `$COLUMNS`, else
/// [`DEFAULT_WIDTH`].
pub fn width() -> u16 {
    if std::io::IsTerminal::is_terminal(&std::io::stdout())
        && let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size()
    {
        return w.max(40);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|w| *w >= 40)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The result as a table, expected next to actual, then the messages.
pub fn render_table(result: &ChapterResult) -> String {
    render(result, width())
}

/// [`render_table`] for a given width.
pub fn render(result: &ChapterResult, width: u16) -> String {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .set_header(["#", "", "check", "as", "expected", "actual"]);
    for (i, r) in result.rows.iter().enumerate() {
        let mut actual = r.actual.clone();
        if let Some(s) = r.status {
            actual = format!("{actual} ({s})");
        }
        if let Some(why) = short_reason(r) {
            actual = format!("{actual}\n{why}");
        }
        t.add_row([
            (i + 1).to_string(),
            if r.pass { "✓" } else { "✗" }.to_string(),
            r.check.clone(),
            r.subject.clone(),
            r.expected.clone(),
            actual,
        ]);
    }
    let passed = result.rows.iter().filter(|r| r.pass).count();
    let mut out = format!("Chapter {}: {}\n{t}\n", result.number, result.title);
    out.push_str(&messages(result, usize::from(width)));
    out.push_str(&format!(
        "{passed}/{} rows as expected{}\n",
        result.rows.len(),
        if result.passed() { "" } else { " — MISMATCH" }
    ));
    out
}

/// What the audit log says decided the row, short (rows whose request was
/// recorded by its `Audit-Id` only).
fn short_reason(r: &super::Row) -> Option<String> {
    r.audit_id.as_ref()?;
    let x = crate::audit::Explanation {
        decision: r.decision.clone(),
        reason: r.reason.clone(),
    };
    Some(x.short(r.status.unwrap_or_default()))
}

/// Every row's message (and why it failed) in full, wrapped to `width`.
fn messages(result: &ChapterResult, width: usize) -> String {
    let mut out = String::new();
    for (i, r) in result.rows.iter().enumerate() {
        let mut parts = Vec::new();
        if !r.why.is_empty() {
            parts.push(format!("MISMATCH: {}.", r.why));
        }
        if let Some(a) = &r.authorizer {
            parts.push(format!("authorizer: {a}."));
        }
        if let Some(reason) = r.reason.as_deref().filter(|x| !x.is_empty()) {
            parts.push(format!("{reason}."));
        }
        if !r.message.is_empty() {
            parts.push(r.message.replace('\n', " "));
        }
        if parts.is_empty() {
            continue;
        }
        let label = format!("{:>3}. ", i + 1);
        out.push_str(&wrap(&label, &parts.join(" "), width));
    }
    out
}

/// `text` after `label`, wrapped at spaces to `width` columns, continuation
/// lines indented under the text. Words longer than a line are split.
pub fn wrap(label: &str, text: &str, width: usize) -> String {
    let indent = label.chars().count();
    let room = width.saturating_sub(indent).max(20);
    let mut out = String::new();
    let mut line = String::new();
    let mut first = true;
    let flush = |line: &mut String, out: &mut String, first: &mut bool| {
        if *first {
            out.push_str(label);
            *first = false;
        } else {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        line.clear();
    };
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let need = word.len() + usize::from(used > 0);
            if used + need <= room {
                if used > 0 {
                    line.push(' ');
                }
                line.extend(word.iter());
                break;
            }
            if used > 0 {
                flush(&mut line, &mut out, &mut first);
                continue;
            }
            // A word longer than the line: split it.
            let rest = word.split_off(room);
            line.extend(word.iter());
            flush(&mut line, &mut out, &mut first);
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if !line.is_empty() || first {
        flush(&mut line, &mut out, &mut first);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chapters::Row;

    fn result() -> ChapterResult {
        let long = "rolebindings.rbac.authorization.k8s.io \"dry-run-edit\" is forbidden: user \
                    \"system:serviceaccount:production:pod-manager\" (groups=[\"system:serviceaccounts\" \
                    \"system:serviceaccounts:production\" \"system:authenticated\"]) is attempting to grant \
                    RBAC permissions not currently held: {APIGroups:[\"\"], Resources:[\"configmaps\"], \
                    Verbs:[\"create\" \"delete\" \"deletecollection\" \"patch\" \"update\"]}";
        ChapterResult {
            number: 3,
            slug: "03-rolebinding".into(),
            title: "Binding permissions".into(),
            rows: vec![
                Row {
                    id: "escalation.bind-edit".into(),
                    check:
                        "with binding-manager: create a RoleBinding (dry run) to ClusterRole edit \
                            (pod-manager does not hold it) [the request]"
                            .into(),
                    subject: "pod-manager".into(),
                    expected: "forbidden".into(),
                    actual: "forbidden".into(),
                    status: Some(403),
                    message: long.into(),
                    pass: true,
                    ..Row::default()
                },
                Row {
                    id: "x".into(),
                    check: "short".into(),
                    expected: "allowed".into(),
                    actual: "forbidden".into(),
                    why: "expected allowed, got forbidden".into(),
                    ..Row::default()
                },
            ],
        }
    }

    #[test]
    fn fits_the_width_and_keeps_every_message_whole() {
        let r = result();
        for width in [60u16, 80, 100, 160] {
            let out = render(&r, width);
            for line in out.lines() {
                assert!(
                    line.chars().count() <= usize::from(width),
                    "{width}: {} > {width}: {line}",
                    line.chars().count()
                );
            }
            // The message is all there, word for word, however wrapped.
            let flat: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
            let want: String = r.rows[0]
                .message
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(flat.contains(&want), "{width}:\n{out}");
            assert!(!out.contains('…'), "{out}");
            assert!(
                out.contains("MISMATCH: expected allowed, got forbidden."),
                "{out}"
            );
            assert!(out.contains("1/2 rows as expected — MISMATCH"), "{out}");
        }
    }

    #[test]
    fn wrap_splits_long_words_and_indents() {
        let out = wrap(" 1. ", &format!("a {} b", "x".repeat(50)), 30);
        for line in out.lines() {
            assert!(line.chars().count() <= 30, "{line}");
        }
        assert!(out.starts_with(" 1. a"), "{out}");
        assert!(out.lines().skip(1).all(|l| l.starts_with("    ")), "{out}");
        assert_eq!(out.matches('x').count(), 50);
    }
}
