//! The layering check of `cargo xtask test`'s lint step: no import cycle between sibling
//! modules of the enforcer crate.
//!
//! For every directory of `enforcer/src` (the crate root, and each module directory), the
//! modules in it are the nodes; an edge `a -> b` means some file of `a` names its sibling `b`,
//! through a `use` tree or a path (`crate::b::...` for top-level modules, `super::b::...` or
//! `crate::dir::b::...` for the others). Unit-test modules (`#[cfg(test)] mod tests` blocks and
//! `tests.rs` files) are left out: a test may use a module that uses the one it tests. A
//! strongly connected component of more than one module is a cycle, reported with its edges.
//!
//! Some top-level modules must also stay leaves ([`LEAVES`]): whatever chain of imports they
//! start, it reaches only the modules listed with them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Sibling modules and who names whom.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The cycles found in `src` (the crate's source root), one line each; empty when none.
pub(crate) fn cycles(src: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for dir in module_dirs(src)? {
        let rel: Vec<String> = dir
            .strip_prefix(src)
            .expect("under src")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let graph = graph(&dir, &rel)?;
        for scc in strongly_connected(&graph) {
            let within: Vec<String> = scc
                .iter()
                .map(|m| {
                    let to: Vec<&str> = graph[m]
                        .iter()
                        .filter(|t| scc.contains(*t))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", to.join(", "))
                })
                .collect();
            let at = if rel.is_empty() {
                "crate".to_owned()
            } else {
                rel.join("::")
            };
            found.push(format!("import cycle in {at}: {}", within.join("; ")));
        }
    }
    Ok(found)
}

/// Top-level modules that stay leaves of the crate, and the only modules each may reach
/// through any chain of imports.
const LEAVES: &[(&str, &[&str])] = &[
    // The wire schema clients speak (issue 28): the crate's value types, nothing behind them
    // (no daemon, data path, policy or store type).
    ("protocol", &["block", "scope", "target", "time"]),
];

/// Each module a leaf reaches and must not, one line each with the chain that reaches it.
pub(crate) fn leaf_breaches(src: &Path) -> Result<Vec<String>> {
    let graph = graph(src, &[])?;
    let mut found = Vec::new();
    for (leaf, allowed) in LEAVES {
        for (reached, chain) in reachable(&graph, leaf) {
            if !allowed.contains(&reached.as_str()) {
                found.push(format!(
                    "{leaf} is a leaf but reaches {reached}: {}",
                    chain.join(" -> ")
                ));
            }
        }
    }
    Ok(found)
}

/// Every module reachable from `from` (itself excepted), with a shortest chain to it.
fn reachable(graph: &Graph, from: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains = BTreeMap::from([(from.to_owned(), vec![from.to_owned()])]);
    let mut queue = std::collections::VecDeque::from([from.to_owned()]);
    while let Some(m) = queue.pop_front() {
        for next in graph.get(&m).into_iter().flatten() {
            if !chains.contains_key(next) {
                let mut chain = chains[&m].clone();
                chain.push(next.clone());
                chains.insert(next.clone(), chain);
                queue.push_back(next.clone());
            }
        }
    }
    chains.remove(from);
    chains
}

/// `src` and every directory below it that holds modules.
fn module_dirs(src: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![src.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        for entry in read_dir(&dirs[i])? {
            if entry.is_dir() {
                dirs.push(entry);
            }
        }
        i += 1;
    }
    Ok(dirs)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

/// The modules of `dir` (at module path `rel` below the crate) and their edges.
fn graph(dir: &Path, rel: &[String]) -> Result<Graph> {
    let mut members: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in read_dir(dir)? {
        let name = entry
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if entry.is_dir() {
            members.insert(name, entry);
        } else if let Some(stem) = name.strip_suffix(".rs")
            && !matches!(stem, "main" | "lib" | "mod" | "tests")
        {
            members.insert(stem.to_owned(), entry);
        }
    }
    let mut graph = Graph::new();
    for (module, path) in &members {
        let mut to = BTreeSet::new();
        for file in rust_files(path)? {
            let depth = super_depth(dir, &file);
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for p in paths(&strip_tests(&strip_comments(&text))) {
                if let Some(target) = sibling(&p, rel, depth)
                    && target != *module
                    && members.contains_key(&target)
                {
                    to.insert(target);
                }
            }
        }
        graph.insert(module.clone(), to);
    }
    Ok(graph)
}

/// The `.rs` files of a module (a file, or a directory's files), `tests.rs` files excepted.
fn rust_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for dir in module_dirs(path)? {
        files.extend(read_dir(&dir)?.into_iter().filter(|f| {
            f.extension().is_some_and(|e| e == "rs")
                && f.file_name().is_some_and(|n| n != "tests.rs")
        }));
    }
    Ok(files)
}

