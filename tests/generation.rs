//! Generation end to end on a tiny synthetic model with the chatml_bpe fixture tokenizer:
//! events, determinism with a seed, finish reasons, stop strings across token boundaries,
//! cancellation, multi-turn prefix reuse, log-probabilities, logit bias and penalties.

use std::path::PathBuf;
use std::sync::OnceLock;

use moestream::synthetic::SyntheticSpec;
use moestream::{
    format::DType,
    sampling::{Candidate, LogitsNeeded, Sampler},
    CancelHandle, Chat, ChatMessage, Completion, FinishReason, GenerateOptions, GenerationConfig,
    GenerationEvent, Model, Prompt, SamplingParams, Session, Tokenizer,
};

/// A synthetic model (vocab 512 >= the tokenizer's 422) in a temp folder with the
/// chatml_bpe tokenizer and a generation_config.json beside it; written once per run.
fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("moestream-test-generation");
        let mut spec = SyntheticSpec::default();
        spec.vocab_size = 512;
        spec.hidden_size = 64;
        spec.num_layers = 2;
        spec.num_heads = 4;
        spec.num_kv_heads = 2;
        spec.head_dim = 16;
        spec.num_experts = 8;
        spec.top_k = 2;
        spec.moe_intermediate_size = 32;
        spec.dtype = DType::F32;
        let dir = spec.write(&dir).unwrap();
        let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures_text/chatml_bpe"));
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"do_sample": true, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "eos_token_id": [2]}"#,
        )
        .unwrap();
        dir
    })
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::open(model_dir()).unwrap())
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(model_dir()).unwrap()
}

fn sampled(seed: u64, max_tokens: usize) -> GenerateOptions {
    let mut o = GenerateOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            seed: Some(seed),
            ..SamplingParams::greedy()
        },
        max_tokens,
        ..GenerateOptions::default()
    };
    o.ignore_eos = true;
    o
}

