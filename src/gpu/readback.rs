//! A readback in flight: GPU work submitted (or recorded ahead, to be launched) whose
//! results a mappable staging buffer will hold, and the wait for it.

use std::sync::Arc;

use super::measure::{profiling, PROFILE};
use super::recorder::ParamArena;
use super::Gpu;
use crate::error::{Error, Result};

/// A readback whose GPU work is submitted (or recorded ahead, to be launched), not yet
/// waited for.
pub(crate) struct PendingRead {
    staging: wgpu::Buffer,
    spans: Vec<(usize, usize)>,
    stamps: Option<(usize, usize)>,
    labels: Vec<&'static str>,
    /// Bytes to map.
    at: u64,
    /// The work of a deferred recorder, until launched.
    work: Option<wgpu::CommandBuffer>,
    /// Set by the map callback (for the spin), and the callback's result.
    #[allow(clippy::type_complexity)]
    mapped: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    )>,
}

/// Where a readback's parts land in its staging buffer: the buffer, each part's (offset,
/// length), the timestamps' (offset, length) and their passes' labels, the bytes to map.
pub(super) type ReadLayout = (
    wgpu::Buffer,
    Vec<(usize, usize)>,
    Option<(usize, usize)>,
    Vec<&'static str>,
    u64,
);

impl PendingRead {
    /// A readback laid out as `layout`, with the work recorded ahead (`work`) if it is not
    /// submitted yet.
    pub(super) fn new(layout: ReadLayout, work: Option<wgpu::CommandBuffer>) -> Self {
        let (staging, spans, stamps, labels, at) = layout;
        PendingRead {
            staging,
            spans,
            stamps,
            labels,
            at,
            work,
            mapped: None,
        }
    }

    /// Submits the work a deferred recorder recorded, after uploading its parameters from
    /// `params` (which nothing may have recorded into since), and starts the readback.
    pub fn launch(&mut self, gpu: &Gpu, params: &mut ParamArena) {
        params.flush(gpu);
        if let Some(work) = self.work.take() {
            gpu.queue.submit(Some(work));
        }
        self.map();
    }

    /// Starts mapping the staging buffer (once the work is submitted).
    pub(super) fn map(&mut self) {
        if self.at == 0 || self.mapped.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        // Set by the callback, for the spin; the result still comes through the channel,
        // whose `recv` also waits for a callback that another thread's poll is running.
        let mapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = mapped.clone();
        self.staging
            .slice(0..self.at)
            .map_async(wgpu::MapMode::Read, move |r| {
                flag.store(true, std::sync::atomic::Ordering::Release);
                let _ = tx.send(r);
            });
        self.mapped = Some((mapped, rx));
    }

    /// Waits for the work and returns the bytes of each part and the GPU nanoseconds of
    /// its timed passes.
    pub fn wait(self, gpu: &Gpu) -> Result<(Vec<Vec<u8>>, f64)> {
        let Some((mapped, rx)) = self.mapped else {
            // Nothing to read: still wait, so the caller knows the work is done.
            wait_for_gpu(gpu, wgpu::PollStatus::is_queue_empty)?;
            gpu.check()?;
            return Ok((vec![Vec::new(); self.spans.len()], 0.0));
        };
        wait_for_gpu(gpu, |_| mapped.load(std::sync::atomic::Ordering::Acquire))?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a readback buffer: {e}"))),
            Err(_) => return Err(Error::Gpu("readback callback was dropped".into())),
        }
        let mut gpu_ns = 0.0;
        let out = {
            let slice = self.staging.slice(0..self.at);
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
            if let Some((a, n)) = self.stamps {
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view[a..a + n]);
                let period = gpu.queue.get_timestamp_period() as f64;
                let mut prof =
                    profiling().then(|| PROFILE.lock().unwrap_or_else(|p| p.into_inner()));
                for (i, pair) in ticks.chunks_exact(2).enumerate() {
                    let ns = pair[1].saturating_sub(pair[0]) as f64 * period;
                    gpu_ns += ns;
                    if let (Some(map), Some(&label)) = (prof.as_mut(), self.labels.get(i)) {
                        let e = map.entry(label).or_insert((0, 0.0));
                        e.0 += 1;
                        e.1 += ns;
                    }
                }
            }
            self.spans
                .iter()
                .map(|&(a, n)| view[a..a + n].to_vec())
                .collect()
        };
        self.staging.unmap();
        gpu.check()?;
        Ok((out, gpu_ns))
    }
}

/// Sleep between polls once a wait has spun for `gpu.readback_spin`.
const READBACK_NAP: std::time::Duration = std::time::Duration::from_micros(50);

/// Waits until `done` (given each poll's status) says the awaited work has finished: by
/// non-blocking polls for up to `gpu.readback_spin`, then by polls `READBACK_NAP` apart
/// with the thread asleep in between; with a zero `readback_spin`, by a blocking wait in
/// the driver until the GPU has finished everything submitted so far and its callbacks
/// have run. The streaming step waits for a routing readback once per MoE layer, mostly
/// for well under a millisecond, where a blocking wait's wake-up is a large share; a
/// resident step waits ~3 ms for its logits on an H200, where the naps instead of the
/// blocking wait made resident decode 5% faster (Qwen3-30B-A3B 4-bit: 211-216 -> 224-226
/// tok/s; spinning throughout 228) and left the 25% expert cache case as it was (56.5 /
/// 57.3 tok/s).
fn wait_for_gpu(gpu: &Gpu, done: impl Fn(&wgpu::PollStatus) -> bool) -> Result<()> {
    let err = |e: wgpu::PollError| Error::Gpu(format!("waiting for the GPU: {e}"));
    if gpu.readback_spin.is_zero() {
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(err)?;
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    loop {
        let status = gpu.device.poll(wgpu::PollType::Poll).map_err(err)?;
        if done(&status) {
            return Ok(());
        }
        if t0.elapsed() < gpu.readback_spin {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(READBACK_NAP);
        }
    }
}
