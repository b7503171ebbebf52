//! Repository checks that are not cargo commands, as tests (rust-analyzer's `tidy.rs`): every
//! Rust file opens with a `//!` line, and no crate's modules import each other in a loop.
//!
//! The loop check reads files as text, the way the shared tools' `modloops.py` does: a module
//! is a top-level file or directory of a crate's `src` (files below a directory count as it), and
//! module A uses module B when A's code before its first `#[cfg(test)]` names `crate::B` or
//! `super::B`, alone or in a `crate::{...}` group, or names an item that `lib.rs` re-exports
//! from B. Comments are not imports. Test modules (`tests.rs`, `tests/`) are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let findings = missing_doc_lines(&crate::project_root());
    assert!(
        findings.is_empty(),
        "\nthese files lack an opening `//!` line saying what they are for:\n{}\n",
        findings.join("\n")
    );
}

#[test]
fn every_metric_the_dashboard_uses_is_documented() {
    let root = crate::project_root();
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    };
    let documented = read("docs/operations.md");
    let missing: Vec<String> = metric_names(&read("docs/monitoring/grafana-dashboard.json"))
        .into_iter()
        .filter(|name| !documented.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "the Grafana dashboard uses metrics that docs/operations.md does not list: {missing:?}"
    );
}

/// The `herald_*` metric names in `text`, without a histogram's `_bucket` suffix.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("herald_"))
        .map(|word| word.strip_suffix("_bucket").unwrap_or(word).to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            r#"{"expr": "rate(herald_a_total[1m]) / herald_b_seconds_bucket", "x": "herald"}"#
        ),
        ["herald_a_total", "herald_b_seconds"]
    );
}

#[test]
fn no_crate_has_an_import_loop() {
    let findings = import_loops(&crate::project_root());
    assert!(
        findings.is_empty(),
        "\nmodules that import each other (give each module one responsibility, and move what \
         two share into a module that imports neither):\n{}\n",
        findings.join("\n")
    );
}

/// Every `.rs` file where the rules ask for one: `crates/*/{src,tests,benches}`, `tests/` and
/// `xtask/`, sorted, relative to `root`.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("tests"), root.join("xtask")];
    for krate in subdirs(&root.join("crates")) {
        dirs.extend(["src", "tests", "benches"].map(|dir| krate.join(dir)));
    }
    let mut files = Vec::new();
    for dir in dirs {
        collect_rust_files(&dir, &mut files);
    }
    files.sort();
    files
}

/// `.rs` files below `dir`, build outputs (`target`) excepted; nothing when `dir` is missing.
fn collect_rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                collect_rust_files(&path, into);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The directories directly inside `dir`, sorted; none when it is missing.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The Rust files under `root` whose first line is not a `//!` doc line, one line each.
fn missing_doc_lines(root: &Path) -> Vec<String> {
    rust_files(root)
        .into_iter()
        .filter(|path| {
            let text = fs::read_to_string(path).unwrap_or_default();
            !text
                .lines()
                .next()
                .is_some_and(|line| line.starts_with("//!"))
        })
        .map(|path| shown(root, &path))
        .collect()
}

/// Every import loop in the crates under `root`, one line each: the crate's `src`, the modules
/// of the loop and the edges between them.
fn import_loops(root: &Path) -> Vec<String> {
    let mut findings = Vec::new();
    for krate in subdirs(&root.join("crates")) {
        let src = krate.join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        for component in loops(&graph) {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| component.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            findings.push(format!(
                "{}: {}   ({})",
                shown(root, &src),
                component.join(" / "),
                edges.join(", ")
            ));
        }
    }
    findings
}

/// `path` relative to `root`, with `/` separators, for messages.
fn shown(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// The modules of a crate's `src` and the files of each: the top-level entry a file lies in.
/// `lib.rs`, `main.rs` and test files are no module of their own.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut files = Vec::new();
    collect_rust_files(src, &mut files);
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in files {
        let Ok(relative) = file
            .with_extension("")
            .strip_prefix(src)
            .map(Path::to_path_buf)
        else {
            continue;
        };
        let parts: Vec<String> = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        let is_root = parts == ["lib"] || parts == ["main"];
        if is_root || parts.iter().any(|part| part == "tests") {
            continue;
        }
        modules.entry(parts[0].clone()).or_default().push(file);
    }
    modules
}