/// Runs a generation to the end: (token events as (id, text), completion).
fn run(
    session: &mut Session,
    tok: &Tokenizer,
    prompt: impl Into<Prompt>,
    opts: &GenerateOptions,
) -> (Vec<(u32, String)>, Completion) {
    let mut tokens = Vec::new();
    let mut done = None;
    for ev in session.generate(tok, prompt, opts).unwrap() {
        match ev.unwrap() {
            GenerationEvent::Token { id, text, .. } => {
                assert!(done.is_none(), "a token after Done");
                tokens.push((id, text));
            }
            GenerationEvent::Done(c) => {
                assert!(done.is_none(), "two Done events");
                done = Some(*c);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    (tokens, done.expect("a Done event"))
}

#[test]
fn events_and_seeded_determinism() {
    let tok = tokenizer();
    let prompt = vec![ChatMessage::user("Hello world, héllo wörld 你好 👋")];
    let opts = sampled(1234, 12);
    let mut s = model().session(256).unwrap();
    let (ev_a, a) = run(&mut s, &tok, prompt.clone(), &opts);
    let mut s = model().session(256).unwrap();
    let (ev_b, b) = run(&mut s, &tok, prompt.clone(), &opts);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(ev_a, ev_b);
    assert_eq!(a.reason, FinishReason::MaxTokens);
    assert_eq!(a.tokens.len(), 12);
    assert_eq!(ev_a.len(), 12);
    // The streamed text is the whole text.
    let streamed: String = ev_a.iter().map(|(_, t)| t.as_str()).collect::<String>() + &a.text;
    assert_eq!(streamed, a.output);
    assert_eq!(a.output, tok.decode(&a.tokens, false).unwrap());
    // Stats.
    let prompt_ids = tok.encode_chat(&prompt, &opts.chat).unwrap();
    assert_eq!(a.stats.prompt_tokens, prompt_ids.len());
    assert_eq!(a.stats.generated_tokens, 12);
    assert_eq!(a.stats.decode_steps, 11);
    assert!(a.stats.time_to_first_token.is_some());
    assert!(a.stats.decode_tokens_per_second() > 0.0);
    assert_eq!(s.position(), prompt_ids.len() + 11);
    assert_eq!(a.stats.session.tokens as usize, prompt_ids.len() + 11);
    // Another seed, other tokens.
    let mut s = model().session(256).unwrap();
    let (_, c) = run(&mut s, &tok, prompt, &sampled(99, 12));
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn generation_config_defaults_and_eos() {
    let tok = tokenizer();
    let cfg = GenerationConfig::from_dir(model_dir()).unwrap();
    let mut opts = GenerateOptions::from_generation_config(&cfg);
    assert_eq!(opts.eos_token_ids, [2]);
    assert_eq!(opts.sampling.top_k, 20);
    opts.sampling = SamplingParams::greedy();
    opts.max_tokens = 6;
    // Greedy: find the first token, then make it an end-of-sequence id.
    let mut s = model().session(128).unwrap();
    let (_, first) = run(&mut s, &tok, "Hello", &opts);
    let eos = first.tokens[0];
    opts.eos_token_ids = vec![eos];
    let mut s = model().session(128).unwrap();
    let (events, done) = run(&mut s, &tok, "Hello", &opts);
    assert_eq!(done.reason, FinishReason::EndOfSequence(eos));
    assert!(events.is_empty());
    assert_eq!(done.output, "");
    assert_eq!(done.tokens, [eos]);
    // The end-of-sequence token is not fed to the model.
    assert_eq!(s.position(), tok.encode("Hello", true).unwrap().len());
}

#[test]
fn context_full_and_prompt_too_long() {
    let tok = tokenizer();
    let ids: Vec<u32> = (10..20).collect();
    let mut s = model().session(13).unwrap();
    let (_, done) = run(&mut s, &tok, ids.clone(), &sampled(1, 100));
    // 10 prompt tokens, 3 fed back, the 4th sampled token finds the context full.
    assert_eq!(done.reason, FinishReason::ContextFull);
    assert_eq!(done.tokens.len(), 4);
    assert_eq!(s.position(), 13);
    // max_tokens 0: a prefill only.
    let mut s = model().session(64).unwrap();
    let (events, done) = run(&mut s, &tok, ids.clone(), &sampled(1, 0));
    assert!(events.is_empty());
    assert_eq!(
        (done.reason, done.tokens.len()),
        (FinishReason::MaxTokens, 0)
    );
    assert_eq!(s.position(), 10);
    let mut s = model().session(8).unwrap();
    assert!(matches!(
        s.generate(&tok, ids, &sampled(1, 4)),
        Err(moestream::Error::ContextOverflow {
            needed: 10,
            capacity: 8
        })
    ));
}

#[test]
fn stop_strings_across_token_boundaries() {
    let tok = tokenizer();
    let prompt = "The quick brown fox";
    let opts = sampled(7, 40);
    let mut s = model().session(256).unwrap();
    let (events, free) = run(&mut s, &tok, prompt, &opts);
    // A stop string made of the end of one token's text and the start of the next's.
    let pos = events
        .windows(2)
        .position(|w| !w[0].1.is_empty() && !w[1].1.is_empty())
        .expect("two consecutive tokens with text");
    let (a, b) = (&events[pos].1, &events[pos + 1].1);
    let stop = format!("{}{}", a.chars().last().unwrap(), b.chars().next().unwrap());
    let cut = free.output.find(&stop).unwrap();
    let mut opts2 = opts.clone();
    opts2.stop = vec!["never-appears".into(), stop.clone()];
    let mut s = model().session(256).unwrap();
    let (events2, stopped) = run(&mut s, &tok, prompt, &opts2);
    assert_eq!(stopped.reason, FinishReason::StopString(stop.clone()));
    assert_eq!(stopped.output, free.output[..cut]);
    let streamed: String =
        events2.iter().map(|(_, t)| t.as_str()).collect::<String>() + &stopped.text;
    assert_eq!(streamed, stopped.output);
    assert!(!streamed.contains(&stop));
    // The same tokens were sampled up to the stop.
    assert_eq!(stopped.tokens[..], free.tokens[..stopped.tokens.len()]);
}

#[test]
fn cancel_with_a_handle() {
    let tok = tokenizer();
    let handle = CancelHandle::new();
    let mut opts = sampled(3, 50);
    opts.cancel = Some(handle.clone());
    let mut s = model().session(256).unwrap();
    let mut gen = s.generate(&tok, "Hello", &opts).unwrap();
    let mut n = 0;
    let done = loop {
        match gen.next().unwrap().unwrap() {
            GenerationEvent::Token { .. } => {
                n += 1;
                if n == 3 {
                    handle.cancel();
                }
            }
            GenerationEvent::Done(c) => break *c,
            other => panic!("{other:?}"),
        }
    };
    assert!(gen.next().is_none());
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert_eq!(done.tokens.len(), 3);
    drop(gen);
    let prompt_len = tok.encode("Hello", true).unwrap().len();
    assert_eq!(s.position(), prompt_len + 2);
    // Cancelled before it starts: nothing runs.
    let mut s = model().session(256).unwrap();
    let (events, done) = run(&mut s, &tok, "Hello", &opts);
    assert!(events.is_empty());
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert_eq!(s.position(), 0);
    // The handle from the generation itself.
    handle.reset();
    let mut s = model().session(256).unwrap();
    let mut gen = s.generate(&tok, "Hello", &opts).unwrap();
    gen.cancel_handle().cancel();
    match gen.next() {
        Some(Ok(GenerationEvent::Done(c))) => assert_eq!(c.reason, FinishReason::Cancelled),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dropping_the_iterator_stops_and_the_session_goes_on() {
    let tok = tokenizer();
    let opts = sampled(5, 50);
    let mut s = model().session(256).unwrap();
    let prompt_len = tok.encode("Hello", true).unwrap().len();
    {
        let mut gen = s.generate(&tok, "Hello", &opts).unwrap();
        for _ in 0..4 {
            gen.next().unwrap().unwrap();
        }
    }
    // 4 tokens sampled, 3 fed back.
    assert_eq!(s.position(), prompt_len + 3);
    // Continue in the same context (no BOS or special tokens re-added).
    let (events, done) = run(&mut s, &tok, " more", &sampled(5, 2));
    assert_eq!(events.len(), 2);
    assert_eq!(
        done.stats.prompt_tokens,
        tok.encode(" more", false).unwrap().len()
    );
}

#[test]
fn multi_turn_chat_prefills_only_new_tokens() {
    let tok = tokenizer();
    let mut opts = sampled(11, 5);
    opts.ignore_eos = true;
    let mut chat = Chat::new(model().session(512).unwrap(), tok.clone(), opts);
    chat.push(ChatMessage::system("You are terse."));
    let first = chat.send("What is 2 + 2?").unwrap().complete().unwrap();
    assert_eq!(first.stats.cached_prompt_tokens, 0);
    assert_eq!(chat.messages().len(), 3);
    assert_eq!(chat.messages()[2].content, first.output);
    let turn1_prompt = first.stats.prompt_tokens;
    // Tokens in the cache: the first prompt and the generated tokens fed back.
    assert_eq!(chat.cached_tokens(), turn1_prompt + 4);
    assert_eq!(chat.session().position(), chat.cached_tokens());
    let mut cached: Vec<u32> = tok
        .encode_chat(&chat.messages()[..2], &Default::default())
        .unwrap();
    cached.extend(&first.tokens[..4]);

    let before = chat.session().stats().tokens;
    let second = chat.send("And 3 + 3?").unwrap().complete().unwrap();
    let render = tok
        .encode_chat(&chat.messages()[..4], &Default::default())
        .unwrap();
    let common = cached
        .iter()
        .zip(&render)
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(second.stats.prompt_tokens, render.len());
    assert_eq!(second.stats.cached_prompt_tokens, common);
    assert!(common >= turn1_prompt - 1, "{common} < {turn1_prompt}");
    // Only the new part of the prompt ran, plus the decode steps.
    let ran = chat.session().stats().tokens - before;
    assert_eq!(
        ran as usize,
        render.len() - common + second.stats.decode_steps
    );
    assert_eq!(chat.messages().len(), 5);

    // Rewriting history cuts the cache back to the first changed token.
    let cached2 = chat.cached_tokens();
    chat.messages_mut()[2].content = "Four.".into();
    let third = chat.send("Thanks").unwrap().complete().unwrap();
    let keep_to = tok
        .encode_chat(&chat.messages()[..2], &Default::default())
        .unwrap()
        .len();
    assert!(third.stats.cached_prompt_tokens >= keep_to - 1);
    assert!(third.stats.cached_prompt_tokens < cached2);
    assert_eq!(chat.session().position(), chat.cached_tokens());

    // A rejected render does not keep the message; reset empties everything.
    chat.reset();
    assert_eq!(chat.cached_tokens(), 0);
    assert_eq!(chat.session().position(), 0);
    assert!(chat.messages().is_empty());
}

#[test]
fn chat_reuse_gives_the_same_tokens_as_a_fresh_prefill() {
    // Greedy: turn 2 over a reused cache picks what a fresh session picks for the whole
    // render (compares the first token only: later ones may differ within float noise).
    let tok = tokenizer();
    let mut opts = GenerateOptions {
        max_tokens: 3,
        ..GenerateOptions::default()
    };
    opts.ignore_eos = true;
    let mut chat = Chat::new(model().session(512).unwrap(), tok.clone(), opts.clone());
    chat.send("Hi").unwrap().complete().unwrap();
    let second = chat.send("Again").unwrap().complete().unwrap();
    let mut fresh = model().session(512).unwrap();
    let (_, full) = run(&mut fresh, &tok, chat.messages()[..3].to_vec(), &opts);
    assert_eq!(second.tokens[0], full.tokens[0]);
}

#[test]
fn types_cross_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<moestream::CancelHandle>();
    send::<Chat>();
    send::<moestream::Generation<'static>>();
}

#[test]
fn chat_errors_keep_the_conversation() {
    let tok = tokenizer();
    let mut chat = Chat::new(model().session(16).unwrap(), tok, sampled(1, 2));
    // The rendered prompt does not fit in 16 tokens.
    let long = "word ".repeat(40);
    assert!(matches!(
        chat.send(long),
        Err(moestream::Error::ContextOverflow { .. })
    ));
    assert!(chat.messages().is_empty());
    let reply = chat.send("Hi").unwrap().complete().unwrap();
    assert_eq!(reply.tokens.len(), 2);
    assert_eq!(chat.messages().len(), 2);
}

/// A synthetic Qwen3.5-MoE model (Gated DeltaNet layers with a gated full-attention layer
/// every 2 layers, shared experts) with the chatml_bpe tokenizer; written once per run.
fn hybrid_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join("moestream-test-generation-qwen35");
        let mut spec = SyntheticSpec::default();
        spec.vocab_size = 512;
        spec.hidden_size = 64;
        spec.num_layers = 4;
        spec.num_heads = 4;
        spec.num_kv_heads = 2;
        spec.head_dim = 16;
        spec.num_experts = 8;
        spec.top_k = 2;
        spec.moe_intermediate_size = 32;
        spec.dtype = DType::F32;
        let mut la = moestream::synthetic::SyntheticLinear::qwen3_5(4, 32);
        la.key_heads = 2;
        la.key_dim = 16;
        la.value_dim = 16;
        la.full_attention_interval = 2;
        spec.linear_attention = Some(la);
        let dir = spec.write(&dir).unwrap();
        let src = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures_text/chatml_bpe"
        ));
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        Model::open(&dir).unwrap()
    })
}

