//! Unit tests of the sampler: the draw, top-p, penalties, logit bias, the top-N path's
//! exactness, validation.

use super::*;
use crate::error::Error;

#[test]
fn rng_is_reproducible_and_uniform_enough() {
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    let xs: Vec<f64> = (0..1000).map(|_| a.next_f64()).collect();
    let ys: Vec<f64> = (0..1000).map(|_| b.next_f64()).collect();
    assert_eq!(xs, ys);
    let mean = xs.iter().sum::<f64>() / 1000.0;
    assert!((mean - 0.5).abs() < 0.05, "{mean}");
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
}

#[test]
fn bucketed_top_p_keeps_what_a_full_sort_keeps() {
    let mut rng = Rng::new(3);
    for (n, spread, top_p) in [
        (20_000, 3.0, 0.9f32),
        (50_000, 20.0, 0.5),
        (10_000, 0.01, 0.95),
        (30_000, 8.0, 0.999),
    ] {
        let mut cands: Vec<Candidate> = (0..n)
            .map(|i| Candidate {
                id: i,
                logit: (rng.next_f64() * spread) as f32,
            })
            .collect();
        cands[7].logit = f32::NEG_INFINITY;
        let mut sorted = cands.clone();
        sorted.sort_by(desc);
        let max = f64::from(sorted[0].logit);
        let total: f64 = sorted
            .iter()
            .map(|c| (f64::from(c.logit) - max).exp())
            .sum();
        let target = f64::from(top_p) * total;
        let mut before = 0.0;
        let mut want = sorted.len();
        for (j, c) in sorted.iter().enumerate() {
            if j > 0 && before >= target {
                want = j;
                break;
            }
            before += (f64::from(c.logit) - max).exp();
        }
        let mut want_ids: Vec<u32> = sorted[..want].iter().map(|c| c.id).collect();
        let k = top_p_count(&mut cands, top_p);
        let mut got: Vec<u32> = cands[..k].iter().map(|c| c.id).collect();
        want_ids.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want_ids, "n {n} spread {spread} top_p {top_p}");
    }
}

fn greedy_with(f: impl FnOnce(SamplingParams) -> SamplingParams) -> Sampler {
    Sampler::new(f(SamplingParams::greedy()))
}

#[test]
fn presence_and_frequency_penalties_follow_the_openai_formula() {
    // logit - (count * frequency + presence) for tokens generated count > 0 times.
    let logits = [2.0, 1.45, 0.0];
    let mut s = greedy_with(|p| p.with_presence_penalty(0.2).with_frequency_penalty(0.1));
    assert_eq!(s.sample(&logits), 0);
    // Prompt tokens do not count.
    s.observe_all(&[0, 0, 0, 0, 0, 0]);
    assert_eq!(s.sample(&logits), 0);
    for expect in [0, 0, 0, 1] {
        // 2.0 - (c * 0.1 + 0.2) for c = 1, 2, 3: 1.7, 1.6, 1.5 > 1.45; c = 4: 1.4.
        s.observe_output(0);
        assert_eq!(s.sample(&logits), expect);
    }
    assert_eq!(s.adjust(0, 2.0), 2.0 - (4.0 * 0.1 + 0.2));
    assert_eq!(s.adjust(1, 1.45), 1.45);
    // Presence alone: once, whatever the count.
    let mut s = greedy_with(|p| p.with_presence_penalty(0.6));
    s.observe_output(0);
    assert_eq!(s.sample(&logits), 1); // 1.4 < 1.45
    for _ in 0..4 {
        s.observe_output(0);
    }
    assert_eq!(s.adjust(0, 2.0), 2.0 - 0.6);
    assert_eq!(s.sample(&logits), 1);
    // Frequency alone grows with the count.
    let mut s = greedy_with(|p| p.with_frequency_penalty(0.3));
    s.observe_output(0);
    assert_eq!(s.sample(&logits), 0); // 1.7
    s.observe_output(0);
    assert_eq!(s.sample(&logits), 1); // 1.4
                                      // Negative penalties favour repetition.
    let mut s = greedy_with(|p| p.with_frequency_penalty(-0.6));
    s.observe_output(1);
    assert_eq!(s.sample(&logits), 1); // 2.05
                                      // Forgotten with the history.
    s.clear_history();
    assert_eq!(s.sample(&logits), 0);
    // Sampling sees the same adjusted logits: presence 2 on token 0 of two equal
    // logits leaves it e^-2 / (1 + e^-2) of the draws.
    let mut s = Sampler::new(
        SamplingParams::with_temperature(1.0)
            .with_presence_penalty(2.0)
            .with_seed(5),
    );
    s.observe_output(0);
    let n = 20_000;
    let zeros = (0..n).filter(|_| s.sample(&[0.0, 0.0]) == 0).count();
    let want = (-2.0f64).exp() / (1.0 + (-2.0f64).exp());
    assert!((zeros as f64 / n as f64 - want).abs() < 0.01, "{zeros}");
}

