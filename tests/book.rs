//! The book's links hold: every relative link or image in `docs/src/**/*.md`,
//! `README.md`, `CHANGELOG.md` and `ARCHITECTURE.md` names a file that
//! exists, and a `#anchor` names a heading of the page it points at (by the
//! slug mdBook and GitHub give it). Every page under `docs/src` is in
//! `SUMMARY.md` (mdBook would leave it out silently), and the README stays
//! short. A failure names the file, the link and what is wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `.md` file under `dir`, sorted.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The book's pages and the repository's top-level documents.
fn documents() -> Vec<PathBuf> {
    let mut documents = markdown_files(&root().join("docs/src"));
    for top in ["README.md", "CHANGELOG.md", "ARCHITECTURE.md"] {
        documents.push(root().join(top));
    }
    documents
}

/// The lines of a markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"]
            .into_iter()
            .find(|marker| trimmed.starts_with(marker));
        match (fence, marker) {
            (None, Some(marker)) => fence = Some(marker),
            (Some(open), Some(marker)) if open == marker => fence = None,
            (None, None) => lines.push(line),
            _ => {}
        }
    }
    lines
}

/// A line without its inline code spans (`` `[a](b)` `` is text, not a link).
fn without_code_spans(line: &str) -> String {
    let mut kept = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        kept.push_str(&rest[..start]);
        let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
        let opening = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(opening) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                rest = after;
            }
        }
    }
    kept.push_str(rest);
    kept
}

/// The targets of inline links and images, `[text](target)` and
/// `![alt](target "title")`, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let inside = after[..end].trim();
            let target = inside
                .strip_prefix('<')
                .and_then(|inner| inner.split('>').next())
                .unwrap_or_else(|| inside.split_whitespace().next().unwrap_or(""));
            targets.push(target.to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// The anchor mdBook and GitHub give a heading: lowercase, spaces to `-`,
/// punctuation dropped but for `-` and `_`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // A link in a heading contributes its text only.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").map(|close| open + close) {
            Some(close) if rest[close..].contains(')') => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..close]);
                let after = &rest[close + 2..];
                rest = &after[after.find(')').map_or(after.len(), |end| end + 1)..];
            }
            _ => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings, with `-1`, `-2` … for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    for line in prose_lines(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut repeat = 0;
        while anchors.contains(&anchor) {
            repeat += 1;
            anchor = format!("{base}-{repeat}");
        }
        anchors.insert(anchor);
    }
    anchors
}

fn is_external(target: &str) -> bool {
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| target.starts_with(scheme))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_relative_link_names_a_file_and_heading_that_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = read(&document);
        let dir = document.parent().expect("a document has a directory");
        for target in link_targets(&text) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                document.clone()
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                problems.push(format!(
                    "{}: link ({target}) names {}, which does not exist",
                    shown(&document),
                    shown(&linked)
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if linked.extension().is_none_or(|extension| extension != "md") {
                problems.push(format!(
                    "{}: link ({target}) has an anchor into a file that is not markdown",
                    shown(&document)
                ));
                continue;
            }
            if !anchors(&read(&linked)).contains(anchor) {
                problems.push(format!(
                    "{}: link ({target}): {} has no heading whose anchor is #{anchor}",
                    shown(&document),
                    shown(&linked)
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the scan broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let src = root().join("docs/src");
    let summary_path = src.join("SUMMARY.md");
    let listed: HashSet<PathBuf> = link_targets(&read(&summary_path))
        .into_iter()
        .map(|target| src.join(target.split('#').next().unwrap_or_default()))
        .collect();
    let missing: Vec<String> = markdown_files(&src)
        .into_iter()
        .filter(|page| *page != summary_path && !listed.contains(page))
        .map(|page| {
            format!(
                "{}: not listed in docs/src/SUMMARY.md (mdBook would leave it out)",
                shown(&page)
            )
        })
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_readme_stays_short() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md: {lines} lines, more than {README_MAX_LINES}; move the rest into the book (docs/src)"
    );
}

#[test]
fn slugs_follow_mdbook_and_github() {
    assert_eq!(
        slug("Rate control: counts, percentages and rounding"),
        "rate-control-counts-percentages-and-rounding"
    );
    assert_eq!(
        slug("The benchmark suite: `flotilla bench`"),
        "the-benchmark-suite-flotilla-bench"
    );
    assert_eq!(
        slug("Alertmanager's webhook: `POST /alerts`"),
        "alertmanagers-webhook-post-alerts"
    );
    assert_eq!(slug("one_two - three"), "one_two---three");
    assert_eq!(slug("[A link](x.md) here"), "a-link-here");
    assert_eq!(
        link_targets("[a](b.md#c) `[not](this)`\n```\n[nor](that)\n```\n![i](p.png \"t\")"),
        ["b.md#c", "p.png"]
    );
}
