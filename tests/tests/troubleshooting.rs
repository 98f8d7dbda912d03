//! Keeps `docs/troubleshooting.md` and `docs/architecture.md` honest. No NATS or PostgreSQL: it
//! reads files only.
//!
//! - **Quoted messages.** On every line of `docs/troubleshooting.md` that starts with `You see:`,
//!   each inline code span is a message as the sources write it, with `…` standing for what the
//!   program fills in (a value, or a lower layer's message). The pieces between the `…`s must
//!   occur, in that order and close together, on one line of a file of `crates/`,
//!   `projections/`, `scripts/` or the `Makefile` (test files aside). Sources are compared with Rust's line continuations (`\` at
//!   a line's end) joined and `\"` and `{{`/`}}` unescaped, so a message split over two source
//!   lines still matches. A reworded message fails here until the page quotes the new words.
//!   Messages of other programs (sqlx, nats-server, the OS) belong in the page's prose, not on a
//!   `You see:` line.
//! - **Links.** Every relative link of both pages names a file or directory that exists, and a
//!   `#fragment` into a Markdown page names one of its headings (as GitHub makes anchors).
//! - **Paths.** Every code span of `docs/architecture.md` that is a repository path (with a `/`,
//!   ending in `/` or in a file extension, no placeholder such as `<name>`) exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kairos_tests::{heading_anchor, read_repo, repo_root};

const TROUBLESHOOTING: &str = "docs/troubleshooting.md";
const ARCHITECTURE: &str = "docs/architecture.md";
/// Where the quoted messages must come from.
const SOURCE_ROOTS: &[&str] = &["crates", "projections", "scripts", "Makefile"];
const SOURCE_EXTENSIONS: &[&str] = &["rs", "sh", "py", "js"];
/// File extensions that make a code span a path to check.
const PATH_EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "sql", "json", "sh", "conf", "py", "js", "css", "lock",
];

/// The lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The inline code spans of one line, as CommonMark reads them: a run of backticks opens a
/// span that the next run of as many closes, and one space is stripped from each end when both
/// ends have one. Also returns the line with the spans blanked out.
fn code_spans(line: &str) -> (Vec<String>, String) {
    let bytes = line.as_bytes();
    let mut spans = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            let next = line[i..].find('`').map_or(line.len(), |n| i + n);
            rest.push_str(&line[i..next]);
            i = next;
            continue;
        }
        let open = i;
        while i < bytes.len() && bytes[i] == b'`' {
            i += 1;
        }
        let ticks = i - open;
        let mut j = i;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let run = j;
                while j < bytes.len() && bytes[j] == b'`' {
                    j += 1;
                }
                if j - run == ticks {
                    close = Some((run, j));
                    break;
                }
            } else {
                j += 1;
            }
        }
        match close {
            Some((end, after)) => {
                let mut content = &line[i..end];
                if content.len() >= 2
                    && content.starts_with(' ')
                    && content.ends_with(' ')
                    && !content.trim().is_empty()
                {
                    content = &content[1..content.len() - 1];
                }
                spans.push(content.to_owned());
                rest.push(' ');
                i = after;
            }
            // Backticks without their closing run are literal text.
            None => rest.push_str(&line[open..i]),
        }
    }
    (spans, rest)
}

/// Every source file under [`SOURCE_ROOTS`], normalised as the module comment says.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && name != "tests" && !name.starts_with('.') {
                    walk(&path, out);
                }
            } else if name != "tests.rs"
                && path
                    .extension()
                    .is_some_and(|e| SOURCE_EXTENSIONS.contains(&e.to_string_lossy().as_ref()))
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for r in SOURCE_ROOTS {
        let path = repo_root().join(r);
        if path.is_dir() {
            walk(&path, &mut files);
        } else {
            files.push(path);
        }
    }
    files
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path, normalise(&text)))
        })
        .collect()
}

