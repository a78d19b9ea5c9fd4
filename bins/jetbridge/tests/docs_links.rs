//! Every relative link in the repository's Markdown resolves: the file exists and, for
//! `file.md#anchor`, the heading does (GitHub's anchors). Docs point at each other's
//! sections a great deal (troubleshooting to monitoring's alerts, failure scenarios to
//! tests), and a renamed heading must fail here rather than leave a dead link.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            markdown_files(&path, out);
        } else if kind.is_file() && name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks and inline code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut in_code = false;
            for c in line.chars() {
                if c == '`' {
                    in_code = !in_code;
                } else if !in_code {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor of a heading: lowercased, punctuation dropped (letters, digits, `-`
/// and `_` kept), spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced && let Some(h) = line.strip_prefix('#') {
            // Inline code in a heading keeps its text in the anchor.
            out.insert(slug(&h.trim_start_matches('#').replace('`', "")));
        }
    }
    out
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        let target = &rest[..end];
        if !target.is_empty() && !target.contains(char::is_whitespace) {
            out.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn every_relative_link_in_the_markdown_resolves() {
    let root = repo_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).expect("read")))
        .collect();
    let mut broken = Vec::new();
    for (file, text) in &texts {
        for link in links(&prose(text)) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a parent").join(path)
            };
            let shown = file
                .strip_prefix(&root)
                .unwrap_or(file)
                .display()
                .to_string();
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{shown}: {link}: no such file"));
                continue;
            };
            if fragment.is_empty() || target.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let heads = match texts.get(&target) {
                Some(t) => anchors(t),
                None => anchors(&std::fs::read_to_string(&target).unwrap_or_default()),
            };
            if !heads.contains(fragment) {
                broken.push(format!("{shown}: {link}: no heading with that anchor"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_knows_github_anchors_and_finds_links() {
    assert_eq!(
        slug(" 3.11 Variant: artifacts on a GCS FUSE claim"),
        "311-variant-artifacts-on-a-gcs-fuse-claim"
    );
    assert_eq!(
        anchors("# A\n```\n# not a heading\n```\n## `error: ...` before (exit 2)\n"),
        BTreeSet::from(["a".to_owned(), "error--before-exit-2".to_owned()])
    );
    assert_eq!(
        links(&prose("see [x](a.md#b) and `[y](c.md)` and [z](http://e)")),
        vec!["a.md#b".to_owned(), "http://e".to_owned()]
    );
}
