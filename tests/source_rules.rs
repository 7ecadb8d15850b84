//! Rules about the source itself, checked on every test run:
//!
//! - a tracing span entered in async code covers nothing past an `.await`
//!   (and a guard bound to `_` covers nothing at all): async code uses
//!   `.instrument(span)`;
//! - a source file of `core/`, `objects/` or `cluster/` holds at most
//!   `MAX_LINES` lines before its tests. A file listed in `OVER_LIMIT` (none
//!   today) may be over it while it waits to be split: it may shrink, never
//!   grow, and leaves the list once under the limit.

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

/// Files over the limit, with the most lines they may have (none).
const OVER_LIMIT: &[(&str, usize)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The spans entered where the guard covers nothing (`let _ =`), or is
/// held across an `.await` of the same block.
fn misused_span_guards(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        if !(code.contains(".enter()") || code.contains(".entered()")) {
            continue;
        }
        if code.trim_start().starts_with("let _ =") {
            found.push((i + 1, "a guard bound to `_` is dropped at once".to_owned()));
            continue;
        }
        let depth = indent(line);
        for later in &lines[i + 1..] {
            if !later.trim().is_empty() && indent(later) < depth {
                break;
            }
            if later
                .split("//")
                .next()
                .unwrap_or_default()
                .contains(".await")
            {
                found.push((
                    i + 1,
                    "an entered span held across an `.await` (use `.instrument(span)`)".to_owned(),
                ));
                break;
            }
        }
    }
    found
}

/// Lines before the first `#[cfg(test)]` at the start of a line.
fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn spans_in_async_code_are_instrumented_not_entered() {
    let mut files = Vec::new();
    for dir in [
        "core",
        "objects",
        "cluster",
        "gpu",
        "dashboard",
        "libs",
        "src",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, why) in misused_span_guards(&text) {
            bad.push(format!("{}:{line}: {why}", relative(file)));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_rule_sees_a_dead_guard_and_a_guard_across_an_await() {
    let dead = "fn f() {\n    let _ = span.enter();\n}\n";
    assert_eq!(misused_span_guards(dead).len(), 1);
    let across = "async fn f() {\n    let _g = span.enter();\n    g().await;\n}\n";
    assert_eq!(misused_span_guards(across).len(), 1);
    let fine = "fn f() {\n    let out = {\n        let _g = span.enter();\n        body()\n    };\n    g(out).await;\n}\n";
    assert!(misused_span_guards(fine).is_empty());
}

#[test]
fn no_source_file_of_the_runtime_grows_past_the_limit() {
    let mut files = Vec::new();
    for dir in ["core/src", "objects/src", "cluster/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut bad = Vec::new();
    for file in &files {
        let name = relative(file);
        if name.ends_with("/tests.rs") || name.contains("/tests/") {
            continue;
        }
        let lines = lines_before_tests(&std::fs::read_to_string(file).unwrap());
        let allowed = OVER_LIMIT
            .iter()
            .find(|(listed, _)| *listed == name)
            .map_or(MAX_LINES, |(_, most)| *most);
        if lines > allowed {
            bad.push(format!(
                "{name}: {lines} lines, at most {allowed}: split it"
            ));
        }
    }
    for (listed, _) in OVER_LIMIT {
        let lines = std::fs::read_to_string(root().join(listed))
            .map(|text| lines_before_tests(&text))
            .unwrap_or(0);
        if lines <= MAX_LINES {
            bad.push(format!(
                "{listed}: {lines} lines, under the limit: take it off OVER_LIMIT"
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
