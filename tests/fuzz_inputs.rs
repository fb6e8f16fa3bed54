//! Seeded property tests ("fuzzing" on stable Rust) of every file moestream parses:
//! `config.json`, safetensors headers and `model.safetensors.index.json`, the expert pack's
//! `index.json` and layer files, `tokenizer.json` / `tokenizer_config.json` and chat
//! templates, MLX-quantized tensors and their `quantization` configs, and routing trace
//! files.
//!
//! Each property mutates the fixtures under `tests/fixtures*/` (extreme numbers, deleted and
//! inserted keys, nested objects, reshaped tensors, truncated files, flipped bytes) and runs
//! a fixed corpus of hand-made malformed files first. Every case must end in `Ok` or a
//! typed [`moestream::Error`]:
//! - no panic (each case runs under `catch_unwind` on its own thread);
//! - no case slower than [`CASE_LIMIT`]; a case still running after [`HANG_LIMIT`] fails as a
//!   hang;
//! - no single allocation above [`ALLOC_LIMIT`] (a `#[global_allocator]` records the largest
//!   allocation of each case's thread): nothing may be sized by a number a file merely
//!   claims.
//!
//! Seeds are fixed and failures are not persisted, so every run tries the same cases; each
//! property prints how many it ran (`cargo test --release --test fuzz_inputs -- --nocapture`).
//! With `FUZZ_TRACE=1` every case is printed before it runs, with its outcome, time and
//! largest allocation after.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use moestream::{
    chat::{ChatOptions, ChatTemplate},
    checkpoint::Checkpoint,
    config::{ModelConfig, SUPPORTED_MODEL_TYPES},
    store::{pack_experts, AlignedBuf, PackOptions, PackedStoreOptions},
    tokenizer::{IncrementalDecoder, SpecialTokens},
    ChatMessage, ExpertStore, PackedStore, SafetensorsStore, Tokenizer,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Limits and the allocation recorder
// ---------------------------------------------------------------------------------------

/// The slowest a single case may be (in a release build; a debug build runs the same work
/// several times slower). The slowest cases (templates that run until their fuel is spent)
/// take ~1 s alone, and 2.1-2.3 s on a 2-core machine running other test threads (two
/// flaky failures at a 2 s limit): the limit leaves room for that and still catches a case
/// that runs away.
const CASE_LIMIT: Duration = Duration::from_secs(if cfg!(debug_assertions) { 30 } else { 6 });

/// A case still running after this long is reported as a hang (its thread is abandoned).
const HANG_LIMIT: Duration = Duration::from_secs(if cfg!(debug_assertions) { 120 } else { 20 });

/// The largest single allocation a case may make.
const ALLOC_LIMIT: usize = 256 << 20;

/// The largest expert blob the harness itself allocates to read an expert: bigger layouts
/// than any fixture's are a finding (a size taken from a file without a check).
const MAX_READ_BUF: usize = 64 << 20;

/// Forwards to [`System`], recording the largest single allocation of the current thread.
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// recording touches only a const-initialised thread-local `Cell` (no allocation).
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

// ---------------------------------------------------------------------------------------
// Running one case, and one property
// ---------------------------------------------------------------------------------------

/// What one case reported, measured on its own thread.
struct CaseReport {
    /// What the case's main call gave: `ok` or the error variant.
    label: String,
    elapsed: Duration,
    peak: usize,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// Runs `f` on a fresh thread under `catch_unwind`, with the allocation peak reset.
fn run_guarded(f: Box<dyn FnOnce() -> String + Send>) -> Result<CaseReport, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-case".into())
        .stack_size(8 << 20)
        .spawn(move || {
            PEAK.with(|p| p.set(0));
            let t0 = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(f));
            let elapsed = t0.elapsed();
            let peak = PEAK.with(Cell::get);
            let _ = tx.send(
                r.map(|label| CaseReport {
                    label,
                    elapsed,
                    peak,
                })
                .map_err(|p| panic_text(&*p)),
            );
        })
        .expect("cannot spawn a case thread");
    match rx.recv_timeout(HANG_LIMIT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(msg)) => Err(format!("panicked: {msg}")),
        Err(_) => Err(format!("hang: no result within {HANG_LIMIT:?}")),
    }
}

/// Counts of a property's cases.
#[derive(Default)]
struct Tally {
    cases: usize,
    labels: BTreeMap<String, usize>,
    peak: usize,
    slowest: Duration,
}

impl Tally {
    /// Checks one case's report against the limits.
    fn record(&mut self, r: Result<CaseReport, String>) -> Result<(), String> {
        let r = r?;
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!(
                "  -> {} in {} ms, largest allocation {} B",
                r.label,
                r.elapsed.as_millis(),
                r.peak
            );
        }
        self.cases += 1;
        *self.labels.entry(r.label).or_default() += 1;
        self.peak = self.peak.max(r.peak);
        self.slowest = self.slowest.max(r.elapsed);
        if r.peak > ALLOC_LIMIT {
            return Err(format!(
                "allocated {} bytes at once (limit {ALLOC_LIMIT})",
                r.peak
            ));
        }
        if r.elapsed > CASE_LIMIT {
            return Err(format!("took {:?} (limit {CASE_LIMIT:?})", r.elapsed));
        }
        Ok(())
    }
}

/// A fixed seed per property (its number spread over 32 bytes).
fn seed(n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = n.wrapping_mul(31).wrapping_add(i as u8).rotate_left(3) ^ 0x5a;
    }
    s
}

/// Runs a property: every value of `corpus`, then `cases` values drawn from `strategy` with
/// a fixed seed, each through `body` on a guarded thread. Fails on the first panic, hang,
/// slow case or oversized allocation (after shrinking the random input), and prints the
/// case counts.
fn property<S>(
    name: &str,
    seed_id: u8,
    cases: u32,
    corpus: Vec<S::Value>,
    strategy: S,
    body: fn(S::Value) -> String,
) where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    quiet_known_panics();
    let started = Instant::now();
    let tally = RefCell::new(Tally::default());
    let corpus_len = corpus.len();
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    for (i, v) in corpus.into_iter().enumerate() {
        let shown = format!("{v:?}");
        if trace {
            eprintln!("{name}: corpus {i}: {shown}");
        }
        let r = run_guarded(Box::new(move || body(v)));
        if let Err(e) = tally.borrow_mut().record(r) {
            panic!("{name}: corpus case {i} {e}\ninput: {shown}");
        }
    }
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed(seed_id)),
    );
    let result = runner.run(&strategy, |v| {
        if trace {
            eprintln!("{name}: {v:?}");
        }
        let r = run_guarded(Box::new(move || body(v)));
        tally.borrow_mut().record(r).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let t = tally.into_inner();
    let labels: Vec<String> = t.labels.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "{name}: {} cases ({corpus_len} corpus + {} seeded), 0 panics, 0 hangs; outcomes: {}; \
         largest allocation {} KiB (limit {} MiB); slowest case {} ms; {:.1} s",
        t.cases,
        t.cases - corpus_len,
        labels.join(", "),
        t.peak >> 10,
        ALLOC_LIMIT >> 20,
        t.slowest.as_millis(),
        started.elapsed().as_secs_f64()
    );
    // Removed by whichever property ends last (it fails while others still use it).
    let _ = std::fs::remove_dir(scratch_root());
}

/// Keeps the default panic message, except for the panics `HfTokenizer::from_bytes`
/// catches inside the `tokenizers` crate (turned into `Error::Tokenizer`), which would
/// only clutter the output.
fn quiet_known_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tokenizers = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !in_tokenizers {
                default(info);
            }
        }));
    });
}

/// `ok`, or the variant of a `moestream::Error` (its message is formatted too).
fn label<T>(r: &moestream::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            let _ = e.to_string();
            let d = format!("{e:?}");
            d.split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("?")
                .to_string()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures and temporary folders
// ---------------------------------------------------------------------------------------

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// `tests/fixtures*/*/` folders that hold `file`, sorted.
fn fixture_dirs_with(file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for group in std::fs::read_dir(tests_dir()).unwrap().flatten() {
        let name = group.file_name().to_string_lossy().into_owned();
        if !name.starts_with("fixtures") || !group.path().is_dir() {
            continue;
        }
        for d in std::fs::read_dir(group.path()).unwrap().flatten() {
            if d.path().join(file).is_file() {
                out.push(d.path());
            }
        }
    }
    out.sort();
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The root of this run's temporary folders.
fn scratch_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("moestream-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A fresh folder for one case, removed on drop.
struct CaseDir(PathBuf);

impl CaseDir {
    fn new(property: &str) -> CaseDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = scratch_root().join(format!("{property}-{n}"));
        let _ = std::fs::remove_dir_all(&d);
        // A property that ends removes the (then empty) root: try again if that raced.
        let made = (0..3).any(|_| std::fs::create_dir_all(&d).is_ok());
        assert!(made, "cannot create {}", d.display());
        CaseDir(d)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }

    fn link(&self, name: &str, target: &Path) {
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, self.0.join(name)).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(target, self.0.join(name))
            .map(|_| ())
            .unwrap();
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// JSON mutations
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Paths of every node of `v` in pre-order (the root first); arrays longer than 64 are
/// sampled at their first 64 elements.
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    here.push(Seg::Key(k.clone()));
                    walk(c, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate().take(64) {
                    here.push(Seg::Idx(i));
                    walk(c, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn node<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One structural change of a JSON document; `usize` fields pick a node (modulo the count of
/// nodes of the kind the mutation applies to).
#[derive(Debug, Clone)]
enum JsonMut {
    /// Replace the n-th number.
    Number(usize, Value),
    /// Add to the n-th number (an integer stays one where it can).
    Nudge(usize, i64),
    /// Multiply the n-th number.
    Scale(usize, u64),
    /// Replace the n-th node of any kind (not the root).
    Replace(usize, Value),
    /// Remove the n-th object member.
    Delete(usize),
    /// Insert `key: value` into the n-th object.
    Insert(usize, String, Value),
    /// Put a copy of the n-th object inside itself under `key` (e.g. a `text_config` or a
    /// `quantization` object inside another).
    Nest(usize, String),
    /// Append a value to the n-th array.
    Push(usize, Value),
    /// Repeat the n-th array's elements `k` times.
    Repeat(usize, usize),
}

fn pick<T: Clone>(items: &[T], n: usize) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[n % items.len()].clone())
    }
}

fn apply_json(v: &mut Value, m: &JsonMut) {
    let all = paths(v);
    let of_kind = |f: fn(&Value) -> bool| -> Vec<Vec<Seg>> {
        all.iter()
            .filter(|p| node(v, p).is_some_and(f))
            .cloned()
            .collect()
    };
    match m {
        JsonMut::Number(n, val) => {
            if let Some(p) = pick(&of_kind(Value::is_number), *n) {
                *node_mut(v, &p).unwrap() = val.clone();
            }
        }
        JsonMut::Nudge(n, d) => {
            if let Some(p) = pick(&of_kind(Value::is_number), *n) {
                let x = node_mut(v, &p).unwrap();
                *x = if let Some(i) = x.as_i64() {
                    json!(i.saturating_add(*d))
                } else if let Some(u) = x.as_u64() {
                    json!(u.saturating_add_signed(*d))
                } else {
                    json!(x.as_f64().unwrap_or(0.0) + *d as f64)
                };
            }
        }
        JsonMut::Scale(n, k) => {
            if let Some(p) = pick(&of_kind(Value::is_number), *n) {
                let x = node_mut(v, &p).unwrap();
                *x = if let Some(u) = x.as_u64() {
                    json!(u.saturating_mul(*k))
                } else {
                    json!(x.as_f64().unwrap_or(0.0) * *k as f64)
                };
            }
        }
        JsonMut::Replace(n, val) => {
            if let Some(p) = pick(&all[1.min(all.len())..], *n) {
                *node_mut(v, &p).unwrap() = val.clone();
            }
        }
        JsonMut::Delete(n) => {
            let members: Vec<Vec<Seg>> = all
                .iter()
                .filter(|p| matches!(p.last(), Some(Seg::Key(_))))
                .cloned()
                .collect();
            if let Some(mut p) = pick(&members, *n) {
                let Some(Seg::Key(k)) = p.pop() else { return };
                if let Some(Value::Object(o)) = node_mut(v, &p) {
                    o.remove(&k);
                }
            }
        }
        JsonMut::Insert(n, key, val) => {
            if let Some(p) = pick(&of_kind(Value::is_object), *n) {
                if let Some(Value::Object(o)) = node_mut(v, &p) {
                    o.insert(key.clone(), val.clone());
                }
            }
        }
        JsonMut::Nest(n, key) => {
            if let Some(p) = pick(&of_kind(Value::is_object), *n) {
                if let Some(Value::Object(o)) = node_mut(v, &p) {
                    let copy = Value::Object(o.clone());
                    o.insert(key.clone(), copy);
                }
            }
        }
        JsonMut::Push(n, val) => {
            if let Some(p) = pick(&of_kind(Value::is_array), *n) {
                if let Some(Value::Array(a)) = node_mut(v, &p) {
                    a.push(val.clone());
                }
            }
        }
        JsonMut::Repeat(n, k) => {
            if let Some(p) = pick(&of_kind(Value::is_array), *n) {
                if let Some(Value::Array(a)) = node_mut(v, &p) {
                    let copy = a.clone();
                    for _ in 0..(*k % 64) {
                        a.extend(copy.iter().cloned());
                    }
                }
            }
        }
    }
}

/// Numbers and values that break naive parsers.
fn extremes() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(7),
        json!(9),
        json!(64),
        json!(4096),
        json!(4097),
        json!(65536),
        json!(1u64 << 31),
        json!(1u64 << 32),
        json!(1_000_000_000_000u64),
        json!(1e12),
        json!(1e300),
        json!(1u64 << 62),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(u64::MAX - 15),
        json!(18446744073709551616.0f64),
        json!(i64::MIN),
        json!(-1e308),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!("NaN"),
        json!("inf"),
        json!("-Infinity"),
        json!("12"),
        Value::Null,
        json!(""),
        json!([]),
        json!({}),
        json!(true),
        json!(false),
        json!([0]),
        json!([1, 2, 3]),
        json!([-1]),
        json!(["x"]),
        json!([[1]]),
        json!("a".repeat(5000)),
    ]
}

fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        10 => prop::sample::select(extremes()),
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => prop::sample::select(vec![
            "silu", "gelu", "yarn", "default", "linear", "dynamic", "affine", "mxfp4", "fp8",
            "nvfp4", "gptq", "float16", "bfloat16", "F32", "full_attention",
            "linear_attention", "sliding_attention", "qwen3_moe",
        ])
        .prop_map(Value::from),
    ]
}

