//! Sessions sharing one model: interleaving, threads, reset.

mod common;

use moestream::golden::Golden;
use moestream::sampling::Sampler;
use moestream::{Model, SamplingParams, Session};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn model_is_send_sync_and_session_is_send() {
    assert_send_sync::<Model>();
    fn assert_send<T: Send>() {}
    assert_send::<Session>();
}

/// Prefill + greedy-free decode of a fixed continuation, collecting every logits vector.
fn run_all(session: &mut Session, golden: &Golden) -> Vec<Vec<f32>> {
    let p = golden.prompt_len;
    let mut out = vec![session.prefill(&golden.ids[..p]).unwrap()];
    for &id in &golden.ids[p..] {
        out.push(session.step(id).unwrap());
    }
    out
}

#[test]
fn interleaved_sessions_equal_sequential_sessions() {
    let dir = common::fixture("tiny_bf16");
    let golden = Golden::load(&dir).unwrap();
    // A tight budget so the two sessions evict each other's experts.
    let model = Model::builder(&dir)
        .expert_cache_bytes(3 * 16384)
        .build()
        .unwrap();
    let other = Golden::load(common::fixture("tiny_bf16")).unwrap();
    let other_ids: Vec<u32> = other.ids.iter().rev().copied().collect();

    let mut a = model.session(64).unwrap();
    let seq_a = run_all(&mut a, &golden);
    let mut b = model.session(64).unwrap();
    let p = 5;
    let mut seq_b = vec![b.prefill(&other_ids[..p]).unwrap()];
    for &id in &other_ids[p..] {
        seq_b.push(b.step(id).unwrap());
    }

    let mut a = model.session(64).unwrap();
    let mut b = model.session(64).unwrap();
    let gp = golden.prompt_len;
    let mut int_a = vec![a.prefill(&golden.ids[..gp]).unwrap()];
    let mut int_b = vec![b.prefill(&other_ids[..p]).unwrap()];
    let mut ia = golden.ids[gp..].iter();
    let mut ib = other_ids[p..].iter();
    loop {
        let na = ia.next();
        let nb = ib.next();
        if na.is_none() && nb.is_none() {
            break;
        }
        if let Some(&id) = nb {
            int_b.push(b.step(id).unwrap());
        }
        if let Some(&id) = na {
            int_a.push(a.step(id).unwrap());
        }
    }
    assert_eq!(seq_a, int_a, "session A changed when interleaved");
    assert_eq!(seq_b, int_b, "session B changed when interleaved");
}

#[test]
fn sessions_on_threads_equal_sequential_runs() {
    let dir = common::fixture("long_prompt");
    let golden = Golden::load(&dir).unwrap();
    let model = Model::builder(&dir)
        .expert_cache_bytes(4 * 12288)
        .build()
        .unwrap();
    let expected = run_all(&mut model.session(golden.ids.len()).unwrap(), &golden);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let model = model.clone();
                let golden = &golden;
                s.spawn(move || run_all(&mut model.session(golden.ids.len()).unwrap(), golden))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), expected);
        }
    });
}

