//! Predicting a chapter's rows before they run.
//!
//! `sa-lab run NN --predict` asks, for every row whose answer is a verdict
//! (allowed, forbidden, unauthorized, invalid), what the learner expects,
//! then runs the chapter and scores the answers against what the API
//! server did. A predict exercise is the same on a chosen set of rows,
//! answered in the workspace's `predictions.yaml` and graded by `check`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::Exercise;
use super::check::{CheckError, CheckResult, Cluster, GradedRow};
use super::def::Definition;
use crate::chapters::{self, Chapter, ChapterResult, Row, oracle};

/// The verdicts a learner predicts.
pub const ANSWERS: [&str; 4] = ["allowed", "forbidden", "unauthorized", "invalid"];
/// The file a predict exercise's answers are in.
pub const PREDICTIONS_FILE: &str = "predictions.yaml";
/// An answer not given yet.
pub const UNANSWERED: &str = "TODO";

/// One row to predict.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The row id.
    pub id: String,
    /// What it checks, in words.
    pub check: String,
    /// What the chapter's oracle expects (hidden until after the run).
    pub expected: String,
}

/// Why predictions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The file is missing or unreadable.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a YAML map of row id to answer.
    #[error("{}: not a list of `row-id: answer` lines", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said (with the line).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A row this exercise does not ask about.
    #[error("{}: {id} is not a row this exercise asks about (README.md lists them)", path.display())]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The id.
        id: String,
    },
    /// An answer that is not a verdict.
    #[error("{}: {id}: {value:?} is not one of allowed, forbidden, unauthorized, invalid", path.display())]
    Answer {
        /// The file.
        path: PathBuf,
        /// The row id.
        id: String,
        /// What was written.
        value: String,
    },
    /// The chapter's tables.
    #[error(transparent)]
    Oracle(#[from] oracle::OracleError),
}