/// Which modules each module uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let reexported = reexports(src, &modules);
    let mut graph = BTreeMap::new();
    for (module, files) in &modules {
        let mut uses = BTreeSet::new();
        for file in files {
            let text = fs::read_to_string(file).unwrap_or_default();
            let code = without_comments(text.split("#[cfg(test)]").next().unwrap_or_default());
            for name in used_names(&code) {
                let target = if modules.contains_key(&name) {
                    Some(&name)
                } else {
                    reexported.get(&name)
                };
                if let Some(target) = target.filter(|target| *target != module) {
                    uses.insert(target.clone());
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The names `lib.rs` re-exports (`pub use crate::{a::{B, C}, d::E as F}`), mapped to the
/// module each comes from.
fn reexports(src: &Path, modules: &BTreeMap<String, Vec<PathBuf>>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let Ok(lib) = fs::read_to_string(src.join("lib.rs")) else {
        return names;
    };
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let start = rest.strip_prefix("crate::").unwrap_or(rest);
        let body = match start.strip_prefix('{') {
            Some(_) => group(start),
            None => start.split(';').next().unwrap_or_default(),
        };
        for module in modules.keys() {
            let prefix = format!("{module}::");
            for (at, _) in body.match_indices(&prefix) {
                if !starts_word(body, at) {
                    continue;
                }
                let after = &body[at + prefix.len()..];
                let items = match after.strip_prefix('{') {
                    Some(inner) => inner.split('}').next().unwrap_or_default(),
                    None => identifier(after),
                };
                for item in items.split(',') {
                    let name = item.rsplit(" as ").next().unwrap_or_default().trim();
                    if !name.is_empty() {
                        names.insert(name.to_owned(), module.clone());
                    }
                }
            }
        }
    }
    names
}

/// The first path segment of every name used after `crate::` or `super::` in `code`.
fn used_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for head in ["crate::", "super::"] {
        for (at, _) in code.match_indices(head) {
            if starts_word(code, at) {
                names.extend(top_items(&code[at + head.len()..]));
            }
        }
    }
    names
}

/// What a path names right after `crate::`: one identifier, or the first segment of every
/// top-level item of a `{...}` group.
fn top_items(text: &str) -> Vec<String> {
    if !text.starts_with('{') {
        let name = identifier(text);
        return if name.is_empty() {
            Vec::new()
        } else {
            vec![name.to_owned()]
        };
    }
    let mut items = vec![String::new()];
    let mut depth = 0_usize;
    for c in group(text).chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(item) = items.last_mut() {
            item.push(c);
        }
    }
    items
        .iter()
        .map(|item| identifier(item.trim()).to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The text inside the balanced `{...}` that `text` starts with (to its end if unbalanced).
fn group(text: &str) -> &str {
    let mut depth = 0_usize;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[1..at];
                }
            }
            _ => {}
        }
    }
    text.get(1..).unwrap_or_default()
}

/// The identifier `text` starts with; empty when it starts with anything else.
fn identifier(text: &str) -> &str {
    let starts_right = text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if starts_right { &text[..end] } else { "" }
}

/// Whether a word starts at `at`: the character before, if any, is not part of an identifier.
fn starts_word(text: &str, at: usize) -> bool {
    !text[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `code` with every `//` comment (doc comments included) cut to the end of its line.
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sets of two or more modules that reach each other (Tarjan's strongly connected
/// components), each sorted.
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    /// Tarjan's bookkeeping.
    #[derive(Default)]
    struct Search<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }

    fn visit<'a>(graph: &'a BTreeMap<String, BTreeSet<String>>, v: &'a str, s: &mut Search<'a>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                if !graph.contains_key(w) {
                    continue;
                }
                visit(graph, w, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }

    let mut search = Search::default();
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            visit(graph, v, &mut search);
        }
    }
    search.found
}

/// A directory tree in the temp directory for the checks' own tests, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    /// Writes `files` (relative path, contents) under a fresh directory.
    fn new(files: &[(&str, &str)]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "xtask-tidy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for (path, contents) in files {
            let path = root.join(path);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        Self(root)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn finds_a_file_without_a_doc_line_and_a_loop_through_a_group_and_a_reexport() {
    let tree = TempTree::new(&[
        (
            "crates/demo/src/lib.rs",
            "//! Demo.\nmod a;\nmod b;\nmod c;\npub use crate::{a::{Apple, Avocado as Avo}, c::Cherry};\n",
        ),
        // `a` uses `b` through a group, `b` uses `a` through the re-exported name.
        (
            "crates/demo/src/a.rs",
            "//! A.\nuse crate::{c::Cherry, b::{Berry}};\n",
        ),
        ("crates/demo/src/b/mod.rs", "//! B.\nmod inner;\n"),
        (
            "crates/demo/src/b/inner.rs",
            "//! Inner.\nfn f() -> crate::Avo { todo() }\n",
        ),
        // Comments, tests and longer names are no imports.
        (
            "crates/demo/src/c.rs",
            "//! C.\n// crate::a::Apple\n/// [`crate::b`]\nuse other_crate::a;\nfn g() { super_crate::b(); }\n\
             #[cfg(test)]\nmod tests { use crate::a::Apple; }\n",
        ),
        ("crates/demo/src/c/tests.rs", "use crate::b::Berry;\n"),
        ("crates/demo/tests/it.rs", "use demo::Apple;\n"),
        ("crates/fine/src/lib.rs", "//! Fine.\nmod x;\nmod y;\n"),
        ("crates/fine/src/x.rs", "//! X.\nuse super::y;\n"),
        ("crates/fine/src/y.rs", "//! Y.\n"),
        ("tests/src/lib.rs", "\n//! Not on the first line.\n"),
        ("xtask/src/main.rs", "//! Tasks.\n"),
        ("notes/skip.rs", "not checked\n"),
    ]);
    assert_eq!(
        missing_doc_lines(&tree.0),
        [
            "crates/demo/src/c/tests.rs",
            "crates/demo/tests/it.rs",
            "tests/src/lib.rs",
        ]
    );
    assert_eq!(
        import_loops(&tree.0),
        ["crates/demo/src: a / b   (a -> b, b -> a)"]
    );
}

#[test]
fn reports_every_loop_of_a_crate_with_its_edges() {
    let tree = TempTree::new(&[
        ("crates/demo/src/main.rs", "//! Demo.\n"),
        ("crates/demo/src/a.rs", "//! A.\nuse crate::b;\n"),
        (
            "crates/demo/src/b.rs",
            "//! B.\nuse crate::c;\nuse crate::a;\n",
        ),
        ("crates/demo/src/c.rs", "//! C.\nuse crate::a;\n"),
        ("crates/demo/src/d.rs", "//! D.\nuse crate::e;\n"),
        ("crates/demo/src/e.rs", "//! E.\nuse crate::{d, a};\n"),
    ]);
    assert_eq!(
        import_loops(&tree.0),
        [
            "crates/demo/src: a / b / c   (a -> b, b -> a, b -> c, c -> a)",
            "crates/demo/src: d / e   (d -> e, e -> d)",
        ]
    );
    assert!(missing_doc_lines(&tree.0).is_empty());
}