#[test]
fn reset_reuses_the_session() {
    let dir = common::fixture("tiny_f32");
    let golden = Golden::load(&dir).unwrap();
    let model = Model::open(&dir).unwrap();
    let mut s = model.session(golden.ids.len()).unwrap();
    let first = run_all(&mut s, &golden);
    assert_eq!(s.position(), golden.ids.len());
    s.reset();
    assert_eq!(s.position(), 0);
    let second = run_all(&mut s, &golden);
    assert_eq!(first, second);
    // Prefill in pieces equals one prefill.
    s.reset();
    let p = golden.prompt_len;
    s.prefill(&golden.ids[..2]).unwrap();
    let pieces = s.prefill(&golden.ids[2..p]).unwrap();
    assert_eq!(pieces.len(), first[0].len());
    let max = pieces
        .iter()
        .zip(&first[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-4, "prefill in pieces differs by {max}");
}

/// Decode steps of a warm, fully resident model route on the GPU (no readback per layer)
/// and give exactly the logits of the path with routing readbacks; a model whose cache is
/// too small falls back (and retries) without changing a bit. With float experts and with
/// quantized ones: 4-bit (h in the quad 8+8-bit layout), 8-bit (interleaved), and Qwen3.5
/// 4-bit (the shared expert as a ninth choice).
/// The model at `dir` with an expert cache of top_k + 1 slots (`full`'s slots), so small
/// that resident decode steps miss.
fn tight_model(dir: &std::path::Path, full: &Model) -> Model {
    let slot = common::slot_bytes(full);
    let k = full.config().num_experts_per_tok;
    Model::builder(dir)
        .expert_cache_bytes((k as u64 + 1) * slot)
        .build()
        .unwrap()
}

/// The models of the tests of steps run ahead: a KV-cache one and a hybrid one (recurrent
/// states), each with its golden prompt, every expert resident (`full`) and with a cache so
/// small that resident steps miss (`tight`).
fn run_ahead_models() -> Vec<(std::path::PathBuf, Vec<u32>, Model, Model)> {
    let qwen35 = common::qwen35_fixtures();
    [common::fixture("tiny_bf16"), qwen35[0].clone()]
        .into_iter()
        .map(|dir| {
            let golden = Golden::load(&dir).unwrap();
            let prompt = golden.ids[..golden.prompt_len].to_vec();
            let full = Model::open(&dir).unwrap();
            full.preload_experts().unwrap();
            let tight = tight_model(&dir, &full);
            (dir, prompt, full, tight)
        })
        .collect()
}

#[test]
fn resident_decode_matches_readback_decode() {
    let qwen35 = common::qwen35_fixtures();
    let q35_4bit = qwen35
        .iter()
        .find(|d| d.ends_with("q35_mlx_4bit"))
        .expect("the q35_mlx_4bit fixture");
    let dirs = [
        common::fixture("long_prompt"),
        common::mlx_fixture("q4_g64"),
        common::mlx_fixture("q8_g32"),
        q35_4bit.clone(),
    ];
    for dir in dirs {
        let golden = Golden::load(&dir).unwrap();
        let full = Model::open(&dir).unwrap();
        let tight = tight_model(&dir, &full);
        let run = |model: &Model| {
            let mut s = model.session(golden.ids.len() + 8).unwrap();
            // Prefill all but the last few tokens, then decode those one by one.
            let cut = golden.ids.len() - 8.min(golden.ids.len() - 1);
            let mut out = vec![s.prefill(&golden.ids[..cut]).unwrap()];
            for &id in &golden.ids[cut..] {
                out.push(s.step(id).unwrap());
            }
            (out, s.stats(), golden.ids.len() - cut)
        };
        // Warm the full cache so that every routed expert is resident.
        run(&full);
        let (fast, fast_stats, steps) = run(&full);
        let (slow, slow_stats, _) = run(&tight);
        assert!(
            fast_stats.resident_steps as usize >= steps - 1,
            "{dir:?}: a warm resident model decodes without readbacks: {fast_stats:?}"
        );
        assert!(
            (slow_stats.resident_steps as usize) < steps,
            "{dir:?}: a cache of top_k + 1 slots misses: {slow_stats:?}"
        );
        assert_eq!(
            fast, slow,
            "{dir:?}: resident routing must not change a single logit"
        );
        assert_eq!(fast_stats.experts_routed, slow_stats.experts_routed);
    }
}

#[test]
fn preloaded_model_never_reads_storage_and_every_step_is_resident() {
    let dir = common::fixture("tiny_bf16");
    let golden = Golden::load(&dir).unwrap();
    let model = Model::open(&dir).unwrap();
    let pre = model.preload_experts().unwrap();
    let cfg = model.config();
    assert_eq!(
        pre.misses as usize,
        cfg.moe_layers().len() * cfg.num_experts
    );
    let mut s = model.session(golden.ids.len()).unwrap();
    let p = golden.prompt_len;
    s.prefill(&golden.ids[..p]).unwrap();
    for &id in &golden.ids[p..] {
        s.step(id).unwrap();
    }
    let st = s.stats();
    assert_eq!(st.cache.misses, 0, "{st:?}");
    assert_eq!(st.resident_steps as usize, golden.ids.len() - p, "{st:?}");
    assert_eq!(st.resident_retries, 0);
    // Every step but the first was recorded while the GPU ran the one before.
    assert_eq!(
        st.steps_recorded_ahead as usize,
        golden.ids.len() - p - 1,
        "{st:?}"
    );
}

/// Decode steps recorded ahead (while the GPU runs the step before) give exactly the
/// logits of steps recorded when asked for; calls that do not match the step recorded
/// ahead (another readout, a truncation, a reset, a read of the last logits, a fork)
/// drop it. On a KV-cache model and on a hybrid one, whose recurrent states the step
/// recorded ahead reads before the step before it has committed them.
#[test]
fn steps_recorded_ahead_equal_steps_recorded_when_asked() {
    let qwen35 = common::qwen35_fixtures();
    let dirs = [common::fixture("tiny_bf16"), qwen35[0].clone()];
    for dir in dirs {
        let golden = Golden::load(&dir).unwrap();
        let model = Model::open(&dir).unwrap();
        model.preload_experts().unwrap();
        let p = golden.prompt_len;
        let ids = &golden.ids;
        // Plain steps: every step after the first was recorded ahead.
        let mut a = model.session(ids.len() + 4).unwrap();
        let mut want = vec![a.prefill(&ids[..p]).unwrap()];
        for &id in &ids[p..] {
            want.push(a.step(id).unwrap());
        }
        let n = ids.len() - p;
        assert_eq!(a.stats().steps_recorded_ahead as usize, n - 1, "{dir:?}");
        // Reading the last logits after each step drops the step recorded ahead: every
        // step is recorded when asked for, and the logits are the same bits.
        let mut b = model.session(ids.len() + 4).unwrap();
        let mut got = vec![b.prefill(&ids[..p]).unwrap()];
        for &id in &ids[p..] {
            got.push(b.step(id).unwrap());
            assert_eq!(&b.last_logits().unwrap(), got.last().unwrap());
        }
        assert_eq!(b.stats().steps_recorded_ahead, 0, "{dir:?}");
        assert_eq!(got, want, "{dir:?}");
        // Top candidates then full logits: the readout differs from the step recorded
        // ahead, which is dropped; the best candidate is the best logit.
        let mut c = model.session(ids.len() + 4).unwrap();
        c.prefill(&ids[..p]).unwrap();
        for (i, &id) in ids[p..].iter().enumerate() {
            if i % 2 == 0 {
                let top = c.step_top(id, 1).unwrap();
                let best = want[i + 1]
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(&x.0)))
                    .unwrap();
                assert_eq!(top[0].id as usize, best.0, "{dir:?} step {i}");
            } else {
                assert_eq!(c.step(id).unwrap(), want[i + 1], "{dir:?} step {i}");
            }
        }
        // A fork between steps, then both sessions go on: the parent's step recorded
        // ahead is still its next step, and the fork records its own.
        let mut d = model.session(ids.len() + 4).unwrap();
        d.prefill(&ids[..p]).unwrap();
        d.step(ids[p]).unwrap();
        let mut e = d.fork().unwrap();
        for (i, &id) in ids[p + 1..].iter().enumerate() {
            assert_eq!(d.step(id).unwrap(), want[i + 2], "{dir:?} parent step {i}");
            assert_eq!(e.step(id).unwrap(), want[i + 2], "{dir:?} fork step {i}");
        }
        assert!(d.stats().steps_recorded_ahead > 0);
        // A reset or a truncation right after a step: the next step is at another
        // position than the one recorded ahead.
        let mut f = model.session(ids.len() + 4).unwrap();
        f.prefill(&ids[..p]).unwrap();
        f.step(ids[p]).unwrap();
        f.reset();
        assert_eq!(f.prefill(&ids[..p]).unwrap(), want[0]);
        assert_eq!(f.step(ids[p]).unwrap(), want[1]);
        if f.truncate(p).is_ok() {
            assert_eq!(f.step(ids[p]).unwrap(), want[1], "{dir:?} after truncate");
        }
    }
}