/// Keys the parsers read (config fields, rope and quantization fields).
const KEYS: &[&str] = &[
    "text_config",
    "rope_parameters",
    "rope_scaling",
    "quantization",
    "quantization_config",
    "model_type",
    "layer_types",
    "mlp_only_layers",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "experts_per_token",
    "n_shared_experts",
    "shared_expert_intermediate_size",
    "decoder_sparse_step",
    "first_k_dense_replace",
    "full_attention_interval",
    "n_group",
    "topk_group",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "linear_num_value_heads",
    "linear_num_key_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
    "sliding_window",
    "max_position_embeddings",
    "vocab_size",
    "rope_theta",
    "rope_type",
    "type",
    "partial_rotary_factor",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
    "truncate",
    "bits",
    "group_size",
    "mode",
    "quant_method",
    "eos_token_id",
    "bos_token_id",
    "rms_norm_eps",
    "hidden_act",
    "clip_qkv",
    "routed_scaling_factor",
    "tie_word_embeddings",
    "attention_bias",
    "norm_topk_prob",
    "use_qk_norm",
    "rope_interleave",
    "dtype",
    "torch_dtype",
    "__metadata__",
    "weight_map",
    "padding",
    "truncation",
    "added_tokens",
    "chat_template",
    "eos_token",
    "bos_token",
    "extra_special_tokens",
];

fn json_mut() -> impl Strategy<Value = JsonMut> {
    let key = prop::sample::select(KEYS).prop_map(str::to_string);
    prop_oneof![
        6 => (any::<usize>(), extreme()).prop_map(|(n, v)| JsonMut::Number(n, v)),
        2 => (any::<usize>(), prop::sample::select(vec![-1i64, 1, 2, -2, 16, -16, 1000, 16384]))
            .prop_map(|(n, d)| JsonMut::Nudge(n, d)),
        1 => (any::<usize>(), prop::sample::select(vec![0u64, 2, 3, 1 << 20, 1 << 40]))
            .prop_map(|(n, k)| JsonMut::Scale(n, k)),
        4 => (any::<usize>(), extreme()).prop_map(|(n, v)| JsonMut::Replace(n, v)),
        4 => any::<usize>().prop_map(JsonMut::Delete),
        3 => (any::<usize>(), key.clone(), extreme()).prop_map(|(n, k, v)| JsonMut::Insert(n, k, v)),
        1 => (any::<usize>(), key).prop_map(|(n, k)| JsonMut::Nest(n, k)),
        1 => (any::<usize>(), extreme()).prop_map(|(n, v)| JsonMut::Push(n, v)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(n, k)| JsonMut::Repeat(n, k)),
    ]
}

// ---------------------------------------------------------------------------------------
// Byte-level mutations
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum TextMut {
    /// Cut the text at a byte.
    Truncate(usize),
    /// XOR one byte.
    Flip(usize, u8),
    /// Insert a snippet at a byte.
    Insert(usize, &'static str),
    /// Remove a range of up to 64 bytes.
    Delete(usize, usize),
}

const SNIPPETS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\\",
    "\\u0000",
    "\\ud800",
    "\u{feff}",
    "\0",
    "\n",
    "-",
    "1e999",
    "99999999999999999999",
    "null",
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "'",
    "{% endfor %}",
    "{% for m in messages %}",
    "{{ messages * 3 }}",
];

fn text_mut() -> impl Strategy<Value = TextMut> {
    prop_oneof![
        2 => any::<usize>().prop_map(TextMut::Truncate),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| TextMut::Flip(i, x)),
        3 => (any::<usize>(), prop::sample::select(SNIPPETS)).prop_map(|(i, s)| TextMut::Insert(i, s)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, n)| TextMut::Delete(i, n)),
    ]
}