#[test]
fn hybrid_chat_gives_the_tokens_of_a_fresh_prefill_when_it_grows_and_when_it_diverges() {
    // A recurrent state cannot be truncated like a KV cache: a conversation that only grows
    // prefills only each turn's new tokens; one whose history changed runs from the start,
    // and either way greedy decoding gives what a fresh session gives for the whole render.
    let tok = tokenizer();
    let model = hybrid_model();
    let mut opts = GenerateOptions {
        max_tokens: 4,
        ..GenerateOptions::default()
    };
    opts.ignore_eos = true;
    let fresh = |messages: &[ChatMessage]| {
        let mut s = model.session(512).unwrap();
        run(&mut s, &tok, messages.to_vec(), &opts).1
    };
    let mut chat = Chat::new(model.session(512).unwrap(), tok.clone(), opts.clone());
    let first = chat.send("Hi").unwrap().complete().unwrap();
    assert_eq!(first.tokens, fresh(&chat.messages()[..1]).tokens);
    // Grows: only the new tokens run.
    let second = chat.send("Again").unwrap().complete().unwrap();
    assert!(second.stats.cached_prompt_tokens > 0);
    assert_eq!(second.tokens, fresh(&chat.messages()[..3]).tokens);
    assert_eq!(chat.session().position(), chat.cached_tokens());
    // Diverges: history rewritten, the context is rebuilt from the start.
    chat.messages_mut()[1].content = "Something else entirely.".into();
    let third = chat.send("And now?").unwrap().complete().unwrap();
    assert_eq!(third.stats.cached_prompt_tokens, 0);
    assert_eq!(third.tokens, fresh(&chat.messages()[..5]).tokens);
    assert_eq!(chat.session().position(), chat.cached_tokens());
    // The session reports the recurrent states it holds.
    assert!(chat.session().state_bytes() > chat.session().kv_cache_bytes());
}

