//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Every fixture folder with a golden.json; panics (fails the test) if there is none.
pub fn fixtures() -> Vec<PathBuf> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixtures with golden.json under {}",
        root.display()
    );
    dirs
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}
