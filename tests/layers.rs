//! The layering check: each layer of `src/` imports only the layers below
//! it, and the files inside a layer form no import cycle (README,
//! "Architecture"). Reads the source text; fails naming every upward or
//! circular import.
//!
//! References counted: `crate::a::b` paths and `super::x` paths (including
//! `use super::{x, y}` groups) in code outside `#[cfg(test)]` sections and
//! outside comments. A module's own `pub mod` declarations are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may import modules of lower rank
/// only (and its own top module's files, acyclically).
const LAYERS: &[(&str, u8)] = &[
    ("sip", 0),
    ("io", 0),
    ("route", 1),
    ("pipeline", 2),
    ("cs", 2),
    ("registrar", 2),
    ("iwf", 2),
    ("dataplane", 3),
    ("csnode", 3),
    ("iwfnode", 3),
    ("config", 4),
    ("control", 5),
    ("app", 6),
];

fn rank(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == top).map(|(_, r)| *r)
}

/// `src/sip/scan.rs` → `["sip", "scan"]`; `src/sip/mod.rs` → `["sip"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// sections (tests sit at the bottom of a file, by convention here).
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The modules `text` (the code of module `me`) refers to, as paths from
/// the crate root (first two segments at most).
fn references(me: &[String], text: &str, is_mod_rs: bool) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        let a = ident_at(rest);
        let mut path = vec![a.to_string()];
        if let Some(r2) = rest[a.len()..].strip_prefix("::") {
            let b = ident_at(r2);
            if !b.is_empty() {
                path.push(b.to_string());
            }
        }
        out.insert(path);
    }
    // `super::` in `a/b.rs` is module `a`; in `a/b/mod.rs` also `a`.
    let parent: Vec<String> = if is_mod_rs || me.len() > 1 {
        me[..me.len() - 1].to_vec()
    } else {
        Vec::new()
    };
    for (i, _) in text.match_indices("super::") {
        let before = &text[..i];
        if before.ends_with("super::") {
            continue; // `super::super::` leaves the crate's layers alone here
        }
        let rest = &text[i + 7..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|n| ident_at(n.trim()))
                .collect()
        } else {
            vec![ident_at(rest)]
        };
        for n in names.into_iter().filter(|n| !n.is_empty()) {
            let mut p = parent.clone();
            if n != "self" {
                p.push(n.to_string());
            }
            out.insert(p);
        }
    }
    out
}

struct Files {
    /// module path → the modules it refers to
    refs: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn load(src: &Path) -> Files {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut refs = BTreeMap::new();
    for f in files {
        let me = module_of(src, &f);
        if me
            .first()
            .is_some_and(|m| m == "main" || m == "lib" || m == "bin")
        {
            continue; // the binary and the crate root wire everything
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let is_mod = f.file_name().is_some_and(|n| n == "mod.rs");
        refs.insert(me.clone(), references(&me, &code(&text), is_mod));
    }
    Files { refs }
}

/// Every upward or sideways import between top modules.
fn layer_violations(files: &Files) -> Vec<String> {
    let mut bad = Vec::new();
    for (me, refs) in &files.refs {
        let top = &me[0];
        let Some(mine) = rank(top) else {
            bad.push(format!("{}: not in any layer", me.join("::")));
            continue;
        };
        for r in refs {
            let Some(target) = r.first() else { continue };
            if target == top {
                continue;
            }
            match rank(target) {
                Some(t) if t < mine => {}
                Some(t) => bad.push(format!(
                    "{} (layer {mine}) imports {} (layer {t})",
                    me.join("::"),
                    r.join("::")
                )),
                None => {} // a crate-root item such as a macro
            }
        }
    }
    bad
}

/// The files of one top module that import each other in a cycle.
fn cycles(files: &Files) -> Vec<String> {
    // Edges between files of the same top module (a reference to `a::b`
    // is an edge to file `a::b` if it exists, else to `a`).
    let nodes: BTreeSet<&Vec<String>> = files.refs.keys().collect();
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for (me, refs) in &files.refs {
        for r in refs {
            if r.first() != me.first() {
                continue;
            }
            let target = nodes
                .get(r)
                .or_else(|| nodes.get(&r[..1].to_vec()))
                .copied();
            if let Some(t) = target.filter(|t| *t != me) {
                // A mod.rs declares its children; its uses of them are
                // re-exports and wiring, not a layer below it.
                if me.len() < t.len() && t.starts_with(me) {
                    continue;
                }
                edges.entry(me).or_default().insert(t);
            }
        }
    }
    let mut found = Vec::new();
    let mut state: BTreeMap<&Vec<String>, u8> = BTreeMap::new();
    for n in &nodes {
        let mut stack = Vec::new();
        visit(n, &edges, &mut state, &mut stack, &mut found);
    }
    found
}

fn visit<'a>(
    n: &'a Vec<String>,
    edges: &BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
    state: &mut BTreeMap<&'a Vec<String>, u8>,
    stack: &mut Vec<&'a Vec<String>>,
    found: &mut Vec<String>,
) {
    match state.get(n) {
        Some(2) => return,
        Some(1) => {
            let at = stack.iter().position(|s| *s == n).unwrap_or(0);
            let cyc: Vec<String> = stack[at..]
                .iter()
                .chain([&n])
                .map(|m| m.join("::"))
                .collect();
            found.push(cyc.join(" -> "));
            return;
        }
        _ => {}
    }
    state.insert(n, 1);
    stack.push(n);
    if let Some(next) = edges.get(n) {
        for m in next {
            visit(m, edges, state, stack, found);
        }
    }
    stack.pop();
    state.insert(n, 2);
}

#[test]
fn layers_only_look_down_and_files_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = load(&src);
    assert!(files.refs.len() > 20, "found the source files");
    let mut bad = layer_violations(&files);
    bad.extend(cycles(&files).into_iter().map(|c| format!("cycle: {c}")));
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

/// The checker itself catches what it must: an upward import, a cycle, a
/// `super::{..}` group, and ignores comments and test sections.
#[test]
fn the_check_fails_on_upward_imports_and_cycles() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let files = |list: &[(&str, &str)]| Files {
        refs: list
            .iter()
            .map(|(me, text)| {
                let me = m(me);
                let r = references(&me, &code(text), false);
                (me, r)
            })
            .collect(),
    };
    let upward = files(&[("sip::scan", "use crate::route::Tables;")]);
    assert_eq!(
        layer_violations(&upward),
        vec!["sip::scan (layer 0) imports route::Tables (layer 1)"]
    );
    let fine = files(&[(
        "route::decision",
        "use crate::sip::scan::Message; // crate::control::x\n#[cfg(test)]\nuse crate::app::App;",
    )]);
    assert!(layer_violations(&fine).is_empty());
    let knot = files(&[
        ("sip::uri", "use super::{params, branch::StableHash};"),
        ("sip::branch", "use super::scan::Message;"),
        ("sip::scan", "use super::uri;"),
        ("sip::params", ""),
    ]);
    let c = cycles(&knot);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].contains("sip::uri") && c[0].contains("sip::scan"),
        "{c:?}"
    );
    let dag = files(&[
        ("sip::uri", "use super::{params, hash::StableHash};"),
        ("sip::hash", ""),
        ("sip::params", ""),
        ("sip::scan", "use super::uri;"),
    ]);
    assert!(cycles(&dag).is_empty());
}