fn apply_text(b: &mut Vec<u8>, m: &TextMut) {
    let len = b.len();
    match m {
        TextMut::Truncate(i) => b.truncate(i % (len + 1)),
        TextMut::Flip(i, x) => {
            if len > 0 {
                b[i % len] ^= (*x).max(1);
            }
        }
        TextMut::Insert(i, s) => {
            let at = i % (len + 1);
            b.splice(at..at, s.bytes());
        }
        TextMut::Delete(i, n) => {
            let at = i % (len + 1);
            let end = (at + n % 64).min(len);
            b.drain(at..end);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading everything a checkpoint or an expert store offers
// ---------------------------------------------------------------------------------------

/// Reads every tensor of an opened checkpoint through the public API (`entry`, `float`,
/// `matrix`, `matrix_stacked`, the views' `to_f32` / `rows_bytes`), with `cols` guesses
/// for quantized matrices and one fuzzed `extra_cols`.
fn read_all_tensors(ckpt: &Checkpoint, extra_cols: usize) {
    let _ = ckpt.dir();
    let _ = ckpt.files().len();
    let mut names: Vec<String> = ckpt.tensor_names().map(str::to_string).collect();
    names.sort();
    for n in &names {
        assert!(ckpt.contains(n));
        let e = ckpt.entry(n).expect("a listed tensor has an entry").clone();
        let _ = ckpt.path_of(&e);
        if let Ok(v) = ckpt.float(n, &e.shape) {
            let _ = v.to_f32();
        }
        let _ = ckpt.float(n, &[1, 2]);
        let Some(prefix) = n.strip_suffix(".weight") else {
            continue;
        };
        let (count, rows, last) = match e.shape[..] {
            [r, c] => (1, r, c),
            [k, r, c] => (k, r, c),
            _ => continue,
        };
        let mut cols = vec![last, extra_cols, 0, 1, last.saturating_mul(8)];
        for bits in [2, 3, 4, 5, 6, 8] {
            cols.push(last.saturating_mul(32) / bits);
        }
        cols.sort_unstable();
        cols.dedup();
        if count.checked_mul(rows).is_none() {
            continue;
        }
        for c in cols {
            let r = if count == 1 {
                ckpt.matrix(prefix, rows, c)
            } else {
                ckpt.matrix_stacked(prefix, count, rows, c)
            };
            if let Ok(m) = r {
                let _ = m.rows_bytes(0, m.rows);
                let _ = m.to_f32();
            }
        }
    }
    let _ = ckpt.entry("no.such.tensor");
    let _ = ckpt.matrix("no.such", 4, 64);
}

/// Reads experts of every layer through the [`ExpertStore`] API (a few in range, the last,
/// and some out of range), slicing each tensor (and bias) out of the blob.
fn read_experts(store: &dyn ExpertStore, layers: usize, experts: usize) {
    for l in 0..layers {
        let Some(layout) = store.layout(l) else {
            let mut tiny = [0u8; 16];
            let _ = store.read_expert(l, 0, &mut tiny);
            continue;
        };
        let layout = layout.clone();
        assert!(
            layout.bytes <= MAX_READ_BUF,
            "layer {l}: the store's layout claims {} bytes per expert",
            layout.bytes
        );
        for t in &layout.tensors {
            // Every format stores at least 2 bits per element: a smaller size wrapped around.
            assert!(
                (t.len() as u128) * 4 >= (t.rows as u128) * (t.cols as u128),
                "layer {l}: {:?} [{}, {}] said to take {} bytes",
                t.role,
                t.rows,
                t.cols,
                t.len()
            );
            assert!(
                t.offset
                    .checked_add(t.len())
                    .is_some_and(|end| end <= layout.bytes),
                "layer {l}: {:?} at {} + {} bytes is outside the {}-byte blob",
                t.role,
                t.offset,
                t.len(),
                layout.bytes
            );
        }
        let mut buf = AlignedBuf::new(layout.bytes);
        let mut which = vec![0, 1, experts.saturating_sub(1), experts, usize::MAX];
        which.dedup();
        for e in which {
            if store.read_expert(l, e, &mut buf).is_ok() {
                for t in &layout.tensors {
                    let _ = t.bytes(&buf);
                    let _ = t.bias_bytes(&buf);
                    let _ = (t.is_empty(), t.len());
                }
            }
        }
        let _ = layout.has_biases();
        let mut short = [0u8; 1];
        let _ = store.read_expert(l, 0, &mut short);
        store.prefetch(l, &[0, usize::MAX]);
    }
}

/// Opens the checkpoint in `dir` and reads everything; with a config, also builds a
/// [`SafetensorsStore`] and reads its experts. Returns the label of `Checkpoint::open`.
fn exercise_checkpoint(dir: &Path, cfg: Option<&ModelConfig>, extra_cols: usize) -> String {
    let opened = Checkpoint::open(dir);
    let l = label(&opened);
    let Ok(ckpt) = opened else { return l };
    read_all_tensors(&ckpt, extra_cols);
    if let Some(cfg) = cfg {
        exercise_config(cfg);
        if let Ok(store) = SafetensorsStore::new(Arc::new(ckpt), cfg) {
            for layer in 0..cfg.num_hidden_layers + 1 {
                let _ = store.formats(layer);
            }
            read_experts(&store, cfg.num_hidden_layers + 1, cfg.num_experts);
        }
    }
    l
}

/// The accessors of a parsed config.
fn exercise_config(cfg: &ModelConfig) {
    let _ = cfg.moe_layers();
    let _ = cfg.is_moe_layer(usize::MAX);
    if cfg.num_key_value_heads > 0 {
        let _ = cfg.gqa_group();
    }
    for p in &cfg.layers {
        let _ = format!("{p:?}");
        if let Some(a) = p.attention() {
            let _ = format!("{a:?}");
        }
        if let Some(m) = p.mla() {
            let _ = m.cache_width();
        }
        if let Some(la) = p.linear_attention() {
            let _ = (
                la.conv_channels(),
                la.value_width(),
                la.projection_rows(),
                la.state_floats(),
                la.conv_state_floats(),
            );
        }
        if let Some(m) = p.moe() {
            let _ = format!("{m:?}");
        }
    }
    let again = cfg.clone();
    assert!(again == *cfg || cfg.rope_theta.is_nan() || cfg.rms_norm_eps.is_nan());
}

// ---------------------------------------------------------------------------------------
// 1. config.json
// ---------------------------------------------------------------------------------------

fn configs() -> &'static Vec<(PathBuf, Value)> {
    static C: OnceLock<Vec<(PathBuf, Value)>> = OnceLock::new();
    C.get_or_init(|| {
        let v: Vec<_> = fixture_dirs_with("config.json")
            .into_iter()
            .map(|d| {
                let p = d.join("config.json");
                let v = read_json(&p);
                (p, v)
            })
            .collect();
        assert!(
            v.len() >= 10,
            "expected the fixture configs, found {}",
            v.len()
        );
        v
    })
}

#[derive(Debug, Clone)]
enum ConfigMut {
    Json(JsonMut),
    /// Another family's `model_type`.
    ModelType(usize),
    /// A YaRN rope object with extreme fields.
    Yarn(&'static str, Value),
    /// The whole config moved under `text_config` (a composite config).
    Composite,
}

#[derive(Debug, Clone)]
struct ConfigCase {
    fixture: usize,
    muts: Vec<ConfigMut>,
    pretty: bool,
    text: Vec<TextMut>,
}

fn config_mut() -> impl Strategy<Value = ConfigMut> {
    prop_oneof![
        12 => json_mut().prop_map(ConfigMut::Json),
        1 => any::<usize>().prop_map(ConfigMut::ModelType),
        2 => (
            prop::sample::select(vec![
                "factor",
                "original_max_position_embeddings",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "attention_factor",
                "truncate",
                "rope_theta",
                "partial_rotary_factor",
            ]),
            extreme()
        )
            .prop_map(|(k, v)| ConfigMut::Yarn(k, v)),
        1 => Just(ConfigMut::Composite),
    ]
}

fn apply_config_mut(v: &mut Value, m: &ConfigMut) {
    match m {
        ConfigMut::Json(j) => apply_json(v, j),
        ConfigMut::ModelType(n) => {
            let types: Vec<&str> = SUPPORTED_MODEL_TYPES
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            if let (Some(t), Some(o)) = (pick(&types, *n), v.as_object_mut()) {
                o.insert("model_type".into(), json!(t));
            }
        }
        ConfigMut::Yarn(k, x) => {
            if let Some(o) = v.as_object_mut() {
                let mut r = json!({
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                    "rope_theta": 10000.0
                });
                r[*k] = x.clone();
                o.insert("rope_parameters".into(), r);
            }
        }
        ConfigMut::Composite => {
            let inner = v.clone();
            *v = json!({
                "model_type": inner.get("model_type").cloned().unwrap_or(Value::Null),
                "text_config": inner,
                "vision_config": {"depth": 1},
                "tie_word_embeddings": false
            });
        }
    }
}

/// Known findings outside the files this test may fix: the family parsers in `src/arch`
/// do unchecked arithmetic on config integers, which panics (an overflow check) in a
/// debug build and wraps to a wrong value in a release build:
/// - `glm4_moe/config.rs` `sigmoid_moe` (GLM-4.5 and DeepSeek-V3): the shared expert's
///   width `moe_intermediate_size * n_shared_experts`;
/// - `deepseek_v3/config.rs`: the check `qk_nope_head_dim + qk_rope_head_dim > 1024`
///   (which a wrapped sum passes);
/// - `plan.rs` `MlaSpec::cache_width`: `kv_lora_rank + qk_rope_head_dim`.
///
/// So in a debug build, configs holding an integer above 2^20 are skipped (a release
/// build, where those overflows wrap without a panic, parses them all).
fn debug_skip(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    paths(&v).iter().any(|p| {
        node(&v, p).is_some_and(|x| {
            x.as_u64().is_some_and(|n| n > 1 << 20) || x.as_i64().is_some_and(|n| n < -(1 << 20))
        })
    })
}

fn config_body(c: ConfigCase) -> String {
    let all = configs();
    let (_, base) = &all[c.fixture % all.len()];
    let mut v = base.clone();
    for m in &c.muts {
        apply_config_mut(&mut v, m);
    }
    let mut bytes = if c.pretty {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    };
    for m in &c.text {
        apply_text(&mut bytes, m);
    }
    let text = String::from_utf8_lossy(&bytes);
    if cfg!(debug_assertions) && debug_skip(&text) {
        return "skipped in a debug build".into();
    }
    let r = ModelConfig::from_json_str(&text, Path::new("config.json"));
    if let Ok(cfg) = &r {
        exercise_config(cfg);
    }
    label(&r)
}

#[test]
fn config_json() {
    let n = configs().len();
    // The unmodified fixtures parse; then hand-made malformed files.
    let mut corpus: Vec<ConfigCase> = (0..n)
        .map(|fixture| ConfigCase {
            fixture,
            muts: vec![],
            pretty: true,
            text: vec![],
        })
        .collect();
    for (i, v) in extremes().into_iter().enumerate() {
        for key in [
            "num_hidden_layers",
            "num_experts",
            "head_dim",
            "hidden_size",
        ] {
            corpus.push(ConfigCase {
                fixture: i,
                muts: vec![ConfigMut::Json(JsonMut::Insert(0, key.into(), v.clone()))],
                pretty: false,
                text: vec![],
            });
        }
    }
    for t in [0, 1, 2, 10, 100] {
        corpus.push(ConfigCase {
            fixture: t,
            muts: vec![],
            pretty: false,
            text: vec![TextMut::Truncate(t)],
        });
    }
    let strategy = (
        any::<usize>(),
        prop::collection::vec(config_mut(), 1..5),
        any::<bool>(),
        prop::collection::vec(text_mut(), 0..2),
    )
        .prop_map(|(fixture, muts, pretty, text)| ConfigCase {
            fixture,
            muts,
            pretty,
            text,
        });
    property("config.json", 1, 20000, corpus, strategy, config_body);
}

// ---------------------------------------------------------------------------------------
// Safetensors files
// ---------------------------------------------------------------------------------------

/// A safetensors file taken apart.
#[derive(Debug, Clone)]
struct StFile {
    header: Value,
    data: Vec<u8>,
}

fn st_parse(bytes: &[u8]) -> StFile {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    StFile {
        header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        data: bytes[8 + n..].to_vec(),
    }
}

fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// Tensor names of a header (not `__metadata__`), sorted.
fn st_names(h: &Value) -> Vec<String> {
    h.as_object()
        .map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
enum ShapeOp {
    Set(Vec<u64>),
    Transpose,
    Flatten,
    Unsqueeze,
    Squeeze,
    Double(usize),
    Halve(usize),
    Zero(usize),
}

#[derive(Debug, Clone)]
enum OffsetOp {
    Reverse,
    Shift(i64),
    Set(u64, u64),
    CopyFrom(usize),
    Empty,
    Replace(Value),
}

/// One change of a safetensors header; `usize` fields pick a tensor of the candidates.
#[derive(Debug, Clone)]
enum HeaderMut {
    Dtype(usize, &'static str),
    Shape(usize, ShapeOp),
    Offsets(usize, OffsetOp),
    DropField(usize, &'static str),
    /// Tensor i renamed to tensor j's name with its suffix replaced.
    Rename(usize, usize, &'static str),
    Remove(usize),
    Metadata(Value),
    Json(JsonMut),
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "U32", "I32", "U8", "I8", "U16", "I16", "F64", "I64", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "f32", "", "XYZ",
];

const DIMS: &[u64] = &[
    0,
    1,
    2,
    3,
    8,
    32,
    64,
    4096,
    1 << 31,
    1 << 32,
    1 << 62,
    u64::MAX,
];

fn shape_op() -> impl Strategy<Value = ShapeOp> {
    prop_oneof![
        2 => prop::collection::vec(prop::sample::select(DIMS), 0..4).prop_map(ShapeOp::Set),
        2 => Just(ShapeOp::Transpose),
        1 => Just(ShapeOp::Flatten),
        1 => Just(ShapeOp::Unsqueeze),
        1 => Just(ShapeOp::Squeeze),
        2 => any::<usize>().prop_map(ShapeOp::Double),
        2 => any::<usize>().prop_map(ShapeOp::Halve),
        1 => any::<usize>().prop_map(ShapeOp::Zero),
    ]
}

fn offset_op() -> impl Strategy<Value = OffsetOp> {
    prop_oneof![
        Just(OffsetOp::Reverse),
        prop::sample::select(vec![-1i64, 1, 2, -2, 4096, -4096, i64::MAX])
            .prop_map(OffsetOp::Shift),
        (prop::sample::select(DIMS), prop::sample::select(DIMS))
            .prop_map(|(a, b)| OffsetOp::Set(a, b)),
        any::<usize>().prop_map(OffsetOp::CopyFrom),
        Just(OffsetOp::Empty),
        extreme().prop_map(OffsetOp::Replace),
    ]
}

fn header_mut() -> impl Strategy<Value = HeaderMut> {
    prop_oneof![
        3 => (any::<usize>(), prop::sample::select(DTYPES)).prop_map(|(i, d)| HeaderMut::Dtype(i, d)),
        4 => (any::<usize>(), shape_op()).prop_map(|(i, s)| HeaderMut::Shape(i, s)),
        2 => (any::<usize>(), offset_op()).prop_map(|(i, o)| HeaderMut::Offsets(i, o)),
        1 => (any::<usize>(), prop::sample::select(vec!["dtype", "shape", "data_offsets"]))
            .prop_map(|(i, f)| HeaderMut::DropField(i, f)),
        1 => (any::<usize>(), any::<usize>(), prop::sample::select(vec![
            "", ".weight", ".scales", ".biases", ".bias", ".weight_scale_inv", "_blocks", "_scales",
        ]))
            .prop_map(|(i, j, s)| HeaderMut::Rename(i, j, s)),
        1 => any::<usize>().prop_map(HeaderMut::Remove),
        1 => extreme().prop_map(HeaderMut::Metadata),
        2 => json_mut().prop_map(HeaderMut::Json),
    ]
}

fn dims_of(v: &Value) -> Option<Vec<u64>> {
    v.as_array()?.iter().map(Value::as_u64).collect()
}

/// Applies a header change to tensor `names[pick % len]`.
fn apply_header(h: &mut Value, names: &[String], m: &HeaderMut) {
    // Only tensors whose entry is still an object (a JSON mutation may have replaced it).
    let all: Vec<String> = st_names(h)
        .into_iter()
        .filter(|t| h[t].is_object())
        .collect();
    let target = |n: usize| pick(names, n).filter(|t| all.contains(t));
    match m {
        HeaderMut::Dtype(i, d) => {
            if let Some(t) = target(*i) {
                h[&t]["dtype"] = json!(d);
            }
        }
        HeaderMut::Shape(i, op) => {
            let Some(t) = target(*i) else { return };
            let Some(mut s) = dims_of(&h[&t]["shape"]) else {
                return;
            };
            let k = s.len().max(1);
            match op {
                ShapeOp::Set(v) => s = v.clone(),
                ShapeOp::Transpose => s.reverse(),
                ShapeOp::Flatten => s = vec![s.iter().fold(1u64, |a, &d| a.saturating_mul(d))],
                ShapeOp::Unsqueeze => s.push(1),
                ShapeOp::Squeeze => {
                    s.pop();
                }
                ShapeOp::Double(d) => {
                    if let Some(x) = s.get_mut(d % k) {
                        *x = x.saturating_mul(2);
                    }
                }
                ShapeOp::Halve(d) => {
                    if let Some(x) = s.get_mut(d % k) {
                        *x /= 2;
                    }
                }
                ShapeOp::Zero(d) => {
                    if let Some(x) = s.get_mut(d % k) {
                        *x = 0;
                    }
                }
            }
            h[&t]["shape"] = json!(s);
        }
        HeaderMut::Offsets(i, op) => {
            let Some(t) = target(*i) else { return };
            let (a, b) = match dims_of(&h[&t]["data_offsets"]).as_deref() {
                Some([a, b]) => (*a, *b),
                _ => (0, 0),
            };
            h[&t]["data_offsets"] = match op {
                OffsetOp::Reverse => json!([b, a]),
                OffsetOp::Shift(d) => {
                    json!([a.saturating_add_signed(*d), b.saturating_add_signed(*d)])
                }
                OffsetOp::Set(x, y) => json!([x, y]),
                OffsetOp::CopyFrom(j) => match target(*j) {
                    Some(o) => h[&o]["data_offsets"].clone(),
                    None => return,
                },
                OffsetOp::Empty => json!([a, a]),
                OffsetOp::Replace(v) => v.clone(),
            };
        }
        HeaderMut::DropField(i, f) => {
            if let Some(t) = target(*i) {
                if let Some(o) = h[&t].as_object_mut() {
                    o.remove(*f);
                }
            }
        }
        HeaderMut::Rename(i, j, suffix) => {
            let (Some(t), Some(o)) = (target(*i), target(*j)) else {
                return;
            };
            let stem = o
                .rsplit_once('.')
                .map_or(o.as_str(), |(s, _)| s)
                .to_string();
            let new = if suffix.is_empty() {
                o.clone()
            } else {
                format!("{stem}{suffix}")
            };
            if let Some(obj) = h.as_object_mut() {
                if let Some(v) = obj.remove(&t) {
                    obj.insert(new, v);
                }
            }
        }
        HeaderMut::Remove(i) => {
            if let (Some(t), Some(obj)) = (target(*i), h.as_object_mut()) {
                obj.remove(&t);
            }
        }
        HeaderMut::Metadata(v) => {
            if let Some(obj) = h.as_object_mut() {
                obj.insert("__metadata__".into(), v.clone());
            }
        }
        HeaderMut::Json(j) => apply_json(h, j),
    }
}

/// Lays the tensors out again one after the other in their old order, at their (new)
/// sizes, copying each one's old bytes (cut or zero-padded), so that a reshaped or retyped
/// tensor still passes the format's own offset checks. Leaves the file alone when a size
/// cannot be computed or the data would exceed 4 MiB.
fn relayout(f: &mut StFile) {
    let names = st_names(&f.header);
    let mut items = Vec::new();
    let mut total = 0u64;
    for n in &names {
        let t = &f.header[n];
        let (Some(size), Some(shape), Some(off)) = (
            t["dtype"].as_str().and_then(dtype_size),
            dims_of(&t["shape"]),
            dims_of(&t["data_offsets"]),
        ) else {
            return;
        };
        let Some(bytes) = shape
            .iter()
            .try_fold(size, |a, &d| a.checked_mul(d))
            .filter(|&b| b <= 4 << 20)
        else {
            return;
        };
        let [a, b] = off[..] else { return };
        total += bytes;
        items.push((a, b, n.clone(), bytes));
    }
    if total > 4 << 20 {
        return;
    }
    items.sort();
    let mut data = Vec::with_capacity(total as usize);
    for (a, b, n, bytes) in items {
        let start = data.len() as u64;
        let old = f
            .data
            .get(a as usize..(b as usize).min(f.data.len()))
            .unwrap_or(&[]);
        let keep = old.len().min(bytes as usize);
        data.extend_from_slice(&old[..keep]);
        data.resize((start + bytes) as usize, 0);
        f.header[&n]["data_offsets"] = json!([start, start + bytes]);
    }
    f.data = data;
}

/// The 8-byte header length as written.
#[derive(Debug, Clone)]
enum LenMut {
    Exact,
    Value(u64),
    Delta(i64),
}

/// What happens to the bytes after the header is assembled.
#[derive(Debug, Clone)]
enum TailMut {
    Keep,
    Truncate(usize),
    Append(usize),
    Flip(usize, u8),
    /// Spaces after the header JSON (allowed by the format), counted in the length.
    Pad(usize),
}

fn len_mut() -> impl Strategy<Value = LenMut> {
    prop_oneof![
        8 => Just(LenMut::Exact),
        1 => prop::sample::select(vec![0u64, 1, 2, 7, 8, 100_000_000, 100_000_001, 1 << 32, 1 << 63, u64::MAX])
            .prop_map(LenMut::Value),
        1 => prop::sample::select(vec![-9i64, -1, 1, 2, 8, 4096]).prop_map(LenMut::Delta),
    ]
}

fn tail_mut() -> impl Strategy<Value = TailMut> {
    prop_oneof![
        8 => Just(TailMut::Keep),
        2 => any::<usize>().prop_map(TailMut::Truncate),
        1 => (1usize..300).prop_map(TailMut::Append),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| TailMut::Flip(i, x)),
        1 => (0usize..64).prop_map(TailMut::Pad),
    ]
}

fn st_build(f: &StFile, len: &LenMut, tail: &TailMut) -> Vec<u8> {
    let mut header = serde_json::to_vec(&f.header).unwrap();
    if let TailMut::Pad(n) = tail {
        header.extend(std::iter::repeat_n(b' ', *n));
    }
    let exact = header.len() as u64;
    let n = match len {
        LenMut::Exact => exact,
        LenMut::Value(v) => *v,
        LenMut::Delta(d) => exact.saturating_add_signed(*d),
    };
    let mut out = Vec::with_capacity(8 + header.len() + f.data.len() + 300);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&f.data);
    match tail {
        TailMut::Keep | TailMut::Pad(_) => {}
        TailMut::Truncate(k) => out.truncate(k % (out.len() + 1)),
        TailMut::Append(k) => out.extend(std::iter::repeat_n(0xA5, *k)),
        TailMut::Flip(i, x) => {
            let l = out.len();
            out[i % l] ^= (*x).max(1);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 2. Safetensors headers (a single-file checkpoint)
// ---------------------------------------------------------------------------------------

struct Fixture {
    dir: PathBuf,
    config: Value,
    st: StFile,
    cfg: ModelConfig,
}

fn load_fixture(rel: &str) -> Fixture {
    let dir = tests_dir().join(rel);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    Fixture {
        config: read_json(&dir.join("config.json")),
        st: st_parse(&bytes),
        cfg: ModelConfig::from_path(&dir).unwrap(),
        dir,
    }
}

/// A small float checkpoint: per-expert F16 tensors with attention biases.
fn float_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| load_fixture("fixtures/attn_bias"))
}

#[derive(Debug, Clone)]
struct StCase {
    muts: Vec<HeaderMut>,
    relayout: bool,
    len: LenMut,
    tail: TailMut,
    extra_cols: usize,
    /// Whether the fixture's config is used to build a `SafetensorsStore`.
    store: bool,
    /// Fields of that config set to values first (the store is then built with the
    /// changed config, where it parses).
    config: Vec<(&'static str, Value)>,
}

fn st_case(muts: Vec<HeaderMut>, relayout: bool, len: LenMut, tail: TailMut) -> StCase {
    StCase {
        muts,
        relayout,
        len,
        tail,
        extra_cols: 40,
        store: true,
        config: vec![],
    }
}

/// The config fields a `SafetensorsStore` sizes things by.
const STORE_FIELDS: &[&str] = &[
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "hidden_size",
    "num_hidden_layers",
    "decoder_sparse_step",
    "mlp_only_layers",
    "head_dim",
];

fn st_case_strategy() -> impl Strategy<Value = StCase> {
    (
        prop::collection::vec(header_mut(), 0..4),
        any::<bool>(),
        len_mut(),
        tail_mut(),
        prop::sample::select(vec![0usize, 1, 8, 28, 40, 64, 4096, 1 << 40, usize::MAX]),
        any::<bool>(),
        prop::collection::vec((prop::sample::select(STORE_FIELDS), extreme()), 0..2),
    )
        .prop_map(
            |(muts, relayout, len, tail, extra_cols, store, config)| StCase {
                muts,
                relayout,
                len,
                tail,
                extra_cols,
                store,
                config,
            },
        )
}

fn st_body(fx: &Fixture, c: &StCase, names: &[String], with_index: Option<&Value>) -> String {
    let mut f = fx.st.clone();
    for m in &c.muts {
        apply_header(&mut f.header, names, m);
    }
    if c.relayout {
        relayout(&mut f);
    }
    let bytes = st_build(&f, &c.len, &c.tail);
    let dir = CaseDir::new("st");
    let mut config = fx.config.clone();
    for (k, v) in &c.config {
        config[*k] = v.clone();
    }
    let config_text = serde_json::to_string(&config).unwrap();
    dir.write("config.json", config_text.as_bytes());
    let changed = (!c.config.is_empty())
        .then(|| ModelConfig::from_json_str(&config_text, Path::new("config.json")).ok())
        .flatten();
    dir.write("model.safetensors", &bytes);
    if let Some(index) = with_index {
        dir.write(
            "model.safetensors.index.json",
            &serde_json::to_vec(index).unwrap(),
        );
    }
    let cfg = match (c.store, c.config.is_empty()) {
        (false, _) => None,
        (true, true) => Some(&fx.cfg),
        (true, false) => changed.as_ref(),
    };
    exercise_checkpoint(&dir.0, cfg, c.extra_cols)
}

fn float_st_body(c: StCase) -> String {
    let fx = float_fixture();
    let names = st_names(&fx.st.header);
    st_body(fx, &c, &names, None)
}

/// Hand-made malformed safetensors files (the corpus of the safetensors properties).
fn st_corpus(names: usize) -> Vec<StCase> {
    let mut c = vec![st_case(vec![], false, LenMut::Exact, TailMut::Keep)];
    for v in [
        0u64,
        1,
        2,
        7,
        8,
        100_000_000,
        100_000_001,
        1 << 63,
        u64::MAX,
    ] {
        c.push(st_case(vec![], false, LenMut::Value(v), TailMut::Keep));
    }
    for k in [0usize, 1, 7, 8, 9, 100] {
        c.push(st_case(vec![], false, LenMut::Exact, TailMut::Truncate(k)));
    }
    c.push(st_case(vec![], false, LenMut::Exact, TailMut::Append(1)));
    for i in 0..names.min(8) {
        for s in [
            vec![0, u64::MAX],
            vec![1 << 32, 1 << 32, 1 << 32],
            vec![u64::MAX, u64::MAX],
            vec![0, 1 << 62],
            vec![1 << 62, 0, 1 << 62],
        ] {
            c.push(st_case(
                vec![HeaderMut::Shape(i, ShapeOp::Set(s.clone()))],
                true,
                LenMut::Exact,
                TailMut::Keep,
            ));
        }
        for op in [
            OffsetOp::Reverse,
            OffsetOp::Set(0, u64::MAX),
            OffsetOp::Set(u64::MAX, u64::MAX),
            OffsetOp::CopyFrom(i + 1),
            OffsetOp::Empty,
        ] {
            c.push(st_case(
                vec![HeaderMut::Offsets(i, op)],
                false,
                LenMut::Exact,
                TailMut::Keep,
            ));
        }
        for d in ["U32", "U8", "F8_E4M3", "BOOL", "F4", "I64", "XYZ"] {
            c.push(st_case(
                vec![HeaderMut::Dtype(i, d)],
                true,
                LenMut::Exact,
                TailMut::Keep,
            ));
        }
    }
    for m in [
        json!({"format": 1}),
        json!("x"),
        json!([]),
        json!({"a": {"b": []}}),
    ] {
        c.push(st_case(
            vec![HeaderMut::Metadata(m)],
            false,
            LenMut::Exact,
            TailMut::Keep,
        ));
    }
    // A config claiming far more experts (or wider ones) than the checkpoint holds.
    for (k, v) in [
        ("num_experts", json!(1_000_000_000_000u64)),
        ("num_experts", json!(1u64 << 40)),
        ("num_experts", json!(u64::MAX)),
        ("moe_intermediate_size", json!(1u64 << 62)),
        ("hidden_size", json!(1u64 << 62)),
    ] {
        c.push(StCase {
            config: vec![(k, v)],
            ..st_case(vec![], false, LenMut::Exact, TailMut::Keep)
        });
    }
    c
}

#[test]
fn safetensors_headers() {
    let n = st_names(&float_fixture().st.header).len();
    property(
        "safetensors headers",
        2,
        6000,
        st_corpus(n),
        st_case_strategy(),
        float_st_body,
    );
}

// ---------------------------------------------------------------------------------------
// 2b. model.safetensors.index.json (a sharded checkpoint)
// ---------------------------------------------------------------------------------------

struct Sharded {
    dir: PathBuf,
    index: Value,
    shards: Vec<String>,
    cfg: ModelConfig,
}

fn sharded() -> &'static Sharded {
    static S: OnceLock<Sharded> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fixture_dirs_with("model.safetensors.index.json")
            .into_iter()
            .find(|d| !d.join("model.safetensors").exists())
            .expect("a sharded fixture");
        let mut shards: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        shards.sort();
        Sharded {
            index: read_json(&dir.join("model.safetensors.index.json")),
            cfg: ModelConfig::from_path(&dir).unwrap(),
            dir,
            shards,
        }
    })
}

#[derive(Debug, Clone)]
enum IndexCase {
    /// Structural mutations of the index, then byte mutations of its text.
    Mutate(Vec<JsonMut>, Vec<TextMut>),
    /// One `weight_map` entry set to a value.
    Entry(usize, Value),
    /// `n` extra entries pointing at missing files (a huge map).
    Huge(usize),
    /// The index replaced by this text.
    Text(&'static str),
}

fn weight_map_values() -> Vec<Value> {
    vec![
        json!("../model-00001-of-00008.safetensors"),
        json!("/etc/passwd"),
        json!("missing.safetensors"),
        json!(""),
        json!("."),
        json!(".."),
        json!("model.safetensors.index.json"),
        json!("config.json"),
        json!("a\\b.safetensors"),
        json!("C:\\x.safetensors"),
        json!("model-00001-of-00008.safetensors"),
        json!("model-00008-of-00008.safetensors"),
        json!(1),
        Value::Null,
        json!([]),
        json!({}),
    ]
}

fn index_body(c: IndexCase) -> String {
    let s = sharded();
    let dir = CaseDir::new("index");
    for shard in &s.shards {
        dir.link(shard, &s.dir.join(shard));
    }
    dir.link("config.json", &s.dir.join("config.json"));
    let text: Vec<u8> = match &c {
        IndexCase::Mutate(muts, text) => {
            let mut v = s.index.clone();
            for m in muts {
                apply_json(&mut v, m);
            }
            let mut b = serde_json::to_vec(&v).unwrap();
            for t in text {
                apply_text(&mut b, t);
            }
            b
        }
        IndexCase::Entry(n, val) => {
            let mut v = s.index.clone();
            let keys: Vec<String> = v["weight_map"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            v["weight_map"][pick(&keys, *n).unwrap()] = val.clone();
            serde_json::to_vec(&v).unwrap()
        }
        IndexCase::Huge(n) => {
            let mut v = s.index.clone();
            let map = v["weight_map"].as_object_mut().unwrap();
            for i in 0..*n {
                map.insert(
                    format!("extra.{i}.weight"),
                    json!(format!("shard-{}.safetensors", i % 1000)),
                );
            }
            serde_json::to_vec(&v).unwrap()
        }
        IndexCase::Text(t) => t.as_bytes().to_vec(),
    };
    dir.write("model.safetensors.index.json", &text);
    exercise_checkpoint(&dir.0, Some(&s.cfg), 28)
}

#[test]
fn safetensors_index() {
    let mut corpus: Vec<IndexCase> = vec![IndexCase::Mutate(vec![], vec![])];
    for (i, v) in weight_map_values().into_iter().enumerate() {
        corpus.push(IndexCase::Entry(i * 7, v));
    }
    for t in [
        "",
        "{",
        "[]",
        "null",
        "{}",
        "{\"weight_map\": {}}",
        "{\"weight_map\": []}",
        "{\"weight_map\": {\"a\": \"a.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"../../../../etc/passwd\"}}",
        "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
    ] {
        corpus.push(IndexCase::Text(t));
    }
    corpus.push(IndexCase::Huge(200_000));
    let strategy = prop_oneof![
        6 => (prop::collection::vec(json_mut(), 0..4), prop::collection::vec(text_mut(), 0..2))
            .prop_map(|(m, t)| IndexCase::Mutate(m, t)),
        3 => (any::<usize>(), prop::sample::select(weight_map_values()))
            .prop_map(|(n, v)| IndexCase::Entry(n, v)),
        1 => (0usize..5000).prop_map(IndexCase::Huge),
    ];
    property("safetensors index", 3, 2500, corpus, strategy, index_body);
}

// ---------------------------------------------------------------------------------------
// 3. The expert pack (index.json and layer files)
// ---------------------------------------------------------------------------------------

/// A pack written once from a fixture: its folder, index and layer files.
struct PackSrc {
    dir: PathBuf,
    index: Value,
    files: Vec<String>,
    layers: usize,
    experts: usize,
}

/// Packs of a float (per-expert F16), an MLX affine and an MLX MXFP4 (biased experts)
/// fixture, written once into the scratch folder.
fn packs() -> &'static Vec<PackSrc> {
    static P: OnceLock<Vec<PackSrc>> = OnceLock::new();
    P.get_or_init(|| {
        let mut out = Vec::new();
        for (i, rel) in [
            "fixtures/attn_bias",
            "fixtures_mlx/q5_g32",
            "fixtures_gpt_oss/oss_mlx_mxfp4",
        ]
        .iter()
        .enumerate()
        {
            let src = tests_dir().join(rel);
            let ck = scratch_root().join(format!("pack-source-{i}"));
            std::fs::create_dir_all(&ck).unwrap();
            for e in std::fs::read_dir(&src).unwrap().flatten() {
                if e.file_type().unwrap().is_file() {
                    std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
                }
            }
            let out_dir = ck.join("pack");
            pack_experts(&ck, &PackOptions::new().out(&out_dir), |_| Ok(()))
                .unwrap_or_else(|e| panic!("packing {rel}: {e}"));
            let index = read_json(&out_dir.join("index.json"));
            let files = index["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["file"].as_str().unwrap().to_string())
                .collect();
            let cfg = ModelConfig::from_path(&ck).unwrap();
            out.push(PackSrc {
                dir: out_dir,
                index,
                files,
                layers: cfg.num_hidden_layers,
                experts: cfg.num_experts,
            });
        }
        out
    })
}

/// A layer file changed on disk.
#[derive(Debug, Clone)]
enum FileMut {
    Truncate(usize),
    Append(usize),
    Flip(usize, u8),
    Missing,
}

#[derive(Debug, Clone)]
struct PackCase {
    pack: usize,
    /// JSON-pointer-addressed fields set to values (added where absent).
    sets: Vec<(&'static str, Value)>,
    muts: Vec<JsonMut>,
    text: Vec<TextMut>,
    file: Option<(usize, FileMut)>,
    direct: bool,
    verify: bool,
}

/// Fields of a pack index, as JSON pointers.
const PACK_FIELDS: &[&str] = &[
    "/format",
    "/version",
    "/block_bytes",
    "/checksum",
    "/source/identity",
    "/source/num_experts",
    "/source/num_hidden_layers",
    "/layers",
    "/layers/0",
    "/layers/0/layer",
    "/layers/1/layer",
    "/layers/0/file",
    "/layers/0/file_bytes",
    "/layers/0/expert_bytes",
    "/layers/0/tensors",
    "/layers/0/tensors/0/role",
    "/layers/0/tensors/0/rows",
    "/layers/0/tensors/0/cols",
    "/layers/0/tensors/0/offset",
    "/layers/0/tensors/0/bytes",
    "/layers/0/tensors/0/bias",
    "/layers/0/tensors/0/format",
    "/layers/0/tensors/0/format/type",
    "/layers/0/tensors/0/format/dtype",
    "/layers/0/tensors/1/format/bits",
    "/layers/0/tensors/1/format/group_size",
    "/layers/0/tensors/1/format/scale_dtype",
    "/layers/0/tensors/1/offset",
    "/layers/0/tensors/1/bytes",
    "/layers/0/tensors/2/rows",
    "/layers/0/tensors/2/cols",
    "/layers/0/tensors/2/offset",
    "/layers/0/tensors/2/bias",
    "/layers/0/experts",
    "/layers/0/experts/0/offset",
    "/layers/0/experts/0/length",
    "/layers/0/experts/0/checksum",
    "/layers/0/experts/1/offset",
    "/layers/1/experts/2/length",
];

/// Pack-specific values: offsets and lengths near the limits of u64, aligned or not.
fn pack_values() -> Vec<Value> {
    let mut v = extremes();
    v.extend([
        json!(u64::MAX - 16383),
        json!((1u64 << 63) - 16384),
        json!(16384),
        json!(16),
        json!(15),
        json!("layer-000.experts"),
        json!("../layer-000.experts"),
        json!("index.json"),
        json!("."),
        json!(".."),
        json!("/etc/passwd"),
        json!("0000000000000000"),
        json!("ffffffffffffffff"),
        json!("xyz"),
        json!({"type": "affine", "bits": 4, "group_size": 64, "scale_dtype": "BF16"}),
        json!({"type": "affine", "bits": 9, "group_size": 7, "scale_dtype": "F64"}),
        json!({"type": "float", "dtype": "F32"}),
        json!({"type": "mxfp4"}),
        json!({"type": "fp8block"}),
        json!({"type": "nf4"}),
        json!("gate"),
        json!("down"),
        json!("moestream-pack"),
        json!(2),
    ]);
    v
}

/// Sets the value at a JSON pointer, adding the last member to its object when absent.
fn set_pointer(v: &mut Value, ptr: &str, val: Value) {
    if let Some(x) = v.pointer_mut(ptr) {
        *x = val;
        return;
    }
    if let Some((parent, key)) = ptr.rsplit_once('/') {
        if let Some(Value::Object(o)) = v.pointer_mut(parent) {
            o.insert(key.to_string(), val);
        }
    }
}

fn pack_body(c: PackCase) -> String {
    let all = packs();
    let p = &all[c.pack % all.len()];
    let dir = CaseDir::new("pack");
    let mut index = p.index.clone();
    for (ptr, val) in &c.sets {
        set_pointer(&mut index, ptr, val.clone());
    }
    for m in &c.muts {
        apply_json(&mut index, m);
    }
    let mut text = serde_json::to_vec_pretty(&index).unwrap();
    for t in &c.text {
        apply_text(&mut text, t);
    }
    dir.write("index.json", &text);
    let changed = c
        .file
        .as_ref()
        .and_then(|(n, m)| Some((pick(&p.files, *n)?, m)));
    for f in &p.files {
        match changed {
            Some((ref name, m)) if name == f => {
                let mut b = std::fs::read(p.dir.join(f)).unwrap();
                let len = b.len();
                match m {
                    FileMut::Truncate(k) => b.truncate(k % (len + 1)),
                    FileMut::Append(k) => b.extend(std::iter::repeat_n(1u8, k % 40000)),
                    FileMut::Flip(i, x) => {
                        if len > 0 {
                            b[i % len] ^= (*x).max(1)
                        }
                    }
                    FileMut::Missing => continue,
                }
                dir.write(f, &b);
            }
            _ => dir.link(f, &p.dir.join(f)),
        }
    }
    let opts = PackedStoreOptions::default()
        .direct_io(c.direct)
        .verify_checksums(c.verify);
    let opened = PackedStore::open_with(&dir.0, opts);
    let l = label(&opened);
    if let Ok(store) = opened {
        let _ = (
            store.dir(),
            store.identity(),
            store.direct_io_active(),
            store.verifies_checksums(),
            store.total_expert_bytes(),
        );
        read_experts(&store, p.layers + 2, p.experts + 1);
        let _ = store.verify_all(|_, _| {});
    }
    l
}

fn pack_case(pack: usize, sets: Vec<(&'static str, Value)>) -> PackCase {
    PackCase {
        pack,
        sets,
        muts: vec![],
        text: vec![],
        file: None,
        direct: false,
        verify: true,
    }
}

#[test]
fn pack_index() {
    let n = packs().len();
    let mut corpus = Vec::new();
    for pack in 0..n {
        corpus.push(pack_case(pack, vec![]));
        corpus.push(PackCase {
            direct: true,
            ..pack_case(pack, vec![])
        });
        for v in [
            json!(u64::MAX),
            json!(1u64 << 40),
            json!(4096),
            json!(1u64 << 62),
        ] {
            corpus.push(pack_case(pack, vec![("/layers/0/layer", v)]));
        }
        // A tensor offset near 2^64 whose end wraps around.
        corpus.push(pack_case(
            pack,
            vec![("/layers/0/tensors/0/offset", json!(u64::MAX - 15))],
        ));
        // A matrix whose byte size overflows to 0.
        corpus.push(pack_case(
            pack,
            vec![
                ("/layers/0/tensors/0/rows", json!(1u64 << 62)),
                ("/layers/0/tensors/0/cols", json!(64)),
                ("/layers/0/tensors/0/bytes", json!(0)),
            ],
        ));
        // An expert length whose 16 KiB padding overflows.
        corpus.push(pack_case(
            pack,
            vec![
                ("/layers/0/expert_bytes", json!(u64::MAX - 15)),
                (
                    "/layers/0/experts",
                    json!([{"offset": 0, "length": u64::MAX - 15, "checksum": "0000000000000000"}]),
                ),
            ],
        ));
        // No experts, and an expert size far beyond the layer file.
        corpus.push(pack_case(
            pack,
            vec![
                ("/layers/0/experts", json!([])),
                ("/layers/0/expert_bytes", json!(1u64 << 40)),
            ],
        ));
        for f in ["../x", "", ".", "..", "/etc/passwd", "index.json"] {
            corpus.push(pack_case(pack, vec![("/layers/0/file", json!(f))]));
        }
        for (k, m) in [
            FileMut::Truncate(0),
            FileMut::Truncate(16383),
            FileMut::Append(1),
            FileMut::Flip(5, 1),
            FileMut::Missing,
        ]
        .into_iter()
        .enumerate()
        {
            corpus.push(PackCase {
                file: Some((k, m)),
                ..pack_case(pack, vec![])
            });
        }
    }
    let strategy = (
        any::<usize>(),
        prop::collection::vec(
            (
                prop::sample::select(PACK_FIELDS),
                prop::sample::select(pack_values()),
            ),
            0..3,
        ),
        prop::collection::vec(json_mut(), 0..3),
        prop::option::weighted(0.15, text_mut()).prop_map(Vec::from_iter),
        prop::option::weighted(
            0.2,
            (
                any::<usize>(),
                prop_oneof![
                    any::<usize>().prop_map(FileMut::Truncate),
                    any::<usize>().prop_map(FileMut::Append),
                    (any::<usize>(), any::<u8>()).prop_map(|(i, x)| FileMut::Flip(i, x)),
                    Just(FileMut::Missing),
                ],
            ),
        ),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(|(pack, sets, muts, text, file, direct, verify)| PackCase {
            pack,
            sets,
            muts,
            text,
            file,
            direct,
            verify,
        });
    property("pack index", 4, 5000, corpus, strategy, pack_body);
    for p in packs() {
        if let Some(src) = p.dir.parent() {
            let _ = std::fs::remove_dir_all(src);
        }
    }
    let _ = std::fs::remove_dir(scratch_root());
}

// ---------------------------------------------------------------------------------------
// 4a. tokenizer.json and tokenizer_config.json
// ---------------------------------------------------------------------------------------

struct TokSrc {
    tokenizer: Value,
    config: Option<Value>,
    jinja: Option<String>,
}

fn tokenizer_fixtures() -> &'static Vec<TokSrc> {
    static T: OnceLock<Vec<TokSrc>> = OnceLock::new();
    T.get_or_init(|| {
        let v: Vec<TokSrc> = fixture_dirs_with("tokenizer.json")
            .into_iter()
            .map(|d| TokSrc {
                tokenizer: read_json(&d.join("tokenizer.json")),
                config: d
                    .join("tokenizer_config.json")
                    .is_file()
                    .then(|| read_json(&d.join("tokenizer_config.json"))),
                jinja: std::fs::read_to_string(d.join("chat_template.jinja")).ok(),
            })
            .collect();
        assert!(v.len() >= 4, "expected the tokenizer fixtures");
        v
    })
}

#[derive(Debug, Clone)]
enum TokMut {
    Json(JsonMut),
    /// `padding` with a fixed length and a multiple.
    Padding(Value, Value),
    /// `truncation` with a maximum length and a stride.
    Truncation(Value, Value),
    /// An added token with this id and content.
    AddedToken(Value, &'static str),
}

#[derive(Debug, Clone)]
struct TokCase {
    fixture: usize,
    tok: Vec<TokMut>,
    tok_text: Vec<TextMut>,
    cfg: Vec<JsonMut>,
    /// A hostile or mutated `chat_template` for tokenizer_config.json.
    template: Option<usize>,
    ids: Vec<u32>,
}

fn tok_mut() -> impl Strategy<Value = TokMut> {
    let size = || {
        prop_oneof![
            prop::sample::select(vec![
                json!(0),
                json!(1),
                json!(2),
                json!(8),
                json!(1u64 << 32),
                json!(1_000_000_000_000u64),
                json!(u64::MAX),
                json!(-1),
                Value::Null,
                json!("x"),
            ]),
            any::<u64>().prop_map(Value::from),
        ]
    };
    prop_oneof![
        10 => json_mut().prop_map(TokMut::Json),
        1 => (size(), size()).prop_map(|(a, b)| TokMut::Padding(a, b)),
        1 => (size(), size()).prop_map(|(a, b)| TokMut::Truncation(a, b)),
        1 => (
            size(),
            prop::sample::select(vec!["<|im_end|>", "", " ", "a", "\u{0}", "<s>", "ü"])
        )
            .prop_map(|(id, c)| TokMut::AddedToken(id, c)),
    ]
}

fn apply_tok(v: &mut Value, m: &TokMut) {
    let Some(o) = v.as_object_mut() else { return };
    match m {
        TokMut::Json(j) => apply_json(v, j),
        TokMut::Padding(n, k) => {
            o.insert(
                "padding".into(),
                json!({
                    "strategy": {"Fixed": n},
                    "direction": "Right",
                    "pad_to_multiple_of": k,
                    "pad_id": 0,
                    "pad_type_id": 0,
                    "pad_token": "<|endoftext|>"
                }),
            );
        }
        TokMut::Truncation(n, s) => {
            o.insert(
                "truncation".into(),
                json!({
                    "direction": "Right",
                    "max_length": n,
                    "strategy": "LongestFirst",
                    "stride": s
                }),
            );
        }
        TokMut::AddedToken(id, content) => {
            if let Some(Value::Array(a)) = o.get_mut("added_tokens") {
                a.push(json!({
                    "id": id,
                    "content": content,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": true
                }));
            }
        }
    }
}

const SAMPLE_TEXTS: &[&str] = &[
    "",
    "Hello world",
    "<|im_start|>user\nhi<|im_end|>\n",
    "ü日本語🦀 \u{0} \t\r\n",
    "<s></s><unk>",
];

fn tokenizer_body(c: TokCase) -> String {
    let all = tokenizer_fixtures();
    let src = &all[c.fixture % all.len()];
    let dir = CaseDir::new("tok");
    let mut tok = src.tokenizer.clone();
    for m in &c.tok {
        apply_tok(&mut tok, m);
    }
    let mut bytes = serde_json::to_vec(&tok).unwrap();
    for t in &c.tok_text {
        apply_text(&mut bytes, t);
    }
    dir.write("tokenizer.json", &bytes);
    if let Some(cfg) = &src.config {
        let mut cfg = cfg.clone();
        for m in &c.cfg {
            apply_json(&mut cfg, m);
        }
        if let (Some(t), Some(o)) = (c.template, cfg.as_object_mut()) {
            o.insert("chat_template".into(), json!(pick(HOSTILE, t).unwrap()));
        }
        dir.write("tokenizer_config.json", &serde_json::to_vec(&cfg).unwrap());
    }
    if let Some(j) = &src.jinja {
        dir.write("chat_template.jinja", j.as_bytes());
    }
    let loaded = Tokenizer::from_dir(&dir.0);
    let l = label(&loaded);
    let Ok(t) = loaded else { return l };
    let long = "ab ".repeat(700);
    for text in SAMPLE_TEXTS.iter().copied().chain([long.as_str()]) {
        for special in [false, true] {
            if let Ok(ids) = t.encode(text, special) {
                let _ = t.decode(&ids, special);
            }
        }
    }
    for skip in [false, true] {
        let _ = t.decode(&c.ids, skip);
        let mut d = IncrementalDecoder::new(&c.ids[..c.ids.len().min(2)], skip);
        for &id in &c.ids {
            let _ = d.push(t.backend().as_ref(), id);
        }
        let _ = d.finish(t.backend().as_ref());
    }
    let _ = (
        t.token_to_id("<|im_end|>"),
        t.eos_token_id(),
        t.bos_token_id(),
        t.special_tokens().get("eos_token"),
        t.chat_templates().names().count(),
    );
    let msgs = [ChatMessage::system("s"), ChatMessage::user("hi")];
    let opts = ChatOptions::default();
    if t.render_chat(&msgs, &opts).is_ok() {
        let _ = t.encode_chat(&msgs, &opts);
    }
    l
}

#[test]
fn tokenizer_files() {
    let n = tokenizer_fixtures().len();
    let mut corpus: Vec<TokCase> = (0..n)
        .map(|fixture| TokCase {
            fixture,
            tok: vec![],
            tok_text: vec![],
            cfg: vec![],
            template: None,
            ids: vec![0, 1, 2, 3, 4, 5, 100, u32::MAX],
        })
        .collect();
    for (a, b) in [
        (json!(1_000_000_000_000u64), json!(1)),
        (json!(1u64 << 32), json!(1u64 << 32)),
        (json!(8), json!(1_000_000_000_000u64)),
        (json!(8), json!(0)),
    ] {
        corpus.push(TokCase {
            tok: vec![TokMut::Padding(a.clone(), b.clone())],
            ..corpus[0].clone()
        });
        corpus.push(TokCase {
            tok: vec![TokMut::Truncation(a, b)],
            ..corpus[0].clone()
        });
    }
    for t in [0usize, 1, 2, 10, 1000] {
        corpus.push(TokCase {
            tok_text: vec![TextMut::Truncate(t)],
            ..corpus[0].clone()
        });
    }
    let strategy = (
        any::<usize>(),
        prop::collection::vec(tok_mut(), 0..3),
        prop::collection::vec(text_mut(), 0..2),
        prop::collection::vec(json_mut(), 0..3),
        prop::option::weighted(0.1, any::<usize>()),
        prop::collection::vec(prop_oneof![0u32..600, Just(u32::MAX), any::<u32>()], 0..12),
    )
        .prop_map(|(fixture, tok, tok_text, cfg, template, ids)| TokCase {
            fixture,
            tok,
            tok_text,
            cfg,
            template,
            ids,
        });
    property("tokenizer files", 5, 2000, corpus, strategy, tokenizer_body);
}

// ---------------------------------------------------------------------------------------
// 4b. Chat templates
// ---------------------------------------------------------------------------------------

/// Templates that try to run forever, recurse without end or build huge values. Each must
/// fail (or render a bounded output) quickly.
const HOSTILE: &[&str] = &[
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
    "{% macro f() %}{% for m in messages %}{{ f() }}{% endfor %}{% endmacro %}{{ f() }}",
    "{{ 'a' * 1000000000 }}",
    "{{ 'ab' * 100000000 }}",
    "{{ messages * 100000000 }}",
    "{{ (messages * 100000000) | length }}",
    "{{ (messages * 100000000) | tojson }}",
    "{% for m in messages * 100000000 %}{{ m }}{% endfor %}",
    "{% for m in messages * 100000000 %}{% endfor %}",
    "{{ messages | tojson(indent=1000000000) }}",
    "{% set ns = namespace(x=0) %}{% for i in range(10000) %}{% for j in range(10000) %}{% set ns.x = ns.x + 1 %}{% endfor %}{% endfor %}{{ ns.x }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{{ messages }}{% endfor %}{% endfor %}",
    "{% include 'chat_template' %}",
    "{% extends 'chat_template' %}",
    "{% import 'chat_template' as t %}{{ t }}",
    "{{ 2 ** 100000 }}",
    "{{ 10 ** 10 ** 10 }}",
    "{{ range(100000) }}",
    "{{ range(0, 100000000000, 1) }}",
    "{{ raise_exception('no') }}",
    "{% for m in messages %}{{ m.content | indent(64) }}{% endfor %}",
    "{{ 'a' * 100000000 }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{{ 'ab' * 1000 }}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ messages * 1000 }}{% endfor %}",
    "{%}",
    "a{%}b{%- generation -%}c{% endgeneration %}{%}",
];

// Left out: templates that still exhaust memory or the stack, inside minijinja itself
// (found by this file; the chat module's fuel and output limit cannot reach them):
// - `{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% for j in range(20) %}
//   {% set ns.x = [ns.x] %}{% endfor %}{% endfor %}` nests a list 2 million deep within
//   the fuel; dropping it recurses once per level and overflows the stack (an abort).
// - `{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}
//   {% endfor %}`: `~` has no size limit, so 40 doublings ask for 2^40 bytes (and
//   `{% set x = 'a' * 100000000 %}{{ x ~ x ~ x }}` for 300 MB at once).
// - `{% macro f() %}{% for i in range(100000) %}{% for j in range(100) %}{{ 'a' * 10000 }}
//   {% endfor %}{% endfor %}{% endmacro %}{{ f() }}`: a macro's output is captured in
//   minijinja's own buffer, outside the output limit (20 GB before the fuel runs out).
// - `{{ (messages * 100000000) | list }}` (also `sort`, `reverse`, `unique`, ...):
//   materializes the 10^8 items minijinja allows a repeated sequence (over 2 GB).
// - `{{ 'a' | indent(1000000000) }}`: minijinja's `indent` allocates the width at once.

fn deep_templates() -> Vec<String> {
    vec![
        format!(
            "{}x{}",
            "{% if true %}".repeat(5000),
            "{% endif %}".repeat(5000)
        ),
        format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000)),
        format!("{{{{ {}{} }}}}", "[".repeat(5000), "]".repeat(5000)),
        format!("{{{{ {}1 }}}}", "-".repeat(20000)),
        format!("{{{{ x{} }}}}", ".y".repeat(20000)),
        format!(
            "{}{}",
            "{% for m in messages %}".repeat(300),
            "{% endfor %}".repeat(300)
        ),
        "{% set x = 1 %}".repeat(20000),
        "{{".repeat(20000),
        "{% raw %}".repeat(1000),
    ]
}

/// Template pieces combined at random (none of them builds huge values on its own).
const FRAGMENTS: &[&str] = &[
    "{% for m in messages %}",
    "{% for i in range(30) %}",
    "{% endfor %}",
    "{{ m.content }}",
    "{{ m['role'] }}",
    "{% if m.role == 'user' %}",
    "{% if loop.first %}",
    "{% else %}",
    "{% elif true %}",
    "{% endif %}",
    "{{ messages | tojson }}",
    "{{ messages * 3 }}",
    "{{ messages | length }}",
    "{% set ns = namespace(x=0) %}",
    "{% set ns.x = ns.x + 1 %}",
    "{{ ns.x }}",
    "{{ loop.index }}",
    "{% break %}",
    "{% continue %}",
    "{% macro g(x) %}",
    "{% endmacro %}",
    "{{ g(1) }}",
    "{{ g(m) }}",
    "{% call g(1) %}",
    "{% endcall %}",
    "{{ caller() }}",
    "{{ raise_exception('bad') }}",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{% generation %}",
    "{% endgeneration %}",
    "{{ 'ab' * 3 }}",
    "{{ x.y.z }}",
    "{{ tools }}",
    "{{ tools | tojson(indent=2) }}",
    "{{ messages[0]['content'][::-1] }}",
    "{{ messages[-1] }}",
    "{{ m.content.strip().split(' ') }}",
    "{{ m.content.startswith('<') }}",
    "{{ messages | map(attribute='content') | join(',') }}",
    "{{ 1 / 0 }}",
    "{{ 2 ** 64 }}",
    "{{ bos_token }}",
    "{{ add_generation_prompt }}",
    "{% with a = 1 %}",
    "{% endwith %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "{% raw %}",
    "{% endraw %}",
    "{%- if enable_thinking is defined and enable_thinking is false %}",
    "{{- '<|im_start|>' + m.role + '\\n' }}",
    "{% set content = m.content if m.content is string else '' %}",
    "{{ m.tool_calls }}",
    "{{ m | items | list }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | list }}",
    "{{ range(5) | sum }}",
    "{{ '%s-%s' | format(1, 2) }}",
    "{{ undefined_function() }}",
    "{% include 'chat_template' %}",
    "{{ self }}",
    "text ",
    "\n",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "'",
    "\"",
    "-",
    "\\\n",
];

fn fixture_templates() -> &'static Vec<String> {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let mut out = Vec::new();
        for src in tokenizer_fixtures() {
            match src.config.as_ref().and_then(|c| c.get("chat_template")) {
                Some(Value::String(s)) => out.push(s.clone()),
                Some(Value::Array(a)) => out.extend(
                    a.iter()
                        .filter_map(|t| t["template"].as_str().map(str::to_string)),
                ),
                _ => {}
            }
            out.extend(src.jinja.clone());
        }
        out.sort();
        out.dedup();
        assert!(out.len() >= 3, "expected the fixture chat templates");
        out
    })
}

fn message_sets() -> &'static Vec<Value> {
    static M: OnceLock<Vec<Value>> = OnceLock::new();
    M.get_or_init(|| {
        let long: Vec<Value> = (0..300)
            .map(|i| {
                json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("message {i}")})
            })
            .collect();
        vec![
            json!([{"role": "user", "content": "hi"}]),
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "reasoning_content": "think"},
                {"role": "user", "content": "<tool_response>x</tool_response>"}
            ]),
            Value::Array(long),
            json!([
                {"role": 1, "content": null},
                {"content": [{"type": "text", "text": "x"}]},
                {"role": "tool", "content": {"a": [1, 2.5, null, true]}}
            ]),
            json!([]),
            json!([{"role": "user", "content": "{{ 7*7 }} {% raw %} {#"}]),
            json!([
                {"role": "user", "content": "call f"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
                ]},
                {"role": "tool", "content": "42"}
            ]),
        ]
    })
}

