//! The docs kept in step with the code, without root:
//!
//! * `docs/json.md` documents exactly the key paths of `tests/data/json-contract.txt`: its table
//!   "Every field" has one row per path (written from its record, with the record in the "in"
//!   column: `interval`, `summary` or `both`; a row for an array stands for its elements), and
//!   its table "Inside fields that replay leaves null" only paths the contract cannot hold,
//!   each hanging off a documented one.
//! * `README.md` stays short enough to be read to the end.
//! * Every relative link of `README.md`, the top-level docs and `docs/*.md` names a file that exists.

#![allow(clippy::expect_used, clippy::panic)] // test helpers: a panic is the failure report

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The repository root (this crate's parent).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate sits in the workspace").to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const CONTRACT_TABLE: &str = "## Every field";
const LIVE_TABLE: &str = "## Inside fields that replay leaves null";
const RECORDS: [&str; 2] = ["interval", "summary"];

/// The contract's key paths that docs/json.md must document: every path but the two records
/// themselves and the elements of arrays (`flows[]`, documented with `flows`).
fn contract_paths() -> BTreeSet<String> {
    let text = read(&root().join("rst-userspace/tests/data/json-contract.txt"));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split_once(':').map_or(line, |(path, _)| path).trim().to_owned())
        .filter(|path| !RECORDS.contains(&path.as_str()) && !path.ends_with("[]"))
        .collect()
}

/// The paths one table row documents, or `None` for a line that is no path row: the first cell
/// a backquoted path, the second the records that hold it.
fn row_paths(line: &str) -> Option<Result<Vec<String>, String>> {
    let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').map(str::trim).collect();
    let path = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
    let records: &[&str] = match *cells.get(1)? {
        "both" => &RECORDS,
        "interval" => &["interval"],
        "summary" => &["summary"],
        other => return Some(Err(format!("`{path}`: \"in\" is {other:?}, not interval, summary or both"))),
    };
    Some(Ok(records.iter().map(|record| format!("{record}.{path}")).collect()))
}

/// The paths documented under each of the two tables of docs/json.md, with any malformed row.
fn documented_paths() -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let text = read(&root().join("docs/json.md"));
    let (mut contract, mut live, mut errors) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    let mut section = "";
    for line in text.lines() {
        if line.starts_with("## ") {
            section = line.trim();
            continue;
        }
        let target = match section {
            CONTRACT_TABLE => &mut contract,
            LIVE_TABLE => &mut live,
            _ => continue,
        };
        match row_paths(line) {
            Some(Ok(paths)) => {
                for path in paths {
                    if !target.insert(path.clone()) {
                        errors.push(format!("{path} is documented twice"));
                    }
                }
            }
            Some(Err(error)) => errors.push(error),
            None => {}
        }
    }
    (contract, live, errors)
}

/// `a.b[].c` → `a.b`: the path a field hangs off.
fn parent(path: &str) -> Option<String> {
    let (parent, _) = path.rsplit_once('.')?;
    Some(parent.trim_end_matches("[]").to_owned())
}

#[test]
fn docs_json_documents_every_path_of_the_contract_and_no_other() {
    let contract = contract_paths();
    let (documented, live, errors) = documented_paths();
    assert!(errors.is_empty(), "docs/json.md has malformed rows:\n  {}", errors.join("\n  "));
    assert!(!documented.is_empty(), "docs/json.md: no rows found under {CONTRACT_TABLE:?}");

    let undocumented: Vec<&String> = contract.difference(&documented).collect();
    let not_in_contract: Vec<&String> = documented.difference(&contract).collect();
    let live_in_contract: Vec<&String> = live.intersection(&contract).collect();
    let orphans: Vec<&String> = live
        .iter()
        .filter(|path| parent(path).is_none_or(|parent| !contract.contains(&parent) && !live.contains(&parent)))
        .collect();
    assert!(
        undocumented.is_empty() && not_in_contract.is_empty() && live_in_contract.is_empty() && orphans.is_empty(),
        "docs/json.md is out of step with tests/data/json-contract.txt.\n  \
         in the contract, not in {CONTRACT_TABLE:?}: {undocumented:#?}\n  \
         in {CONTRACT_TABLE:?}, not in the contract: {not_in_contract:#?}\n  \
         in {LIVE_TABLE:?} but in the contract (move the row up): {live_in_contract:#?}\n  \
         in {LIVE_TABLE:?} under no documented path: {orphans:#?}"
    );
}

#[test]
fn the_readme_is_short_enough_to_read_to_the_end() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; move detail into docs/ (at most 300)");
}

/// The targets of the Markdown links `](target)` in `text` that are relative paths, without
/// their `#fragment`.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        rest = &rest[end..];
        let path = target.split('#').next().unwrap_or_default();
        if path.is_empty() || path.contains("://") || path.starts_with("mailto:") || path.contains(' ') {
            continue;
        }
        links.push(path.to_owned());
    }
    links
}

#[test]
fn every_relative_link_of_the_docs_names_a_file_that_exists() {
    let root = root();
    let mut pages: Vec<PathBuf> =
        ["README.md", "BENCHMARKS.md", "RELIABILITY.md"].iter().map(|page| root.join(page)).collect();
    let docs = fs::read_dir(root.join("docs")).expect("docs/");
    let mut doc_pages: Vec<PathBuf> = docs
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    doc_pages.sort();
    assert!(!doc_pages.is_empty(), "docs/ holds no page");
    pages.extend(doc_pages);

    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let dir = page.parent().expect("a page sits in a directory");
        for link in relative_links(&read(page)) {
            checked += 1;
            if !dir.join(&link).exists() {
                broken.push(format!("{}: {link}", page.strip_prefix(&root).unwrap_or(page).display()));
            }
        }
    }
    assert!(checked > 0, "no relative link found: the link scan is broken");
    assert!(broken.is_empty(), "links to files that do not exist:\n  {}", broken.join("\n  "));
}

#[test]
fn the_readme_links_every_page_of_docs() {
    let root = root();
    let readme = read(&root.join("README.md"));
    let linked: BTreeSet<String> = relative_links(&readme).into_iter().collect();
    let missing: Vec<String> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| format!("docs/{}", entry.expect("docs/ entry").file_name().to_string_lossy()))
        .filter(|page| page.ends_with(".md") && !linked.contains(page))
        .collect();
    assert!(missing.is_empty(), "README.md's \"Where to read on\" does not link: {missing:?}");
}

#[test]
fn the_link_scan_and_the_row_parser_read_what_they_should() {
    assert_eq!(relative_links("see [a](docs/a.md#x), [b](https://x.org) and [c](../c.md)"), ["docs/a.md", "../c.md"]);
    assert_eq!(
        row_paths("| `flows[].src` | both | string | the sender |"),
        Some(Ok(vec!["interval.flows[].src".to_owned(), "summary.flows[].src".to_owned()]))
    );
    assert_eq!(row_paths("| path | in | type | meaning |"), None);
    assert!(matches!(row_paths("| `x` | neither | string | … |"), Some(Err(_))));
    assert_eq!(parent("summary.flows[].workload.cgroup").as_deref(), Some("summary.flows[].workload"));
    assert_eq!(parent("summary.flows[].src").as_deref(), Some("summary.flows"));
}
