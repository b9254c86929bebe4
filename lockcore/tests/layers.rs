//! lockcore's modules form layers: no module reaches, through `crate::<module>` paths
//! in its code (comments and tests aside), a module that reaches back to it. A cycle
//! makes a change in one place ripple round; ARCHITECTURE.md lists the layers.
//! (Names the crate root re-exports, `crate::Fleet`, are not followed.)
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src` and the top-level modules its code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || relative.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Code only: a file's tests come last, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let named = modules.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != top {
                    named.insert(name);
                }
            }
        }
    }
    modules
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> bool {
    for next in graph.get(at).into_iter().flatten() {
        if next == from {
            path.push(next.clone());
            return true;
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if cycle_through(graph, from, next, path, seen) {
                return true;
            }
            path.pop();
        }
    }
    false
}

#[test]
fn lockcores_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "found only {graph:?}");
    assert!(
        graph["lock"].contains("cluster") && graph["cluster"].contains("config"),
        "the scan must see known imports: {graph:?}"
    );
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        let found = cycle_through(&graph, module, module, &mut path, &mut BTreeSet::new());
        assert!(!found, "an import cycle: {}", path.join(" -> "));
    }
}
