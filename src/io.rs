//! A pool of I/O threads reading experts from the store into reusable aligned buffers.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::store::{AlignedBuf, ExpertStore};

/// A read request: fill `buf` with expert `expert` of layer `layer`.
pub(crate) struct Job {
    pub layer: usize,
    pub expert: usize,
    /// The caller's tag for this job (e.g. the slot it fills).
    pub tag: usize,
    pub buf: AlignedBuf,
    pub reply: Sender<Done>,
}

/// A finished read, with the buffer handed back.
pub(crate) struct Done {
    pub tag: usize,
    pub buf: AlignedBuf,
    pub result: Result<()>,
}

/// Worker threads doing positioned reads through an [`ExpertStore`].
pub(crate) struct IoPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl IoPool {
    pub fn new(store: Arc<dyn ExpertStore>, threads: usize) -> Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let store = store.clone();
            let handle = std::thread::Builder::new()
                .name(format!("moestream-io-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(mut job) = job else { return };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        store.read_expert(job.layer, job.expert, &mut job.buf)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::ExpertRead {
                            layer: job.layer,
                            expert: job.expert,
                            reason: "the expert store panicked".into(),
                            cause: None,
                        })
                    });
                    if let Err(e) = &result {
                        tracing::warn!(
                            layer = job.layer,
                            expert = job.expert,
                            error = %e,
                            "expert read failed"
                        );
                    }
                    let _ = job.reply.send(Done {
                        tag: job.tag,
                        buf: job.buf,
                        result,
                    });
                })
                .map_err(|e| Error::IoThreads(format!("starting an I/O thread: {e}")))?;
            workers.push(handle);
        }
        Ok(IoPool {
            jobs: Some(tx),
            workers,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Queues a read; returns the job back if the pool has shut down.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
