//! Counters for `GET /metrics`, written in Prometheus' text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cache::CacheStats;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a generation ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Cancelled,
    Failed,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    prompt_cache_hits: AtomicU64,
    generated_tokens: AtomicU64,
    prefill_nanos: AtomicU64,
    decode_nanos: AtomicU64,
    decode_steps: AtomicU64,
    /// f64 bits: the decode rate of the last generation.
    last_tokens_per_second: AtomicU64,
    ttft: Mutex<Histogram>,
}

/// Values read at scrape time.
pub(crate) struct Gauges {
    pub queue: usize,
    pub active: usize,
    pub max_concurrent: usize,
    pub prompt_cache_entries: usize,
    pub prompt_cache_bytes: u64,
    pub expert_cache: CacheStats,
}

/// One finished generation's numbers.
pub(crate) struct Finished {
    pub outcome: Outcome,
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
    pub decode_steps: usize,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// A request reached an endpoint.
    pub fn request(&self) {
        add(&self.requests, 1);
    }

    /// A request was answered 429.
    pub fn rejected(&self) {
        add(&self.rejected, 1);
    }

    /// A request was answered with an error (4xx, 5xx).
    pub fn error(&self) {
        add(&self.errors, 1);
    }

    /// The first token of a request, `ttft` after it arrived.
    pub fn first_token(&self, ttft: Duration) {
        let s = ttft.as_secs_f64();
        if let Ok(mut h) = self.ttft.lock() {
            for (i, &b) in TTFT_BUCKETS.iter().enumerate() {
                if s <= b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    /// A generation ended.
    pub fn finished(&self, f: &Finished) {
        add(
            match f.outcome {
                Outcome::Completed => &self.completed,
                Outcome::Cancelled => &self.cancelled,
                Outcome::Failed => &self.failed,
            },
            1,
        );
        add(&self.prompt_tokens, f.prompt_tokens as u64);
        add(&self.cached_prompt_tokens, f.cached_prompt_tokens as u64);
        if f.cached_prompt_tokens > 0 {
            add(&self.prompt_cache_hits, 1);
        }
        add(&self.generated_tokens, f.generated_tokens as u64);
        add(&self.prefill_nanos, f.prefill.as_nanos() as u64);
        add(&self.decode_nanos, f.decode.as_nanos() as u64);
        add(&self.decode_steps, f.decode_steps as u64);
        let s = f.decode.as_secs_f64();
        if f.decode_steps > 0 && s > 0.0 {
            let rate = f.decode_steps as f64 / s;
            self.last_tokens_per_second
                .store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let secs = |n: u64| n as f64 / 1e9;
        let decode_s = secs(get(&self.decode_nanos));
        let steps = get(&self.decode_steps) as f64;
        metric(
            "moestream_requests_total",
            "counter",
            "Requests to the generation endpoints.",
            &[("", get(&self.requests) as f64)],
        );
        metric(
            "moestream_request_errors_total",
            "counter",
            "Requests answered with an error status (429 included).",
            &[("", get(&self.errors) as f64)],
        );
        metric(
            "moestream_requests_rejected_total",
            "counter",
            "Requests answered 429 because the queue was full.",
            &[("", get(&self.rejected) as f64)],
        );
        metric(
            "moestream_generations_total",
            "counter",
            "Generations ended, by outcome (cancelled: the client went away).",
            &[
                ("{outcome=\"completed\"}", get(&self.completed) as f64),
                ("{outcome=\"cancelled\"}", get(&self.cancelled) as f64),
                ("{outcome=\"failed\"}", get(&self.failed) as f64),
            ],
        );
        metric(
            "moestream_queue_length",
            "gauge",
            "Requests waiting for a generation slot.",
            &[("", g.queue as f64)],
        );
        metric(
            "moestream_active_generations",
            "gauge",
            "Generations running (each holds a session).",
            &[("", g.active as f64)],
        );
        metric(
            "moestream_max_concurrent_generations",
            "gauge",
            "Generation slots.",
            &[("", g.max_concurrent as f64)],
        );
        metric(
            "moestream_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished generations.",
            &[("", get(&self.prompt_tokens) as f64)],
        );
        metric(
            "moestream_prompt_cache_hit_tokens_total",
            "counter",
            "Prompt tokens taken from the prompt cache instead of prefilled.",
            &[("", get(&self.cached_prompt_tokens) as f64)],
        );
        metric(
            "moestream_prompt_cache_hits_total",
            "counter",
            "Generations that reused a cached prefix.",
            &[("", get(&self.prompt_cache_hits) as f64)],
        );
        metric(
            "moestream_prompt_cache_entries",
            "gauge",
            "Sessions kept by the prompt cache.",
            &[("", g.prompt_cache_entries as f64)],
        );
        metric(
            "moestream_prompt_cache_bytes",
            "gauge",
            "GPU memory of the sequence states the prompt cache keeps.",
            &[("", g.prompt_cache_bytes as f64)],
        );
        metric(
            "moestream_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &[("", get(&self.generated_tokens) as f64)],
        );
        metric(
            "moestream_prefill_seconds_total",
            "counter",
            "Time spent prefilling prompts.",
            &[("", secs(get(&self.prefill_nanos)))],
        );
        metric(
            "moestream_decode_seconds_total",
            "counter",
            "Time spent in decode steps.",
            &[("", decode_s)],
        );
        metric(
            "moestream_decode_tokens_per_second",
            "gauge",
            "Decode steps per second over all generations.",
            &[(
                "",
                if decode_s > 0.0 {
                    steps / decode_s
                } else {
                    0.0
                },
            )],
        );
        metric(
            "moestream_last_decode_tokens_per_second",
            "gauge",
            "Decode steps per second of the last generation.",
            &[("", f64::from_bits(get(&self.last_tokens_per_second)))],
        );
        let c = &g.expert_cache;
        metric(
            "moestream_expert_cache_hits_total",
            "counter",
            "Routed experts found in the GPU expert cache.",
            &[("", c.hits as f64)],
        );
        metric(
            "moestream_expert_cache_misses_total",
            "counter",
            "Routed experts read from storage.",
            &[("", c.misses as f64)],
        );
        metric(
            "moestream_expert_cache_hit_rate",
            "gauge",
            "Expert-cache hits over all lookups since start.",
            &[("", c.hit_rate())],
        );
        metric(
            "moestream_storage_read_bytes_total",
            "counter",
            "Bytes of experts read from storage.",
            &[("", c.bytes_read as f64)],
        );
        metric(
            "moestream_storage_read_seconds_total",
            "counter",
            "Time spent waiting for expert reads.",
            &[("", c.read_time.as_secs_f64())],
        );
        let _ = writeln!(
            out,
            "# HELP moestream_time_to_first_token_seconds From a request's arrival to its first token."
        );
        let _ = writeln!(
            out,
            "# TYPE moestream_time_to_first_token_seconds histogram"
        );
        if let Ok(h) = self.ttft.lock() {
            for (b, n) in TTFT_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "moestream_time_to_first_token_seconds_bucket{{le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "moestream_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "moestream_time_to_first_token_seconds_sum {}", h.sum);
            let _ = writeln!(
                out,
                "moestream_time_to_first_token_seconds_count {}",
                h.count
            );
        }
        out
    }
}
