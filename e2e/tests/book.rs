//! Book checks. No cluster: these read files and run mdBook.
//!
//! mdBook does not fail on a missing include or anchor; it logs an error and
//! leaves the directive (or nothing) in the page. So we check every
//! `{{#include}}` / `{{#rustdoc_include}}` ourselves, check that manifests are
//! included from `labs/` instead of pasted, that SUMMARY.md and the chapter
//! files mirror `labs/NN-slug`, and finally build the book with the pinned
//! mdBook and fail on any `{{#` left in the HTML.
//!
//! The build test needs mdBook 0.5: `scripts/install-mdbook.sh` (or
//! `MDBOOK=/path/to/mdbook`); without it the test fails and says so.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn book_dir() -> PathBuf {
    repo_root().join("book")
}

fn book_src() -> PathBuf {
    book_dir().join("src")
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// One `{{#kind target}}` directive found in a markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    line: usize,
    kind: String,
    /// The whole first argument, e.g. `../../labs/x/src/main.rs:client`.
    target: String,
}

/// What part of the target file a directive selects.
#[derive(Debug, PartialEq, Eq)]
enum Selection {
    Whole,
    Anchor(String),
    /// A line range (`file:3`, `file:3:10`, `file::10`, `file:3:`).
    Lines,
}

/// Finds `{{#...}}` directives the way mdBook's link preprocessor does:
/// `{{ #kind args }}`, anywhere in the text (also inside code blocks), except
/// when escaped as `\{{#...}}`.
fn directives(text: &str) -> Vec<Directive> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut pos = 0;
        while let Some(off) = line[pos..].find("{{") {
            let start = pos + off;
            pos = start + 2;
            if start > 0 && bytes[start - 1] == b'\\' {
                continue; // escaped: mdBook prints it literally
            }
            let rest = line[start + 2..].trim_start();
            let Some(rest) = rest.strip_prefix('#') else {
                continue;
            };
            let kind: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(end) = rest.find("}}") else {
                // An unterminated directive is as broken as a missing file.
                out.push(Directive {
                    line: idx + 1,
                    kind,
                    target: String::new(),
                });
                continue;
            };
            let args = rest[kind.len()..end].trim();
            out.push(Directive {
                line: idx + 1,
                kind,
                target: args.split_whitespace().next().unwrap_or("").to_owned(),
            });
        }
    }
    out
}

/// Splits `path[:anchor|:range]` as mdBook does: the part after the first
/// `:` is a line range if it starts with a digit or another `:`, else an
/// anchor name.
fn split_target(target: &str) -> (&str, Selection) {
    match target.split_once(':') {
        None => (target, Selection::Whole),
        Some((path, sel)) => {
            let first = sel.chars().next();
            if sel.is_empty() {
                (path, Selection::Whole)
            } else if first.is_some_and(|c| c.is_ascii_digit() || c == ':') {
                (path, Selection::Lines)
            } else {
                (path, Selection::Anchor(sel.to_owned()))
            }
        }
    }
}

/// mdBook's anchor syntax: `ANCHOR: name` and `ANCHOR_END: name`, anywhere
/// on a line (after `//`, `#`, ...), names made of word characters and `-`.
fn anchor_on_line<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let i = line.find(marker)?;
    let name = line[i + marker.len()..].trim_start();
    let len = name
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(name.len());
    (len > 0).then(|| &name[..len])
}

/// Checks that `anchor` opens and closes in `text` and encloses at least one
/// real line. Returns a problem description otherwise.
fn check_anchor(text: &str, anchor: &str) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| anchor_on_line(l, "ANCHOR:") == Some(anchor));
    let Some(start) = start else {
        return Err(format!("no `ANCHOR: {anchor}` line"));
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| anchor_on_line(l, "ANCHOR_END:") == Some(anchor))
        .map(|p| p + start + 1);
    let Some(end) = end else {
        return Err(format!(
            "`ANCHOR: {anchor}` has no `ANCHOR_END: {anchor}` after it"
        ));
    };
    let content = lines[start + 1..end].iter().any(|l| {
        !l.trim().is_empty()
            && anchor_on_line(l, "ANCHOR:").is_none()
            && anchor_on_line(l, "ANCHOR_END:").is_none()
    });
    if !content {
        return Err(format!("anchor `{anchor}` is empty"));
    }
    Ok(())
}