/// The best logit and its id, ties to the lower id (the order of `step_top`).
fn best(logits: &[f32]) -> (u32, f32) {
    let (i, v) = logits
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(&x.0)))
        .unwrap();
    (i as u32, *v)
}

/// Greedy steps (`step_top` with n 1) that the GPU runs ahead of their call, picking the
/// token itself, give exactly the logits of steps run when asked for; a call for another
/// token, a read of the last logits, a truncation or a fork drop the step run ahead and
/// leave the session as if it had never run. On a KV-cache model and on a hybrid one
/// (whose recurrent states a step run ahead writes before the step before it is known to
/// have succeeded), with a warm resident cache and with a cache so small that resident
/// steps miss (and are run again) while a step runs ahead of them.
#[test]
fn greedy_steps_run_ahead_equal_steps_run_when_asked() {
    let steps = 8;
    for (dir, prompt, full, tight) in run_ahead_models() {
        let (p, prompt) = (prompt.len(), &prompt[..]);
        // The reference: all logits every step (never run ahead), greedy on the host.
        let mut r = full.session(p + steps + 4).unwrap();
        let mut logits = vec![r.prefill(prompt).unwrap()];
        let mut tokens = vec![best(&logits[0]).0];
        for i in 0..steps {
            logits.push(r.step(tokens[i]).unwrap());
            tokens.push(best(&logits[i + 1]).0);
        }
        assert_eq!(r.stats().steps_run_ahead, 0);
        for (name, model) in [("warm", &full), ("tight", &tight)] {
            let mut g = model.session(p + steps + 4).unwrap();
            g.prefill(prompt).unwrap();
            for i in 0..steps {
                let c = g.step_top(tokens[i], 1).unwrap();
                let want = best(&logits[i + 1]);
                assert_eq!(c[0].id, want.0, "{dir:?} {name} step {i}");
                assert_eq!(
                    c[0].logit.to_bits(),
                    want.1.to_bits(),
                    "{dir:?} {name} step {i}"
                );
            }
            let st = g.stats();
            if name == "warm" {
                assert_eq!(st.steps_run_ahead as usize, steps - 1, "{dir:?}: {st:?}");
            } else {
                assert!(
                    (st.resident_steps as usize) < steps,
                    "{dir:?} misses: {st:?}"
                );
            }
            // The step run ahead is dropped; the last logits are the last step's.
            assert_eq!(g.last_logits().unwrap(), logits[steps], "{dir:?} {name}");
            // Another token than the best: the step run ahead is dropped, and the
            // session goes on as one that never ran it.
            let mut m = model.session(p + steps + 4).unwrap();
            m.prefill(prompt).unwrap();
            m.step_top(tokens[0], 1).unwrap();
            let other = (tokens[1] + 1) % model.config().vocab_size as u32;
            let mut o = full.session(p + steps + 4).unwrap();
            o.prefill(prompt).unwrap();
            o.step(tokens[0]).unwrap();
            let ol = o.step(other).unwrap();
            let c = m.step_top(other, 1).unwrap();
            assert_eq!(
                (c[0].id, c[0].logit.to_bits()),
                {
                    let b = best(&ol);
                    (b.0, b.1.to_bits())
                },
                "{dir:?} {name}: another token"
            );
            let next = c[0].id;
            let c = m.step_top(next, 1).unwrap();
            let b = best(&o.step(next).unwrap());
            assert_eq!(
                (c[0].id, c[0].logit.to_bits()),
                (b.0, b.1.to_bits()),
                "{dir:?} {name}"
            );
            // A fork and a truncation right after a greedy step.
            let mut f = model.session(p + steps + 4).unwrap();
            f.prefill(prompt).unwrap();
            f.step_top(tokens[0], 1).unwrap();
            let mut e = f.fork().unwrap();
            assert_eq!(e.step(tokens[1]).unwrap(), logits[2], "{dir:?} {name} fork");
            assert_eq!(
                f.step(tokens[1]).unwrap(),
                logits[2],
                "{dir:?} {name} parent"
            );
            if f.truncate(p).is_ok() {
                f.step_top(tokens[0], 1).unwrap();
                assert_eq!(
                    f.step(tokens[1]).unwrap(),
                    logits[2],
                    "{dir:?} {name} truncate"
                );
            }
        }
    }
}

