//! A test of the module graph: reads every source file, collects which top-level modules it
//! names (`crate::x` outside comments), and checks that the graph has no cycle and none of
//! the arrows `shared/ARCHITECTURE.md` forbids (the core never knows it is behind a socket;
//! jobs and hooks meet only in the executor; protocol and events are pure data).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_string())
                .expect("a file name");
            if matches!(top.as_str(), "lib" | "main" | "layout") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            let uses = graph.entry(top.clone()).or_default();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let name: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top && name.chars().all(|c| !c.is_uppercase()) {
                        uses.insert(name);
                    }
                }
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn modules_form_no_cycle() {
    let graph = graph();
    assert!(
        graph.contains_key("executor") && graph.contains_key("server"),
        "{graph:?}"
    );
    for (module, uses) in &graph {
        for used in uses {
            assert!(
                !reaches(&graph, used, module),
                "import cycle: `{module}` uses `{used}`, which leads back to `{module}`; graph: {graph:#?}"
            );
        }
    }
}

#[test]
fn forbidden_arrows_are_absent() {
    let graph = graph();
    let faces = ["server", "mcp", "client", "app"];
    let forbidden: &[(&str, &[&str])] = &[
        (
            "jobs",
            &["server", "mcp", "client", "app", "hooks", "executor"],
        ),
        (
            "hooks",
            &["server", "mcp", "client", "app", "jobs", "executor"],
        ),
        ("executor", &faces),
        (
            "protocol",
            &[
                "server", "mcp", "client", "app", "executor", "jobs", "hooks", "config",
            ],
        ),
        (
            "events",
            &[
                "server", "mcp", "client", "app", "executor", "jobs", "hooks",
            ],
        ),
        ("config", &faces),
        ("server", &["app", "jobs", "hooks"]),
        ("mcp", &["app", "server", "jobs", "hooks"]),
        (
            "client",
            &["server", "mcp", "app", "executor", "jobs", "hooks"],
        ),
    ];
    for (module, banned) in forbidden {
        let uses = graph.get(*module).cloned().unwrap_or_default();
        for b in *banned {
            assert!(
                !uses.contains(*b),
                "`{module}` must not use `{b}`; it uses {uses:?}"
            );
        }
    }
}
