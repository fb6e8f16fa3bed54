//! One expert's read split over a few threads.
//!
//! A decode step usually misses one or two experts per layer, so their reads are not in
//! flight together: each is a single 2-3 MB `pread`, one request in the storage device's
//! queue. Split into up to four parts on scoped threads, a direct (uncached) read keeps
//! several requests queued: packed direct reads went from 0.83 to 1.11 of a raw sequential
//! read on the H200 VM's disk. Reads from the page cache are not split: there it measured
//! slower (thread starts and copies competing with the other reads in flight).

use std::fs::File;

use crate::checkpoint::read_exact_at;

/// Reads of less than this many bytes in all are not split.
const MIN_PART: usize = 512 << 10;
/// Threads per read, the calling thread included.
const MAX_THREADS: usize = 4;

/// Reads assigned to one thread, each with the index of the part it belongs to.
type Run<'a> = Vec<(usize, ReadPart<'a>)>;

/// One positioned read: fill `buf` from `file` at `offset`.
pub(crate) struct ReadPart<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// Performs every read of `parts`, spread over up to [`MAX_THREADS`] threads in runs of
/// similar size (the calling thread takes one; a thread that cannot be started leaves its
/// run to the calling thread). Parts larger than a run are split at multiples of `align`
/// bytes, so reads of aligned buffers at aligned offsets stay aligned (direct I/O).
/// Returns the index of the first failed part (in `parts`) with its error.
pub(crate) fn read_parts(
    parts: Vec<ReadPart<'_>>,
    align: usize,
) -> Result<(), (usize, std::io::Error)> {
    let work = |units: Run<'_>| -> Result<(), (usize, std::io::Error)> {
        for (i, p) in units {
            read_exact_at(p.file, p.buf, p.offset).map_err(|e| (i, e))?;
        }
        Ok(())
    };
    let total: usize = parts.iter().map(|p| p.buf.len()).sum();
    let threads = (total / MIN_PART).clamp(1, MAX_THREADS);
    if threads == 1 {
        return work(parts.into_iter().enumerate().collect());
    }
    let align = align.max(1);
    let run = total.div_ceil(threads).div_ceil(align) * align;
    // Units of at most `run` bytes, then runs of consecutive units of about `run` bytes.
    let mut runs: Vec<Run<'_>> = vec![Vec::new()];
    let mut filled = 0usize;
    for (i, p) in parts.into_iter().enumerate() {
        let (file, mut offset, mut buf) = (p.file, p.offset, p.buf);
        while !buf.is_empty() {
            if filled >= run {
                runs.push(Vec::new());
                filled = 0;
            }
            // What fills this run, at a multiple of `align` (at least `align`).
            let room = (run - filled) / align * align;
            let take = buf.len().min(room.max(align));
            let (head, tail) = buf.split_at_mut(take);
            if let Some(r) = runs.last_mut() {
                r.push((
                    i,
                    ReadPart {
                        file,
                        offset,
                        buf: head,
                    },
                ));
            }
            filled += take;
            offset += take as u64;
            buf = tail;
        }
    }
    // Each run waits in a slot: a thread takes it, or, if the thread cannot be started,
    // the calling thread does.
    let mut runs = runs.into_iter();
    let mine = runs.next().unwrap_or_default();
    let slots: Vec<std::sync::Mutex<Option<Run<'_>>>> =
        runs.map(|r| std::sync::Mutex::new(Some(r))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .filter_map(|slot| {
                std::thread::Builder::new()
                    .name("moestream-read".into())
                    .spawn_scoped(s, move || take(slot).map_or(Ok(()), work))
                    .ok()
            })
            .collect();
        let mut result = work(mine);
        // Runs whose thread did not start (or has not yet taken them).
        for slot in &slots {
            if let Some(units) = take(slot) {
                let r = work(units);
                if result.is_ok() {
                    result = r;
                }
            }
        }
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err((0, std::io::Error::other("a read thread panicked"))));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// What a slot holds, taken out (by whichever thread gets there first).
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut g| g.take())
}

#[cfg(test)]
mod tests {
    use super::{read_parts, ReadPart};
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "moestream-split-read-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = std::fs::File::create(&path).expect("temp file");
        f.write_all(bytes).expect("write");
        drop(f);
        let f = std::fs::File::open(&path).expect("open");
        (path, f)
    }

    #[test]
    fn split_reads_equal_plain_reads() {
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) as u8)
            .collect();
        let (path, f) = temp_file(&data);
        // Small reads (not split), one large read (split over 4 threads), and pieces of
        // mixed sizes at scattered offsets, as a safetensors expert is read.
        for sizes in [
            vec![(100usize, 7u64)],
            vec![(3_000_000, 16_384)],
            vec![
                (800_000, 0),
                (4096, 3_000_000),
                (1_200_000, 1_000_001),
                (64, 4_999_000),
            ],
        ] {
            let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&(n, _)| vec![0u8; n]).collect();
            let parts = bufs
                .iter_mut()
                .zip(&sizes)
                .map(|(b, &(_, offset))| ReadPart {
                    file: &f,
                    offset,
                    buf: b,
                })
                .collect();
            read_parts(parts, 16_384).expect("read");
            for (b, &(n, offset)) in bufs.iter().zip(&sizes) {
                let o = offset as usize;
                assert!(b[..] == data[o..o + n], "{n} bytes at {offset}");
            }
        }
        // A read past the end fails, naming its part.
        let mut a = vec![0u8; 2_000_000];
        let mut b = vec![0u8; 1_000];
        let parts = vec![
            ReadPart {
                file: &f,
                offset: 0,
                buf: &mut a,
            },
            ReadPart {
                file: &f,
                offset: 4_999_500,
                buf: &mut b,
            },
        ];
        let err = read_parts(parts, 4096).expect_err("past the end");
        assert_eq!(err.0, 1);
        let _ = std::fs::remove_file(path);
    }
}
