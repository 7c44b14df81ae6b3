//! What the exercise commands do (`sa-lab exercises`, `check`, `hint`,
//! `solution`, `reset`); `src/main.rs` only parses and dispatches. Each
//! returns what to print on stdout (results) and, where useful, a line of
//! guidance for stderr.

use std::path::Path;
use std::time::Duration;

use super::check::{self, CheckError, CheckResult, Cluster};
use super::progress::now;
use super::workspace::{Version, Workspace, WorkspaceError, for_workspace};
use super::{Exercise, UnknownExercise, catalog, find, render};
use crate::provider::{ConnectError, ConnectOptions};

/// Why an exercise command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such exercise.
    #[error(transparent)]
    Unknown(#[from] UnknownExercise),
    /// The workspace.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The cluster could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The check could not grade.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// An exercise's definition (a bug in sa-lab).
    #[error(transparent)]
    Definition(#[from] super::def::DefError),
    /// Every exercise is solved: nothing to check next.
    #[error("every exercise is solved: name one to check it again (`sa-lab exercises` lists them)")]
    AllSolved,
}

/// What a command produced: its result, a note for stderr, and whether
/// it succeeded (the exit status).
#[derive(Debug, Default)]
pub struct Outcome {
    /// For stdout.
    pub stdout: String,
    /// For stderr.
    pub note: String,
    /// Exit 0 if true.
    pub ok: bool,
}

/// `sa-lab exercises init DIR`.
pub fn init(dir: &Path) -> Result<Outcome, Error> {
    let (ws, done) = Workspace::init(dir)?;
    let mut note = format!(
        "Workspace {}: {} exercises written",
        ws.root.display(),
        done.written.len()
    );
    if !done.kept.is_empty() {
        note.push_str(&format!(
            ", {} already there and left as they were",
            done.kept.len()
        ));
    }
    let first = ws
        .progress()?
        .next_unsolved(catalog())
        .map(|e| e.id)
        .unwrap_or_default();
    note.push_str(&format!(
        ".\nStart with: cd {} && sa-lab check {first}   (or `sa-lab watch`)",
        ws.root.display()
    ));
    Ok(Outcome {
        note,
        ok: true,
        ..Outcome::default()
    })
}

/// `sa-lab exercises`: the list and the progress, or JSON.
pub fn list(dir: Option<&Path>, json: bool, width: u16) -> Result<Outcome, Error> {
    let ws = Workspace::locate(dir)?;
    let progress = ws.progress()?;
    let stdout = if json {
        let next = progress.next_unsolved(catalog()).map(|e| e.id);
        let items: Vec<serde_json::Value> = catalog()
            .map(|ex| {
                let def = ex.def();
                serde_json::json!({
                    "id": ex.id,
                    "chapter": ex.chapter,
                    "kind": def.as_ref().map(|d| d.kind).ok(),
                    "title": def.as_ref().map(|d| d.title.clone()).unwrap_or_default(),
                    "next": next == Some(ex.id),
                    "progress": progress.get(ex.id),
                })
            })
            .collect();
        serde_json::to_string_pretty(&items).unwrap_or_default()
    } else {
        render::list(&progress, width)
    };
    Ok(Outcome {
        stdout,
        ok: true,
        ..Outcome::default()
    })
}

/// The exercise `id` names, or the next unsolved one.
pub fn pick(ws: &Workspace, id: Option<&str>) -> Result<&'static Exercise, Error> {
    match id {
        Some(id) => Ok(find(id)?),
        None => ws
            .progress()?
            .next_unsolved(catalog())
            .ok_or(Error::AllSolved),
    }
}

/// Grade `ex` on `cluster` and record the attempt.
pub async fn check_one(
    ws: &Workspace,
    cluster: &Cluster,
    ex: &Exercise,
) -> Result<CheckResult, Error> {
    let result = check::check(cluster, ex, &ws.folder(ex)).await;
    let passed = result.as_ref().ok().map(|r| r.passed);
    ws.update(|p| p.record_check(ex.id, passed, &now()))?;
    Ok(result?)
}