/// Sampled steps ([`Session::step_top_sampling`]), each one's successor run ahead with its
/// token drawn on the GPU with the sampler's next random number, give exactly the tokens
/// of a sampler on all logits. A draw the GPU gets wrong (forced here: it is given another
/// sampler's number) only makes the session run that step again, after the step behind it
/// has already run ahead too: the tokens stay the same. On a KV-cache model and on a hybrid
/// one (whose recurrent states both discarded steps wrote), with a warm resident cache and
/// with one so small that resident steps miss.
#[test]
fn sampled_steps_run_ahead_give_the_tokens_of_sampling_all_logits() {
    let steps = 12;
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 20,
        top_p: 0.95,
        seed: Some(3),
        ..SamplingParams::greedy()
    };
    for (dir, prompt, full, tight) in run_ahead_models() {
        let (p, prompt) = (prompt.len(), &prompt[..]);
        // The reference: all logits every step (never run ahead), sampled on the host.
        let mut r = full.session(p + steps + 4).unwrap();
        let mut sampler = Sampler::new(params.clone());
        let mut tokens = vec![sampler.sample(&r.prefill(prompt).unwrap())];
        for i in 0..steps {
            let logits = r.step(tokens[i]).unwrap();
            tokens.push(sampler.sample(&logits));
        }
        assert_eq!(r.stats().steps_run_ahead, 0);
        for (name, model) in [("warm", &full), ("tight", &tight)] {
            for forced in [false, true] {
                let mut s = model.session(p + steps + 4).unwrap();
                let mut sampler = Sampler::new(params.clone());
                let mut other = Sampler::new(SamplingParams {
                    seed: Some(99),
                    ..params.clone()
                });
                let mut got = vec![sampler.sample(&s.prefill(prompt).unwrap())];
                for i in 0..steps {
                    let draw = if forced {
                        other.next_draw()
                    } else {
                        sampler.next_draw()
                    };
                    let top = s.step_top_sampling(got[i], 20, draw).unwrap();
                    let id = match sampler.sample_candidates(&top) {
                        Some(id) => id,
                        None => sampler.sample(&s.last_logits().unwrap()),
                    };
                    // The other generator advances as the sampler's does.
                    other.sample_candidates(&top);
                    got.push(id);
                }
                assert_eq!(got, tokens, "{dir:?} {name} forced {forced}");
                let st = s.stats();
                if name == "warm" {
                    if forced {
                        assert!(st.steps_run_again > 0, "{dir:?} forced: {st:?}");
                    } else {
                        assert!(
                            st.steps_run_ahead as usize == steps - 1 && st.steps_run_again == 0,
                            "{dir:?}: {st:?}"
                        );
                    }
                }
            }
        }
        // Greedy steps, then sampled ones: the greedy step run ahead is dropped (the
        // readout changed), and the sampled steps after the first run ahead at once.
        let mut s = full.session(p + steps + 4).unwrap();
        let mut sampler = Sampler::new(params.clone());
        s.prefill(prompt).unwrap();
        let mut next = s.step_top(tokens[0], 1).unwrap()[0].id;
        next = s.step_top(next, 1).unwrap()[0].id;
        let before = s.stats().steps_run_ahead;
        for _ in 0..6 {
            let top = s.step_top_sampling(next, 20, sampler.next_draw()).unwrap();
            next = sampler.sample_candidates(&top).unwrap();
        }
        assert_eq!(s.stats().steps_run_ahead - before, 5, "{dir:?}");
    }
}

