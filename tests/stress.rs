//! Several sessions on several threads sharing one model and one tight expert cache, so
//! they keep evicting each other's experts. Every session's logits must equal the same
//! session run alone, bit for bit; a watchdog turns a deadlock into a test failure; one
//! round injects read faults into one thread's calls only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use moestream::golden::Golden;
use moestream::{
    checkpoint::Checkpoint, config::ModelConfig, store::ExpertLayout, Error, ExpertStore, Model,
    Result, SafetensorsStore, Session,
};

/// Threads running sessions at once.
const THREADS: usize = 4;
/// Rounds per thread; each round is a prefill and a decode of one workload.
const ROUNDS: usize = 3;
/// The whole concurrent part must finish within this (it takes a few seconds).
const WATCHDOG: Duration = Duration::from_secs(120);

/// The fixture's own store, able to fail the reads made for one thread's calls.
///
/// Reads run on the engine's I/O threads, not on the session's thread, so a read cannot
/// tell whose it is by itself. But the engine calls [`ExpertStore::prefetch`] on the
/// session's thread, with the cache locked, right before it issues a layer's reads, and
/// keeps the lock until they are all done: the thread that called `prefetch` last is the
/// one every read in flight is for.
struct ThreadFaultStore {
    inner: SafetensorsStore,
    /// The thread whose reads are in flight (set by `prefetch`).
    requester: Mutex<Option<ThreadId>>,
    /// Fail every read made for this thread.
    faulty: Mutex<Option<ThreadId>>,
    reads: AtomicUsize,
    failed: AtomicUsize,
    /// Reads issued without a `prefetch` before them (the attribution above is then void).
    unattributed: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ThreadFaultStore {
    fn fail_reads_for(&self, thread: Option<ThreadId>) {
        *lock(&self.faulty) = thread;
    }
}

impl ExpertStore for ThreadFaultStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.inner.layout(layer)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        let requester = *lock(&self.requester);
        if requester.is_none() {
            self.unattributed.fetch_add(1, Ordering::SeqCst);
        }
        let faulty = *lock(&self.faulty);
        if faulty.is_some() && requester == faulty {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(Error::ExpertRead {
                layer,
                expert,
                reason: "injected fault for one thread".into(),
                cause: Some(Box::new(std::io::Error::other("injected"))),
            });
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_expert(layer, expert, dst)
    }

    fn prefetch(&self, layer: usize, experts: &[usize]) {
        *lock(&self.requester) = Some(std::thread::current().id());
        self.inner.prefetch(layer, experts);
    }
}

/// A prompt and a forced continuation.
#[derive(Debug, Clone)]
struct Workload {
    name: String,
    prompt: Vec<u32>,
    rest: Vec<u32>,
}

/// The golden ids of several fixtures, as token ids of the model under test.
fn workloads(vocab: usize) -> Vec<Workload> {
    ["tiny_bf16", "long_prompt", "tiny_f32", "released_spelling"]
        .iter()
        .map(|name| {
            let g = Golden::load(common::fixture(name)).unwrap();
            let ids: Vec<u32> = g.ids.iter().map(|&i| i % vocab as u32).collect();
            Workload {
                name: name.to_string(),
                prompt: ids[..g.prompt_len].to_vec(),
                rest: ids[g.prompt_len..].to_vec(),
            }
        })
        .collect()
}

/// Runs a workload from an empty context. With `faulty`, every call is first run with
/// this thread's reads failing (it must fail without moving the position, unless it read
/// nothing), then again without; returns the logits and how many calls failed.
fn run(s: &mut Session, w: &Workload, faulty: Option<&ThreadFaultStore>) -> (Vec<Vec<f32>>, usize) {
    s.reset();
    let mut out = Vec::with_capacity(w.rest.len() + 1);
    let mut failures = 0;
    let calls = std::iter::once(None).chain(w.rest.iter().map(Some));
    for id in calls {
        let call = |s: &mut Session| match id {
            None => s.prefill(&w.prompt),
            Some(&id) => s.step(id),
        };
        if let Some(store) = faulty {
            let pos = s.position();
            store.fail_reads_for(Some(std::thread::current().id()));
            let r = call(s);
            store.fail_reads_for(None);
            match r {
                Err(Error::ExpertRead { .. }) => {
                    failures += 1;
                    assert_eq!(s.position(), pos, "{}: a failed call moved", w.name);
                }
                Err(e) => panic!("{}: expected an expert read error, got {e}", w.name),
                Ok(logits) => {
                    // Every expert it needed was resident: nothing to fail.
                    out.push(logits);
                    continue;
                }
            }
        }
        let logits = call(s).unwrap_or_else(|e| panic!("{}: {e}", w.name));
        out.push(logits);
    }
    (out, failures)
}

/// One round of one thread.
struct Round {
    /// Index of the workload run.
    workload: usize,
    /// Its logits, one vector per call.
    logits: Vec<Vec<f32>>,
    /// Calls that failed (and were retried) in a fault round.
    failures: usize,
}

/// What each thread sends back.
type ThreadResult = std::thread::Result<Vec<Round>>;

