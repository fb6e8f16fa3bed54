//! moestream's `tracing` instrumentation, as an application's subscriber sees it: the load
//! span with the folder and its phase events (debug), the expert store's opening, session
//! prefill and step spans with token counts and expert-cache misses and evictions (trace),
//! a failed expert read (warn, from an I/O thread); nothing below the subscriber's level.
//! One test: the subscriber is the process's global default.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use moestream::{store::ExpertLayout, Error, ExpertStore, Model, SafetensorsStore};
use tracing_subscriber::fmt::MakeWriter;

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A store whose reads of layer 1 fail while `fail` is set.
struct Failing {
    inner: SafetensorsStore,
    fail: Mutex<bool>,
}

impl ExpertStore for Failing {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.inner.layout(layer)
    }
    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> moestream::Result<()> {
        if layer == 1 && *self.fail.lock().unwrap() {
            return Err(Error::ExpertRead {
                layer,
                expert,
                reason: "injected failure".into(),
                cause: None,
            });
        }
        self.inner.read_expert(layer, expert, dst)
    }
}

#[test]
fn load_sessions_cache_and_io_errors_are_traced() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = common::fixture("tiny_f32");
    let slot = Model::builder(&dir).plan().unwrap().expert_slot_bytes();
    let model = Model::builder(&dir)
        .expert_cache_bytes(3 * slot)
        .build()
        .unwrap();
    let load = out.take();
    for want in [
        "moestream::load",
        "tiny_f32",
        "config read",
        "checkpoint headers read",
        "expert store opened",
        "GPU device ready",
        "memory plan",
        "resident weights uploaded",
        "expert cache allocated",
        "model loaded",
        "DEBUG",
    ] {
        assert!(
            load.contains(want),
            "no {want:?} in the load's events:\n{load}"
        );
    }

    let mut s = model.session(64).unwrap();
    s.prefill(&[1, 2, 3, 4, 5]).unwrap();
    s.step(6).unwrap();
    let run = out.take();
    for want in [
        "prefill",
        "tokens=5",
        "step",
        "position=5",
        "expert cache miss read",
        "expert evicted",
        "TRACE",
    ] {
        assert!(
            run.contains(want),
            "no {want:?} in the session's events:\n{run}"
        );
    }

    let ckpt = Arc::new(moestream::checkpoint::Checkpoint::open(&dir).unwrap());
    let cfg = moestream::config::ModelConfig::from_path(&dir).unwrap();
    let store = Arc::new(Failing {
        inner: SafetensorsStore::new(ckpt, &cfg).unwrap(),
        fail: Mutex::new(true),
    });
    let model = Model::builder(&dir)
        .expert_store(store.clone())
        .minimal_expert_cache()
        .build()
        .unwrap();
    let mut s = model.session(64).unwrap();
    let e = s.prefill(&[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::ExpertRead { .. }), "{e:?}");
    let failed = out.take();
    assert!(
        failed.contains("WARN")
            && failed.contains("expert read failed")
            && failed.contains("injected failure"),
        "no warning of the failed read:\n{failed}"
    );
    *store.fail.lock().unwrap() = false;
    s.prefill(&[1, 2, 3]).unwrap();
    assert!(!out.take().contains("WARN"));
}
