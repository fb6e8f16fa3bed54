//! Packed expert files: every expert one contiguous, 16 KiB-aligned blob, read with one
//! positioned read. The format is specified in `docs/formats.md`.
//!
//! A pack is a folder (by default `moestream-pack/` inside the checkpoint folder) holding
//! `index.json` and one data file per MoE layer (`layer-007.experts`). It is written by
//! [`pack_experts`] (the `pack` example is its command line) and read by [`PackedStore`].
//! [`Model`](crate::Model) uses a pack found next to its checkpoint when the pack's
//! identity matches the checkpoint, and refuses a stale one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::layout::{align_up, BLOB_ALIGN};
use super::split_read::{read_parts, ReadPart};
use super::{
    AlignedBuf, ExpertLayout, ExpertRole, ExpertStore, ExpertTensor, SafetensorsStore, READ_ALIGN,
};
use crate::checkpoint::{read_exact_at, Checkpoint};
use crate::config::{ModelConfig, MAX_LAYERS};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::{AffineQuant, WeightFormat};

mod index;
mod write;

pub use index::checkpoint_identity;
use index::*;
pub use write::{
    pack_experts, pack_experts_from, PackOptions, PackOutcome, PackProgress, PackSummary,
};

/// Name of the pack folder inside a checkpoint folder, where [`Model`](crate::Model) looks
/// for a pack and where [`pack_experts`] writes one by default.
pub const PACK_DIR_NAME: &str = "moestream-pack";

/// The `"format"` value of a pack's `index.json`.
pub const PACK_FORMAT: &str = "moestream-pack";

/// The pack format version this build writes and reads.
pub const PACK_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------
// PackedStore
// ---------------------------------------------------------------------------------------

/// Options of [`PackedStore::open_with`].
///
/// ```
/// let opts = moestream::store::PackedStoreOptions::default()
///     .direct_io(true)
///     .verify_checksums(true);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedStoreOptions {
    direct_io: bool,
    verify_checksums: bool,
}

impl Default for PackedStoreOptions {
    /// Buffered reads (through the OS page cache), checksums verified.
    fn default() -> Self {
        PackedStoreOptions {
            direct_io: false,
            verify_checksums: true,
        }
    }
}

impl PackedStoreOptions {
    /// Read experts bypassing the OS page cache: `O_DIRECT` on Linux, `F_NOCACHE` on
    /// macOS/iOS; elsewhere, or where the file system refuses it, reads stay buffered
    /// ([`PackedStore::direct_io_active`] tells). Default off: the page cache is a second
    /// cache level that often holds much of a model, and which is faster differs by
    /// machine, so measure both.
    pub fn direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// Check every expert read against its xxh3-64 checksum (default on). Off saves one
    /// hash pass over the bytes (several GB/s per core, on the I/O threads) at the price of
    /// feeding a silently corrupted expert to the GPU.
    pub fn verify_checksums(mut self, on: bool) -> Self {
        self.verify_checksums = on;
        self
    }
}

/// One expert blob in a layer file.
#[derive(Debug, Clone, Copy)]
struct Blob {
    offset: u64,
    /// Unpadded bytes (the layout's `bytes`).
    len: usize,
    /// `len` rounded up to [`READ_ALIGN`]: what a whole read fetches.
    padded: usize,
    checksum: u64,
}

#[derive(Debug)]
struct PackedLayer {
    layout: ExpertLayout,
    path: PathBuf,
    /// Buffered handle.
    file: File,
    /// Handle opened for direct I/O, when asked for and granted.
    direct: Option<File>,
    experts: Vec<Blob>,
}

/// An [`ExpertStore`] reading from a pack written by [`pack_experts`]: one positioned read
/// of a whole 16 KiB-padded blob per expert (straight into the engine's aligned buffer),
/// optionally bypassing the page cache, checked against a per-expert checksum.
///
/// Files are opened once; reads take no lock (`pread` is `&self`), so any number of
/// threads read at once.
///
/// ```no_run
/// use std::sync::Arc;
/// use moestream::{store::PackedStoreOptions, Model, PackedStore};
/// # fn main() -> moestream::Result<()> {
/// let pack = PackedStore::open_with(
///     "path/to/model/moestream-pack",
///     PackedStoreOptions::default().direct_io(true),
/// )?;
/// let model = Model::builder("path/to/model").expert_store(Arc::new(pack)).build()?;
/// # let _ = model; Ok(()) }
/// ```
#[derive(Debug)]
pub struct PackedStore {
    dir: PathBuf,
    identity: u64,
    source: SourceJson,
    verify: bool,
    /// Direct reads are in use (asked for, granted at open, no `EINVAL` since).
    direct: AtomicBool,
    layers: Vec<Option<PackedLayer>>,
    /// Performs the direct reads: [`read_parts`] (replaced in tests, to make a file system
    /// refuse them midway).
    direct_read: DirectRead,
}