// ---------------------------------------------------------------------------------------
// Log-probabilities, logit bias, presence and frequency penalties

/// One token event's fields: (id, logprob, top_logprobs as (id, logprob)).
type Scored = (u32, Option<f32>, Vec<(u32, f32)>);

/// Runs a generation to the end, keeping each token event's log-probabilities.
fn run_scored(
    session: &mut Session,
    prompt: impl Into<Prompt>,
    opts: &GenerateOptions,
) -> (Vec<Scored>, Completion) {
    let mut events = Vec::new();
    for ev in session.generate(&tokenizer(), prompt, opts).unwrap() {
        match ev.unwrap() {
            GenerationEvent::Token {
                id,
                logprob,
                top_logprobs,
                ..
            } => events.push((
                id,
                logprob,
                top_logprobs.iter().map(|t| (t.id, t.logprob)).collect(),
            )),
            GenerationEvent::Done(c) => return (events, *c),
            other => panic!("unexpected event {other:?}"),
        }
    }
    panic!("no Done event")
}

/// log_softmax of raw logits, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// Samples `n` tokens after `prompt` from the full logits of `Session::prefill`/`step`
/// with a bare `Sampler`, as a generation should (the prompt observed for the repetition
/// penalty, sampled tokens for all penalties). Also returns each step's logits and how
/// many steps a top-N list (as big as `logits_needed` asks) could not decide.
fn sample_from_full_logits(
    params: &SamplingParams,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>, usize) {
    let needed = match params.logits_needed() {
        LogitsNeeded::Argmax => 1,
        LogitsNeeded::Top(n) => n,
        _ => usize::MAX, // `Full`
    };
    let mut s = model().session(1024).unwrap();
    let mut sampler = Sampler::new(params.clone());
    sampler.observe_all(prompt);
    let mut logits = s.prefill(prompt).unwrap();
    let (mut ids, mut all, mut undecided) = (Vec::new(), Vec::new(), 0);
    for i in 0..n {
        if needed < logits.len() {
            let mut top: Vec<Candidate> = logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| Candidate::new(id as u32, logit))
                .collect();
            top.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
            top.truncate(needed);
            // A clone: asking must not use up the sampler's random numbers.
            undecided += usize::from(sampler.clone().sample_candidates(&top).is_none());
        }
        let id = sampler.sample(&logits);
        sampler.observe_output(id);
        ids.push(id);
        all.push(logits.clone());
        if i + 1 < n {
            logits = s.step(id).unwrap();
        }
    }
    (ids, all, undecided)
}

