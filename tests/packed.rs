//! Packed experts (`moestream-pack/`): conversion, bit-identical reads, direct I/O,
//! checksums, interrupted conversions, truncated files and stale packs.
//!
//! Every test copies fixtures into fresh temporary folders (removed on drop) and packs them
//! there.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moestream::golden::{check, Golden};
use moestream::{
    checkpoint::Checkpoint,
    config::ModelConfig,
    format::{AffineQuant, DType, WeightFormat},
    store::{
        pack_experts, pack_experts_from, AlignedBuf, ExpertLayout, PackOptions, PackOutcome,
        PackedStoreOptions, PACK_DIR_NAME,
    },
    Error, ExpertStore, MemoryStore, Model, PackedStore, SafetensorsStore,
};

/// Blob alignment of a pack (`READ_ALIGN`).
const BLOCK: usize = 16384;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("moestream-packed-{test}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A copy of fixture folder `src` (its files) in `<self>/<name>`.
    fn copy_fixture(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.0.join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            }
        }
        dst
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn no_progress(_: &moestream::store::PackProgress) -> moestream::Result<()> {
    Ok(())
}

fn pack(dir: &Path) -> moestream::store::PackSummary {
    pack_experts(dir, &PackOptions::new(), no_progress).unwrap()
}

fn safetensors_store(dir: &Path) -> SafetensorsStore {
    let cfg = ModelConfig::from_path(dir).unwrap();
    SafetensorsStore::new(Arc::new(Checkpoint::open(dir).unwrap()), &cfg).unwrap()
}

fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Reads one expert into a fresh aligned buffer filled with `fill`.
fn read(store: &dyn ExpertStore, layer: usize, expert: usize, fill: u8) -> AlignedBuf {
    let n = store.layout(layer).unwrap().bytes;
    let mut buf = AlignedBuf::new(n);
    buf.fill(fill);
    store.read_expert(layer, expert, &mut buf).unwrap();
    buf
}

/// Every expert of `a` equals the same expert of `b` (first `layout.bytes` bytes), and the
/// layouts are equal.
fn assert_same_experts(a: &dyn ExpertStore, b: &dyn ExpertStore, cfg: &ModelConfig, what: &str) {
    for l in cfg.moe_layers() {
        let layout = a.layout(l).unwrap();
        assert_eq!(Some(layout), b.layout(l), "{what}: layout of layer {l}");
        let n = layout.bytes;
        for e in 0..cfg.num_experts {
            let x = read(a, l, e, 0x11);
            let y = read(b, l, e, 0x22);
            assert!(x[..n] == y[..n], "{what}: layer {l} expert {e} differs");
        }
    }
}

/// Whether the model's expert store is a pack: a pack reads whole 16 KiB-padded blobs,
/// so the padding after an expert comes back as zeros, while the safetensors store leaves
/// the rest of the buffer untouched.
fn uses_pack(model: &Model) -> bool {
    let l = model.config().moe_layers()[0];
    let store = model.expert_store();
    let n = store.layout(l).unwrap().bytes;
    assert!(
        n % BLOCK != 0,
        "fixture experts are not a multiple of 16 KiB"
    );
    let buf = read(store.as_ref(), l, 0, 0xAA);
    buf[n..].iter().all(|&b| b == 0)
}