/// How [`PackedStore`] performs its direct reads (see [`read_parts`]).
type DirectRead = for<'a> fn(Vec<ReadPart<'a>>, usize) -> PartsResult;

/// What [`read_parts`] returns: the index of the first failed part with its error.
type PartsResult = std::result::Result<(), (usize, std::io::Error)>;

/// Whether a folder name is that of an unfinished conversion (`<name>.partial-<pid>`).
fn is_partial_name(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".partial-"))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_direct(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn open_direct(path: &Path) -> std::io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: fcntl on a file descriptor we own; F_NOCACHE takes an int argument.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_NOCACHE, 1) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
fn open_direct(_path: &Path) -> std::io::Result<File> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "direct I/O is not implemented on this platform",
    ))
}

/// Whether a failed direct read means "this file system does not do direct I/O here"
/// (then reads fall back to buffered) rather than a real I/O error.
fn direct_refused(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EINVAL)
    }
    #[cfg(not(unix))]
    {
        e.kind() == std::io::ErrorKind::InvalidInput
    }
}

impl PackedStore {
    /// Opens the pack in `dir` with default options (buffered reads, checksums verified).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, PackedStoreOptions::default())
    }

    /// Opens the pack in `dir`: checks the index (format, version, layouts) and that every
    /// layer file has exactly the size the index gives (a truncated file is an
    /// [`Error::Pack`] naming it). A folder left by an interrupted conversion is refused.
    pub fn open_with(dir: impl AsRef<Path>, options: PackedStoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let bad = |reason: String| Error::Pack {
            path: dir.clone(),
            reason,
        };
        if is_partial_name(&dir) {
            return Err(bad(
                "is the unfinished output of an interrupted (or still running) conversion; delete it and re-run the pack example".into(),
            ));
        }
        if !dir.is_dir() {
            return Err(bad("no such folder".into()));
        }
        if !dir.join(INDEX_FILE).is_file() {
            return Err(bad(format!(
                "has no {INDEX_FILE}: not a complete pack (the converter writes it last); delete the folder and re-run the pack example"
            )));
        }
        let index = read_index(&dir)?;
        let index_path = dir.join(INDEX_FILE);
        let bad_index = |reason: String| Error::Pack {
            path: index_path.clone(),
            reason,
        };
        let identity = parse_hex64(&index.source.identity).ok_or_else(|| {
            bad_index(format!(
                "source.identity {:?} is not 16 hex digits",
                index.source.identity
            ))
        })?;
        let mut direct_ok = options.direct_io;
        let mut layers: Vec<Option<PackedLayer>> = Vec::new();
        for l in &index.layers {
            let layout = layout_from_json(l).map_err(&bad_index)?;
            if l.layer >= MAX_LAYERS {
                return Err(bad_index(format!(
                    "layer {} is above the supported maximum of {MAX_LAYERS} layers",
                    l.layer
                )));
            }
            if l.expert_bytes as u64 > l.file_bytes {
                return Err(bad_index(format!(
                    "layer {}: expert_bytes {} exceeds file_bytes {}",
                    l.layer, l.expert_bytes, l.file_bytes
                )));
            }
            let plain = !l.file.is_empty()
                && !l.file.contains(['/', '\\'])
                && l.file != "."
                && l.file != "..";
            if !plain {
                return Err(bad_index(format!(
                    "layer {}: file {:?} is not a plain file name",
                    l.layer, l.file
                )));
            }
            let mut experts = Vec::with_capacity(l.experts.len());
            for (e, x) in l.experts.iter().enumerate() {
                let padded = x.length.checked_next_multiple_of(READ_ALIGN);
                let checksum = parse_hex64(&x.checksum);
                let fits = padded
                    .and_then(|p| x.offset.checked_add(p as u64))
                    .is_some_and(|end| end <= l.file_bytes);
                if x.length != layout.bytes
                    || x.offset % READ_ALIGN as u64 != 0
                    || !fits
                    || checksum.is_none()
                {
                    return Err(bad_index(format!(
                        "layer {} expert {e}: offset {} length {} checksum {:?} do not fit (blobs are {} bytes at 16 KiB-aligned offsets within {} file bytes, checksums 16 hex digits)",
                        l.layer, x.offset, x.length, x.checksum, layout.bytes, l.file_bytes
                    )));
                }
                experts.push(Blob {
                    offset: x.offset,
                    len: x.length,
                    padded: padded.unwrap_or_default(),
                    checksum: checksum.unwrap_or_default(),
                });
            }
            let path = dir.join(&l.file);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            if size != l.file_bytes {
                return Err(Error::Pack {
                    path: path.clone(),
                    reason: format!(
                        "is {size} bytes, the index says {}: {}; delete the pack folder and re-run the pack example",
                        l.file_bytes,
                        if size < l.file_bytes { "truncated" } else { "has trailing bytes" }
                    ),
                });
            }
            let mut direct = None;
            if direct_ok {
                match open_direct(&path).and_then(|f| probe_direct(&f, size).map(|()| f)) {
                    Ok(f) => direct = Some(f),
                    Err(_) => direct_ok = false,
                }
            }
            if layers.len() <= l.layer {
                layers.resize_with(l.layer + 1, || None);
            }
            if layers[l.layer].is_some() {
                return Err(bad_index(format!("layer {} is listed twice", l.layer)));
            }
            layers[l.layer] = Some(PackedLayer {
                layout,
                path,
                file,
                direct,
                experts,
            });
        }
        if !direct_ok {
            // All or nothing: one layer file refusing direct I/O turns it off everywhere.
            for l in layers.iter_mut().flatten() {
                l.direct = None;
            }
        }
        tracing::debug!(
            dir = %dir.display(),
            layers = layers.iter().flatten().count(),
            direct_io = direct_ok,
            verify_checksums = options.verify_checksums,
            "expert pack opened"
        );
        Ok(PackedStore {
            dir,
            identity,
            source: index.source,
            verify: options.verify_checksums,
            direct: AtomicBool::new(direct_ok),
            layers,
            direct_read: read_parts,
        })
    }

    /// The pack next to a checkpoint (`<checkpoint>/moestream-pack`), opened with default
    /// options: `Ok(None)` when there is no `moestream-pack/index.json`; an
    /// [`Error::Pack`] when the pack is broken or was made from a different checkpoint
    /// (a stale pack is never used).
    pub fn for_checkpoint(ckpt: &Checkpoint) -> Result<Option<PackedStore>> {
        let dir = ckpt.dir().join(PACK_DIR_NAME);
        if !dir.join(INDEX_FILE).exists() {
            return Ok(None);
        }
        let store = PackedStore::open(&dir)?;
        if !store.matches(ckpt)? {
            return Err(Error::Pack {
                reason: format!(
                    "was made from a different checkpoint than {} ({}); re-run `cargo run --release --example pack -- --model {}` after deleting this folder, or delete it to read experts from the safetensors files",
                    ckpt.dir().display(),
                    describe_difference(&store.source, ckpt),
                    ckpt.dir().display(),
                ),
                path: dir,
            });
        }
        Ok(Some(store))
    }

    /// The pack folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity of the checkpoint the pack was made from (see [`checkpoint_identity`]).
    pub fn identity(&self) -> u64 {
        self.identity
    }

    /// Whether the pack was made from `ckpt` (its [`checkpoint_identity`] equals
    /// [`identity`](Self::identity)).
    pub fn matches(&self, ckpt: &Checkpoint) -> Result<bool> {
        Ok(checkpoint_identity(ckpt)? == self.identity)
    }

    /// Whether reads currently bypass the page cache: direct I/O was asked for, the file
    /// system accepted it, and no read has been refused since (reads then fall back to
    /// buffered for good).
    pub fn direct_io_active(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Whether reads are checked against the stored checksums.
    pub fn verifies_checksums(&self) -> bool {
        self.verify
    }

    /// Bytes of all expert blobs (unpadded).
    pub fn total_expert_bytes(&self) -> u64 {
        self.layers
            .iter()
            .flatten()
            .map(|l| l.experts.len() as u64 * l.layout.bytes as u64)
            .sum()
    }

    /// Reads every expert and checks its checksum (whatever the options), calling
    /// `progress(bytes_done, bytes_total)` after each. The first mismatch or read error
    /// is returned.
    pub fn verify_all(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let total = self.total_expert_bytes();
        let largest = self
            .layers
            .iter()
            .flatten()
            .map(|l| align_up(l.layout.bytes, READ_ALIGN))
            .max()
            .unwrap_or(0);
        let mut buf = AlignedBuf::new(largest);
        let mut done = 0u64;
        for (li, l) in self.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            for e in 0..l.experts.len() {
                self.read(li, e, &mut buf, true)?;
                done += l.layout.bytes as u64;
                progress(done, total);
            }
        }
        Ok(())
    }

    fn read(&self, layer: usize, expert: usize, dst: &mut [u8], verify: bool) -> Result<()> {
        let l = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::ExpertRead {
                layer,
                expert,
                reason: format!("not a MoE layer of the pack in {}", self.dir.display()),
                cause: None,
            })?;
        let blob = l.experts.get(expert).ok_or_else(|| Error::ExpertRead {
            layer,
            expert,
            reason: format!(
                "the pack in {} has {} experts in this layer",
                self.dir.display(),
                l.experts.len()
            ),
            cause: None,
        })?;
        if dst.len() < blob.len {
            return Err(Error::InvalidArgument(format!(
                "destination is {} bytes, an expert is {}",
                dst.len(),
                blob.len
            )));
        }
        let io_err = |n: usize, e: std::io::Error| Error::ExpertRead {
            layer,
            expert,
            reason: format!(
                "reading {n} bytes at offset {} of {}",
                blob.offset,
                l.path.display()
            ),
            cause: Some(Box::new(e)),
        };
        let whole = dst.as_ptr() as usize % READ_ALIGN == 0 && dst.len() >= blob.padded;
        if whole {
            // One read of the whole padded blob; the padding lands past `len`, which the
            // contract allows.
            let buf = &mut dst[..blob.padded];
            let mut done = false;
            if let Some(direct) = &l.direct {
                if self.direct.load(Ordering::Relaxed) {
                    // Direct reads go to the device: split over a few threads (at multiples
                    // of READ_ALIGN, which keeps them aligned) to keep several requests in
                    // its queue (split_read.rs). Buffered reads copy from the page cache
                    // and are not split: that measured slower.
                    let parts = vec![ReadPart {
                        file: direct,
                        offset: blob.offset,
                        buf: &mut *buf,
                    }];
                    match (self.direct_read)(parts, READ_ALIGN).map_err(|(_, e)| e) {
                        Ok(()) => done = true,
                        Err(e) if direct_refused(&e) => {
                            tracing::warn!(
                                path = %l.path.display(),
                                error = %e,
                                "direct read refused; retrying buffered, and reading buffered from now on"
                            );
                            self.direct.store(false, Ordering::Relaxed);
                        }
                        Err(e) => return Err(io_err(blob.padded, e)),
                    }
                }
            }
            if !done {
                read_exact_at(&l.file, buf, blob.offset).map_err(|e| io_err(blob.padded, e))?;
            }
        } else {
            // A caller's unaligned or short buffer: exactly the blob, buffered.
            read_exact_at(&l.file, &mut dst[..blob.len], blob.offset)
                .map_err(|e| io_err(blob.len, e))?;
        }
        if verify {
            let got = xxh3_64(&dst[..blob.len]);
            if got != blob.checksum {
                return Err(Error::ExpertRead {
                    layer,
                    expert,
                    reason: format!(
                        "checksum mismatch: {} bytes at offset {} of {} hash to {} ({CHECKSUM_ALGO}), the index says {}; the pack is corrupt (storage error?): delete {} and re-run the pack example",
                        blob.len,
                        blob.offset,
                        l.path.display(),
                        hex64(got),
                        hex64(blob.checksum),
                        self.dir.display()
                    ),
                    cause: None,
                });
            }
        }
        Ok(())
    }
}

