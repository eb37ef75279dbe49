//! The import structure of `src/`: the doors (`http`, `web`, the CLI) adapt and do not
//! import each other; the state they share is a leaf; only the CLI (the process's entry)
//! imports `app`, the module that wires the routers.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules of `src/` a file refers to (`crate::x` anywhere in its code).
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // `crate::{a, b}` groups: every name in the braces.
        if name.is_empty() && rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            found.extend(group.split(',').map(|item| item.trim().split("::").next().unwrap_or("").to_string()).filter(|n| !n.is_empty()));
        } else if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

/// The top-level module a file belongs to: `src/http/jobs.rs` → `http`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn doors_do_not_import_each_other_and_state_is_a_leaf() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "found the sources");
    let doors = ["http", "web", "cli", "ops", "team_cli", "operator_cli", "storage_cli"];
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("source");
        for imported in imports(&text) {
            if imported == module {
                continue;
            }
            let refused = match module.as_str() {
                // The entry points: the CLI starts the server; the binary and the library root.
                "cli" | "main" | "lib" | "app" => false,
                // Everything else, the doors included: not `app`, and no other door.
                _ => imported == "app" || doors.contains(&imported.as_str()),
            };
            if refused {
                broken.push(format!("{} imports crate::{imported}", file.strip_prefix(&src).expect("under src").display()));
            }
        }
    }
    assert!(broken.is_empty(), "import structure broken:\n{}", broken.join("\n"));
}

#[test]
fn the_scan_finds_what_it_looks_for() {
    assert_eq!(imports("use crate::state::AppState;\nlet x = crate::http::metrics::recorder();"), ["state", "http"]);
    assert_eq!(imports("use crate::{queries, web::x};"), ["queries", "web"]);
}