/// Logits of the golden prompt (prefill) and of every continuation step.
fn run_logits(model: &Model, golden: &Golden) -> moestream::Result<Vec<Vec<f32>>> {
    let mut s = model.session(golden.ids.len())?;
    let mut out = vec![s.prefill(&golden.ids[..golden.prompt_len])?];
    for &id in &golden.ids[golden.prompt_len..] {
        out.push(s.step(id)?);
    }
    Ok(out)
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn layer_file(pack: &Path, layer: usize) -> PathBuf {
    pack.join(format!("layer-{layer:03}.experts"))
}

/// Overwrites one byte of a file, returning the old value.
fn poke(path: &Path, offset: u64, value: u8) -> u8 {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut old = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut old).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[value]).unwrap();
    f.sync_all().unwrap();
    old[0]
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Every fixture (HF float and MLX-quantized): packed bytes equal the source store's, a
/// model on the folder uses the pack and computes bit-identical logits that pass the
/// golden check; re-packing is a no-op unless forced.
#[test]
fn every_fixture_round_trips_bit_identically() {
    let tmp = TempDir::new("roundtrip");
    // Every layout: Qwen3-MoE (HF, MLX), Qwen3.5 / Qwen3-Next (fused experts sliced
    // per expert, per-expert tensors, MLX switch_mlp) and gpt-oss (transposed float experts
    // and MXFP4 rows rearranged, biases as f32: the pack holds the engine's blobs).
    for src in common::fixtures()
        .into_iter()
        .chain(common::qwen35_fixtures())
        .chain(common::gpt_oss_fixtures())
        .chain(common::mixtral_fixtures())
        .chain(common::olmoe_fixtures())
        .chain(common::glm4_moe_fixtures())
    {
        let name = src.file_name().unwrap().to_str().unwrap().to_string();
        let dir = tmp.copy_fixture(&src, &name);
        let cfg = ModelConfig::from_path(&dir).unwrap();
        let summary = pack(&dir);
        assert_eq!(summary.outcome, PackOutcome::Written, "{name}");
        assert_eq!(summary.dir, dir.join(PACK_DIR_NAME));
        assert_eq!(summary.experts, cfg.moe_layers().len() * cfg.num_experts);
        println!(
            "{name}: {} experts, {} bytes ({} on disk)",
            summary.experts, summary.expert_bytes, summary.file_bytes
        );

        // Bytes: every expert equals the safetensors store's, through aligned buffers and
        // through short unaligned ones.
        let source = safetensors_store(&dir);
        let packed = PackedStore::open(dir.join(PACK_DIR_NAME)).unwrap();
        assert_eq!(
            packed.identity(),
            moestream::store::checkpoint_identity(&Checkpoint::open(&dir).unwrap()).unwrap()
        );
        assert_same_experts(&source, &packed, &cfg, &name);
        for l in cfg.moe_layers() {
            let n = packed.layout(l).unwrap().bytes;
            let want = read(&source, l, cfg.num_experts - 1, 0);
            let mut v = vec![0u8; n + 1];
            packed
                .read_expert(l, cfg.num_experts - 1, &mut v[1..])
                .unwrap();
            assert!(v[1..] == want[..n], "{name}: unaligned exact-length read");
        }

        // The model on the folder now reads the pack; its logits are bit-identical to a
        // model reading the safetensors files, and it passes the golden check (with f32
        // activations: the 4-bit Mixtral fixture's 8+8-bit rows move it past golden's
        // bound, tests/conformance.rs).
        let golden = Golden::load(&src).unwrap();
        let from_pack = Model::builder(&dir).f32_activations(true).build().unwrap();
        assert!(uses_pack(&from_pack), "{name}: the model must use the pack");
        let from_st = Model::builder(&dir)
            .expert_store(Arc::new(safetensors_store(&dir)))
            .f32_activations(true)
            .build()
            .unwrap();
        assert!(!uses_pack(&from_st));
        let a = run_logits(&from_pack, &golden).unwrap();
        let b = run_logits(&from_st, &golden).unwrap();
        assert_eq!(bits(&a), bits(&b), "{name}: logits must be bit-identical");
        let report = check(&from_pack, &golden, &dir).unwrap();
        println!("{name}: {report}");
        assert!(report.passed(), "{report}");

        // Packing again: up to date; forced: rewritten, same bytes.
        let again = pack(&dir);
        assert_eq!(again.outcome, PackOutcome::UpToDate, "{name}");
        let forced = pack_experts(&dir, &PackOptions::new().force(true), no_progress).unwrap();
        assert_eq!(forced.outcome, PackOutcome::Written);
        let reopened = PackedStore::open(dir.join(PACK_DIR_NAME)).unwrap();
        assert_same_experts(&source, &reopened, &cfg, &name);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Quantized layouts (MLX affine, a different mix per layer) are carried unchanged:
/// packed from a `MemoryStore` holding random bytes in such layouts. (The MLX fixtures,
/// real quantized checkpoints, go through the round trip above.)
#[test]
fn quantized_layouts_are_packed_unchanged() {
    let tmp = TempDir::new("quantized");
    let dir = tmp.copy_fixture(&common::fixture("tiny_bf16"), "m");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    // Shapes need not match the model here: only the bytes and layouts are checked.
    let (h, i) = (128, 64);
    let q = |bits, group, d| WeightFormat::Affine(AffineQuant::new(bits, group, d).unwrap());
    let mut layouts = vec![None; cfg.num_hidden_layers];
    for (k, l) in cfg.moe_layers().into_iter().enumerate() {
        let formats = if k % 2 == 0 {
            [
                q(4, 32, DType::BF16),
                q(4, 32, DType::BF16),
                q(8, 32, DType::F16),
            ]
        } else {
            [
                q(3, 32, DType::F32),
                q(6, 32, DType::BF16),
                q(2, 32, DType::BF16),
            ]
        };
        layouts[l] = Some(ExpertLayout::swiglu_with(formats, h, i).unwrap());
    }
    let mut mem = MemoryStore::new(layouts);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for l in cfg.moe_layers() {
        let n = mem.layout(l).unwrap().bytes;
        for e in 0..cfg.num_experts {
            let blob: Vec<u8> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            mem.insert(l, e, blob).unwrap();
        }
    }
    let out = tmp.0.join("q-pack");
    let summary = pack_experts_from(
        &mem,
        &ckpt,
        &cfg,
        &PackOptions::new().out(&out),
        no_progress,
    )
    .unwrap();
    assert_eq!(summary.outcome, PackOutcome::Written);
    let packed = PackedStore::open(&out).unwrap();
    assert!(packed.matches(&ckpt).unwrap());
    assert_same_experts(&mem, &packed, &cfg, "quantized");
    let index = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(index.contains("\"type\": \"affine\""), "{index}");
}

#[test]
fn direct_and_buffered_reads_are_identical() {
    let tmp = TempDir::new("direct");
    let dir = tmp.copy_fixture(&common::fixture("tiny_bf16"), "m");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    pack(&dir);
    let pack_dir = dir.join(PACK_DIR_NAME);
    let buffered =
        PackedStore::open_with(&pack_dir, PackedStoreOptions::default().direct_io(false)).unwrap();
    assert!(!buffered.direct_io_active());
    let direct = Arc::new(
        PackedStore::open_with(&pack_dir, PackedStoreOptions::default().direct_io(true)).unwrap(),
    );
    println!(
        "direct I/O in {}: {}",
        pack_dir.display(),
        if direct.direct_io_active() {
            "active"
        } else {
            "refused by the file system, buffered fallback"
        }
    );
    assert_same_experts(&buffered, direct.as_ref(), &cfg, "direct");

    // Concurrent readers on one store.
    let want: Vec<Vec<u8>> = (0..cfg.num_experts)
        .map(|e| {
            let l = cfg.moe_layers()[0];
            read(&buffered, l, e, 0)[..buffered.layout(l).unwrap().bytes].to_vec()
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (direct, want, cfg) = (direct.clone(), &want, &cfg);
            s.spawn(move || {
                let l = cfg.moe_layers()[0];
                for k in 0..64 {
                    let e = (k * 7 + t) % cfg.num_experts;
                    let got = read(direct.as_ref(), l, e, 0xFF);
                    assert!(got[..want[e].len()] == want[e][..]);
                }
            });
        }
    });

    // A model on the direct store passes its golden check.
    let golden = Golden::load(common::fixture("tiny_bf16")).unwrap();
    let model = Model::builder(&dir)
        .expert_store(direct.clone())
        .build()
        .unwrap();
    let report = check(&model, &golden, &dir).unwrap();
    assert!(report.passed(), "{report}");

    // tmpfs (no O_DIRECT on older kernels): direct reads fall back and still work.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let out = shm.join(format!("moestream-packed-direct-{}", std::process::id()));
        let _cleanup = TempDir(out.clone());
        let _ = std::fs::remove_dir_all(&out);
        if pack_experts(&dir, &PackOptions::new().out(&out), no_progress).is_ok() {
            let on_shm =
                PackedStore::open_with(&out, PackedStoreOptions::default().direct_io(true))
                    .unwrap();
            println!(
                "direct I/O on /dev/shm: {}",
                if on_shm.direct_io_active() {
                    "active"
                } else {
                    "refused, buffered fallback"
                }
            );
            assert_same_experts(&buffered, &on_shm, &cfg, "direct on /dev/shm");
        }
    }
}

