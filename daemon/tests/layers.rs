//! The daemon's modules import each other in one direction only (docs/ARCHITECTURE.md):
//! each top-level module may use those in lower layers, never one in its own
//! layer or above. Read from the source, so a new import that would tie a knot
//! fails here with the file that made it.

use std::collections::BTreeMap;
use std::path::Path;

/// Top-level modules by layer, bottom first.
const LAYERS: &[&[&str]] = &[
    &["clock", "identity", "events", "stats", "logging", "service_manager"],
    &["audio", "store"],
    &["media", "signaling", "discovery", "name_claims"],
    &["call", "settings"],
    &["api"],
    &["daemon", "main", "lib", "manual"],
];

fn layer_of(module: &str) -> usize {
    LAYERS.iter().position(|layer| layer.contains(&module)).unwrap_or_else(|| panic!("module {module} has no layer"))
}

/// Every `crate::name` a file mentions.
fn crate_references(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, _)| {
            text[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        for target in crate_references(&text) {
            if target != module && layer_of(&target) >= layer_of(&module) {
                wrong.entry(relative.display().to_string()).or_default().push(target);
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (file → modules): {wrong:#?}");
}

#[test]
fn the_core_crate_depends_on_nothing_that_does_io() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for forbidden in ["tokio", "webrtc", "rtc", "mdns-sd", "cpal", "tonic", "voicelink-daemon", "voicelink-proto"] {
        assert!(
            !dependencies.lines().any(|line| line.split(['.', ' ', '=']).next() == Some(forbidden)),
            "voicelink-core depends on {forbidden}"
        );
    }
}
