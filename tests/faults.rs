//! Fault injection: an [`ExpertStore`] that fails on command (I/O errors, short reads,
//! vanished files, panics, slow reads) wrapped around the fixture's own
//! [`SafetensorsStore`].
//!
//! What must hold (the contract in `src/store/mod.rs` and `docs/storage.md`):
//! - a failed read makes `prefill` / `step` return [`Error::ExpertRead`] naming a layer and
//!   an expert whose read failed, and leaves the session's position unchanged;
//! - the model stays usable: once the fault is gone, the same call succeeds and every
//!   logit equals a never-faulted session's, bit for bit (no cache slot keeps claiming an
//!   expert whose read failed, no bytes of a failed read reach the GPU);
//! - several reads in flight at once fail without a hang or a leaked slot;
//! - a panicking store is an error, not a crash;
//! - the expert-cache budget is a hard bound on what is resident.

mod common;

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use moestream::golden::{self, Golden};
use moestream::{
    checkpoint::Checkpoint, config::ModelConfig, store::ExpertLayout, Error, ExpertStore, Model,
    Result, SafetensorsStore, Session,
};

// ---------------------------------------------------------------------------------------
// The fault-injecting store
// ---------------------------------------------------------------------------------------

/// Marker in the message of every injected panic (the panic hook stays quiet about them).
const INJECTED_PANIC: &str = "injected store panic";

/// What an armed fault does to a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// An I/O error (`ErrorKind::Other`).
    Error,
    /// Fills only the first half of the expert with its bytes, the rest with 0xFF garbage,
    /// then fails with `ErrorKind::UnexpectedEof`, like a file truncated under the reader.
    ShortRead,
    /// The file is gone: `ErrorKind::NotFound`.
    Vanished,
    /// `read_expert` panics.
    Panic,
}

/// Which reads an armed fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Every read.
    Every,
    /// Only the `n`-th read attempt after arming (0-based).
    Nth(usize),
}

#[derive(Debug)]
struct Plan {
    fault: Fault,
    when: When,
    seen: usize,
}

/// Wraps a store; faults are switched on and off while the model runs.
struct FaultyStore {
    inner: Box<dyn ExpertStore>,
    plan: Mutex<Option<Plan>>,
    /// Sleep this many microseconds in every read (0: none).
    delay_us: AtomicUsize,
    /// Make `prefetch` panic.
    prefetch_panics: AtomicBool,
    /// Calls of `read_expert`, failed or not.
    attempts: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Successful reads, in completion order.
    reads: Mutex<Vec<(usize, usize)>>,
    /// Reads a fault hit.
    failed: Mutex<Vec<(usize, usize)>>,
}

/// Decrements a counter when dropped (also when a read panics).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected(layer: usize, expert: usize, kind: std::io::ErrorKind, what: &str) -> Error {
    Error::ExpertRead {
        layer,
        expert,
        reason: format!("injected fault: {what}"),
        cause: Some(Box::new(std::io::Error::new(kind, what.to_string()))),
    }
}

impl FaultyStore {
    fn wrap(inner: impl ExpertStore + 'static) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: Box::new(inner),
            plan: Mutex::new(None),
            delay_us: AtomicUsize::new(0),
            prefetch_panics: AtomicBool::new(false),
            attempts: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            reads: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
        })
    }

    /// The checkpoint's own store, wrapped.
    fn over_fixture(dir: &Path) -> Arc<FaultyStore> {
        let ckpt = Arc::new(Checkpoint::open(dir).unwrap());
        let cfg = ModelConfig::from_path(dir).unwrap();
        FaultyStore::wrap(SafetensorsStore::new(ckpt, &cfg).unwrap())
    }

    fn arm(&self, fault: Fault, when: When) {
        *lock(&self.plan) = Some(Plan {
            fault,
            when,
            seen: 0,
        });
    }

    fn disarm(&self) {
        *lock(&self.plan) = None;
    }

    fn set_delay(&self, d: Duration) {
        self.delay_us
            .store(d.as_micros() as usize, Ordering::SeqCst);
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    fn take_reads(&self) -> Vec<(usize, usize)> {
        std::mem::take(&mut *lock(&self.reads))
    }

    fn take_failed(&self) -> Vec<(usize, usize)> {
        std::mem::take(&mut *lock(&self.failed))
    }

    /// The fault this read suffers, if any.
    fn next_fault(&self) -> Option<Fault> {
        let mut plan = lock(&self.plan);
        let p = plan.as_mut()?;
        let n = p.seen;
        p.seen += 1;
        match p.when {
            When::Every => Some(p.fault),
            When::Nth(k) if k == n => Some(p.fault),
            When::Nth(_) => None,
        }
    }
}