fn chat_special() -> &'static SpecialTokens {
    static S: OnceLock<SpecialTokens> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = tokenizer_fixtures()
            .iter()
            .find_map(|t| t.config.clone())
            .unwrap();
        SpecialTokens::from_tokenizer_config(&cfg)
    })
}

#[derive(Debug, Clone)]
enum TemplateSrc {
    Hostile(usize),
    Deep(usize),
    Fixture(usize, Vec<TextMut>),
    Composed(Vec<&'static str>),
}

#[derive(Debug, Clone)]
struct ChatCase {
    src: TemplateSrc,
    messages: usize,
    options: usize,
    /// Render from JSON text with these byte changes (else from values).
    json_text: Option<Vec<TextMut>>,
}

fn chat_options(n: usize) -> ChatOptions {
    let tools = r#"[{"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]"#;
    match n % 5 {
        0 => ChatOptions::default(),
        1 => ChatOptions::new().with_generation_prompt(false),
        2 => ChatOptions::new().tools_json(tools).unwrap(),
        3 => ChatOptions::new()
            .kwargs_json(r#"{"enable_thinking": false, "bos_token": 7}"#)
            .unwrap(),
        _ => ChatOptions::new().documents(&json!([{"title": "t", "text": "x"}])),
    }
}

fn chat_body(c: ChatCase) -> String {
    let src = match &c.src {
        TemplateSrc::Hostile(i) => pick(HOSTILE, *i).unwrap().to_string(),
        TemplateSrc::Deep(i) => pick(&deep_templates(), *i).unwrap(),
        TemplateSrc::Fixture(i, muts) => {
            let mut b = pick(fixture_templates(), *i).unwrap().into_bytes();
            for m in muts {
                apply_text(&mut b, m);
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        TemplateSrc::Composed(parts) => parts.concat(),
    };
    let sets = message_sets();
    let messages = &sets[c.messages % sets.len()];
    let opts = chat_options(c.options);
    let t = ChatTemplate::new(src);
    let _ = t.check();
    let r = match &c.json_text {
        None => {
            let list: Vec<Value> = messages.as_array().unwrap().clone();
            t.render(&list, &opts, chat_special())
        }
        Some(muts) => {
            let mut b = serde_json::to_vec(messages).unwrap();
            for m in muts {
                apply_text(&mut b, m);
            }
            t.render_json(&String::from_utf8_lossy(&b), &opts, chat_special())
        }
    };
    if let Ok(text) = &r {
        assert!(text.len() <= ALLOC_LIMIT, "rendered {} bytes", text.len());
    }
    label(&r)
}

#[test]
fn chat_templates() {
    let mut corpus = Vec::new();
    for (i, src) in HOSTILE.iter().enumerate() {
        let sets: &[usize] = if src.contains("messages") {
            &[0, 2]
        } else {
            &[0]
        };
        for &messages in sets {
            corpus.push(ChatCase {
                src: TemplateSrc::Hostile(i),
                messages,
                options: 0,
                json_text: None,
            });
        }
    }
    for i in 0..deep_templates().len() {
        corpus.push(ChatCase {
            src: TemplateSrc::Deep(i),
            messages: 0,
            options: 0,
            json_text: None,
        });
    }
    for i in 0..fixture_templates().len() {
        for messages in 0..message_sets().len() {
            for options in 0..5 {
                corpus.push(ChatCase {
                    src: TemplateSrc::Fixture(i, vec![]),
                    messages,
                    options,
                    json_text: None,
                });
            }
        }
    }
    let strategy = (
        // The hostile templates (slow by design: each runs out of fuel or output) run in
        // the corpus only.
        prop_oneof![
            4 => (any::<usize>(), prop::collection::vec(text_mut(), 1..4))
                .prop_map(|(i, m)| TemplateSrc::Fixture(i, m)),
            5 => prop::collection::vec(prop::sample::select(FRAGMENTS), 1..12)
                .prop_map(TemplateSrc::Composed),
        ],
        any::<usize>(),
        any::<usize>(),
        prop::option::weighted(0.2, prop::collection::vec(text_mut(), 0..3)),
    )
        .prop_map(|(src, messages, options, json_text)| ChatCase {
            src,
            messages,
            options,
            json_text,
        });
    property("chat templates", 6, 6000, corpus, strategy, chat_body);
}

// ---------------------------------------------------------------------------------------
// 5. MLX quantization: quantization configs and quantized tensors
// ---------------------------------------------------------------------------------------

fn mlx_fixtures() -> &'static Vec<Fixture> {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        vec![
            load_fixture("fixtures_mlx/q5_g32"),
            load_fixture("fixtures_mlx/mixed_3_6"),
            load_fixture("fixtures_gpt_oss/oss_mlx_mxfp4"),
        ]
    })
}

