//! The synthetic demo model shared by `examples/generate.rs` and `examples/chat.rs`: a
//! small random-weight Qwen3-MoE model plus a made-up word-level tokenizer (two-syllable
//! nonsense words, ChatML special tokens and template), so the text path runs without a
//! download. Its output is meaningless: the weights are random.

use std::io::Write;
use std::path::{Path, PathBuf};

use moestream::{CancelHandle, Completion, GenerationEvent};

/// The demo model's folder (written once), and an expert-cache budget of a quarter of its
/// experts so that experts really stream from storage.
pub fn demo_model() -> moestream::Result<(PathBuf, u64)> {
    let dir = moestream::synthetic::demo_dir();
    eprintln!(
        "No --model given: using a SYNTHETIC random-weight Qwen3-MoE model with a made-up \
         word tokenizer (its output is meaningless)."
    );
    eprintln!("Writing it to {} (once) ...", dir.display());
    moestream::synthetic::write_demo(&dir)
}

/// Applies the sampling flags both examples take over `generation_config.json`'s defaults.
/// A truncation flag (top-p or top-k) without a temperature asks for sampling at 1.0.
pub fn apply_sampling_flags(
    s: &mut moestream::SamplingParams,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
) {
    if let Some(t) = temperature {
        s.temperature = t;
    } else if s.is_greedy() && (top_p.is_some() || top_k.is_some()) {
        s.temperature = 1.0;
    }
    if let Some(p) = top_p {
        s.top_p = p;
    }
    if let Some(k) = top_k {
        s.top_k = k;
    }
    s.seed = seed;
}

/// Writes a generation's text to `out` as it streams (then the text held back to the end
/// and a newline) and returns its completion, if it got that far.
pub fn stream_text(
    events: impl IntoIterator<Item = moestream::Result<GenerationEvent>>,
    out: &mut impl Write,
) -> moestream::Result<Option<Completion>> {
    let mut done = None;
    for event in events {
        match event? {
            GenerationEvent::Token { text, .. } => {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            GenerationEvent::Done(c) => {
                let _ = out.write_all(c.text.as_bytes());
                let _ = writeln!(out);
                done = Some(*c);
            }
            _ => {}
        }
    }
    Ok(done)
}

/// Ctrl-C while a reply is being generated stops that reply (it ends as `cancelled`)
/// instead of the program; Ctrl-C at any other time exits as usual (status 130). Give the
/// returned handle to the generation (`GenerateOptions::cancel`) and mark the replies
/// with [`Interrupt::generating`]. Unix only: elsewhere Ctrl-C keeps its default.
pub struct Interrupt {
    cancel: CancelHandle,
    generating: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(unix)]
static SIGINT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGINT.store(true, std::sync::atomic::Ordering::SeqCst);
}

impl Interrupt {
    /// Installs the handler (once per program).
    pub fn install() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let me = Interrupt {
            cancel: CancelHandle::new(),
            generating: Arc::new(AtomicBool::new(false)),
        };
        #[cfg(unix)]
        {
            let handler = on_sigint as extern "C" fn(libc::c_int);
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(libc::SIGINT, handler as libc::sighandler_t);
            }
            let (cancel, generating) = (me.cancel.clone(), me.generating.clone());
            std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if SIGINT.swap(false, Ordering::SeqCst) {
                    if generating.load(Ordering::SeqCst) {
                        cancel.cancel();
                    } else {
                        std::process::exit(130);
                    }
                }
            });
        }
        me
    }

    /// The handle that Ctrl-C cancels.
    pub fn handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Runs `reply` with Ctrl-C stopping it, the handle reset first.
    pub fn generating<T>(&self, reply: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        self.cancel.reset();
        self.generating.store(true, Ordering::SeqCst);
        let out = reply();
        self.generating.store(false, Ordering::SeqCst);
        out
    }
}

/// Checks that a `--model` folder exists, for a plain message instead of a file error.
pub fn check_model_dir(dir: &Path) -> moestream::Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(moestream::Error::InvalidArgument(format!(
            "--model {}: no such folder",
            dir.display()
        )))
    }
}