/// Every row of `chapter` whose expected value is a verdict, in table order.
pub fn questions(chapter: &Chapter) -> Result<Vec<Question>, oracle::OracleError> {
    let mut out = Vec::new();
    for t in oracle::tables(chapter)? {
        for r in &t.rows {
            for (i, x) in r.expect.iter().enumerate() {
                if ANSWERS.contains(&x.value.as_str()) {
                    out.push(Question {
                        id: x.id.clone(),
                        check: oracle::check_text(&t, r, i),
                        expected: x.value.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The answer a learner typed: a verdict or its first letter.
pub fn parse_answer(text: &str) -> Option<&'static str> {
    let t = text.trim().to_ascii_lowercase();
    ANSWERS
        .iter()
        .copied()
        .find(|a| !t.is_empty() && (*a == t || a.starts_with(t.as_str()) && t.len() == 1))
}

/// Ask each question on `out`, reading answers from `input` (a terminal
/// or a pipe). An empty line skips a row; the end of input leaves the
/// rest unanswered.
pub fn ask(
    questions: &[Question],
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> std::io::Result<BTreeMap<String, String>> {
    writeln!(
        out,
        "Predict each row before it runs: a = allowed, f = forbidden, u = unauthorized, \
         i = invalid (Enter skips)."
    )?;
    let mut answers = BTreeMap::new();
    'rows: for (n, q) in questions.iter().enumerate() {
        loop {
            write!(out, "{:>2}/{} {}? ", n + 1, questions.len(), q.check)?;
            out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                writeln!(out)?;
                break 'rows;
            }
            if line.trim().is_empty() {
                break;
            }
            match parse_answer(&line) {
                Some(a) => {
                    answers.insert(q.id.clone(), a.to_string());
                    break;
                }
                None => writeln!(out, "   answer a, f, u or i (or Enter to skip)")?,
            }
        }
    }
    Ok(answers)
}

/// Graded predictions: one row per question, its prediction as the
/// expected value and what the API server did as the actual one. A row
/// whose chapter row did not behave as the book says fails with that
/// reason: the cluster, not the learner, is wrong there.
pub fn grade(
    questions: &[Question],
    answers: &BTreeMap<String, String>,
    result: &ChapterResult,
) -> Vec<GradedRow> {
    questions
        .iter()
        .map(|q| {
            let observed = result.row(&q.id).cloned().unwrap_or_else(|| Row {
                actual: "not observed".into(),
                ..Row::default()
            });
            let predicted = answers.get(&q.id).cloned();
            let mut r = Row {
                id: q.id.clone(),
                check: q.check.clone(),
                expected: predicted.clone().unwrap_or_else(|| UNANSWERED.into()),
                twin: None,
                ..observed.clone()
            };
            r.why = if !observed.pass {
                format!(
                    "the cluster did not do what the chapter says ({})",
                    observed.why
                )
            } else if predicted.is_none() {
                "not answered".into()
            } else if r.expected != r.actual {
                format!(
                    "you predicted {}, the API server said {}",
                    r.expected, r.actual
                )
            } else {
                String::new()
            };
            r.pass = r.why.is_empty();
            GradedRow {
                row: r,
                advice: None,
            }
        })
        .collect()
}

/// `right/total` and the rows missed, for `sa-lab run --predict`.
pub fn score(graded: &[GradedRow]) -> String {
    let right = graded.iter().filter(|r| r.row.pass).count();
    let mut out = format!("Your predictions: {right} of {} right.\n", graded.len());
    for r in graded.iter().filter(|r| !r.row.pass) {
        out.push_str(&format!("  ✗ {}: {}\n", r.row.check, r.row.why));
    }
    out
}

/// The answers in a predictions file, checked against the questions.
pub fn read_predictions(
    path: &Path,
    questions: &[Question],
) -> Result<BTreeMap<String, String>, PredictError> {
    let text = std::fs::read_to_string(path).map_err(|source| PredictError::Io {
        path: path.into(),
        source,
    })?;
    let raw: Option<BTreeMap<String, String>> =
        serde_saphyr::from_str(&text).map_err(|source| PredictError::Yaml {
            path: path.into(),
            source: Box::new(source),
        })?;
    let mut out = BTreeMap::new();
    for (id, value) in raw.unwrap_or_default() {
        if !questions.iter().any(|q| q.id == id) {
            return Err(PredictError::Unknown {
                path: path.into(),
                id,
            });
        }
        if value.trim() == UNANSWERED || value.trim().is_empty() {
            continue;
        }
        let Some(a) = ANSWERS.iter().find(|a| **a == value.trim()) else {
            return Err(PredictError::Answer {
                path: path.into(),
                id,
                value,
            });
        };
        out.insert(id, a.to_string());
    }
    Ok(out)
}

/// The questions of a predict exercise: its rows, in its order.
pub fn exercise_questions(ex: &Exercise, def: &Definition) -> Result<Vec<Question>, PredictError> {
    let all = questions(ex.chapter())?;
    Ok(def
        .predict
        .iter()
        .filter_map(|id| all.iter().find(|q| &q.id == id).cloned())
        .collect())
}

/// Grade a predict exercise: read its answers, run the chapter, compare.
pub async fn check(
    cluster: &Cluster,
    ex: &Exercise,
    def: &Definition,
    folder: &Path,
) -> Result<CheckResult, CheckError> {
    let qs = exercise_questions(ex, def)?;
    let answers = read_predictions(&folder.join(PREDICTIONS_FILE), &qs)?;
    let result = chapters::run_chapter(&cluster.cx, ex.chapter()).await?;
    Ok(CheckResult::new(ex, def, grade(&qs, &answers, &result)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exercises::{Kind, catalog};

    #[test]
    fn answers_by_word_or_letter() {
        assert_eq!(parse_answer("f\n"), Some("forbidden"));
        assert_eq!(parse_answer(" Allowed "), Some("allowed"));
        assert_eq!(parse_answer("fo"), None);
        assert_eq!(parse_answer(""), None);
        assert_eq!(parse_answer("x"), None);
    }

    #[test]
    fn asks_then_grades_against_what_happened() {
        let ch = chapters::find("3").unwrap();
        let qs = questions(ch).unwrap();
        assert!(
            qs.iter()
                .any(|q| q.id == "before.list-pods" && q.expected == "forbidden")
        );
        assert!(qs.iter().all(|q| ANSWERS.contains(&q.expected.as_str())));
        let first = &qs[..3];
        let mut input = std::io::Cursor::new("f\nnope\nf\n\n");
        let mut shown = Vec::new();
        let answers = ask(first, &mut input, &mut shown).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            shown.contains(" 1/3 list pods in production [before the RoleBinding]? "),
            "{shown}"
        );
        assert!(shown.contains("answer a, f, u or i"), "{shown}");
        assert_eq!(answers.len(), 2, "{answers:?}");

        let result = ChapterResult {
            number: 3,
            slug: ch.slug.into(),
            title: ch.title.into(),
            rows: first
                .iter()
                .map(|q| Row {
                    id: q.id.clone(),
                    actual: q.expected.clone(),
                    pass: true,
                    ..Row::default()
                })
                .collect(),
        };
        let graded = grade(first, &answers, &result);
        assert!(graded[0].row.pass, "{graded:?}");
        assert_eq!(first[1].expected, "allowed");
        assert_eq!(
            graded[1].row.why,
            "you predicted forbidden, the API server said allowed"
        );
        assert_eq!(graded[2].row.why, "not answered");
        assert!(score(&graded).starts_with("Your predictions: 1 of 3 right."));
    }

    /// The starter leaves every row unanswered; the solution holds what
    /// the chapter's oracle expects, so it cannot drift from the book.
    #[test]
    fn predict_exercises_match_their_chapter() {
        for ex in catalog() {
            let def = ex.def().unwrap();
            if def.kind != Kind::Predict {
                continue;
            }
            let qs = exercise_questions(ex, &def).unwrap();
            assert_eq!(
                qs.len(),
                def.predict.len(),
                "{}: every predict id is a verdict row",
                ex.id
            );
            let file = |text: &str| {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join(PREDICTIONS_FILE);
                std::fs::write(&path, text).unwrap();
                read_predictions(&path, &qs).unwrap()
            };
            let f = ex
                .files
                .iter()
                .find(|f| f.path == PREDICTIONS_FILE)
                .unwrap();
            assert!(
                file(f.starter).is_empty(),
                "{}: the starter answers nothing",
                ex.id
            );
            let solution = file(f.solution);
            let starter: BTreeMap<String, String> = serde_saphyr::from_str(f.starter).unwrap();
            for q in &qs {
                assert_eq!(
                    solution.get(&q.id),
                    Some(&q.expected),
                    "{}: {}",
                    ex.id,
                    q.id
                );
                assert_eq!(
                    starter.get(&q.id).map(String::as_str),
                    Some(UNANSWERED),
                    "{}: {}",
                    ex.id,
                    q.id
                );
            }
            assert_eq!(
                def.starter_fails, def.predict,
                "{}: the starter fails every row",
                ex.id
            );
        }
    }
}