/// A sampled generation with a top-k runs each step's successor ahead on the GPU, its token
/// drawn there with the sampler's next random number (`kernels/token_sample.wgsl`); the
/// session keeps it only when the sampler then draws the same token. The tokens are exactly
/// those of a bare sampler on the full logits, and nearly every step ran ahead (a step
/// whose GPU draw differed is run again, so a broken draw shows in the counts, not in the
/// tokens). Over top-k, top-p, min-p and temperatures.
#[test]
fn sampled_steps_run_ahead_give_the_samplers_tokens() {
    let m = Model::open(model_dir()).unwrap();
    m.preload_experts().unwrap();
    let tok = tokenizer();
    let prompt: Vec<u32> = vec![5, 17, 300, 42, 99];
    let n = 32;
    for (temperature, top_k, top_p, min_p, seed) in [
        (0.7f32, 20usize, 0.9f32, 0.0f32, 5u64),
        (1.0, 50, 1.0, 0.05, 6),
        (1.5, 5, 0.8, 0.0, 7),
        (2.0, 256, 0.95, 0.0, 8),
    ] {
        let mut opts = sampled(seed, n);
        opts.sampling.temperature = temperature;
        opts.sampling.top_k = top_k;
        opts.sampling.top_p = top_p;
        opts.sampling.min_p = min_p;
        let mut s = m.session(256).unwrap();
        let (_, done) = run(&mut s, &tok, prompt.clone(), &opts);
        let (ids, _, _) = sample_from_full_logits(&opts.sampling, &prompt, n);
        assert_eq!(done.tokens, ids, "t {temperature} top-k {top_k}");
        let st = s.stats();
        // The first step after the prefill has no step before it to run ahead of it.
        assert!(
            st.steps_run_ahead as usize >= n - 3 && st.steps_run_again == 0,
            "t {temperature} top-k {top_k}: {st:?}"
        );
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_the_raw_logits() {
    let prompt: Vec<u32> = vec![5, 17, 300, 42, 99];
    // Sampled at temperature 0.5 with a penalty and a bias: the reported values are still
    // those of the raw distribution.
    let mut opts = sampled(21, 8);
    opts.sampling.temperature = 0.5;
    opts.sampling.frequency_penalty = 0.5;
    opts.sampling.logit_bias.insert(7, 3.0);
    opts.logprobs = Some(5);
    let mut s = model().session(256).unwrap();
    let (events, done) = run_scored(&mut s, prompt.clone(), &opts);
    assert_eq!(events.len(), 8);
    let (ids, logits, _) = sample_from_full_logits(&opts.sampling, &prompt, 8);
    assert_eq!(done.tokens, ids);
    assert_eq!(done.logprobs.len(), 8);
    assert_eq!(done.top_logprobs.len(), 8);
    for (i, ((id, lp, top), logits)) in events.iter().zip(&logits).enumerate() {
        let want = log_softmax(logits);
        let lp = lp.expect("a logprob");
        assert!(
            (lp as f64 - want[*id as usize]).abs() < 1e-5,
            "token {i}: {lp} vs {}",
            want[*id as usize]
        );
        assert_eq!(done.logprobs[i], lp);
        // The true top 5, most likely first.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let top_ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(top_ids, order[..5], "token {i}");
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
        for &(t, l) in top {
            assert!((l as f64 - want[t as usize]).abs() < 1e-5);
        }
        let completion_top: Vec<(u32, f32)> = done.top_logprobs[i]
            .iter()
            .map(|t| (t.id, t.logprob))
            .collect();
        assert_eq!(&completion_top, top);
    }
    // Off by default; Some(0) gives only the chosen token's.
    let mut s = model().session(256).unwrap();
    let (events, done) = run_scored(&mut s, prompt.clone(), &sampled(21, 3));
    assert!(events.iter().all(|e| e.1.is_none() && e.2.is_empty()));
    assert!(done.logprobs.is_empty() && done.top_logprobs.is_empty());
    opts.logprobs = Some(0);
    let mut s = model().session(256).unwrap();
    let (events, _) = run_scored(&mut s, prompt, &opts);
    assert!(events.iter().all(|e| e.1.is_some() && e.2.is_empty()));
}

#[test]
fn logprobs_of_an_end_of_sequence_token_are_in_the_completion() {
    let prompt: Vec<u32> = vec![5, 17, 300];
    let mut opts = GenerateOptions {
        max_tokens: 4,
        logprobs: Some(2),
        ..GenerateOptions::default()
    };
    let mut s = model().session(64).unwrap();
    let (_, first) = run_scored(&mut s, prompt.clone(), &opts);
    opts.eos_token_ids = vec![first.tokens[0]];
    let mut s = model().session(64).unwrap();
    let (events, done) = run_scored(&mut s, prompt, &opts);
    assert!(events.is_empty());
    assert_eq!(done.reason, FinishReason::EndOfSequence(first.tokens[0]));
    assert_eq!(done.logprobs, first.logprobs[..1]);
    assert_eq!(done.top_logprobs[0].len(), 2);
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let prompt: Vec<u32> = vec![11, 12, 13, 14];
    let greedy = GenerateOptions {
        max_tokens: 6,
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let mut s = model().session(64).unwrap();
    let (_, free) = run_scored(&mut s, prompt.clone(), &greedy);
    // -100 bans the tokens greedy decoding picked.
    let mut banned = greedy.clone();
    for &id in &free.tokens {
        banned.sampling.logit_bias.insert(id, -100.0);
    }
    assert!(matches!(
        banned.sampling.logits_needed(),
        LogitsNeeded::Top(_)
    ));
    let mut s = model().session(64).unwrap();
    let (_, done) = run_scored(&mut s, prompt.clone(), &banned);
    assert_eq!(done.tokens.len(), 6);
    assert!(
        done.tokens.iter().all(|t| !free.tokens.contains(t)),
        "{done:?}"
    );
    // +100 forces a token, greedy or sampled.
    let forced_id = (0..512).find(|t| !free.tokens.contains(t)).unwrap();
    for base in [greedy.clone(), sampled(4, 6)] {
        let mut forced = base;
        forced.sampling.logit_bias.insert(forced_id, 100.0);
        let mut s = model().session(64).unwrap();
        let (_, done) = run_scored(&mut s, prompt.clone(), &forced);
        assert_eq!(done.tokens, [forced_id; 6]);
    }
}

#[test]
fn penalties_and_bias_give_the_same_tokens_on_the_top_n_and_full_paths() {
    // Adjustments that only lower logits keep the top-N readback (with a margin and a
    // fallback to every logit); raising ones read every logit. Either way the tokens are
    // those of sampling from the full logits with the same seed, and asking for logprobs
    // (which forces full readbacks) does not change them.
    let every_id: Vec<u32> = (0..512).collect();
    let short: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
    let sampled_k = SamplingParams::with_temperature(0.9)
        .with_top_k(12)
        .with_top_p(0.95)
        .with_seed(77);
    let cases = [
        // Greedy, every token of the prompt penalized: the top-N lists often cannot
        // decide, so the fallback runs.
        (
            SamplingParams::greedy()
                .with_repetition_penalty(2.0)
                .with_presence_penalty(0.5),
            &every_id,
            true,
        ),
        (
            sampled_k
                .clone()
                .with_frequency_penalty(1.5)
                .with_presence_penalty(0.7)
                .with_logit_bias(7, -5.0)
                .with_logit_bias(300, -100.0),
            &short,
            false,
        ),
        (
            sampled_k
                .clone()
                .with_repetition_penalty(1.8)
                .with_frequency_penalty(2.0),
            &every_id,
            true,
        ),
        // Raising: full logits.
        (
            sampled_k
                .clone()
                .with_presence_penalty(-1.0)
                .with_logit_bias(40, 4.0),
            &short,
            false,
        ),
    ];
    for (i, (params, prompt, expect_fallback)) in cases.into_iter().enumerate() {
        params.validate().unwrap();
        let n = 12;
        let (want, _, undecided) = sample_from_full_logits(&params, prompt, n);
        if expect_fallback {
            assert!(undecided > 0, "case {i}: the top-N path always decided");
        }
        let mut opts = GenerateOptions {
            sampling: params.clone(),
            max_tokens: n,
            ignore_eos: true,
            ..GenerateOptions::default()
        };
        let mut s = model().session(1024).unwrap();
        let (_, top_path) = run_scored(&mut s, prompt.clone(), &opts);
        opts.logprobs = Some(0);
        let mut s = model().session(1024).unwrap();
        let (_, full_path) = run_scored(&mut s, prompt.clone(), &opts);
        assert_eq!(top_path.tokens, want, "case {i}: {params:?}");
        assert_eq!(full_path.tokens, want, "case {i}");
    }
}

#[test]
fn invalid_sampling_and_logprobs_options_name_the_field() {
    let tok = tokenizer();
    let mut s = model().session(64).unwrap();
    let g = SamplingParams::greedy;
    let cases = [
        (
            g().with_presence_penalty(f32::NAN),
            None,
            "presence_penalty",
        ),
        (g().with_presence_penalty(-2.5), None, "presence_penalty"),
        (g().with_frequency_penalty(3.0), None, "frequency_penalty"),
        (
            g().with_frequency_penalty(f32::NAN),
            None,
            "frequency_penalty",
        ),
        (g().with_logit_bias(5, 150.0), None, "logit_bias"),
        (g().with_logit_bias(5, f32::NAN), None, "logit_bias"),
        // The model's vocabulary is 512.
        (g().with_logit_bias(512, -1.0), None, "logit_bias"),
        (g(), Some(21), "logprobs"),
    ];
    for (sampling, logprobs, field) in cases {
        let opts = GenerateOptions {
            sampling,
            logprobs,
            ..GenerateOptions::default()
        };
        match s.generate(&tok, vec![1u32, 2, 3], &opts) {
            Err(moestream::Error::InvalidArgument(m)) => {
                assert!(m.contains(field), "{field}: {m}")
            }
            other => panic!("{field}: {:?}", other.map(|_| ())),
        }
        // A chat turn checks them too, before touching the conversation.
        let mut chat = Chat::new(model().session(64).unwrap(), tok.clone(), opts);
        assert!(matches!(
            chat.send("Hi"),
            Err(moestream::Error::InvalidArgument(_))
        ));
        assert!(chat.messages().is_empty());
    }
    assert_eq!(s.position(), 0);
    // The limits themselves are fine.
    let opts = GenerateOptions {
        sampling: g()
            .with_presence_penalty(2.0)
            .with_frequency_penalty(-2.0)
            .with_logit_bias(511, -100.0),
        logprobs: Some(moestream::sampling::MAX_LOGPROBS),
        max_tokens: 1,
        ..GenerateOptions::default()
    };
    let (events, _) = run_scored(&mut s, vec![1u32, 2, 3], &opts);
    assert_eq!(events[0].2.len(), 20);
}
