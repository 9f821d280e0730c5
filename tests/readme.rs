//! The README and the design render as their authors meant: every line that looks like a table row
//! (`| … |`) is a row of a rendered table, not a paragraph of pipes cut off from its table (as the
//! `log.format`/`log.level` rows once were). Rendered with a CommonMark renderer with GitHub's
//! tables (`cmark-gfm -e table`), which is skipped with a loud message where it is not installed,
//! except under `CI`.
mod common;

use std::process::Command;

/// Lines outside fenced code blocks that look like table rows, and how many of them are
/// delimiter rows (`| --- |`), which render as no row of their own.
fn table_lines(markdown: &str) -> (Vec<&str>, usize) {
    let mut in_fence = false;
    let mut rows = Vec::new();
    let mut delimiters = 0;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !(trimmed.starts_with('|') && trimmed.ends_with('|') && trimmed.len() > 1) {
            continue;
        }
        if trimmed.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')) {
            delimiters += 1;
        } else {
            rows.push(trimmed);
        }
    }
    (rows, delimiters)
}

#[test]
fn every_table_row_renders_in_a_table() {
    let installed = Command::new("cmark-gfm")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        common::skip_unless_ci(
            "every_table_row_renders_in_a_table",
            "cmark-gfm is not installed (Debian: cmark-gfm; .ci/run installs it)",
        );
        return;
    }
    for file in ["README.md", "docs/design.md", "deploy/README.md"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let markdown = std::fs::read_to_string(&path).unwrap();
        let out = Command::new("cmark-gfm")
            .args(["-e", "table", &path])
            .output()
            .unwrap();
        assert!(out.status.success(), "cmark-gfm {file} failed");
        let html = String::from_utf8(out.stdout).unwrap();
        // A row cut off from its table is rendered as a paragraph that starts with a pipe.
        let stray: Vec<&str> = html.lines().filter(|l| l.starts_with("<p>|")).collect();
        assert!(
            stray.is_empty(),
            "{file}: table rows outside any table:\n{}",
            stray.join("\n")
        );
        let (rows, delimiters) = table_lines(&markdown);
        let rendered = html.matches("<tr>").count();
        assert_eq!(
            rendered,
            rows.len(),
            "{file}: {} lines look like table rows ({delimiters} delimiter rows besides), \
             {rendered} rendered as rows",
            rows.len()
        );
    }
}