impl ExpertStore for FaultyStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.inner.layout(layer)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay as u64));
        }
        let Some(fault) = self.next_fault() else {
            self.inner.read_expert(layer, expert, dst)?;
            lock(&self.reads).push((layer, expert));
            return Ok(());
        };
        lock(&self.failed).push((layer, expert));
        use std::io::ErrorKind;
        match fault {
            Fault::Error => Err(injected(layer, expert, ErrorKind::Other, "I/O error")),
            Fault::Vanished => Err(injected(
                layer,
                expert,
                ErrorKind::NotFound,
                "the expert file vanished",
            )),
            Fault::ShortRead => {
                let bytes = self.layout(layer).map_or(0, |l| l.bytes);
                self.inner.read_expert(layer, expert, dst)?;
                dst[bytes / 2..bytes].fill(0xFF);
                Err(injected(
                    layer,
                    expert,
                    ErrorKind::UnexpectedEof,
                    &format!("short read: {} of {bytes} bytes", bytes / 2),
                ))
            }
            Fault::Panic => panic!("{INJECTED_PANIC} reading layer {layer}, expert {expert}"),
        }
    }

    fn prefetch(&self, layer: usize, experts: &[usize]) {
        if self.prefetch_panics.load(Ordering::SeqCst) {
            panic!("{INJECTED_PANIC} in prefetch of layer {layer}, experts {experts:?}");
        }
        self.inner.prefetch(layer, experts);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Keeps the default panic hook quiet about injected panics (they are expected), and only
/// about those.
fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str));
            if !msg.is_some_and(|m| m.contains(INJECTED_PANIC)) {
                default(info);
            }
        }));
    });
}

/// Runs `f` on its own thread and fails the test if it has not finished after `secs`
/// seconds (a hang or deadlock), instead of hanging the test run.
fn watchdog<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("watched: {what}"))
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: no result after {secs} s: a hang or a deadlock"),
    }
}

/// Bytes of one cache slot: the largest expert of any MoE layer, rounded up to 256.
fn slot_bytes(dir: &Path, store: &dyn ExpertStore) -> u64 {
    let cfg = ModelConfig::from_path(dir).unwrap();
    let largest = cfg
        .moe_layers()
        .iter()
        .map(|&l| store.layout(l).unwrap().bytes as u64)
        .max()
        .unwrap();
    largest.div_ceil(256) * 256
}

fn total_experts(dir: &Path) -> usize {
    let cfg = ModelConfig::from_path(dir).unwrap();
    cfg.moe_layers().len() * cfg.num_experts
}

/// A model over `store` with a cache of `slots` slots (`None`: every expert fits).
fn model_with(dir: &Path, store: Arc<FaultyStore>, slots: Option<usize>, io: usize) -> Model {
    let slot = slot_bytes(dir, store.as_ref());
    let budget = slots.map_or(moestream::model::DEFAULT_EXPERT_CACHE_BYTES, |n| {
        n as u64 * slot
    });
    let m = Model::builder(dir)
        .expert_store(store)
        .expert_cache_bytes(budget)
        .io_threads(io)
        .build()
        .unwrap();
    assert_eq!(
        m.expert_cache_slots(),
        slots.unwrap_or(total_experts(dir)),
        "slots of a {budget}-byte cache"
    );
    m
}

/// One call of a golden run: the prompt's prefill, or one decode step.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Prefill(&'a [u32]),
    Step(u32),
}

impl Call<'_> {
    fn run(self, s: &mut Session) -> Result<Vec<f32>> {
        match self {
            Call::Prefill(ids) => s.prefill(ids),
            Call::Step(id) => s.step(id),
        }
    }
}