/// An expert cache split over many GPU buffers ("pages"): prefill with routing readbacks
/// (one dispatch per page run) and resident decode (one indirect dispatch per page) give
/// exactly the logits of a one-page cache.
#[test]
fn multi_page_cache_matches_single_page() {
    let dir = common::fixture("tiny_bf16");
    let golden = Golden::load(&dir).unwrap();
    let one = Model::open(&dir).unwrap();
    let slot = common::slot_bytes(&one);
    let paged = Model::builder(&dir)
        .expert_cache_page_bytes(2 * slot)
        .build()
        .unwrap();
    let run = |model: &Model| {
        model.preload_experts().unwrap();
        let mut s = model.session(golden.ids.len()).unwrap();
        let p = golden.prompt_len;
        let mut out = vec![s.prefill(&golden.ids[..p]).unwrap()];
        for &id in &golden.ids[p..] {
            out.push(s.step(id).unwrap());
        }
        (out, s.stats())
    };
    let (a, sa) = run(&one);
    let (b, sb) = run(&paged);
    assert_eq!(a, b);
    assert!(sb.resident_steps > 0 && sb.resident_retries == 0, "{sb:?}");
    assert_eq!(sa.resident_steps, sb.resident_steps);
    // Pages of one and a half layers' experts are cut to whole layers (one layer a page).
    let ne = one.config().num_experts as u64;
    let layered = Model::builder(&dir)
        .expert_cache_page_bytes((ne + ne / 2) * slot)
        .build()
        .unwrap();
    let (c, sc) = run(&layered);
    assert_eq!(a, c);
    assert!(sc.resident_steps > 0 && sc.resident_retries == 0, "{sc:?}");
    let tight_paged = Model::builder(&dir)
        .expert_cache_bytes(5 * slot)
        .expert_cache_page_bytes(2 * slot)
        .build()
        .unwrap();
    let report = moestream::golden::check(&tight_paged, &golden, &dir).unwrap();
    assert!(report.passed(), "{report}");
}