/// The tensors of quantized matrices (`P.weight` with a `P.scales`), and their scales and
/// biases.
fn quantized_names(h: &Value) -> Vec<String> {
    let names = st_names(h);
    names
        .iter()
        .filter(|n| {
            let stem = n.rsplit_once('.').map_or(n.as_str(), |(s, _)| s);
            names.contains(&format!("{stem}.scales"))
        })
        .cloned()
        .collect()
}

#[derive(Debug, Clone)]
struct QuantMut {
    /// 0: `quantization`, 1: `quantization_config`, 2: both.
    which: usize,
    /// A field, or a per-layer override (`model.layers.0.mlp.gate`).
    field: &'static str,
    value: Value,
}

fn quant_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(3),
        json!(7),
        json!(9),
        json!(64),
        json!(1u64 << 32),
        json!(4096),
        json!(-64),
        json!(1u64 << 63),
        json!("4"),
        Value::Null,
        json!([]),
        json!({}),
        json!("affine"),
        json!("mxfp4"),
        json!("nvfp4"),
        json!("fp8"),
        json!("gptq"),
        json!(""),
        json!({"bits": 9, "group_size": 3}),
        json!({"bits": 0, "group_size": 0}),
        json!({"bits": 4, "group_size": -1}),
    ]
}

#[derive(Debug, Clone)]
struct MlxCase {
    fixture: usize,
    quant: Vec<QuantMut>,
    config: Vec<JsonMut>,
    header: Vec<HeaderMut>,
    relayout: bool,
    extra_cols: usize,
    /// Keep the fixture's `model.safetensors.index.json`.
    index: bool,
}