#[test]
fn corrupted_byte_is_caught_and_model_recovers() {
    let tmp = TempDir::new("corrupt");
    let src = common::fixture("tiny_f32");
    let dir = tmp.copy_fixture(&src, "m");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    pack(&dir);
    let pack_dir = dir.join(PACK_DIR_NAME);
    let layer = cfg.moe_layers()[0];
    let file = layer_file(&pack_dir, layer);
    let source = safetensors_store(&dir);
    let n = source.layout(layer).unwrap().bytes;
    let stride = padded(n) as u64;
    let golden = Golden::load(&src).unwrap();

    let clean_model = Model::open(&dir).unwrap();
    let clean = run_logits(&clean_model, &golden).unwrap();
    drop(clean_model);

    // One flipped byte in every expert of the layer, so any token uses a corrupt one.
    let spot = |e: usize| e as u64 * stride + (n as u64 / 2) + e as u64;
    let olds: Vec<u8> = (0..cfg.num_experts)
        .map(|e| {
            let old = poke(&file, spot(e), 0);
            poke(&file, spot(e), !old);
            old
        })
        .collect();

    let store = PackedStore::open(&pack_dir).unwrap();
    let mut buf = AlignedBuf::new(n);
    match store.read_expert(layer, 3, &mut buf) {
        Err(e @ Error::ExpertRead { .. }) => {
            let Error::ExpertRead {
                layer: el,
                expert: ee,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*el, *ee), (layer, 3));
            let msg = e.to_string();
            assert!(msg.contains("checksum mismatch"), "{msg}");
            assert!(msg.contains(&format!("layer {layer}")), "{msg}");
            assert!(msg.contains("expert 3"), "{msg}");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    // The unaligned path is checked too.
    let mut v = vec![0u8; n];
    assert!(matches!(
        store.read_expert(layer, 0, &mut v),
        Err(Error::ExpertRead { .. })
    ));

    // A model step using the layer fails with the error, not garbage logits ...
    let model = Model::open(&dir).unwrap();
    let err = run_logits(&model, &golden).unwrap_err();
    assert!(
        matches!(err, Error::ExpertRead { .. }) && err.to_string().contains("checksum"),
        "{err}"
    );
    // ... and succeeds, bit-identically, once the bytes are restored.
    for (e, &old) in olds.iter().enumerate() {
        poke(&file, spot(e), old);
    }
    let fixed = run_logits(&model, &golden).unwrap();
    assert_eq!(bits(&fixed), bits(&clean));

    // With checksums off a corrupt expert is not noticed: the documented trade-off.
    let old = poke(&file, spot(3), 0);
    poke(&file, spot(3), !old);
    let unchecked = PackedStore::open_with(
        &pack_dir,
        PackedStoreOptions::default().verify_checksums(false),
    )
    .unwrap();
    assert!(!unchecked.verifies_checksums());
    let got = read(&unchecked, layer, 3, 0);
    let want = read(&source, layer, 3, 0);
    assert!(got[..n] != want[..n], "the corrupt byte is returned as is");
    let model = Model::builder(&dir)
        .expert_store(Arc::new(unchecked))
        .build()
        .unwrap();
    run_logits(&model, &golden).expect("no error without checksums");
    // verify_all finds it regardless of the option.
    let err = PackedStore::open(&pack_dir)
        .unwrap()
        .verify_all(|_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn interrupted_conversion_leaves_no_pack() {
    let tmp = TempDir::new("interrupt");
    let dir = tmp.copy_fixture(&common::fixture("sharded"), "m");
    let pack_dir = dir.join(PACK_DIR_NAME);

    // Stopped by the progress callback after a few experts.
    let mut calls = 0;
    let err = pack_experts(&dir, &PackOptions::new(), |p| {
        calls += 1;
        assert!(p.bytes_done <= p.bytes_total);
        if calls == 3 {
            return Err(Error::InvalidArgument("stop".into()));
        }
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(ref m) if m == "stop"));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PACK_DIR_NAME))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let model = Model::open(&dir).unwrap();
    assert!(!uses_pack(&model));
    drop(model);

    // Killed hard: a `.partial-<pid>` folder of a dead process (even a complete-looking
    // one) is never opened, and the next conversion removes it.
    let other = TempDir::new("interrupt-src");
    let other_dir = other.copy_fixture(&common::fixture("sharded"), "m");
    pack(&other_dir);
    let stale = dir.join(format!("{PACK_DIR_NAME}.partial-{}", i32::MAX));
    std::fs::create_dir(&stale).unwrap();
    for e in std::fs::read_dir(other_dir.join(PACK_DIR_NAME)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), stale.join(e.file_name())).unwrap();
    }
    let err = PackedStore::open(&stale).unwrap_err();
    assert!(
        matches!(err, Error::Pack { .. }) && err.to_string().contains("interrupted"),
        "{err}"
    );
    assert!(!uses_pack(&Model::open(&dir).unwrap()));

    // A `moestream-pack` folder without index.json (copied incompletely by hand) is not a
    // pack: opening it says so, models ignore it.
    std::fs::create_dir(&pack_dir).unwrap();
    std::fs::copy(
        stale.join("layer-000.experts"),
        pack_dir.join("layer-000.experts"),
    )
    .unwrap();
    let err = PackedStore::open(&pack_dir).unwrap_err();
    assert!(err.to_string().contains("index.json"), "{err}");
    assert!(!uses_pack(&Model::open(&dir).unwrap()));
    // ... and the converter does not overwrite a folder that is not a pack.
    let err = pack_experts(&dir, &PackOptions::new(), no_progress).unwrap_err();
    assert!(
        matches!(err, Error::Pack { .. }) && err.to_string().contains("not a moestream pack"),
        "{err}"
    );
    std::fs::remove_dir_all(&pack_dir).unwrap();

    let summary = pack(&dir);
    assert_eq!(summary.outcome, PackOutcome::Written);
    assert!(!stale.exists(), "the stale partial folder is removed");
    assert!(uses_pack(&Model::open(&dir).unwrap()));
}