/// `step_top` / `prefill_top` give exactly the best logits that `step` / `prefill` give,
/// on the readback path and on the resident path, and `last_logits` the full vector.
#[test]
fn top_candidates_equal_the_best_full_logits() {
    let dir = common::fixture("tiny_bf16");
    let golden = Golden::load(&dir).unwrap();
    let model = Model::open(&dir).unwrap();
    model.preload_experts().unwrap();
    let best = |l: &[f32], n: usize| {
        let mut v: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    };
    let pairs = |c: &[moestream::sampling::Candidate]| {
        c.iter().map(|c| (c.id, c.logit)).collect::<Vec<_>>()
    };
    let p = golden.prompt_len;
    let mut full = model.session(golden.ids.len()).unwrap();
    let mut top = model.session(golden.ids.len()).unwrap();
    let f = full.prefill(&golden.ids[..p]).unwrap();
    let t = top.prefill_top(&golden.ids[..p], 5).unwrap();
    assert_eq!(pairs(&t), best(&f, 5));
    assert_eq!(top.last_logits().unwrap(), f);
    for (i, &id) in golden.ids[p..].iter().enumerate() {
        let f = full.step(id).unwrap();
        let n = [1, 3, 40][i % 3];
        let t = top.step_top(id, n).unwrap();
        assert_eq!(pairs(&t), best(&f, n), "step {i}");
        assert_eq!(top.last_logits().unwrap(), f);
    }
    assert!(
        top.stats().resident_steps > 0,
        "the resident path was exercised"
    );
    top.reset();
    assert!(top.last_logits().is_err());
}

/// A long prompt on quantized experts prefills through the tiled expert mat-mat kernels
/// (8 or more assignments per expert); its logits match those of the same tokens fed one
/// by one through the per-assignment mat-vec kernels, within f32 rounding (f32 activations
/// in both, so that only the expert kernels differ).
#[test]
fn tiled_expert_prefill_matches_token_by_token() {
    for name in ["q4_g64", "mixed_3_6"] {
        let dir = common::mlx_fixture(name);
        let model = Model::builder(&dir).f32_activations(true).build().unwrap();
        let cfg = model.config().clone();
        let n = 40;
        assert!(
            n * cfg.num_experts_per_tok >= 8 * cfg.num_experts,
            "{name}: the prompt must be long enough for the tiled kernels"
        );
        let ids: Vec<u32> = (0..n)
            .map(|i| ((i * 37 + 11) % cfg.vocab_size) as u32)
            .collect();
        let mut whole = model.session(n).unwrap();
        let tiled = whole.prefill(&ids).unwrap();
        let mut one = model.session(n).unwrap();
        let mut stepwise = one.prefill(&ids[..1]).unwrap();
        for &id in &ids[1..] {
            stepwise = one.step(id).unwrap();
        }
        let scale = stepwise.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max = tiled
            .iter()
            .zip(&stepwise)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max <= 1e-4 * scale.max(1.0),
            "{name}: tiled prefill differs from token-by-token decoding by {max} (logits up to {scale})"
        );
    }
}

/// Token ids for tests that need more than a fixture's prompt: a fixed walk over the
/// vocabulary.
fn walk(model: &Model, n: usize, seed: usize) -> Vec<u32> {
    let v = model.config().vocab_size;
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729 + 13) % v) as u32)
        .collect()
}

/// `prefill(a)`, then `c` as a prefill and as single steps, in a fresh session: the
/// logits after each call.
fn fresh_run(model: &Model, max_context: usize, a: &[u32], c: &[u32]) -> Vec<Vec<f32>> {
    let mut s = model.session(max_context).unwrap();
    s.prefill(a).unwrap();
    let mut out = vec![s.prefill(&c[..2]).unwrap()];
    for &id in &c[2..] {
        out.push(s.step(id).unwrap());
    }
    out
}

/// The same calls as [`fresh_run`] after `a`, on a session already at `a`.
fn continue_run(s: &mut Session, c: &[u32]) -> Vec<Vec<f32>> {
    let mut out = vec![s.prefill(&c[..2]).unwrap()];
    for &id in &c[2..] {
        out.push(s.step(id).unwrap());
    }
    out
}