/// Problems with the directives of one markdown file.
fn check_includes(md: &Path) -> Vec<String> {
    let text = fs::read_to_string(md).unwrap_or_default();
    let dir = md.parent().expect("a file has a parent");
    let mut problems = Vec::new();
    for d in directives(&text) {
        let at = format!("{}:{}", md.display(), d.line);
        if d.kind != "include" && d.kind != "rustdoc_include" {
            problems.push(format!(
                "{at}: `{{{{#{}` is not a directive we use (include, rustdoc_include)",
                d.kind
            ));
            continue;
        }
        if d.target.is_empty() {
            problems.push(format!(
                "{at}: `{{{{#{}` has no target or no `}}}}`",
                d.kind
            ));
            continue;
        }
        let (path, sel) = split_target(&d.target);
        let file = normalize(&dir.join(path));
        let Ok(content) = fs::read_to_string(&file) else {
            problems.push(format!(
                "{at}: included file {} does not exist",
                file.display()
            ));
            continue;
        };
        match sel {
            Selection::Anchor(a) => {
                if let Err(e) = check_anchor(&content, &a) {
                    problems.push(format!("{at}: {}: {e}", file.display()));
                }
            }
            Selection::Whole | Selection::Lines => {
                if content.trim().is_empty() {
                    problems.push(format!("{at}: included file {} is empty", file.display()));
                }
            }
        }
    }
    problems
}

/// A fenced code block: its opening line number, info string and the raw
/// lines between the fences.
struct Fence {
    line: usize,
    info: String,
    body: Vec<String>,
}

fn fences(text: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    // The fence string that opened the current block, and the block.
    let mut open: Option<(&str, Fence)> = None;
    for (idx, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| t.starts_with(m));
        match open.take() {
            None => {
                if let Some(m) = marker {
                    let info = t.trim_start_matches(&m[..1]).trim().to_owned();
                    let fence = Fence {
                        line: idx + 1,
                        info,
                        body: Vec::new(),
                    };
                    open = Some((m, fence));
                }
            }
            Some((m, mut fence)) => {
                let closes = marker == Some(m) && t.trim_start_matches(&m[..1]).trim().is_empty();
                if closes {
                    out.push(fence);
                } else {
                    fence.body.push(line.to_owned());
                    open = Some((m, fence));
                }
            }
        }
    }
    out
}

/// Problems: Kubernetes manifests written into a page instead of included.
fn check_no_pasted_manifests(md: &Path) -> Vec<String> {
    let text = fs::read_to_string(md).unwrap_or_default();
    let mut problems = Vec::new();
    for f in fences(&text) {
        let pasted = f.body.iter().any(|l| {
            directives(l).is_empty() && {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with("apiVersion:") || t.starts_with("\"apiVersion\":")
            }
        });
        if pasted {
            problems.push(format!(
                "{}:{}: a ```{} block contains `apiVersion:`: include the manifest \
                 from labs/NN-slug/manifests/ instead of pasting it",
                md.display(),
                f.line,
                f.info
            ));
        }
    }
    problems
}

/// Every `*.md` under `dir`, recursively, sorted.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `NN-slug` if `name` looks like one (two digits, a dash, lower-case
/// letters, digits and dashes).
fn chapter_slug(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let ok = b.len() > 3
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2] == b'-'
        && name[3..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(name)
}

/// The `labs/NN-slug` directories.
fn lab_slugs(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(repo.join("labs")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && chapter_slug(&name).is_some() {
                out.insert(name);
            }
        }
    }
    out
}

/// The `book/src/NN-slug.md` chapter files, as slugs.
fn chapter_slugs(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(src) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".md").and_then(chapter_slug);
            if let Some(stem) = stem {
                out.insert(stem.to_owned());
            }
        }
    }
    out
}

/// The link targets in SUMMARY.md (`[Title](path.md)`), in order.
fn summary_links(summary: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in summary.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            if !target.is_empty() {
                out.push(target.split('#').next().unwrap_or(target).to_owned());
            }
            rest = &after[end..];
        }
    }
    out
}

fn all_problems<F: Fn(&Path) -> Vec<String>>(files: &[PathBuf], f: F) -> Vec<String> {
    files.iter().flat_map(|p| f(p)).collect()
}