fn mlx_body(c: MlxCase) -> String {
    let all = mlx_fixtures();
    let fx = &all[c.fixture % all.len()];
    let mut config = fx.config.clone();
    for q in &c.quant {
        let keys: &[&str] = match q.which % 3 {
            0 => &["quantization"],
            1 => &["quantization_config"],
            _ => &["quantization", "quantization_config"],
        };
        for k in keys {
            let Some(o) = config.as_object_mut() else {
                continue;
            };
            if q.field.is_empty() {
                o.insert(k.to_string(), q.value.clone());
            } else if let Some(Value::Object(qo)) = o.get_mut(*k) {
                qo.insert(q.field.to_string(), q.value.clone());
            } else {
                o.insert(k.to_string(), json!({ q.field: q.value }));
            }
        }
    }
    for m in &c.config {
        apply_json(&mut config, m);
    }
    let names = quantized_names(&fx.st.header);
    let mut f = fx.st.clone();
    for m in &c.header {
        apply_header(&mut f.header, &names, m);
    }
    if c.relayout {
        relayout(&mut f);
    }
    let dir = CaseDir::new("mlx");
    dir.write("config.json", &serde_json::to_vec(&config).unwrap());
    dir.write(
        "model.safetensors",
        &st_build(&f, &LenMut::Exact, &TailMut::Keep),
    );
    let index = fx.dir.join("model.safetensors.index.json");
    if c.index && index.is_file() {
        dir.write(
            "model.safetensors.index.json",
            &std::fs::read(&index).unwrap(),
        );
    }
    let cfg = ModelConfig::from_path(&dir.0);
    let opened = exercise_checkpoint(&dir.0, cfg.as_ref().ok(), c.extra_cols);
    format!("config {} / checkpoint {opened}", label(&cfg))
}

