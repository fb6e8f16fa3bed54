//! A pool of I/O threads reading experts from the store into reusable aligned buffers, and
//! the clock of the time during which any read is in flight.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    busy: Arc<BusyClock>,
}

/// The time during which at least one read is in flight (the storage's busy time as the
/// engine sees it: from a `read_expert` call's start to its return).
#[derive(Debug, Default)]
pub(crate) struct BusyClock {
    state: Mutex<Busy>,
}

#[derive(Debug, Default)]
struct Busy {
    in_flight: usize,
    /// When `in_flight` last went from 0 to 1.
    since: Option<Instant>,
    /// Closed busy intervals.
    total: Duration,
}

impl BusyClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read starts.
    pub fn start(&self) {
        let mut b = self.lock();
        if b.in_flight == 0 {
            b.since = Some(Instant::now());
        }
        b.in_flight += 1;
    }

    /// A read ends.
    pub fn end(&self) {
        let mut b = self.lock();
        b.in_flight = b.in_flight.saturating_sub(1);
        if b.in_flight == 0 {
            if let Some(t) = b.since.take() {
                b.total += t.elapsed();
            }
        }
    }

    /// Busy time so far, the interval in progress included.
    pub fn total(&self) -> Duration {
        let b = self.lock();
        b.total + b.since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

impl IoPool {
    pub fn new(store: Arc<dyn ExpertStore>, threads: usize) -> Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(BusyClock::default());
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let store = store.clone();
            let clock = busy.clone();
            let handle = std::thread::Builder::new()
                .name(format!("moestream-io-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(mut job) = job else { return };
                    clock.start();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        store.read_expert(job.layer, job.expert, &mut job.buf)
                    }));
                    clock.end();
                    let result = result.unwrap_or_else(|_| {
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
            busy,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Wall time during which at least one read was in flight, since the pool started.
    pub fn busy_time(&self) -> Duration {
        self.busy.total()
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

#[cfg(test)]
mod tests {
    use super::BusyClock;
    use std::time::Duration;

    #[test]
    fn busy_time_counts_overlapping_reads_once() {
        let c = BusyClock::default();
        assert_eq!(c.total(), Duration::ZERO);
        c.start();
        c.start(); // two reads in flight
        std::thread::sleep(Duration::from_millis(20));
        c.end();
        std::thread::sleep(Duration::from_millis(20));
        c.end();
        let busy = c.total();
        assert!(busy >= Duration::from_millis(40), "{busy:?}");
        // Idle time does not count.
        std::thread::sleep(Duration::from_millis(30));
        let idle = c.total();
        assert_eq!(idle, busy);
        // A read in progress counts up to now.
        c.start();
        std::thread::sleep(Duration::from_millis(10));
        assert!(c.total() >= busy + Duration::from_millis(10));
        c.end();
    }
}
