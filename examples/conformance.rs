//! Compares the engine's logits with golden logits from HF transformers.
//!
//! ```text
//! cargo run --release --example conformance -- [--expert-cache-bytes N] [--f32-activations | --int-activations] [--kv-f16] DIR...
//! ```
//! Each DIR holds a checkpoint and a `golden.json`. Prints one line per DIR,
//! `PASS|FAIL <DIR> max_abs_diff=<x> argmax=<agree>/<checked>`, and exits non-zero if
//! any DIR fails. `--f32-activations` dots 2- to 6-bit weights with f32 activations
//! (`ModelBuilder::f32_activations`) instead of 8+8-bit activation blocks,
//! `--int-activations` with the 8+8-bit blocks; without either, the builder's default for
//! the adapter and the model; `--kv-f16`
//! keeps the KV cache in f16 (`ModelBuilder::kv_cache_dtype`), which moves logits by up to
//! ~5e-3 on the test models, more than golden's default tolerance.

#[path = "support/logging.rs"]
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use moestream::golden::{check, Golden};
use moestream::Model;

fn usage() -> ExitCode {
    eprintln!("usage: conformance [--expert-cache-bytes N] [--f32-activations | --int-activations] [--kv-f16] DIR...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    logging::init();
    let mut budget: Option<u64> = None;
    let mut f32_activations: Option<bool> = None;
    let mut kv_f16 = false;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--expert-cache-bytes" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => budget = Some(n),
                None => {
                    eprintln!("--expert-cache-bytes needs a byte count");
                    return usage();
                }
            },
            "--f32-activations" => f32_activations = Some(true),
            "--int-activations" => f32_activations = Some(false),
            "--kv-f16" => kv_f16 = true,
            "-h" | "--help" => {
                println!("usage: conformance [--expert-cache-bytes N] [--f32-activations | --int-activations] [--kv-f16] DIR...");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with("--") => {
                eprintln!("unknown option {s}");
                return usage();
            }
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    if dirs.is_empty() {
        return usage();
    }
    let mut failed = false;
    for dir in &dirs {
        let result = (|| {
            let golden = Golden::load(dir)?;
            let mut builder = Model::builder(dir);
            if let Some(f) = f32_activations {
                builder = builder.f32_activations(f);
            }
            if kv_f16 {
                builder = builder.kv_cache_dtype(moestream::format::DType::F16);
            }
            if let Some(b) = budget {
                builder = builder.expert_cache_bytes(b);
            }
            let model = builder.build()?;
            check(&model, &golden, dir)
        })();
        match result {
            Ok(report) => {
                failed |= !report.passed();
                println!("{report}");
            }
            Err(e) => {
                failed = true;
                println!("FAIL {} error: {e}", dir.display());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