/// How many `super::` lead from `file`'s module to `dir`'s: 1 for a file directly in `dir`
/// (or a directory's `mod.rs`), one more per directory level below that.
fn super_depth(dir: &Path, file: &Path) -> usize {
    let levels = file.strip_prefix(dir).expect("under dir").iter().count();
    if file.file_name().is_some_and(|n| n == "mod.rs") {
        levels - 1
    } else {
        levels
    }
}

/// The sibling a path names, if it names one: `crate::<rel>::x` or exactly `depth` `super`s
/// then `x`.
fn sibling(path: &[String], rel: &[String], depth: usize) -> Option<String> {
    if path.first().is_some_and(|s| s == "crate") {
        let rest = &path[1..];
        return (rest.len() > rel.len() && rest[..rel.len()] == *rel)
            .then(|| rest[rel.len()].clone());
    }
    let supers = path.iter().take_while(|s| *s == "super").count();
    (supers > 0 && supers == depth && path.len() > supers).then(|| path[supers].clone())
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text before an inline unit-test module.
fn strip_tests(text: &str) -> String {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

/// Every module path in the text: each `use` tree expanded, and every `crate::`/`super::`
/// path outside them.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = find_word(rest, "use ") {
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        let tree = rest[i + 4..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        expand(&tree, &mut Vec::new(), &mut out);
        rest = &rest[end..];
    }
    for start in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = text[at..].find(start) {
            let from = at + i;
            let end = text[from..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |e| from + e);
            out.push(split(&text[from..end]));
            at = end.max(from + 1);
        }
    }
    out
}

/// `needle` at a word start.
fn find_word(text: &str, needle: &str) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = text[at..].find(needle) {
        let pos = at + i;
        let before = text[..pos].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            return Some(pos);
        }
        at = pos + needle.len();
    }
    None
}

fn split(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Expands a `use` tree (`a::{b, c::{d}}`) into full paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(open) = tree.find('{') else {
        let plain = tree.split(" as ").next().unwrap_or(tree);
        let mut full = prefix.clone();
        full.extend(split(plain));
        out.push(full);
        return;
    };
    let head = split(&tree[..open]);
    // Text that only looks like a `use` (in a string) may not close its brace.
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mark = prefix.len();
    prefix.extend(head);
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&inner[start..i], prefix, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&inner[start..], prefix, out);
    }
    prefix.truncate(mark);
}

/// Tarjan's strongly connected components of more than one node.
fn strongly_connected(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.stack.contains(&w.as_str()) {
                let iw = s.index[w.as_str()];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|x| *x == v).expect("on the stack");
            let scc: BTreeSet<String> = s.stack.drain(at..).map(str::to_owned).collect();
            if scc.len() > 1 {
                s.found.push(scc);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_full_paths() {
        let got = paths("use crate::{a::{B, c::D}, e as f};\nuse super::g;");
        let want: Vec<Vec<String>> = [
            vec!["crate", "a", "B"],
            vec!["crate", "a", "c", "D"],
            vec!["crate", "e"],
            vec!["super", "g"],
            // The plain-path scan stops at the brace; the use tree above has the rest.
            vec!["crate"],
            vec!["super", "g"],
        ]
        .iter()
        .map(|p| p.iter().map(|s| (*s).to_owned()).collect())
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let g = |edges: &[(&str, &str)]| {
            let mut graph = Graph::new();
            for (a, b) in edges {
                graph
                    .entry((*a).to_owned())
                    .or_default()
                    .insert((*b).to_owned());
                graph.entry((*b).to_owned()).or_default();
            }
            graph
        };
        assert!(strongly_connected(&g(&[("a", "b"), ("b", "c")])).is_empty());
        let found = strongly_connected(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), 3);
    }

    #[test]
    fn super_paths_name_siblings_at_the_right_depth() {
        let p = split("super::loader::PinLayout");
        assert_eq!(
            sibling(&p, &["datapath".to_owned()], 1).as_deref(),
            Some("loader")
        );
        assert_eq!(sibling(&p, &["datapath".to_owned()], 2), None);
        let c = split("crate::datapath::maps::BlockMaps");
        assert_eq!(
            sibling(&c, &["datapath".to_owned()], 1).as_deref(),
            Some("maps")
        );
        assert_eq!(sibling(&c, &[], 1).as_deref(), Some("datapath"));
    }

    #[test]
    fn a_leaf_reaching_past_its_list_is_named_with_the_chain() {
        let mut graph = Graph::new();
        for (a, b) in [("p", "t"), ("t", "d"), ("d", "t"), ("x", "p")] {
            graph.entry(a.to_owned()).or_default().insert(b.to_owned());
        }
        let got = reachable(&graph, "p");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["d", "t"]);
        assert_eq!(got["d"], ["p", "t", "d"]);
    }

    /// The checks on this repository's own crate (the lint step runs the same).
    #[test]
    fn the_enforcer_crate_has_no_import_cycle_and_its_leaves_stay_leaves() {
        let src = crate::cmd::repo_root().join("enforcer/src");
        let found = [cycles(&src).unwrap(), leaf_breaches(&src).unwrap()].concat();
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