/// `sa-lab check [ID]`.
pub async fn check(
    dir: Option<&Path>,
    id: Option<&str>,
    opts: &ConnectOptions,
    timeout: Duration,
    json: bool,
    width: u16,
) -> Result<Outcome, Error> {
    let ws = Workspace::locate(dir)?;
    let ex = pick(&ws, id)?;
    let was_solved = ws.progress()?.solved(ex.id);
    // The learner's files first: a mistake there needs no cluster.
    if let Err(e) = check::prepare(ex, &ws.folder(ex)) {
        ws.update(|p| p.record_check(ex.id, None, &now()))?;
        return Err(e.into());
    }
    let cluster = Cluster::connect(opts, timeout).await?;
    crate::ui::note(format!("Checking {} on {}", ex.id, cluster.describe));
    let result = check_one(&ws, &cluster, ex).await?;
    let stdout = if json {
        serde_json::to_string_pretty(&result).unwrap_or_default()
    } else {
        let mut out = render::check_result(&result, width);
        if let Some(build) = render::build_output(&result) {
            out = format!("{build}\n\n{out}");
        }
        out
    };
    Ok(Outcome {
        note: next_steps(&ws, ex, &result, was_solved)?,
        stdout,
        ok: result.passed,
    })
}

/// What to do after a check, for stderr.
pub fn next_steps(
    ws: &Workspace,
    ex: &Exercise,
    result: &CheckResult,
    was_solved: bool,
) -> Result<String, Error> {
    let progress = ws.progress()?;
    if result.passed {
        let mut s = String::new();
        if !was_solved {
            s.push_str(&format!(
                "Solved! Compare with a solution: sa-lab solution {}\n",
                ex.id
            ));
        }
        match progress.next_unsolved(catalog()) {
            Some(n) => s.push_str(&format!("Next: sa-lab check {}", n.id)),
            None => s.push_str("Every exercise is solved."),
        }
        return Ok(s);
    }
    let hints = ex.def()?.hints.len();
    let shown = progress.get(ex.id).hints_shown;
    let hint = if shown < hints {
        format!(
            "`sa-lab hint {}` gives hint {} of {hints}",
            ex.id,
            shown + 1
        )
    } else {
        format!(
            "every hint is shown: `sa-lab hint {}` repeats the last",
            ex.id
        )
    };
    Ok(format!(
        "Edit the files in {} and run `sa-lab check {}` again; {hint}.",
        ws.folder(ex).display(),
        ex.id
    ))
}

/// `sa-lab hint [ID]`: the next hint (the last one again once all are shown).
pub fn hint(dir: Option<&Path>, id: Option<&str>) -> Result<Outcome, Error> {
    let ws = Workspace::locate(dir)?;
    let ex = pick(&ws, id)?;
    let hints = ex.def()?.hints;
    let n = ws.update(|p| {
        let e = p.entry(ex.id);
        e.hints_shown = (e.hints_shown + 1).min(hints.len());
        e.hints_shown
    })?;
    let mut stdout = format!(
        "{} — hint {n} of {}:\n{}\n",
        ex.id,
        hints.len(),
        hints[n - 1].trim()
    );
    if n == hints.len() {
        stdout.push_str(&format!(
            "That was the last hint. `sa-lab solution {} --reveal` shows a solution.\n",
            ex.id
        ));
    }
    Ok(Outcome {
        stdout,
        ok: true,
        ..Outcome::default()
    })
}

/// `sa-lab solution ID [--reveal] [--write]`.
pub fn solution(dir: Option<&Path>, id: &str, reveal: bool, write: bool) -> Result<Outcome, Error> {
    let ws = Workspace::locate(dir)?;
    let ex = find(id)?;
    let solved = ws.progress()?.solved(ex.id);
    if !solved && !reveal {
        return Ok(Outcome {
            note: format!(
                "{} is not solved yet, so its solution stays hidden: `sa-lab hint {}` helps, \
                 and `sa-lab solution {} --reveal` shows it anyway.",
                ex.id, ex.id, ex.id
            ),
            ..Outcome::default()
        });
    }
    if !solved {
        ws.update(|p| p.entry(ex.id).revealed = true)?;
    }
    let mut stdout = String::new();
    for f in ex.files {
        stdout.push_str(&format!(
            "── {} ──\n{}",
            f.path,
            for_workspace(f.path, f.solution)
        ));
        if !f.solution.ends_with('\n') {
            stdout.push('\n');
        }
    }
    let mut note = String::new();
    if write {
        let kept = ws.reset(ex)?;
        ws.write(ex, Version::Solution)?;
        note = format!(
            "The solution is now in {}; what was there is in {}.",
            ws.folder(ex).display(),
            kept.display()
        );
    }
    Ok(Outcome {
        stdout,
        note,
        ok: true,
    })
}

/// `sa-lab reset ID`.
pub fn reset(dir: Option<&Path>, id: &str) -> Result<Outcome, Error> {
    let ws = Workspace::locate(dir)?;
    let ex = find(id)?;
    let kept = ws.reset(ex)?;
    Ok(Outcome {
        note: format!(
            "{} is back to its starter; your files are in {}.",
            ex.id,
            kept.display()
        ),
        ok: true,
        ..Outcome::default()
    })
}