fn fail_on(problems: Vec<String>, what: &str) {
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The checks on the real book
// ---------------------------------------------------------------------------

#[test]
fn every_include_and_anchor_resolves() {
    let files = markdown_files(&book_src());
    assert!(
        !files.is_empty(),
        "no markdown under {}",
        book_src().display()
    );
    fail_on(
        all_problems(&files, check_includes),
        "book includes that mdBook would silently drop",
    );
}

#[test]
fn manifests_are_included_not_pasted() {
    let files = markdown_files(&book_src());
    fail_on(
        all_problems(&files, check_no_pasted_manifests),
        "manifests pasted into the book",
    );
}

#[test]
fn summary_lists_every_page_and_chapters_mirror_labs() {
    let src = book_src();
    let summary = fs::read_to_string(src.join("SUMMARY.md")).expect("book/src/SUMMARY.md");
    let links = summary_links(&summary);
    let mut problems = Vec::new();

    for l in &links {
        if !src.join(l).is_file() {
            problems.push(format!("SUMMARY.md links to {l}, which does not exist"));
        }
    }
    // Every page is reachable from SUMMARY.md (mdBook ignores the others).
    for md in markdown_files(&src) {
        let rel = md
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel != "SUMMARY.md" && !links.contains(&rel) {
            problems.push(format!("book/src/{rel} is not listed in SUMMARY.md"));
        }
    }
    // Chapters appear in SUMMARY.md in their numeric order.
    let listed: Vec<&String> = links
        .iter()
        .filter(|l| l.strip_suffix(".md").and_then(chapter_slug).is_some())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    if listed != sorted {
        problems.push(format!(
            "chapters are out of order in SUMMARY.md: {listed:?}"
        ));
    }

    let labs = lab_slugs(&repo_root());
    let chapters = chapter_slugs(&src);
    for l in labs.difference(&chapters) {
        problems.push(format!("labs/{l}/ has no chapter book/src/{l}.md"));
    }
    for c in chapters.difference(&labs) {
        problems.push(format!("book/src/{c}.md has no lab directory labs/{c}/"));
    }
    fail_on(problems, "SUMMARY.md and chapter/lab mirroring");
}

/// Each chapter shows what its lab uses: every manifest whole, the expected
/// table, the transcript of a real run, and the lab code by anchor: `client`
/// (building the client with `Config::incluster()`), `by-hand` in chapter 02,
/// and every other anchor `labs/NN-slug/src/main.rs` defines (`probes`, ...).
/// A manifest or anchor added to a lab without appearing in the book fails
/// here.
#[test]
fn chapters_show_their_lab() {
    let repo = repo_root();
    let src = book_src();
    let mut problems = Vec::new();
    for slug in chapter_slugs(&src) {
        let md = src.join(format!("{slug}.md"));
        let text = fs::read_to_string(&md).unwrap_or_default();
        let dir = md.parent().unwrap();
        let included: BTreeSet<(PathBuf, Option<String>)> = directives(&text)
            .into_iter()
            .map(|d| {
                let (path, sel) = split_target(&d.target);
                let anchor = match sel {
                    Selection::Anchor(a) => Some(a),
                    _ => None,
                };
                (normalize(&dir.join(path)), anchor)
            })
            .collect();
        let has = |path: &Path, anchor: Option<&str>| {
            included.contains(&(normalize(path), anchor.map(str::to_owned)))
        };

        let lab = repo.join("labs").join(&slug);
        let mut manifests: Vec<PathBuf> = fs::read_dir(lab.join("manifests"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect()
            })
            .unwrap_or_default();
        manifests.sort();
        if manifests.is_empty() {
            problems.push(format!("labs/{slug}/manifests/ has no *.yaml"));
        }
        for m in &manifests {
            if !has(m, None) {
                problems.push(format!(
                    "book/src/{slug}.md does not include {} whole",
                    m.strip_prefix(&repo).unwrap_or(m).display()
                ));
            }
        }
        if !has(&lab.join("expected.md"), None) {
            problems.push(format!(
                "book/src/{slug}.md does not include labs/{slug}/expected.md"
            ));
        }
        if !has(&src.join("transcripts").join(format!("{slug}.txt")), None) {
            problems.push(format!(
                "book/src/{slug}.md does not include transcripts/{slug}.txt"
            ));
        }
        // `client` always, `by-hand` in chapter 02, and every other anchor
        // the lab defines: an anchor exists to be shown.
        let main_rs = lab.join("src/main.rs");
        let source = fs::read_to_string(&main_rs).unwrap_or_default();
        let mut anchors: BTreeSet<String> = source
            .lines()
            .filter_map(|l| anchor_on_line(l, "ANCHOR:"))
            .map(str::to_owned)
            .collect();
        anchors.insert("client".into());
        if slug.starts_with("02-") {
            anchors.insert("by-hand".into());
        }
        for a in &anchors {
            if !has(&main_rs, Some(a)) {
                problems.push(format!(
                    "book/src/{slug}.md does not include labs/{slug}/src/main.rs:{a}"
                ));
            }
        }
    }
    fail_on(problems, "chapters that do not show their lab");
}

/// Transcripts start with the command that produced them and belong to a
/// chapter. Placeholders (before the first real capture) are reported on
/// stderr, not failed.
#[test]
fn transcripts_name_their_command() {
    let src = book_src();
    let dir = src.join("transcripts");
    let chapters = chapter_slugs(&src);
    let mut problems = Vec::new();
    let mut placeholders = Vec::new();
    for slug in &chapters {
        let path = dir.join(format!("{slug}.txt"));
        let Ok(text) = fs::read_to_string(&path) else {
            problems.push(format!("missing {}", path.display()));
            continue;
        };
        let want = format!("$ sa-lab run {}", &slug[..2]);
        if text.lines().next() != Some(want.as_str()) {
            problems.push(format!("{}: first line must be `{want}`", path.display()));
        }
        if text.contains("(regenerate with scripts/capture-transcripts.sh)") {
            placeholders.push(slug.clone());
        }
    }
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".txt").unwrap_or(&name);
            if !chapters.contains(stem) {
                problems.push(format!("book/src/transcripts/{name} belongs to no chapter"));
            }
        }
    }
    if !placeholders.is_empty() {
        eprintln!(
            "note: placeholder transcripts (run scripts/capture-transcripts.sh): {}",
            placeholders.join(", ")
        );
    }
    fail_on(problems, "transcripts");
}

