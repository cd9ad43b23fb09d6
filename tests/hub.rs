//! `glint::hub`: the Hugging Face cache layout is found without the network (no GPU needed).

use glint::hub::{cached_snapshot, is_repo_id};
use std::path::{Path, PathBuf};

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

/// models--org--name/{refs/main, snapshots/<rev>/FILES}, as huggingface_hub writes it.
fn layout(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    let repo = root.join("models--org--sharded");
    let snap = repo.join("snapshots/abc123");
    write(&repo.join("refs/main"), "abc123");
    for (f, content) in files {
        write(&snap.join(f), content);
    }
    snap
}

#[test]
fn sharded_snapshot_resolves_only_when_complete() {
    let root = std::env::temp_dir().join(format!("glint-hub-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#;
    let snap = layout(
        &root,
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", ""),
        ],
    );
    assert_eq!(
        cached_snapshot(&root, "org/sharded").unwrap(),
        None,
        "a shard is missing"
    );
    write(&snap.join("model-00002-of-00002.safetensors"), "");
    assert_eq!(
        cached_snapshot(&root, "org/sharded").unwrap(),
        Some(snap.clone())
    );
    assert_eq!(
        cached_snapshot(&root, "org/other").unwrap(),
        None,
        "not in the cache"
    );
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    assert_eq!(
        cached_snapshot(&root, "org/sharded").unwrap(),
        None,
        "no tokenizer.json"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn repo_ids_are_told_from_paths() {
    assert!(is_repo_id("Qwen/Qwen2-0.5B-Instruct"));
    assert!(!is_repo_id(
        "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    ));
    assert!(!is_repo_id("/abs/path"));
}