/// `truncate` back to a prefix, then going on, gives bit for bit the logits of a session
/// that never ran the dropped tokens: KV caches (tiny_bf16), latent caches (DeepSeek-V3),
/// and a sliding-window ring (gpt-oss, window 5, a 2048-token session) cut back by fewer
/// than MAX_PASS_TOKENS tokens. Cutting a ring back further, or past the position, is an
/// error that leaves the session as it was.
#[test]
fn truncate_then_continue_equals_a_fresh_run() {
    let deepseek = common::deepseek_v3_fixtures()
        .into_iter()
        .find(|d| d.ends_with("dsv3_hf_f32"))
        .expect("the dsv3_hf_f32 fixture");
    let oss = common::gpt_oss_fixtures()
        .into_iter()
        .find(|d| d.ends_with("oss_f32"))
        .expect("the oss_f32 fixture");
    for (dir, ctx, na, nb) in [
        (common::fixture("tiny_bf16"), 64usize, 9usize, 7usize),
        (deepseek, 64, 9, 7),
        (oss.clone(), 2048, 40, 300),
    ] {
        let case = dir.display().to_string();
        let model = Model::open(&dir).unwrap();
        let a = walk(&model, na, 1);
        let b = walk(&model, nb, 2);
        let c = walk(&model, 5, 3);
        let want = fresh_run(&model, ctx, &a, &c);
        let mut s = model.session(ctx).unwrap();
        s.prefill(&a).unwrap();
        s.prefill(&b).unwrap();
        assert!(
            s.truncate(na + nb + 1).is_err(),
            "{case}: past the position"
        );
        s.truncate(na).unwrap();
        assert_eq!(s.position(), na);
        assert!(s.last_logits().is_err(), "{case}: no logits after a cut");
        assert!(
            continue_run(&mut s, &c) == want,
            "{case}: logits after truncate"
        );
        // truncate(0) is reset.
        s.truncate(0).unwrap();
        assert!(fresh_run(&model, ctx, &a, &c) == continue_run_from_zero(&mut s, &a, &c));
    }
    // The ring of a window-5 layer in a 2048-token session holds 516 positions: cutting
    // 600 tokens back would need keys it has overwritten.
    let model = Model::open(&oss).unwrap();
    let mut s = model.session(2048).unwrap();
    let a = walk(&model, 20, 4);
    s.prefill(&a).unwrap();
    s.prefill(&walk(&model, 600, 5)).unwrap();
    let e = s.truncate(20).unwrap_err();
    assert!(
        matches!(e, moestream::Error::InvalidArgument(_)) && e.to_string().contains("sliding"),
        "{e}"
    );
    assert_eq!(
        s.position(),
        620,
        "a refused truncate leaves the session as it was"
    );
}

fn continue_run_from_zero(s: &mut Session, a: &[u32], c: &[u32]) -> Vec<Vec<f32>> {
    s.prefill(a).unwrap();
    continue_run(s, c)
}

/// A model with linear-attention layers cannot rewind its recurrent state: truncating
/// inside the context is refused (the session goes on unchanged), truncating to 0 works.
#[test]
fn truncate_refuses_to_rewind_a_recurrent_state() {
    let dir = common::qwen35_fixtures().remove(0);
    let model = Model::open(&dir).unwrap();
    let a = walk(&model, 9, 1);
    let c = walk(&model, 5, 3);
    let mut s = model.session(64).unwrap();
    s.prefill(&a).unwrap();
    let e = s.truncate(4).unwrap_err();
    assert!(
        matches!(e, moestream::Error::InvalidArgument(_)) && e.to_string().contains("recurrent"),
        "{e}"
    );
    assert_eq!(s.position(), 9);
    assert!(continue_run(&mut s, &c) == fresh_run(&model, 64, &a, &c));
    s.truncate(0).unwrap();
    assert!(continue_run_from_zero(&mut s, &a, &c) == fresh_run(&model, 64, &a, &c));
}

/// A fork holds its parent's context: both go on independently, each giving bit for bit
/// the logits of a fresh session fed the same tokens (KV caches, latent caches, recurrent
/// states), and a fork's last logits are its parent's.
#[test]
fn forked_sessions_go_on_independently() {
    let deepseek = common::deepseek_v3_fixtures()
        .into_iter()
        .find(|d| d.ends_with("dsv3_hf_f32"))
        .expect("the dsv3_hf_f32 fixture");
    for dir in [
        common::fixture("tiny_bf16"),
        common::qwen35_fixtures().remove(0),
        deepseek,
    ] {
        let case = dir.display().to_string();
        let model = Model::open(&dir).unwrap();
        let a = walk(&model, 9, 1);
        let b = walk(&model, 5, 2);
        let c = walk(&model, 5, 3);
        let mut parent = model.session(64).unwrap();
        parent.prefill(&a).unwrap();
        let mut child = parent.fork().unwrap();
        assert_eq!(child.position(), 9);
        assert!(
            child.last_logits().unwrap() == parent.last_logits().unwrap(),
            "{case}: last logits"
        );
        // Interleaved, so each would see the other's writes if they shared any state.
        let mut got_b = vec![parent.prefill(&b[..2]).unwrap()];
        let mut got_c = vec![child.prefill(&c[..2]).unwrap()];
        for i in 2..5 {
            got_b.push(parent.step(b[i]).unwrap());
            got_c.push(child.step(c[i]).unwrap());
        }
        assert!(got_b == fresh_run(&model, 64, &a, &b), "{case}: parent");
        assert!(got_c == fresh_run(&model, 64, &a, &c), "{case}: fork");
    }
}