/// Reads the first block of a file opened for direct I/O, so a file system that accepts
/// the flag but refuses the reads (`EINVAL`) is found at open.
fn probe_direct(f: &File, size: u64) -> std::io::Result<()> {
    if size < READ_ALIGN as u64 {
        return Ok(());
    }
    let mut buf = AlignedBuf::new(READ_ALIGN);
    read_exact_at(f, &mut buf[..READ_ALIGN], 0)
}

impl ExpertStore for PackedStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layers.get(layer)?.as_ref().map(|l| &l.layout)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        self.read(layer, expert, dst, self.verify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct read the file system refuses (here: a misaligned buffer) is classified
    /// as "fall back to buffered", not as an I/O error.
    #[cfg(target_os = "linux")]
    #[test]
    fn refused_direct_reads_are_recognised() {
        let path =
            std::env::temp_dir().join(format!("moestream-direct-probe-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 2 * READ_ALIGN]).unwrap();
        let result = open_direct(&path).and_then(|f| {
            let mut buf = AlignedBuf::new(2 * READ_ALIGN);
            read_exact_at(&f, &mut buf[1..READ_ALIGN + 1], 0)
        });
        let _ = std::fs::remove_file(&path);
        match result {
            Err(e) => assert!(direct_refused(&e), "{e}"),
            Ok(()) => println!("this file system ignores O_DIRECT alignment"),
        }
    }

    /// A direct read refused midway (`EINVAL` after part of the buffer was written) falls
    /// back to a buffered read of the whole blob, which overwrites what the direct read
    /// left, and turns direct reads off for good; any other error is an error naming the
    /// expert.
    #[cfg(unix)]
    #[test]
    fn direct_read_refused_midway_falls_back_to_buffered() {
        use crate::synthetic::SyntheticSpec;

        fn refused(parts: Vec<ReadPart<'_>>, _: usize) -> PartsResult {
            for p in parts {
                let half = p.buf.len() / 2;
                p.buf[..half].fill(0xa5);
            }
            Err((0, std::io::Error::from_raw_os_error(libc::EINVAL)))
        }
        fn failing(_: Vec<ReadPart<'_>>, _: usize) -> PartsResult {
            Err((0, std::io::Error::from_raw_os_error(libc::EIO)))
        }
        fn unexpected(_: Vec<ReadPart<'_>>, _: usize) -> PartsResult {
            panic!("a direct read after direct reads were turned off")
        }

        let base =
            std::env::temp_dir().join(format!("moestream-direct-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let spec = SyntheticSpec {
            hidden_size: 64,
            moe_intermediate_size: 32,
            num_layers: 2,
            num_experts: 4,
            top_k: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 32,
            vocab_size: 64,
            quant: Some((4, 32)),
            ..SyntheticSpec::default()
        };
        let model = spec.write(base.join("model")).unwrap();
        let pack = base.join("pack");
        pack_experts(&model, &PackOptions::new().out(&pack), |_| Ok(())).unwrap();
        let plain = PackedStore::open(&pack).unwrap();
        let mut store =
            PackedStore::open_with(&pack, PackedStoreOptions::default().direct_io(true)).unwrap();
        // Whatever this file system granted, direct reads in use, through plain handles.
        for l in store.layers.iter_mut().flatten() {
            l.direct = Some(File::open(&l.path).unwrap());
        }
        store.direct.store(true, Ordering::Relaxed);
        // The bytes themselves are compared, not left to the checksum.
        store.verify = false;
        let (layer, len) = store
            .layers
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.as_ref().map(|l| (i, l.layout.bytes)))
            .unwrap();
        let mut want = AlignedBuf::new(len);
        let mut got = AlignedBuf::new(len);
        plain.read_expert(layer, 1, &mut want).unwrap();

        store.direct_read = refused;
        store.read_expert(layer, 1, &mut got).unwrap();
        assert_eq!(got[..len], want[..len]);
        assert!(!store.direct_io_active());
        store.direct_read = unexpected;
        plain.read_expert(layer, 2, &mut want).unwrap();
        store.read_expert(layer, 2, &mut got).unwrap();
        assert_eq!(got[..len], want[..len]);

        store.direct.store(true, Ordering::Relaxed);
        store.direct_read = failing;
        match store.read_expert(layer, 3, &mut got) {
            Err(Error::ExpertRead {
                layer: l,
                expert: 3,
                cause: Some(_),
                ..
            }) => assert_eq!(l, layer),
            other => panic!("expected an ExpertRead error, got {other:?}"),
        }
        assert!(
            store.direct_io_active(),
            "a real I/O error is not a refusal"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn partial_names() {
        assert!(is_partial_name(Path::new("/a/moestream-pack.partial-12")));
        assert!(!is_partial_name(Path::new("/a/moestream-pack")));
        assert_eq!(parse_hex64(&hex64(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_hex64("12"), None);
    }
}
