//! Generation end to end on a tiny synthetic model with the chatml_bpe fixture tokenizer:
//! events, determinism with a seed, finish reasons, stop strings across token boundaries,
//! cancellation, multi-turn prefix reuse.

use std::path::PathBuf;
use std::sync::OnceLock;

use moestream::synthetic::SyntheticSpec;
use moestream::{
    CancelHandle, Chat, ChatMessage, Completion, DType, FinishReason, GenerateOptions,
    GenerationConfig, GenerationEvent, Model, Prompt, SamplingParams, Session, Tokenizer,
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