fn calls(g: &Golden) -> Vec<Call<'_>> {
    let p = g.prompt_len;
    std::iter::once(Call::Prefill(&g.ids[..p]))
        .chain(g.ids[p..].iter().map(|&id| Call::Step(id)))
        .collect()
}

/// Logits of each call of a run, in order.
type Logits = Arc<Vec<Vec<f32>>>;

/// Logits of every call of the golden run on a never-faulted model (the checkpoint's own
/// store, every expert resident), computed once per fixture.
fn clean_logits(dir: &Path, g: &Golden) -> Logits {
    static CLEAN: OnceLock<Mutex<HashMap<PathBuf, Logits>>> = OnceLock::new();
    let map = CLEAN.get_or_init(Default::default);
    if let Some(v) = lock(map).get(dir) {
        return v.clone();
    }
    let model = Model::open(dir).unwrap();
    let mut s = model.session(g.ids.len()).unwrap();
    let v: Logits = Arc::new(
        calls(g)
            .into_iter()
            .map(|c| c.run(&mut s).unwrap())
            .collect(),
    );
    lock(map).insert(dir.to_path_buf(), v.clone());
    v
}

/// Checks that `e` is an `ExpertRead` naming one of the `failed` reads.
fn assert_names_failed_read(case: &str, e: &Error, failed: &[(usize, usize)]) {
    let Error::ExpertRead { layer, expert, .. } = e else {
        panic!("{case}: expected Error::ExpertRead, got {e:?} (\"{e}\")");
    };
    assert!(
        failed.contains(&(*layer, *expert)),
        "{case}: the error names layer {layer}, expert {expert}, not one of the failed reads {failed:?}: {e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("layer {layer}")) && msg.contains(&format!("expert {expert}")),
        "{case}: the message does not name the layer and expert: \"{msg}\""
    );
    // The session stays usable after a failed read: callers may retry.
    assert!(
        e.is_retryable(),
        "{case}: a failed expert read is retryable"
    );
}

/// The `io::ErrorKind` at the bottom of the error's source chain, if any.
fn io_kind(e: &Error) -> Option<std::io::ErrorKind> {
    e.io_error().map(|io| io.kind())
}

fn assert_golden(model: &Model, dir: &Path, case: &str) {
    let g = Golden::load(dir).unwrap();
    let report = golden::check(model, &g, dir).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(report.passed(), "{case}: {report}");
}

// ---------------------------------------------------------------------------------------
// Failed reads: error, retry, bit-identical logits
// ---------------------------------------------------------------------------------------