/// The diagrams: Graphviz sources in `book/src/diagrams/*.dot`, each drawn
/// to the SVG next to it by scripts/render-diagrams.sh (whose `--check`,
/// run by scripts/test.sh, redraws them and fails on any difference). Here:
/// every source has its SVG, a quoted graph name (the picture's title) and a
/// caption; every SVG has a source and is shown by some page; and every
/// picture a page shows exists and is described in words (its alt text),
/// for readers who cannot see it and for search.
#[test]
fn diagrams_have_sources_and_are_shown() {
    let src = book_src();
    let dir = src.join("diagrams");
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let with_ext = |ext: &str| -> BTreeSet<PathBuf> {
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .cloned()
            .collect()
    };
    let (dots, mut unshown) = (with_ext("dot"), with_ext("svg"));
    assert!(!dots.is_empty(), "no diagrams in {}", dir.display());
    let mut problems = Vec::new();
    for dot in &dots {
        let text = fs::read_to_string(dot).unwrap_or_default();
        if !dot.with_extension("svg").is_file() {
            problems.push(format!(
                "{} has no SVG: run scripts/render-diagrams.sh",
                dot.display()
            ));
        }
        if graph_name(&text).is_none() {
            problems.push(format!(
                "{}: name the graph (`digraph \"What it shows\" {{`): it is the picture's title",
                dot.display()
            ));
        }
        if !text.contains("labelloc=b label=\"") {
            problems.push(format!(
                "{}: give the graph a caption (graph [labelloc=b label=\"...\"])",
                dot.display()
            ));
        }
    }
    for svg in &unshown {
        if !svg.with_extension("dot").is_file() {
            problems.push(format!("{} has no source .dot next to it", svg.display()));
        }
    }
    for md in markdown_files(&src) {
        let text = fs::read_to_string(&md).unwrap_or_default();
        let dir = md.parent().unwrap();
        for img in images(&text) {
            let at = format!("{}:{}", md.display(), img.line);
            let file = normalize(&dir.join(&img.target));
            if !file.is_file() {
                problems.push(format!("{at}: picture {} does not exist", img.target));
            }
            if img.alt.split_whitespace().count() < 5 {
                problems.push(format!(
                    "{at}: describe {} in its alt text (what the picture says, in words)",
                    img.target
                ));
            }
            unshown.remove(&file);
        }
    }
    for svg in &unshown {
        problems.push(format!("{} is shown by no page", svg.display()));
    }
    fail_on(problems, "diagrams");
}