#[test]
fn logit_bias_forces_bans_and_comes_before_the_repetition_penalty() {
    let logits = [3.0, 1.0, -2.0, 0.5];
    assert_eq!(
        greedy_with(|p| p.with_logit_bias(2, 100.0)).sample(&logits),
        2
    );
    assert_eq!(
        greedy_with(|p| p.with_logit_bias(0, -100.0)).sample(&logits),
        1
    );
    // Ids past the logits are ignored by a bare sampler.
    assert_eq!(
        greedy_with(|p| p.with_logit_bias(9, 100.0)).sample(&logits),
        0
    );
    // Sampling: a banned token is never drawn, a forced one always.
    let mut s = Sampler::new(
        SamplingParams::with_temperature(1.0)
            .with_logit_bias(0, -100.0)
            .with_seed(3),
    );
    assert!((0..2000).all(|_| s.sample(&[5.0, 0.0, 0.0]) != 0));
    let mut s = Sampler::new(
        SamplingParams::with_temperature(1.0)
            .with_logit_bias(2, 100.0)
            .with_seed(3),
    );
    assert!((0..2000).all(|_| s.sample(&[5.0, 0.0, 0.0]) == 2));
    // Bias first: (1.0 + 1.0) / 2 = 1.0 < 1.2 (penalty first would give 1.5).
    let mut s = greedy_with(|p| p.with_logit_bias(0, 1.0).with_repetition_penalty(2.0));
    s.observe(0);
    assert_eq!(s.sample(&[1.0, 1.2]), 1);
}

#[test]
fn raising_adjustments_need_the_full_logits() {
    let cands = [
        Candidate { id: 0, logit: 5.0 },
        Candidate { id: 1, logit: 4.0 },
    ];
    for p in [
        SamplingParams::greedy().with_logit_bias(7, 0.5),
        SamplingParams::greedy().with_presence_penalty(-0.1),
        SamplingParams::greedy().with_frequency_penalty(-0.1),
        SamplingParams::greedy().with_repetition_penalty(0.9),
        SamplingParams::with_temperature(1.0)
            .with_top_k(5)
            .with_logit_bias(1, 2.0),
    ] {
        assert_eq!(p.logits_needed(), LogitsNeeded::Full, "{p:?}");
        assert_eq!(Sampler::new(p).sample_candidates(&cands), None);
    }
    // Lowering ones: top-N plus a margin (and the number of biased tokens).
    let p = SamplingParams::greedy()
        .with_logit_bias(7, -3.0)
        .with_logit_bias(8, 0.0)
        .with_presence_penalty(0.5);
    assert_eq!(p.logits_needed(), LogitsNeeded::Top(34));
    let p = SamplingParams::with_temperature(1.0)
        .with_top_k(10)
        .with_frequency_penalty(1.0);
    assert_eq!(p.logits_needed(), LogitsNeeded::Top(42));
}

/// The `n` best of `logits` as a GPU top-N readback gives them: best first, ties to the
/// lower id.
fn top_n(logits: &[f32], n: usize) -> Vec<Candidate> {
    let mut c: Vec<Candidate> = logits
        .iter()
        .enumerate()
        .map(|(i, &logit)| Candidate {
            id: i as u32,
            logit,
        })
        .collect();
    c.sort_by(desc);
    c.truncate(n);
    c
}

