//! The code's pointers to the design resolve: every reference to docs/design.md with an anchor,
//! written in the sources and tests, names one of its headings; and nothing cites the sections of
//! the old specification, which is not part of the repository.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DESIGN: &str = "docs/design.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(DESIGN)).expect("docs/design.md exists");
    let mut in_code = false;
    text.lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect()
}

/// Every Rust file under `dir`. The simulator's sources under `src/dev/` are checked where they
/// move, in their own crate under `crates/`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !matches!(name.to_str(), Some("node_modules" | "target"))
                && path != root().join("src/dev")
            {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in ["src", "tests", "crates"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

#[test]
fn every_reference_to_the_design_names_one_of_its_headings() {
    let anchors = anchors();
    let needle = format!("{DESIGN}#");
    let mut found = 0;
    let mut broken = Vec::new();
    for (path, text) in sources() {
        for (number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices(&needle) {
                let reference: String = line[at + needle.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
                    .collect();
                found += 1;
                if !anchors.contains(&reference) {
                    broken.push(format!("{}:{}: #{reference}", path.display(), number + 1));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "references to headings docs/design.md does not have (its anchors: {anchors:?}):\n{}",
        broken.join("\n")
    );
    // The code does point at the design; a search that finds nothing checks nothing.
    assert!(found >= 10, "only {found} references found");
}

#[test]
fn nothing_cites_the_specification_that_is_not_in_the_repository() {
    // Spelled in two parts so that this file does not cite it either.
    let citation = ["SPEC", " §"].concat();
    let citing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| text.contains(&citation))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(citing.is_empty(), "{citing:?}");
}