/// A `![alt](target)` image in a markdown page.
#[derive(Debug, PartialEq, Eq)]
struct Image {
    line: usize,
    alt: String,
    target: String,
}

/// The images of a page, outside code blocks.
fn images(text: &str) -> Vec<Image> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (idx, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("![") {
            let after = &rest[i + 2..];
            let Some((alt, tail)) = after.split_once("](") else {
                break;
            };
            let Some((target, tail)) = tail.split_once(')') else {
                break;
            };
            out.push(Image {
                line: idx + 1,
                alt: alt.to_owned(),
                target: target.trim().to_owned(),
            });
            rest = tail;
        }
    }
    out
}

/// The quoted name of the first `digraph "..."` (or `graph "..."`).
fn graph_name(dot: &str) -> Option<String> {
    dot.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("digraph ") || l.starts_with("graph "))
        .and_then(|l| {
            let rest = &l[l.find('"')? + 1..];
            Some(rest[..rest.find('"')?].to_owned())
        })
}

/// book.toml names the workspace's repository (Cargo.toml) and an edit link
/// under it.
#[test]
fn book_toml_names_the_repository() {
    let cargo = fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let book = fs::read_to_string(book_dir().join("book.toml")).expect("book/book.toml");
    let value = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
    };
    let repo = value(&cargo, "repository").expect("Cargo.toml has no `repository`");
    assert_eq!(
        value(&book, "git-repository-url").as_deref(),
        Some(repo.as_str()),
        "book.toml's git-repository-url must be the workspace's repository"
    );
    let edit = value(&book, "edit-url-template").expect("book.toml has no edit-url-template");
    assert!(
        edit.starts_with(&format!("{repo}/")) && edit.contains("{path}"),
        "edit-url-template `{edit}` must point into {repo} and name the page's {{path}}"
    );
}

/// Builds the book with the pinned mdBook into a temporary directory and
/// fails on any error or warning mdBook logs and on any `{{#` left in the
/// generated HTML.
#[test]
fn book_builds_with_no_directive_left() {
    let Some(mdbook) = find_mdbook() else {
        panic!(
            "mdBook 0.5 not found. Install the pinned version with\n    \
             scripts/install-mdbook.sh\n\
             (it prints the binary path), or set MDBOOK=/path/to/mdbook."
        );
    };

    let version = Command::new(&mdbook)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", mdbook.display()));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert!(
        version.starts_with("mdbook v0.5."),
        "{} is `{version}`, the book needs mdBook 0.5 (scripts/install-mdbook.sh)",
        mdbook.display()
    );

    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(&mdbook)
        .arg("build")
        .arg(book_dir())
        .arg("--dest-dir")
        .arg(out.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run mdbook build");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "mdbook build failed ({}):\n{log}",
        run.status
    );

    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("ERROR") || t.starts_with("WARN")
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "mdbook build logged errors or warnings:\n  {}",
        complaints.join("\n  ")
    );

    let mut left = Vec::new();
    let mut pages = 0;
    let mut stack = vec![out.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read output dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "html") {
                pages += 1;
                let html = fs::read_to_string(&p).unwrap_or_default();
                for (i, l) in html.lines().enumerate() {
                    if l.contains("{{#") {
                        left.push(format!("{}:{}: {}", p.display(), i + 1, l.trim()));
                    }
                }
            }
        }
    }
    assert!(
        pages > 0,
        "mdbook wrote no HTML into {}",
        out.path().display()
    );
    fail_on(left, "`{{#` left in the generated HTML");

    // Every chapter became a page.
    for slug in chapter_slugs(&book_src()) {
        assert!(
            out.path().join(format!("{slug}.html")).is_file(),
            "no {slug}.html in the built book"
        );
    }

    // Every picture a page shows is in the built book, next to the page.
    let mut problems = Vec::new();
    for md in markdown_files(&book_src()) {
        let rel = md.strip_prefix(book_src()).unwrap();
        let text = fs::read_to_string(&md).unwrap_or_default();
        for img in images(&text) {
            let built = out.path().join(rel.parent().unwrap()).join(&img.target);
            if !built.is_file() {
                problems.push(format!(
                    "{}: {} is not in the built book",
                    rel.display(),
                    img.target
                ));
            }
        }
    }
    fail_on(problems, "pictures in the built book");
}

