//! Converts a checkpoint's experts into a pack (`docs/formats.md`): one contiguous,
//! 16 KiB-aligned blob per expert, one file per MoE layer, with checksums. A model opened
//! on the checkpoint folder then reads its experts from the pack.
//!
//! ```text
//! cargo run --release --example pack -- --model DIR              # writes DIR/moestream-pack
//! cargo run --release --example pack -- --model DIR --out OTHER  # elsewhere (use it with
//!                                                                #  ModelBuilder::expert_store)
//! cargo run --release --example pack -- --model DIR --force      # rewrite an up-to-date pack
//! cargo run --release --example pack -- --model DIR --verify     # check an existing pack
//! ```

#[path = "support/logging.rs"]
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use moestream::{
    store::{PackOptions, PackOutcome, PACK_DIR_NAME},
    PackedStore,
};

#[derive(Parser, Debug)]
#[command(about = "Pack a checkpoint's experts for fast streaming (one aligned blob per expert)")]
struct Args {
    /// Checkpoint folder (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Output folder. Default: <model>/moestream-pack, where models look for it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rewrite the pack even if an intact pack of this checkpoint is already there.
    #[arg(long)]
    force: bool,
    /// Do not convert: read every expert of the existing pack and check its checksum.
    #[arg(long)]
    verify: bool,
}

fn bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn rate(bytes: u64, secs: f64) -> String {
    format!(
        "{:.1} MiB in {:.2}s ({:.1} MiB/s)",
        bytes as f64 / 1048576.0,
        secs,
        bytes as f64 / 1048576.0 / secs.max(1e-9)
    )
}

fn run(args: Args) -> moestream::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.model.join(PACK_DIR_NAME));
    if args.verify {
        let pack = PackedStore::open(&out)?;
        let pb = bar(pack.total_expert_bytes());
        pb.set_message("verifying");
        let t = Instant::now();
        pack.verify_all(|done, _| pb.set_position(done))?;
        pb.finish_and_clear();
        println!(
            "{}: every checksum matches; {}",
            out.display(),
            rate(pack.total_expert_bytes(), t.elapsed().as_secs_f64())
        );
        return Ok(());
    }
    let options = PackOptions::new().out(&out).force(args.force);
    let mut pb: Option<ProgressBar> = None;
    let summary = moestream::store::pack_experts(&args.model, &options, |p| {
        let pb = pb.get_or_insert_with(|| bar(p.bytes_total));
        pb.set_message(format!("layer {}", p.layer));
        pb.set_position(p.bytes_done);
        Ok(())
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    match summary.outcome {
        PackOutcome::UpToDate => println!(
            "{} is up to date (made from this checkpoint, identity {:016x}); --force rewrites it",
            summary.dir.display(),
            summary.identity
        ),
        // `Written` (`PackOutcome` is non-exhaustive).
        _ => println!(
            "Wrote {}: {} experts in {} MoE layers ({:.1} MiB on disk with padding); expert data {}",
            summary.dir.display(),
            summary.experts,
            summary.layers,
            summary.file_bytes as f64 / 1048576.0,
            rate(summary.expert_bytes, summary.elapsed.as_secs_f64()),
        ),
    }
    if args.out.is_some() && out != args.model.join(PACK_DIR_NAME) {
        println!(
            "Note: models only pick up a pack at <model>/{PACK_DIR_NAME} by themselves; pass this one with ModelBuilder::expert_store(PackedStore::open(..))."
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