/// `on_progress` reports the load in order: opened, each layer's resident weights, the
/// expert cache.
#[test]
fn load_progress_is_reported_in_order() {
    use moestream::model::LoadProgress;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let model = Model::builder(common::fixture("tiny_bf16"))
        .on_progress(move |p| sink.lock().unwrap().push(p))
        .build()
        .unwrap();
    let n = model.config().num_hidden_layers;
    let mut want = vec![LoadProgress::Opened];
    want.extend((0..=n).map(|done| LoadProgress::Layers { done, total: n }));
    want.push(LoadProgress::ExpertCache);
    assert_eq!(*seen.lock().unwrap(), want);
}

/// Whether two logits vectors are the same bit for bit; else the largest difference.
fn same_bits(a: &[f32], b: &[f32]) -> Result<(), f32> {
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()) {
        return Ok(());
    }
    Err(a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max))
}

/// Fixtures of every kind of layer: KV attention (float and MLX 2- to 6-bit experts, whose
/// decode mat-vecs read 8+8-bit activations), latent attention (DeepSeek-V3), sliding
/// windows with sinks (gpt-oss, float and MXFP4; window 5, and in a 2048-token session a
/// ring cache), and the hybrid linear-attention families (float and MLX 4-bit).
fn split_invariant_fixtures() -> Vec<std::path::PathBuf> {
    let mut dirs = vec![
        common::fixture("tiny_bf16"),
        common::mlx_fixture("q4_g64"),
        common::mlx_fixture("mixed_3_6"),
    ];
    dirs.extend(
        common::qwen35_fixtures()
            .into_iter()
            .filter(|d| d.ends_with("q35_flat_f32") || d.ends_with("q35_mlx_4bit")),
    );
    dirs.extend(
        common::deepseek_v3_fixtures()
            .into_iter()
            .filter(|d| d.ends_with("dsv3_hf_f32")),
    );
    dirs.extend(
        common::gpt_oss_fixtures()
            .into_iter()
            .filter(|d| d.ends_with("oss_f32") || d.ends_with("oss_mxfp4")),
    );
    dirs
}

/// The prompt cache's premise: `prefill(a ++ b)` and `prefill(a); prefill(b)` (and more
/// pieces) give bit for bit the same logits, for any split: a last piece of one token
/// (which must not take the decode step's kernels), pieces of any length, splits on both
/// sides of and across `MAX_PASS_TOKENS`-token passes. A decode step after either gives
/// the same logits too (the states are the same).
#[test]
fn prefill_in_pieces_gives_the_logits_of_one_prefill() {
    let big = moestream::session::MAX_PASS_TOKENS + 88;
    for dir in split_invariant_fixtures() {
        let case = dir.display().to_string();
        let model = Model::open(&dir).unwrap();
        let ids = walk(&model, big + 1, 7);
        // gpt-oss's window-5 layers keep a ring of their keys in a long session.
        let ctx = if case.contains("oss") { 2048 } else { big + 1 };
        for (len, cuts) in [
            (20, vec![vec![19], vec![1], vec![7], vec![5, 6, 19]]),
            (
                big,
                vec![
                    vec![big - 1],
                    vec![moestream::session::MAX_PASS_TOKENS],
                    vec![100, 530],
                ],
            ),
        ] {
            let mut whole = model.session(ctx).unwrap();
            let want = whole.prefill(&ids[..len]).unwrap();
            let want_step = whole.step(ids[len]).unwrap();
            for cuts in cuts {
                let mut s = model.session(ctx).unwrap();
                let mut from = 0;
                let mut got = Vec::new();
                for to in cuts.iter().copied().chain([len]) {
                    got = s.prefill(&ids[from..to]).unwrap();
                    from = to;
                }
                if let Err(d) = same_bits(&got, &want) {
                    panic!("{case}: {len} tokens cut at {cuts:?}: logits differ by up to {d}");
                }
                let step = s.step(ids[len]).unwrap();
                if let Err(d) = same_bits(&step, &want_step) {
                    panic!("{case}: {len} tokens cut at {cuts:?}: the next step differs by {d}");
                }
            }
        }
    }
}