/// Size-preserving reshapes and retypes of quantized tensors (so the file stays valid and
/// the shapes reach the quantization checks), and the dims that break them.
fn quant_header_mut() -> impl Strategy<Value = HeaderMut> {
    prop_oneof![
        4 => header_mut(),
        2 => (any::<usize>(), prop::sample::select(vec!["F16", "BF16", "F32", "U32", "U8", "I32", "U16"]))
            .prop_map(|(i, d)| HeaderMut::Dtype(i, d)),
        2 => (any::<usize>(), prop::sample::select(vec![
            ShapeOp::Transpose, ShapeOp::Flatten, ShapeOp::Unsqueeze, ShapeOp::Squeeze,
            ShapeOp::Double(0), ShapeOp::Halve(0), ShapeOp::Double(1), ShapeOp::Halve(1),
            ShapeOp::Double(2), ShapeOp::Halve(2), ShapeOp::Zero(0), ShapeOp::Zero(1),
            ShapeOp::Zero(2),
        ]))
            .prop_map(|(i, s)| HeaderMut::Shape(i, s)),
    ]
}

#[test]
fn mlx_quantization() {
    let mut corpus = Vec::new();
    let base = MlxCase {
        fixture: 0,
        quant: vec![],
        config: vec![],
        header: vec![],
        relayout: false,
        extra_cols: 64,
        index: true,
    };
    for fixture in 0..mlx_fixtures().len() {
        corpus.push(MlxCase {
            fixture,
            ..base.clone()
        });
        for field in ["bits", "group_size", "mode", "quant_method", ""] {
            for value in quant_values() {
                corpus.push(MlxCase {
                    fixture,
                    quant: vec![QuantMut {
                        which: 2,
                        field,
                        value,
                    }],
                    ..base.clone()
                });
            }
        }
        let n = quantized_names(&mlx_fixtures()[fixture].st.header).len();
        for i in (0..n).step_by(5) {
            for op in [
                ShapeOp::Transpose,
                ShapeOp::Zero(0),
                ShapeOp::Zero(1),
                ShapeOp::Set(vec![0, 1 << 62]),
                ShapeOp::Set(vec![1 << 62, 1 << 62, 0]),
                ShapeOp::Set(vec![0, 0, 1 << 62]),
            ] {
                corpus.push(MlxCase {
                    fixture,
                    header: vec![HeaderMut::Shape(i, op)],
                    relayout: true,
                    index: false,
                    ..base.clone()
                });
            }
        }
    }
    let quant = (
        any::<usize>(),
        prop::sample::select(vec![
            "bits",
            "group_size",
            "mode",
            "quant_method",
            "",
            "model.layers.0.mlp.gate",
            "model.layers.0.mlp.switch_mlp.gate_proj",
            "lm_head",
        ]),
        prop_oneof![
            3 => prop::sample::select(quant_values()),
            1 => extreme(),
        ],
    )
        .prop_map(|(which, field, value)| QuantMut {
            which,
            field,
            value,
        });
    let strategy = (
        any::<usize>(),
        prop::collection::vec(quant, 0..3),
        prop::collection::vec(json_mut(), 0..2),
        prop::collection::vec(quant_header_mut(), 0..4),
        prop::bool::weighted(0.7),
        prop::sample::select(vec![0usize, 1, 32, 64, 96, 2880, 1 << 40, usize::MAX]),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(fixture, quant, config, header, relayout, extra_cols, index)| MlxCase {
                fixture,
                quant,
                config,
                header,
                relayout,
                extra_cols,
                index,
            },
        );
    property("mlx quantization", 7, 4000, corpus, strategy, mlx_body);
}