#[test]
fn adjusted_candidates_give_the_full_result_or_none() {
    let mut rng = Rng::new(11);
    let vocab = 300;
    let (mut decided, mut undecided) = (0, 0);
    for trial in 0..128u64 {
        let mut pick = |n: u64| rng.next_u64() % n;
        let base = match pick(4) {
            0 => SamplingParams::greedy(),
            1 => SamplingParams::with_temperature(0.8).with_top_k(1 + pick(30) as usize),
            2 => SamplingParams::with_temperature(1.3)
                .with_top_k(1 + pick(30) as usize)
                .with_top_p(0.9)
                .with_min_p(0.05),
            _ => SamplingParams::with_temperature(0.7).with_min_p(0.3),
        };
        let mut p = base
            .with_repetition_penalty([1.0, 1.3][pick(2) as usize])
            .with_presence_penalty([0.0, 0.4, 2.0][pick(3) as usize])
            .with_frequency_penalty([0.0, 0.7][pick(2) as usize])
            .with_seed(trial);
        for _ in 0..pick(6) {
            p.logit_bias
                .insert(pick(vocab as u64) as u32, -(pick(101) as f32));
        }
        let n = match p.logits_needed() {
            LogitsNeeded::Argmax => 1,
            LogitsNeeded::Top(n) => n,
            LogitsNeeded::Full => 40, // min-p alone: a list may still decide it
        };
        // Logits near a fixed profile; the prompt is random or the profile's best
        // tokens (then the whole list may be penalized while tokens past it are not).
        let mut rng2 = Rng::new(trial);
        let profile: Vec<f32> = (0..vocab).map(|_| (rng2.next_f64() * 8.0) as f32).collect();
        let prompt: Vec<u32> = if pick(2) == 0 {
            (0..pick(400)).map(|_| pick(vocab as u64) as u32).collect()
        } else {
            top_n(&profile, pick(90) as usize)
                .iter()
                .map(|c| c.id)
                .collect()
        };
        let mut full = Sampler::new(p.clone());
        let mut part = Sampler::new(p.clone());
        full.observe_all(&prompt);
        part.observe_all(&prompt);
        for _ in 0..30 {
            let logits: Vec<f32> = profile
                .iter()
                .map(|&x| x + (rng2.next_f64() * 0.5) as f32)
                .collect();
            let want = full.sample(&logits);
            let got = match part.sample_candidates(&top_n(&logits, n)) {
                Some(id) => {
                    decided += 1;
                    id
                }
                None => {
                    undecided += 1;
                    part.sample(&logits)
                }
            };
            assert_eq!(got, want, "trial {trial}: {p:?}");
            full.observe_output(want);
            part.observe_output(want);
        }
    }
    // Both paths ran.
    assert!(decided > 300 && undecided > 300, "{decided} {undecided}");
}

#[test]
fn validation_names_the_field() {
    let err = |p: SamplingParams| match p.validate_for_vocab(512) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("{other:?}"),
    };
    let g = SamplingParams::greedy;
    for (p, field) in [
        (g().with_presence_penalty(f32::NAN), "presence_penalty"),
        (g().with_presence_penalty(2.5), "presence_penalty"),
        (g().with_frequency_penalty(-2.01), "frequency_penalty"),
        (
            g().with_frequency_penalty(f32::INFINITY),
            "frequency_penalty",
        ),
        (g().with_logit_bias(3, 100.5), "logit_bias"),
        (g().with_logit_bias(3, f32::NAN), "logit_bias"),
        (g().with_logit_bias(512, 1.0), "logit_bias"),
    ] {
        let m = err(p);
        assert!(m.contains(field), "{m}");
    }
    assert!(err(g().with_logit_bias(600, 1.0)).contains("600"));
    let edge = g()
        .with_presence_penalty(-2.0)
        .with_frequency_penalty(2.0)
        .with_logit_bias(511, -100.0)
        .with_logit_bias(0, 100.0);
    assert!(edge.validate_for_vocab(512).is_ok());
}

#[test]
fn top_p_count_follows_transformers() {
    // probabilities 0.5, 0.3, 0.2 (logits = ln p)
    let mk = || {
        vec![
            Candidate {
                id: 2,
                logit: 0.2f32.ln(),
            },
            Candidate {
                id: 0,
                logit: 0.5f32.ln(),
            },
            Candidate {
                id: 1,
                logit: 0.3f32.ln(),
            },
        ]
    };
    assert_eq!(top_p_count(&mut mk(), 0.5), 1);
    assert_eq!(top_p_count(&mut mk(), 0.51), 2);
    assert_eq!(top_p_count(&mut mk(), 0.79), 2);
    assert_eq!(top_p_count(&mut mk(), 0.81), 3);
    assert_eq!(top_p_count(&mut mk(), 0.0), 1);
}