#[test]
fn truncated_or_malformed_pack_is_rejected() {
    let tmp = TempDir::new("truncated");
    let dir = tmp.copy_fixture(&common::fixture("dense_mix"), "m");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    pack(&dir);
    let pack_dir = dir.join(PACK_DIR_NAME);
    let layer = *cfg.moe_layers().last().unwrap();
    let file = layer_file(&pack_dir, layer);
    let len = std::fs::metadata(&file).unwrap().len();

    for new_len in [len - BLOCK as u64, len - 1, len + 1] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(new_len)
            .unwrap();
        let err = PackedStore::open(&pack_dir).unwrap_err();
        match &err {
            Error::Pack { path, reason } => {
                assert_eq!(path, &file, "{err}");
                let want = if new_len < len {
                    "truncated"
                } else {
                    "trailing"
                };
                assert!(reason.contains(want), "{err}");
            }
            other => panic!("expected Error::Pack, got {other:?}"),
        }
        let err = Model::open(&dir).unwrap_err();
        assert!(matches!(err, Error::Pack { .. }), "{err}");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len)
        .unwrap();
    PackedStore::open(&pack_dir).unwrap();

    // A pack made while the file was intact but truncated after open: the read fails
    // with an I/O error naming layer and expert.
    let store = PackedStore::open(&pack_dir).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(BLOCK as u64)
        .unwrap();
    let n = store.layout(layer).unwrap().bytes;
    let mut buf = AlignedBuf::new(n);
    let err = store
        .read_expert(layer, cfg.num_experts - 1, &mut buf)
        .unwrap_err();
    match &err {
        Error::ExpertRead {
            layer: l,
            expert: e,
            cause,
            ..
        } => {
            assert_eq!((*l, *e), (layer, cfg.num_experts - 1));
            assert!(cause.is_some(), "{err}");
        }
        other => panic!("expected ExpertRead, got {other:?}"),
    }
    std::fs::remove_dir_all(&pack_dir).unwrap();

    // Index: another format version, or not JSON.
    pack(&dir);
    let index = pack_dir.join("index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let err = PackedStore::open(&pack_dir).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    std::fs::write(&index, "{").unwrap();
    let err = PackedStore::open(&pack_dir).unwrap_err();
    assert!(err.to_string().contains("JSON"), "{err}");
    assert!(matches!(Model::open(&dir), Err(Error::Pack { .. })));
}

#[test]
fn pack_of_another_checkpoint_is_refused() {
    let tmp = TempDir::new("mismatch");
    let a = tmp.copy_fixture(&common::fixture("long_prompt"), "a");
    let b = tmp.copy_fixture(&common::fixture("released_spelling"), "b");
    pack(&a);
    let foreign = b.join(PACK_DIR_NAME);
    std::fs::create_dir(&foreign).unwrap();
    for e in std::fs::read_dir(a.join(PACK_DIR_NAME)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), foreign.join(e.file_name())).unwrap();
    }
    let ckpt_b = Checkpoint::open(&b).unwrap();
    assert!(!PackedStore::open(&foreign)
        .unwrap()
        .matches(&ckpt_b)
        .unwrap());

    // Model::build refuses it, naming the folder and the remedy.
    let err = Model::open(&b).unwrap_err();
    match &err {
        Error::Pack { path, reason } => {
            assert_eq!(path, &foreign);
            assert!(reason.contains("different checkpoint"), "{err}");
            assert!(reason.contains("example pack"), "{err}");
            assert!(reason.contains("delete"), "{err}");
        }
        other => panic!("expected Error::Pack, got {other:?}"),
    }
    // The converter does not overwrite it.
    let index_before = std::fs::read(foreign.join("index.json")).unwrap();
    let err = pack_experts(&b, &PackOptions::new(), no_progress).unwrap_err();
    assert!(
        matches!(err, Error::Pack { .. }) && err.to_string().contains("different checkpoint"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(foreign.join("index.json")).unwrap(),
        index_before
    );
    std::fs::remove_dir_all(&foreign).unwrap();
    assert!(!uses_pack(&Model::open(&b).unwrap()));

    // Editing the checkpoint's config.json makes its own pack stale.
    let cfg_path = a.join("config.json");
    let mut text = std::fs::read_to_string(&cfg_path).unwrap();
    text.push('\n');
    std::fs::write(&cfg_path, text).unwrap();
    let err = Model::open(&a).unwrap_err();
    assert!(err.to_string().contains("config.json differs"), "{err}");
}