/// Runs the golden calls on a model over a faulty store. Before each call the fault is
/// armed; a call during which a read failed must return an `ExpertRead` error naming a
/// failed read, with the position unchanged; then the fault is switched off and the same
/// call must succeed with the never-faulted logits, re-reading every expert whose read
/// failed (its slot was freed). Returns how many calls failed.
fn fault_then_retry(dir: &Path, slots: Option<usize>, fault: Fault, when: When) -> usize {
    quiet_injected_panics();
    let case = format!(
        "{} with {} slots, {fault:?} on {when:?}",
        dir.file_name().unwrap().to_string_lossy(),
        slots.map_or("all".to_string(), |n| n.to_string())
    );
    let g = Golden::load(dir).unwrap();
    let want = clean_logits(dir, &g);
    let store = FaultyStore::over_fixture(dir);
    let model = model_with(dir, store.clone(), slots, 2);
    let mut s = model.session(g.ids.len()).unwrap();
    let mut failures = 0;
    for (i, call) in calls(&g).into_iter().enumerate() {
        let case = format!("{case}, call {i} ({call:?})");
        let pos = s.position();
        store.take_reads();
        store.arm(fault, when);
        let got = call.run(&mut s);
        store.disarm();
        let failed = store.take_failed();
        if failed.is_empty() {
            // The fault never fired (every expert was resident, or fewer reads than N).
            let got = got.unwrap_or_else(|e| panic!("{case}: no read failed, yet: {e}"));
            assert!(got == want[i], "{case}: logits differ from a clean run");
            continue;
        }
        failures += 1;
        let e = match got {
            Ok(_) => panic!("{case}: reads of {failed:?} failed, yet the call succeeded"),
            Err(e) => e,
        };
        assert_names_failed_read(&case, &e, &failed);
        let kind = io_kind(&e);
        match fault {
            Fault::Error => assert_eq!(kind, Some(std::io::ErrorKind::Other), "{case}: {e:?}"),
            Fault::Vanished => {
                assert_eq!(kind, Some(std::io::ErrorKind::NotFound), "{case}: {e:?}")
            }
            Fault::ShortRead => {
                assert_eq!(
                    kind,
                    Some(std::io::ErrorKind::UnexpectedEof),
                    "{case}: {e:?}"
                )
            }
            Fault::Panic => assert!(e.to_string().contains("panicked"), "{case}: {e}"),
        }
        assert_eq!(
            s.position(),
            pos,
            "{case}: the failed call moved the position"
        );

        // Fault off: the same call succeeds with the clean logits.
        store.take_reads();
        let got = call
            .run(&mut s)
            .unwrap_or_else(|e| panic!("{case}: the retry failed: {e}"));
        assert!(
            got == want[i],
            "{case}: the retry's logits differ from a never-faulted session's"
        );
        let reread: HashSet<(usize, usize)> = store.take_reads().into_iter().collect();
        for key in &failed {
            assert!(
                reread.contains(key),
                "{case}: the retry did not read {key:?} again: its slot still claims it after the failed read"
            );
        }
        assert_eq!(
            s.position(),
            pos + match call {
                Call::Prefill(ids) => ids.len(),
                Call::Step(_) => 1,
            },
            "{case}: position after the retry"
        );
    }
    failures
}

#[test]
fn io_error_fails_the_call_and_the_retry_matches_a_clean_session() {
    // tiny_f32: top-2 of 8 over 2 layers. With one slot a step's two experts of a layer
    // are loaded in two groups, so the 2nd read fails after the 1st group was submitted.
    let dir = common::fixture("tiny_f32");
    for (slots, when) in [
        (None, When::Every),
        (None, When::Nth(3)),
        (Some(2), When::Every),
        (Some(2), When::Nth(1)),
        (Some(1), When::Nth(0)),
        (Some(1), When::Nth(1)),
        (Some(1), When::Nth(3)),
    ] {
        let n = fault_then_retry(&dir, slots, Fault::Error, when);
        assert!(n > 0, "slots {slots:?}, {when:?}: no call hit the fault");
    }
}

#[test]
fn vanished_file_and_short_read_fail_cleanly() {
    // tiny_bf16: top-3 of 6 over 3 layers, so with 2 slots every step splits a layer's
    // experts into groups and the 3rd read of a call falls into a later group.
    let dir = common::fixture("tiny_bf16");
    for (slots, fault, when) in [
        (None, Fault::Vanished, When::Every),
        (Some(2), Fault::Vanished, When::Nth(2)),
        (None, Fault::ShortRead, When::Nth(1)),
        (Some(2), Fault::ShortRead, When::Every),
        (Some(2), Fault::ShortRead, When::Nth(4)),
    ] {
        let n = fault_then_retry(&dir, slots, fault, when);
        assert!(n > 0, "slots {slots:?}, {fault:?} {when:?}: never hit");
    }
}

/// With a tight cache every call reads, so every call fails once and is retried; the
/// session's whole run must still equal a clean one.
#[test]
fn every_call_faulted_mid_layer_with_a_tight_cache() {
    let dir = common::fixture("released_spelling"); // top-4 of 8
    let g = Golden::load(&dir).unwrap();
    for (slots, when) in [(2, When::Nth(2)), (3, When::Nth(5)), (4, When::Every)] {
        let n = fault_then_retry(&dir, Some(slots), Fault::Error, when);
        // Each call needs more experts per layer than stay resident from the layer
        // before, so every call reads, and fails once.
        assert_eq!(
            n,
            g.ids.len() - g.prompt_len + 1,
            "{slots} slots, {when:?}: not every call failed"
        );
    }
}