/// `MDBOOK` if set, else the binary `scripts/install-mdbook.sh --print` names
/// if it is installed.
fn find_mdbook() -> Option<PathBuf> {
    if let Some(m) = std::env::var_os("MDBOOK").filter(|m| !m.is_empty()) {
        let m = PathBuf::from(m);
        assert!(m.is_file(), "MDBOOK={} does not exist", m.display());
        return Some(m);
    }
    let script = repo_root().join("scripts/install-mdbook.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The checks check: a small fake book with every mistake in it
// ---------------------------------------------------------------------------

#[test]
fn checks_catch_broken_books() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(
        root.join("lab.rs"),
        "fn main() {\n    // ANCHOR: good\n    run();\n    // ANCHOR_END: good\n\
         // ANCHOR: open\n    x();\n    // ANCHOR: empty\n    // ANCHOR_END: empty\n}\n",
    )
    .unwrap();
    fs::write(root.join("m.yaml"), "apiVersion: v1\nkind: Namespace\n").unwrap();
    let page = root.join("src/page.md");
    fs::write(
        &page,
        "# Page\n\n```rust\n{{#include ../lab.rs:good}}\n```\n\n\
         ```rust\n{{#include ../lab.rs:missing}}\n```\n\n\
         ```rust\n{{#include ../lab.rs:open}}\n```\n\n\
         ```rust\n{{#rustdoc_include ../lab.rs:empty}}\n```\n\n\
         ```yaml\n{{#include ../m.yaml}}\n```\n\n\
         ```yaml\n{{ #include ../nope.yaml }}\n```\n\n\
         ```yaml\napiVersion: v1\nkind: ServiceAccount\n```\n\n\
         Escaped: \\{{#include ../nope.md}} and {{#inlcude ../m.yaml}}.\n\n\
         ~~~text\n{{#include ../lab.rs:3:4}}\n~~~\n",
    )
    .unwrap();

    let inc = check_includes(&page);
    let has = |needle: &str| inc.iter().any(|p| p.contains(needle));
    assert!(has("no `ANCHOR: missing` line"), "{inc:#?}");
    assert!(has("`ANCHOR: open` has no `ANCHOR_END: open`"), "{inc:#?}");
    assert!(has("anchor `empty` is empty"), "{inc:#?}");
    assert!(has("nope.yaml does not exist"), "{inc:#?}");
    assert!(has("`{{#inlcude` is not a directive"), "{inc:#?}");
    assert!(
        !has("nope.md"),
        "escaped directive must be ignored: {inc:#?}"
    );
    assert_eq!(inc.len(), 5, "{inc:#?}");

    let pasted = check_no_pasted_manifests(&page);
    assert_eq!(pasted.len(), 1, "{pasted:#?}");
    assert!(pasted[0].contains("```yaml block contains `apiVersion:`"));

    assert_eq!(
        split_target("a.rs:x"),
        ("a.rs", Selection::Anchor("x".into()))
    );
    assert_eq!(split_target("a.rs:3:9"), ("a.rs", Selection::Lines));
    assert_eq!(split_target("a.rs::9"), ("a.rs", Selection::Lines));
    assert_eq!(split_target("a.yaml"), ("a.yaml", Selection::Whole));
    assert_eq!(
        summary_links("- [A](01-a.md)\n  - [B](sub/b.md#x)\n[I](intro.md)"),
        vec!["01-a.md", "sub/b.md", "intro.md"]
    );
    assert_eq!(chapter_slug("03-rolebinding"), Some("03-rolebinding"));
    assert_eq!(chapter_slug("lab-kit"), None);
}

#[test]
fn diagram_checks_catch_mistakes() {
    let page = "# Page\n\n![A picture of five words](diagrams/a.svg) and \
                ![short](diagrams/b.svg)\n\n```md\n![in code](x.svg)\n```\n\n\
                text ![x](y.png) more\n";
    assert_eq!(
        images(page),
        vec![
            Image {
                line: 3,
                alt: "A picture of five words".into(),
                target: "diagrams/a.svg".into()
            },
            Image {
                line: 3,
                alt: "short".into(),
                target: "diagrams/b.svg".into()
            },
            Image {
                line: 9,
                alt: "x".into(),
                target: "y.png".into()
            },
        ]
    );
    assert_eq!(graph_name("// c\ndigraph \"A b\" {"), Some("A b".into()));
    assert_eq!(graph_name("digraph {"), None);
}
