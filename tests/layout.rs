//! The shape of the code, checked: no circle of imports among the core crate's modules, the
//! keyed cache built on the cache and not the other way, and no source file over 600 lines
//! unless its opening comment says why.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const LONGEST: usize = 600;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers in `text`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// For each top-level module of core, the top-level modules it uses: `crate::module::…`, or a
/// name the crate root re-exports from that module (`crate::TokenCache`, `use crate::{…}`).
fn core_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/tokenwarden-core/src");
    let lib = code(&src.join("lib.rs"));
    let mut owner = BTreeMap::new();
    for export in lib.split("pub use ").skip(1) {
        let export = export.split(';').next().unwrap_or_default();
        let mut names = words(export);
        let Some(module) = names.next() else { continue };
        for name in names {
            owner.insert(name.to_owned(), module.to_owned());
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let top = top.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if top == "lib" {
            continue;
        }
        let text = code(&file);
        let mut used = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                used.extend(words(group.split('}').next().unwrap_or_default()));
            } else {
                used.extend(words(rest).next());
            }
        }
        let deps = graph.entry(top.clone()).or_default();
        for name in used {
            let module = owner.get(name).map_or(name, String::as_str);
            if module != top && module != "self" {
                deps.insert(module.to_owned());
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(module) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn core_modules_import_each_other_in_one_direction() {
    let graph = core_imports();
    assert!(
        graph
            .get("cache")
            .is_some_and(|deps| deps.contains("store")),
        "the check must see the cache's use of the store: {graph:?}"
    );
    let circles: Vec<_> = graph
        .iter()
        .flat_map(|(module, deps)| deps.iter().map(move |dep| (module, dep)))
        .filter(|(module, dep)| reaches(&graph, dep, module))
        .collect();
    assert!(circles.is_empty(), "imports in a circle: {circles:?}");
}

#[test]
fn nothing_in_the_cache_uses_the_keyed_cache_back() {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/tokenwarden-core/src/cache");
    let mut files = Vec::new();
    rust_files(&cache, &mut files);
    let users: Vec<_> = files
        .iter()
        .filter(|file| !file.starts_with(cache.join("keyed")))
        .filter(|file| {
            code(file)
                .lines()
                // The cache's module re-exports the keyed cache's types: a use of it, not by it.
                .filter(|line| !line.trim_start().starts_with("pub use keyed::"))
                .any(|line| line.contains("keyed::") || line.contains("KeyedCache"))
        })
        .collect();
    assert!(files.len() > 20, "found {} files", files.len());
    assert!(
        users.is_empty(),
        "the cache uses the keyed cache in {users:?}"
    );
}

#[test]
fn a_long_source_file_says_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for krate in fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "found {} files", files.len());
    let unexplained: Vec<_> = files
        .iter()
        .filter_map(|file| {
            let text = fs::read_to_string(file).unwrap();
            let lines = text.lines().count();
            let opening: String = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join(" ");
            (lines > LONGEST && !opening.contains("lines"))
                .then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "over {LONGEST} lines, and the opening comment does not say why (it should mention \
         its lines): {unexplained:#?}"
    );
}