/// Qwen3.5 / Qwen3-Next: a call that fails (or a resident step that is discarded and run
/// again) must leave the linear-attention layers' recurrent and conv states as they were,
/// so that the retry equals a never-faulted session bit for bit: unlike a KV cache, such
/// state cannot be rewritten by running the same tokens again.
#[test]
fn hybrid_model_retry_after_a_failed_read_matches_a_clean_session() {
    for name in ["q35_flat_f32", "next_dense"] {
        let dir = common::qwen35_fixtures()
            .into_iter()
            .find(|d| d.ends_with(name))
            .unwrap_or_else(|| panic!("no fixture {name}"));
        for (slots, when) in [
            (None, When::Nth(3)),
            (Some(1), When::Nth(1)),
            (Some(2), When::Every),
        ] {
            let n = fault_then_retry(&dir, slots, Fault::Error, when);
            assert!(
                n > 0,
                "{name}, slots {slots:?}, {when:?}: no call hit the fault"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Several reads in flight
// ---------------------------------------------------------------------------------------

/// io_threads 4 and slow reads, so several reads are in flight when one fails: the prefill
/// returns the error (no hang: a watchdog fails the test after 60 s), and afterwards the
/// model matches golden (no slot, staging buffer or I/O thread was lost).
#[test]
fn faults_with_reads_in_flight_do_not_hang_or_leak() {
    quiet_injected_panics();
    let dir = common::fixture("released_spelling"); // 8-token prompt, top-4 of 8
    let g = Golden::load(&dir).unwrap();
    let prompt: Vec<u32> = g.ids[..g.prompt_len].to_vec();
    let cases = [
        (None, Fault::Error, When::Nth(0)),
        (None, Fault::Error, When::Nth(2)),
        (None, Fault::Vanished, When::Nth(5)),
        (None, Fault::ShortRead, When::Every),
        (None, Fault::Panic, When::Nth(3)),
        (Some(4), Fault::Error, When::Nth(6)),
        (Some(5), Fault::Panic, When::Every),
    ];
    for (slots, fault, when) in cases {
        let case = format!("{slots:?} slots, {fault:?} on {when:?}");
        let dir2 = dir.clone();
        let prompt = prompt.clone();
        let case2 = case.clone();
        watchdog(&case, 60, move || {
            let store = FaultyStore::over_fixture(&dir2);
            let model = model_with(&dir2, store.clone(), slots, 4);
            store.set_delay(Duration::from_millis(15));
            store.arm(fault, when);
            let mut s = model.session(64).unwrap();
            let e = s
                .prefill(&prompt)
                .expect_err(&format!("{case2}: the prefill succeeded"));
            store.disarm();
            let failed = store.take_failed();
            assert_names_failed_read(&case2, &e, &failed);
            assert_eq!(s.position(), 0, "{case2}");
            let most = store.max_in_flight.swap(0, Ordering::SeqCst);
            assert!(
                (2..=4).contains(&most),
                "{case2}: {most} reads in flight at most; the test needs several, io_threads(4) allows 4"
            );
            assert_eq!(
                store.in_flight.load(Ordering::SeqCst),
                0,
                "{case2}: a read still runs after the call returned"
            );
            // Afterwards: golden, still with up to 4 reads in flight (no staging buffer or
            // I/O thread was lost).
            store.set_delay(Duration::from_millis(3));
            assert_golden(&model, &dir2, &case2);
            let most = store.max_in_flight.swap(0, Ordering::SeqCst);
            assert!(
                (2..=4).contains(&most),
                "{case2}: after the failure, {most} reads in flight at most"
            );
            store.set_delay(Duration::ZERO);
            // The failed session is still usable too.
            let again = s.prefill(&prompt).unwrap();
            let clean = Model::open(&dir2)
                .unwrap()
                .session(64)
                .unwrap()
                .prefill(&prompt)
                .unwrap();
            assert!(again == clean, "{case2}: the retried prefill differs");
        });
    }
}

// ---------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------

/// A store that panics in `read_expert` is reported as an `ExpertRead` error; with a single
/// I/O thread, that thread must survive every panic (else the next read would hang or fail).
#[test]
fn panicking_store_is_an_error_not_a_crash() {
    quiet_injected_panics();
    let dir = common::fixture("tiny_f32");
    let dir2 = dir.clone();
    watchdog("panicking store", 60, move || {
        let dir = dir2;
        let g = Golden::load(&dir).unwrap();
        let want = clean_logits(&dir, &g);
        let store = FaultyStore::over_fixture(&dir);
        let model = model_with(&dir, store.clone(), Some(2), 1);
        let mut s = model.session(g.ids.len()).unwrap();
        let p = g.prompt_len;
        store.arm(Fault::Panic, When::Every);
        for round in 0..3 {
            let e = s
                .prefill(&g.ids[..p])
                .expect_err("a prefill through a panicking store succeeded");
            let failed = store.take_failed();
            assert_eq!(
                failed.len(),
                1,
                "round {round}: one read, then stop: {failed:?}"
            );
            assert_names_failed_read("panicking store", &e, &failed);
            assert!(e.to_string().contains("panicked"), "{e}");
            assert_eq!(s.position(), 0);
        }
        store.disarm();
        assert!(s.prefill(&g.ids[..p]).unwrap() == want[0]);
        for (i, &id) in g.ids[p..].iter().enumerate() {
            assert!(s.step(id).unwrap() == want[i + 1], "step {i} after panics");
        }
        assert_golden(&model, &dir, "after panics");
    });
}

/// `prefetch` is a hint: the engine calls it before any slot changes hands and ignores a
/// panic in it. Whatever happens, the model must be correct afterwards: no slot may claim
/// an expert that was never read into it.
#[test]
fn panicking_prefetch_leaves_the_model_correct() {
    quiet_injected_panics();
    let dir = common::fixture("tiny_f32");
    let g = Golden::load(&dir).unwrap();
    let want = clean_logits(&dir, &g);
    let store = FaultyStore::over_fixture(&dir);
    let model = model_with(&dir, store.clone(), None, 2);
    let p = g.prompt_len;
    let mut s = model.session(g.ids.len()).unwrap();
    store.prefetch_panics.store(true, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| s.prefill(&g.ids[..p])));
    store.prefetch_panics.store(false, Ordering::SeqCst);
    match outcome {
        Err(_) => {}     // the panic propagated: acceptable
        Ok(Err(_)) => {} // turned into an error: fine too
        // The hint's panic was ignored: then the logits must be exact.
        Ok(Ok(logits)) => assert!(
            logits == want[0],
            "prefill ignored the panicking hint but computed wrong logits"
        ),
    }
    // Whatever the session's state, a fresh session on the same model must be correct.
    let mut fresh = model.session(g.ids.len()).unwrap();
    let got = fresh.prefill(&g.ids[..p]).unwrap();
    let diff = got
        .iter()
        .zip(&want[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        got == want[0],
        "after a panic in prefetch the model computes wrong logits (max |diff| {diff}): \
         the slots assigned before the panic still claim experts never read into them"
    );
    assert_golden(&model, &dir, "after a panicking prefetch");
}

// ---------------------------------------------------------------------------------------
// A failed prefill of several passes
// ---------------------------------------------------------------------------------------

/// A prompt longer than `MAX_PASS_TOKENS` is prefilled in several passes. If a read of a
/// later pass fails, the call fails, and the position must still be unchanged: the caller
/// cannot know how much of the prompt went in, so it can only retry the whole prompt.
#[test]
fn failed_prefill_of_several_passes_leaves_the_position_unchanged() {
    let dir = common::fixture("tiny_f32");
    let n = moestream::session::MAX_PASS_TOKENS + 40;
    let prompt: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % 256).collect();
    // How many reads the first pass makes, with 2 slots (so the second pass reads too).
    let store = FaultyStore::over_fixture(&dir);
    let model = model_with(&dir, store.clone(), Some(2), 2);
    let mut s = model.session(n).unwrap();
    s.prefill(&prompt[..moestream::session::MAX_PASS_TOKENS])
        .unwrap();
    let first_pass_reads = store.attempts();
    // Fail the first read of the second pass.
    let store = FaultyStore::over_fixture(&dir);
    let model = model_with(&dir, store.clone(), Some(2), 2);
    let mut s = model.session(n).unwrap();
    store.arm(Fault::Error, When::Nth(first_pass_reads));
    let e = s.prefill(&prompt).expect_err("the prefill succeeded");
    store.disarm();
    assert_names_failed_read("second pass", &e, &store.take_failed());
    assert_eq!(
        s.position(),
        0,
        "a failed prefill left the position at {} of {n} prompt tokens",
        s.position()
    );
    // The retry then equals a clean prefill.
    let got = s.prefill(&prompt).unwrap();
    let want = Model::open(&dir)
        .unwrap()
        .session(n)
        .unwrap()
        .prefill(&prompt)
        .unwrap();
    assert!(got == want, "the retried prefill differs from a clean one");
}

// ---------------------------------------------------------------------------------------
// The cache budget is a hard bound
// ---------------------------------------------------------------------------------------

/// The (layer, expert) pairs every layer pass of a golden run routes to, in order. With a
/// one-slot cache nothing is ever a hit (consecutive loads are of different experts or
/// layers, for models of two or more MoE layers), so the store's read log is exactly the
/// routing, one maximal run of equal layers per layer pass, experts in ascending order.
fn routing_trace(dir: &Path) -> Vec<(usize, Vec<usize>)> {
    let cfg = ModelConfig::from_path(dir).unwrap();
    assert!(cfg.moe_layers().len() >= 2, "needs two MoE layers or more");
    let store = FaultyStore::over_fixture(dir);
    let model = model_with(dir, store.clone(), Some(1), 2);
    assert_golden(&model, dir, "one slot");
    let reads = store.take_reads();
    let stats = model.cache_stats();
    assert_eq!(stats.hits, 0, "a one-slot cache hit");
    assert_eq!(stats.misses as usize, reads.len());
    let trace = runs_of_layers(&reads);
    for (l, experts) in &trace {
        assert!(
            experts.windows(2).all(|w| w[0] < w[1]),
            "layer {l}: experts {experts:?} not read once each in ascending order"
        );
    }
    trace
}

/// Splits reads into maximal runs of one layer, each run's experts sorted.
fn runs_of_layers(reads: &[(usize, usize)]) -> Vec<(usize, Vec<usize>)> {
    let mut runs: Vec<(usize, Vec<usize>)> = Vec::new();
    for &(l, e) in reads {
        match runs.last_mut() {
            Some((rl, es)) if *rl == l => es.push(e),
            _ => runs.push((l, vec![e])),
        }
    }
    for (_, es) in &mut runs {
        es.sort_unstable();
    }
    runs
}

/// A model of the documented policy: `slots` slots, least recently used evicted; a layer's
/// experts are made resident in groups of at most `slots` (ascending expert order), hits of
/// a group touched first, then its misses loaded, none evicting a slot of its own group.
/// Returns the expected reads and the most experts ever resident.
fn simulate_lru(trace: &[(usize, Vec<usize>)], slots: usize) -> (Vec<(usize, usize)>, usize) {
    let mut last_used: HashMap<(usize, usize), u64> = HashMap::new();
    let mut tick = 0u64;
    let mut reads = Vec::new();
    let mut most = 0;
    for (l, experts) in trace {
        for group in experts.chunks(slots) {
            let keys: Vec<(usize, usize)> = group.iter().map(|&e| (*l, e)).collect();
            for k in &keys {
                if let Some(t) = last_used.get_mut(k) {
                    tick += 1;
                    *t = tick;
                }
            }
            for k in &keys {
                if last_used.contains_key(k) {
                    continue;
                }
                if last_used.len() == slots {
                    let victim = *last_used
                        .iter()
                        .filter(|(v, _)| !keys.contains(v))
                        .min_by_key(|(_, &t)| t)
                        .expect("a group never needs more than `slots` slots")
                        .0;
                    last_used.remove(&victim);
                }
                tick += 1;
                last_used.insert(*k, tick);
                reads.push(*k);
                most = most.max(last_used.len());
            }
        }
    }
    (reads, most)
}

/// For several budgets: the cache never takes more bytes than the budget, and the store's
/// reads are exactly those of an LRU cache with that many slots, so no more experts were
/// ever resident than the slots allow (a cache holding more would read less).
#[test]
fn expert_cache_budget_is_a_hard_bound() {
    // tiny_bf16: 3 MoE layers, top-3 of 6; dense_mix: MoE layers 1 and 5 of 6, top-2 of 4.
    for name in ["tiny_bf16", "dense_mix"] {
        let dir = common::fixture(name);
        let trace = routing_trace(&dir);
        let probe = FaultyStore::over_fixture(&dir);
        let slot = slot_bytes(&dir, probe.as_ref());
        let total = total_experts(&dir);
        let mut budgets: Vec<u64> = [2, 3, 5, total - 1]
            .iter()
            .map(|&n| n as u64 * slot)
            .collect();
        budgets.extend([3 * slot - 1, 4 * slot + slot / 2, 1 << 40]);
        for budget in budgets {
            let case = format!("{name}, budget {budget} bytes (slot {slot} bytes)");
            let store = FaultyStore::over_fixture(&dir);
            let model = Model::builder(&dir)
                .expert_store(store.clone())
                .expert_cache_bytes(budget)
                .build()
                .unwrap();
            let slots = model.expert_cache_slots();
            assert_eq!(slots, ((budget / slot) as usize).min(total), "{case}");
            assert!(slots as u64 * slot <= budget, "{case}: {slots} slots");
            assert_eq!(model.expert_cache_bytes(), slots as u64 * slot, "{case}");
            assert_golden(&model, &dir, &case);
            let reads = store.take_reads();
            let (want, most) = simulate_lru(&trace, slots);
            assert!(most <= slots);
            assert_eq!(
                runs_of_layers(&reads),
                runs_of_layers(&want),
                "{case}: the reads are not those of an LRU cache of {slots} slots"
            );
            let st = model.cache_stats();
            assert_eq!(st.misses as usize, reads.len(), "{case}: misses vs reads");
            let routed: usize = trace.iter().map(|(_, e)| e.len()).sum();
            assert_eq!(
                (st.hits + st.misses) as usize,
                routed,
                "{case}: hits + misses"
            );
            assert!(
                st.misses - st.evictions <= slots as u64,
                "{case}: {} loaded - {} evicted > {slots} slots",
                st.misses,
                st.evictions
            );
            assert_eq!(
                st.bytes_read,
                reads
                    .iter()
                    .map(|&(l, _)| store.layout(l).unwrap().bytes as u64)
                    .sum::<u64>(),
                "{case}: bytes read"
            );
        }
    }
}

/// `minimal_expert_cache()` keeps `num_experts_per_tok` slots and still matches golden,
/// reading exactly what an LRU cache of that size reads.
#[test]
fn minimal_expert_cache_has_top_k_slots_and_matches_golden() {
    for name in ["tiny_f32", "tiny_bf16", "released_spelling", "long_prompt"] {
        let dir = common::fixture(name);
        let cfg = ModelConfig::from_path(&dir).unwrap();
        let trace = routing_trace(&dir);
        let store = FaultyStore::over_fixture(&dir);
        let slot = slot_bytes(&dir, store.as_ref());
        let model = Model::builder(&dir)
            .expert_store(store.clone())
            .minimal_expert_cache()
            .build()
            .unwrap();
        assert_eq!(
            model.expert_cache_slots(),
            cfg.num_experts_per_tok,
            "{name}"
        );
        assert_eq!(
            model.expert_cache_bytes(),
            cfg.num_experts_per_tok as u64 * slot,
            "{name}"
        );
        assert_golden(&model, &dir, &format!("{name}, minimal cache"));
        let (want, _) = simulate_lru(&trace, cfg.num_experts_per_tok);
        assert_eq!(
            runs_of_layers(&store.take_reads()),
            runs_of_layers(&want),
            "{name}: minimal cache reads"
        );
    }
}

/// Every fixture passes golden through the fault store with faults off, one I/O thread
/// and one slot: the wrapper itself is transparent.
#[test]
fn transparent_wrapper_matches_golden_everywhere() {
    for dir in common::fixtures() {
        let name: PathBuf = dir.file_name().unwrap().into();
        let store = FaultyStore::over_fixture(&dir);
        let model = model_with(&dir, store, Some(1), 1);
        assert_golden(&model, &dir, &name.to_string_lossy());
    }
}