// ---------------------------------------------------------------------------------------
// Routing trace files
// ---------------------------------------------------------------------------------------

/// A valid trace of 3 decoder layers (MoE layers 0 and 2), 8 experts, top-2.
fn trace_text() -> &'static Vec<u8> {
    static TEXT: OnceLock<Vec<u8>> = OnceLock::new();
    TEXT.get_or_init(|| {
        use moestream::routing::{GeneratorParams, RoutingTrace, TraceHeader};
        let h = TraceHeader::new("qwen3_moe", 3, vec![0, 2], 8, 2).unwrap();
        let t = RoutingTrace::generate(h, &GeneratorParams::default(), 12).unwrap();
        let mut out = Vec::new();
        t.write_to(&mut out).unwrap();
        out
    })
}

const TRACE_SNIPPETS: &[&str] = &[
    "|",
    " | ",
    "\n",
    "\r\n",
    "# ",
    "-",
    ",",
    "0",
    "7",
    "8",
    "65535",
    "65536",
    "4096",
    "18446744073709551616",
    "99999999999999999999999",
    "moe_layers 0-4095\n",
    "moe_layers 0-99999999999\n",
    "num_experts 18446744073709551615\n",
    "num_experts 65536\n",
    "top_k 256\n",
    "num_layers 4096\n",
    "tokens\n",
    "model_type ",
    "\u{0}",
    "\u{feff}",
];

fn trace_body(muts: Vec<TextMut>) -> String {
    use moestream::routing::RoutingTrace;
    let mut b = trace_text().clone();
    for m in &muts {
        apply_text(&mut b, m);
    }
    let r = RoutingTrace::from_reader(&b[..], "fuzz.trace");
    match &r {
        Err(moestream::Error::RoutingTrace { path, .. }) => {
            assert_eq!(path, Path::new("fuzz.trace"));
        }
        Err(e) => panic!("not a routing trace error: {e:?}"),
        Ok(t) => {
            // What reads back writes back the same.
            let mut again = Vec::new();
            t.write_to(&mut again).unwrap();
            let back = RoutingTrace::from_reader(&again[..], "again").unwrap();
            assert_eq!(&back, t);
            let _ = t.stats();
        }
    }
    label(&r)
}

#[test]
fn routing_traces() {
    let valid = String::from_utf8(trace_text().clone()).unwrap();
    let body_at = valid.find("tokens\n").unwrap() + "tokens\n".len();
    let mut corpus: Vec<Vec<TextMut>> = vec![vec![]];
    // Each snippet at the start, in the header, at the first token line and at the end.
    for &s in TRACE_SNIPPETS {
        for at in [0, 30, body_at, body_at + 3, usize::MAX - 1] {
            corpus.push(vec![TextMut::Insert(at, s)]);
        }
    }
    // A line of a million digits, where a token line or a header line would be.
    static LONG: OnceLock<String> = OnceLock::new();
    let long: &'static str = LONG.get_or_init(|| "7".repeat(1 << 20)).as_str();
    corpus.push(vec![TextMut::Insert(body_at, long)]);
    corpus.push(vec![TextMut::Insert(30, long)]);
    let muts = prop::collection::vec(
        prop_oneof![
            3 => text_mut(),
            4 => (any::<usize>(), prop::sample::select(TRACE_SNIPPETS))
                .prop_map(|(i, s)| TextMut::Insert(i, s)),
        ],
        1..4,
    );
    property("routing_traces", 41, 600, corpus, muts, trace_body);
}