/// Runs `THREADS` threads of `ROUNDS` rounds on `model`, thread `t` running workload
/// `(t + round) % len` in round `round`; thread 0 fails its reads in the rounds listed in
/// `fault_rounds`. Panics if the threads do not all finish within [`WATCHDOG`].
fn run_threads(
    model: &Model,
    store: &Arc<ThreadFaultStore>,
    work: &Arc<Vec<Workload>>,
    fault_rounds: &[usize],
) -> Vec<Vec<Round>> {
    let (tx, rx) = mpsc::channel::<(usize, ThreadResult)>();
    let start = Arc::new(Barrier::new(THREADS));
    let max_len = work.iter().map(|w| w.prompt.len() + w.rest.len()).max();
    for t in 0..THREADS {
        let (model, store, work, start, tx) = (
            model.clone(),
            store.clone(),
            work.clone(),
            start.clone(),
            tx.clone(),
        );
        let fault_rounds = fault_rounds.to_vec();
        std::thread::Builder::new()
            .name(format!("stress-{t}"))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut s = model.session(max_len.unwrap()).unwrap();
                    start.wait();
                    (0..ROUNDS)
                        .map(|round| {
                            let i = (t + round) % work.len();
                            let faulty =
                                (t == 0 && fault_rounds.contains(&round)).then_some(store.as_ref());
                            let (logits, failures) = run(&mut s, &work[i], faulty);
                            Round {
                                workload: i,
                                logits,
                                failures,
                            }
                        })
                        .collect()
                }));
                let _ = tx.send((t, result));
            })
            .unwrap();
    }
    drop(tx);
    let deadline = Instant::now() + WATCHDOG;
    let mut results: Vec<Option<Vec<_>>> = (0..THREADS).map(|_| None).collect();
    for _ in 0..THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, Ok(r))) => results[t] = Some(r),
            Ok((t, Err(panic))) => {
                eprintln!("thread {t} panicked");
                std::panic::resume_unwind(panic)
            }
            Err(_) => {
                let done: Vec<usize> = (0..THREADS).filter(|&t| results[t].is_some()).collect();
                panic!(
                    "sessions on {THREADS} threads not done after {WATCHDOG:?} (finished: {done:?}): a deadlock or a hang"
                );
            }
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

struct Setup {
    model: Model,
    store: Arc<ThreadFaultStore>,
    work: Arc<Vec<Workload>>,
    /// Logits of each workload run alone.
    alone: Vec<Vec<Vec<f32>>>,
}

/// tiny_bf16 (3 MoE layers, top-3 of 6) with a cache of `slots` slots.
fn setup(slots: Option<usize>, io_threads: usize) -> Setup {
    let dir = common::fixture("tiny_bf16");
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let ckpt = Arc::new(Checkpoint::open(&dir).unwrap());
    let store = Arc::new(ThreadFaultStore {
        inner: SafetensorsStore::new(ckpt, &cfg).unwrap(),
        requester: Mutex::new(None),
        faulty: Mutex::new(None),
        reads: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        unattributed: AtomicUsize::new(0),
    });
    let mut b = Model::builder(&dir)
        .expert_store(store.clone())
        .io_threads(io_threads);
    b = match slots {
        Some(n) => {
            let bytes = store.layout(0).unwrap().bytes as u64;
            b.expert_cache_bytes(n as u64 * bytes.div_ceil(256) * 256)
        }
        None => b.minimal_expert_cache(),
    };
    let model = b.build().unwrap();
    if let Some(n) = slots {
        assert_eq!(model.expert_cache_slots(), n);
    }
    let work = Arc::new(workloads(cfg.vocab_size));
    let alone = work
        .iter()
        .map(|w| {
            let max = w.prompt.len() + w.rest.len();
            run(&mut model.session(max).unwrap(), w, None).0
        })
        .collect();
    Setup {
        model,
        store,
        work,
        alone,
    }
}

fn check_equal_alone(setup: &Setup, results: &[Vec<Round>]) {
    for (t, rounds) in results.iter().enumerate() {
        for (round, r) in rounds.iter().enumerate() {
            let w = &setup.work[r.workload];
            let alone = &setup.alone[r.workload];
            assert_eq!(r.logits.len(), alone.len());
            for (c, (got, want)) in r.logits.iter().zip(alone).enumerate() {
                assert!(
                    got == want,
                    "thread {t}, round {round}, workload {} call {c}: logits differ from the session run alone",
                    w.name
                );
            }
        }
    }
}

/// 4 threads x 3 rounds on a 5-slot cache (of 18 experts; a prompt needs up to 6 per
/// layer) with 4 I/O threads; then the same on the minimal cache (3 slots: one token's
/// experts of one layer) with one I/O thread.
#[test]
fn threads_sharing_a_tight_cache_equal_solo_runs() {
    for (slots, io) in [(Some(5), 4), (None, 1)] {
        let setup = setup(slots, io);
        let before = setup.model.cache_stats();
        let results = run_threads(&setup.model, &setup.store, &setup.work, &[]);
        check_equal_alone(&setup, &results);
        let st = setup.model.cache_stats().since(&before);
        assert!(
            st.evictions > 0 && st.misses > 0,
            "the sessions did not compete for slots: {st:?}"
        );
        assert_eq!(
            setup.store.reads.load(Ordering::SeqCst) as u64,
            setup.model.cache_stats().misses,
            "reads from the store vs misses"
        );
    }
}

/// One round in which thread 0's reads fail (each of its calls fails once, then succeeds
/// on retry) while the other threads run undisturbed: they never see an error and every
/// session still equals its solo run.
#[test]
fn faults_on_one_thread_leave_the_others_unaffected() {
    let setup = setup(Some(3), 4);
    let results = run_threads(&setup.model, &setup.store, &setup.work, &[1]);
    assert_eq!(
        setup.store.unattributed.load(Ordering::SeqCst),
        0,
        "reads without a prefetch before them: this test's way of telling whose read it is no longer holds"
    );
    check_equal_alone(&setup, &results);
    // The other threads' calls all succeeded (`run` panics on an error without a fault).
    let faulted: usize = results[0].iter().map(|r| r.failures).sum();
    assert!(faulted > 0, "thread 0 never hit its fault");
    assert!(
        setup.store.failed.load(Ordering::SeqCst) >= faulted,
        "more failed calls than failed reads"
    );
}