/// A source text as its messages print: `\`-newline continuations joined (with the next line's
/// indentation), `\"` as `"`, `{{` and `}}` as `{` and `}`.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('\n')) => {
                chars.next();
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            ('\\', Some('"')) => {
                chars.next();
                out.push('"');
            }
            ('{', Some('{')) | ('}', Some('}')) => {
                chars.next();
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The pieces of a quoted message between its `…`s, trimmed, empty ones dropped.
fn pieces(quote: &str) -> Vec<&str> {
    quote
        .split('…')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// How much a `…` may stand for: an expression or two inside the message, not the rest of a file.
const MAX_GAP: usize = 100;

/// Whether `pieces` occur in `line` in order, the first anywhere, each next one starting at most
/// [`MAX_GAP`] bytes after the previous one ends.
fn in_line(line: &str, pieces: &[&str], from: usize, first: bool) -> bool {
    let Some((piece, rest)) = pieces.split_first() else {
        return true;
    };
    let mut start = from;
    while let Some(at) = line[start..].find(piece) {
        let at = start + at;
        if !first && at - from > MAX_GAP {
            return false;
        }
        if in_line(line, rest, at + piece.len(), false) {
            return true;
        }
        start = at + piece.chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The first source file with a line holding every piece of `quote`, in order, close together
/// (lines as [`normalise`] joined them).
fn found_in<'a>(quote: &str, sources: &'a [(PathBuf, String)]) -> Option<&'a Path> {
    let pieces = pieces(quote);
    sources
        .iter()
        .find(|(_, text)| text.lines().any(|line| in_line(line, &pieces, 0, true)))
        .map(|(path, _)| path.as_path())
}

/// The `You see:` quotes of the troubleshooting page, with their line numbers.
fn quotes() -> Vec<(usize, String)> {
    let page = read_repo(TROUBLESHOOTING);
    prose_lines(&page)
        .into_iter()
        .filter(|(_, line)| line.trim_start().starts_with("You see:"))
        .flat_map(|(n, line)| code_spans(line).0.into_iter().map(move |q| (n, q)))
        .collect()
}

#[test]
fn every_quoted_message_is_in_the_sources() {
    let sources = sources();
    assert!(
        sources.len() > 50,
        "only {} source files found",
        sources.len()
    );
    let quotes = quotes();
    assert!(
        quotes.len() > 50,
        "only {} quoted messages: are the `You see:` lines still there?",
        quotes.len()
    );
    let mut missing = Vec::new();
    for (line, quote) in &quotes {
        let literal: usize = pieces(quote).iter().map(|p| p.chars().count()).sum();
        if literal < 10 {
            missing.push(format!(
                "{TROUBLESHOOTING}:{line}: `{quote}` quotes too little to check"
            ));
        } else if found_in(quote, &sources).is_none() {
            missing.push(format!(
                "{TROUBLESHOOTING}:{line}: `{quote}` is in no source file"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "quoted messages the sources do not write (reworded? quote the new words):\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_reworded_message_is_caught() {
    let sources = sources();
    let said = "the API key is not valid (unknown, revoked, expired, or its member was removed)";
    assert!(found_in(said, &sources).is_some());
    let reworded = "the API key is invalid (unknown, revoked, expired, or its member was removed)";
    assert_eq!(found_in(reworded, &sources), None);
    // A placeholder stands for what is filled in, in order, within one file.
    let filled = "your role (…) does not reach project …";
    assert!(found_in(filled, &sources).is_some());
    let swapped = "does not reach project … your role (…)";
    assert_eq!(found_in(swapped, &sources), None);
    // …and within one message: two messages of one file do not make one.
    let stitched = "the request body is larger than the … too many requests from this client";
    assert_eq!(found_in(stitched, &sources), None);
}

/// The anchors of a Markdown page's headings (repeated ones numbered as GitHub does).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = heading_anchor(heading.trim());
        let n = seen.entry(base.clone()).or_default();
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` of a Markdown page, outside code, with
/// their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let (_, rest) = code_spans(line);
        let mut from = 0;
        while let Some(at) = rest[from..].find("](") {
            let start = from + at + 2;
            let Some(len) = rest[start..].find(')') else {
                break;
            };
            out.push((n, rest[start..start + len].trim().to_owned()));
            from = start + len;
        }
    }
    out
}

#[test]
fn every_relative_link_leads_somewhere() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in [TROUBLESHOOTING, ARCHITECTURE] {
        let text = read_repo(page);
        let dir = Path::new(page).parent().expect("docs/");
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let relative = if file.is_empty() {
                PathBuf::from(page)
            } else {
                dir.join(file)
            };
            let path = repo_root().join(&relative);
            if !path.exists() {
                broken.push(format!(
                    "{page}:{line}: {target}: no {}",
                    relative.display()
                ));
                continue;
            }
            if let Some(anchor) = fragment
                && path.extension().is_some_and(|e| e == "md")
            {
                let target_text = std::fs::read_to_string(&path).expect("a Markdown page");
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!(
                        "{page}:{line}: {target}: {} has no heading #{anchor}",
                        relative.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links checked");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Whether a code span names a file or directory of the repository, rather than a type, a
/// subject or a route: `crates/kairos-bus/src/lib.rs`, `events-schema/`.
fn is_repo_path(span: &str) -> bool {
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let trimmed = span.strip_suffix('/').unwrap_or(span);
    let has_extension = Path::new(trimmed)
        .extension()
        .is_some_and(|e| PATH_EXTENSIONS.contains(&e.to_string_lossy().as_ref()));
    (trimmed.contains('/') || span.ends_with('/'))
        && trimmed.split('/').all(plain)
        && (span.ends_with('/') || has_extension)
}

#[test]
fn every_path_the_architecture_page_names_exists() {
    let text = read_repo(ARCHITECTURE);
    let mut missing = Vec::new();
    let mut checked = 0;
    for (line, content) in prose_lines(&text) {
        for span in code_spans(content).0 {
            if is_repo_path(&span) {
                checked += 1;
                if !repo_root().join(&span).exists() {
                    missing.push(format!("{ARCHITECTURE}:{line}: `{span}`"));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} paths checked");
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}
