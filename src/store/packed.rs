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

/// Name of the pack folder inside a checkpoint folder, where [`Model`](crate::Model) looks
/// for a pack and where [`pack_experts`] writes one by default.
pub const PACK_DIR_NAME: &str = "moestream-pack";

/// The `"format"` value of a pack's `index.json`.
pub const PACK_FORMAT: &str = "moestream-pack";

/// The pack format version this build writes and reads.
pub const PACK_VERSION: u32 = 1;

/// The index file of a pack.
const INDEX_FILE: &str = "index.json";

/// Checksum algorithm named in the index.
const CHECKSUM_ALGO: &str = "xxh3-64";

/// Domain separator of the identity hash (changes if what it covers changes).
const IDENTITY_DOMAIN: &[u8] = b"moestream-pack identity v1\0";

/// Largest safetensors header the identity hash reads (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

// ---------------------------------------------------------------------------------------
// index.json
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexJson {
    format: String,
    version: u32,
    /// Alignment of every blob's offset and padded length.
    block_bytes: u64,
    /// Checksum algorithm of `experts[].checksum`.
    checksum: String,
    source: SourceJson,
    layers: Vec<LayerJson>,
}

/// The checkpoint a pack was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceJson {
    /// xxh3-64 over config.json and every safetensors file's name, size and header.
    identity: String,
    model_type: String,
    num_hidden_layers: usize,
    hidden_size: usize,
    moe_intermediate_size: usize,
    num_experts: usize,
    config_json: FileIdJson,
    files: Vec<FileIdJson>,
}

/// One source file as covered by the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileIdJson {
    name: String,
    bytes: u64,
    /// xxh3-64 of what the identity covers: the whole config.json, or the 8-byte length
    /// prefix plus JSON header of a safetensors file.
    xxh3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerJson {
    layer: usize,
    file: String,
    file_bytes: u64,
    /// Unpadded bytes of one expert blob (`ExpertLayout::bytes`).
    expert_bytes: usize,
    tensors: Vec<TensorJson>,
    experts: Vec<ExpertJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorJson {
    role: RoleJson,
    format: FormatJson,
    rows: usize,
    cols: usize,
    offset: usize,
    bytes: usize,
    /// Byte offset of the f32 bias (`rows` values), for experts with biases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bias: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleJson {
    Gate,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FormatJson {
    Float {
        dtype: DTypeJson,
    },
    Affine {
        bits: u32,
        group_size: u32,
        scale_dtype: DTypeJson,
    },
    Mxfp4,
    Fp8Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum DTypeJson {
    F32,
    F16,
    BF16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExpertJson {
    offset: u64,
    length: usize,
    checksum: String,
}

impl From<DType> for DTypeJson {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => DTypeJson::F32,
            DType::F16 => DTypeJson::F16,
            DType::BF16 => DTypeJson::BF16,
        }
    }
}

impl From<DTypeJson> for DType {
    fn from(d: DTypeJson) -> Self {
        match d {
            DTypeJson::F32 => DType::F32,
            DTypeJson::F16 => DType::F16,
            DTypeJson::BF16 => DType::BF16,
        }
    }
}

fn role_to_json(r: ExpertRole) -> RoleJson {
    match r {
        ExpertRole::Gate => RoleJson::Gate,
        ExpertRole::Up => RoleJson::Up,
        ExpertRole::Down => RoleJson::Down,
    }
}

fn format_to_json(f: &WeightFormat) -> FormatJson {
    match f {
        WeightFormat::Float(d) => FormatJson::Float { dtype: (*d).into() },
        WeightFormat::Affine(q) => FormatJson::Affine {
            bits: q.bits,
            group_size: q.group_size,
            scale_dtype: q.scale_dtype.into(),
        },
        WeightFormat::Mxfp4 => FormatJson::Mxfp4,
        WeightFormat::Fp8Block => FormatJson::Fp8Block,
    }
}

fn format_from_json(f: FormatJson) -> Result<WeightFormat> {
    Ok(match f {
        FormatJson::Float { dtype } => WeightFormat::Float(dtype.into()),
        FormatJson::Affine {
            bits,
            group_size,
            scale_dtype,
        } => WeightFormat::Affine(AffineQuant::new(bits, group_size, scale_dtype.into())?),
        FormatJson::Mxfp4 => WeightFormat::Mxfp4,
        FormatJson::Fp8Block => WeightFormat::Fp8Block,
    })
}

fn layout_to_json(layout: &ExpertLayout) -> Vec<TensorJson> {
    layout
        .tensors
        .iter()
        .map(|t| TensorJson {
            role: role_to_json(t.role),
            format: format_to_json(&t.format),
            rows: t.rows,
            cols: t.cols,
            offset: t.offset,
            bytes: t.len(),
            bias: t.bias,
        })
        .collect()
}

/// Rebuilds and checks a layer's layout from the index: gate, up, down in that order, each
/// 16-byte aligned, inside the blob and not overlapping.
fn layout_from_json(l: &LayerJson) -> std::result::Result<ExpertLayout, String> {
    let roles = [
        (RoleJson::Gate, ExpertRole::Gate),
        (RoleJson::Up, ExpertRole::Up),
        (RoleJson::Down, ExpertRole::Down),
    ];
    if l.tensors.len() != 3 {
        return Err(format!(
            "layer {}: {} tensors listed, an expert has 3 (gate, up, down)",
            l.layer,
            l.tensors.len()
        ));
    }
    let mut tensors = Vec::with_capacity(3);
    let mut end = 0usize;
    for (t, (want_json, role)) in l.tensors.iter().zip(roles) {
        if t.role != want_json {
            return Err(format!(
                "layer {}: tensor {:?} where {:?} was expected (order is gate, up, down)",
                l.layer, t.role, want_json
            ));
        }
        let format = format_from_json(t.format).map_err(|e| format!("layer {}: {e}", l.layer))?;
        format
            .check(t.cols)
            .map_err(|e| format!("layer {}: {e}", l.layer))?;
        // Every format takes at most 8 bytes per element: with `rows * cols * 8` in range,
        // the byte counts below cannot overflow.
        if t.rows
            .checked_mul(t.cols)
            .and_then(|n| n.checked_mul(8))
            .is_none()
        {
            return Err(format!(
                "layer {}: {:?} [{}, {}] is too large",
                l.layer, role, t.rows, t.cols
            ));
        }
        let tensor = ExpertTensor {
            role,
            format,
            rows: t.rows,
            cols: t.cols,
            offset: t.offset,
            bias: t.bias,
        };
        if tensor.len() != t.bytes {
            return Err(format!(
                "layer {}: {:?} [{}, {}] in {format} takes {} bytes, the index says {}",
                l.layer,
                role,
                t.rows,
                t.cols,
                tensor.len(),
                t.bytes
            ));
        }
        if t.offset % BLOB_ALIGN != 0 || t.offset < end {
            return Err(format!(
                "layer {}: {:?} at offset {} is not 16-byte aligned or overlaps the previous tensor",
                l.layer, role, t.offset
            ));
        }
        end = t.offset.checked_add(t.bytes).ok_or_else(|| {
            format!(
                "layer {}: {:?} at offset {} with {} bytes ends past the largest offset",
                l.layer, role, t.offset, t.bytes
            )
        })?;
        if let Some(b) = t.bias {
            if b % BLOB_ALIGN != 0 || b < end {
                return Err(format!(
                    "layer {}: {:?}'s bias at offset {b} is not 16-byte aligned or overlaps its matrix",
                    l.layer, role
                ));
            }
            end = b.saturating_add(t.rows.saturating_mul(4));
        }
        tensors.push(tensor);
    }
    if end > l.expert_bytes || l.expert_bytes % BLOB_ALIGN != 0 {
        return Err(format!(
            "layer {}: expert_bytes {} does not hold the tensors ({end} bytes) or is not a multiple of 16",
            l.layer, l.expert_bytes
        ));
    }
    let tensors: [ExpertTensor; 3] = tensors
        .try_into()
        .map_err(|_| format!("layer {}: expected 3 tensors", l.layer))?;
    Ok(ExpertLayout {
        tensors,
        bytes: l.expert_bytes,
    })
}

fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

fn parse_hex64(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Reads and checks `index.json` (format name and version first, so a newer format gets a
/// clear message rather than a field error).
fn read_index(dir: &Path) -> Result<IndexJson> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let bad = |reason: String| Error::Pack {
        path: path.clone(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let format = v.get("format").and_then(|f| f.as_str());
    if format != Some(PACK_FORMAT) {
        return Err(bad(format!(
            "\"format\" is {format:?}, expected {PACK_FORMAT:?}: not a moestream pack index"
        )));
    }
    let version = v.get("version").and_then(|f| f.as_u64());
    if version != Some(PACK_VERSION as u64) {
        return Err(bad(format!(
            "pack format version {version:?}, this moestream reads version {PACK_VERSION}: re-run the pack example with this version"
        )));
    }
    let index: IndexJson =
        serde_json::from_value(v).map_err(|e| bad(format!("malformed index: {e}")))?;
    if index.block_bytes != READ_ALIGN as u64 {
        return Err(bad(format!(
            "block_bytes is {}, this moestream reads {READ_ALIGN}",
            index.block_bytes
        )));
    }
    if index.checksum != CHECKSUM_ALGO {
        return Err(bad(format!(
            "checksum algorithm {:?} is not supported ({CHECKSUM_ALGO:?})",
            index.checksum
        )));
    }
    Ok(index)
}

// ---------------------------------------------------------------------------------------
// Source identity
// ---------------------------------------------------------------------------------------

/// What a pack records about its checkpoint; `identity` hashes the rest.
fn checkpoint_files_id(ckpt: &Checkpoint) -> Result<(u64, FileIdJson, Vec<FileIdJson>)> {
    let cfg_path = ckpt.dir().join("config.json");
    let cfg_bytes = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut h = Xxh3::new();
    h.update(IDENTITY_DOMAIN);
    h.update(&(cfg_bytes.len() as u64).to_le_bytes());
    h.update(&cfg_bytes);
    let config = FileIdJson {
        name: "config.json".into(),
        bytes: cfg_bytes.len() as u64,
        xxh3: hex64(xxh3_64(&cfg_bytes)),
    };
    let mut files = Vec::with_capacity(ckpt.files().len());
    for f in ckpt.files() {
        let name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = f.file.metadata().map_err(|e| Error::io(&f.path, e))?.len();
        let mut prefix = [0u8; 8];
        read_exact_at(&f.file, &mut prefix, 0).map_err(|e| Error::io(&f.path, e))?;
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER_BYTES || n + 8 > size {
            return Err(Error::Safetensors {
                path: f.path.clone(),
                reason: format!("header length {n} does not fit the file ({size} bytes)"),
            });
        }
        let mut header = vec![0u8; n as usize];
        read_exact_at(&f.file, &mut header, 8).map_err(|e| Error::io(&f.path, e))?;
        let mut fh = Xxh3::new();
        fh.update(&prefix);
        fh.update(&header);
        let header_hash = fh.digest();
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&size.to_le_bytes());
        h.update(&prefix);
        h.update(&header);
        files.push(FileIdJson {
            name,
            bytes: size,
            xxh3: hex64(header_hash),
        });
    }
    Ok((h.digest(), config, files))
}

/// The identity of a checkpoint as a pack records it: xxh3-64 over `config.json` and the
/// name, size and header (tensor names, dtypes, shapes, offsets) of every safetensors
/// file. Cheap (no tensor data is read); any edit of `config.json` or re-save of a shard
/// changes it.
pub fn checkpoint_identity(ckpt: &Checkpoint) -> Result<u64> {
    Ok(checkpoint_files_id(ckpt)?.0)
}

fn source_json(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<(u64, SourceJson)> {
    let (id, config_json, files) = checkpoint_files_id(ckpt)?;
    let src = SourceJson {
        identity: hex64(id),
        model_type: cfg.model_type.clone(),
        num_hidden_layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        moe_intermediate_size: cfg.moe_intermediate_size,
        num_experts: cfg.num_experts,
        config_json,
        files,
    };
    Ok((id, src))
}

/// A human-readable account of how a checkpoint differs from what a pack recorded.
fn describe_difference(recorded: &SourceJson, ckpt: &Checkpoint) -> String {
    let Ok((_, config, files)) = checkpoint_files_id(ckpt) else {
        return "the checkpoint's files could not be read".into();
    };
    let mut diffs = Vec::new();
    if recorded.config_json != config {
        diffs.push("config.json differs".to_string());
    }
    for f in &files {
        match recorded.files.iter().find(|r| r.name == f.name) {
            None => diffs.push(format!("{} is not in the pack's source", f.name)),
            Some(r) if r.bytes != f.bytes => diffs.push(format!(
                "{} is {} bytes, was {} when packed",
                f.name, f.bytes, r.bytes
            )),
            Some(r) if r != f => diffs.push(format!("{} has a different header", f.name)),
            _ => {}
        }
    }
    for r in &recorded.files {
        if !files.iter().any(|f| f.name == r.name) {
            diffs.push(format!(
                "{} was packed but is not in the checkpoint",
                r.name
            ));
        }
    }
    const SHOWN: usize = 3;
    match diffs.len() {
        0 => "the identity hashes differ".into(),
        n if n <= SHOWN => diffs.join("; "),
        n => format!(
            "{}; and {} more differences",
            diffs[..SHOWN].join("; "),
            n - SHOWN
        ),
    }
}

// ---------------------------------------------------------------------------------------
// PackedStore
// ---------------------------------------------------------------------------------------

/// Options of [`PackedStore::open_with`].
///
/// ```
/// let opts = moestream::PackedStoreOptions::default()
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
/// use moestream::{Model, PackedStore, PackedStoreOptions};
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

// ---------------------------------------------------------------------------------------
// Writing a pack
// ---------------------------------------------------------------------------------------

/// Options of [`pack_experts`].
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    out: Option<PathBuf>,
    force: bool,
}

impl PackOptions {
    /// Defaults: write `<checkpoint>/moestream-pack`, skip if an intact pack of the same
    /// checkpoint is already there.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to write the pack (default `<checkpoint>/moestream-pack`, the only place
    /// [`Model`](crate::Model) looks by itself).
    pub fn out(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(dir.into());
        self
    }

    /// Rewrite the pack even when an intact pack of the same checkpoint is there.
    pub fn force(mut self, on: bool) -> Self {
        self.force = on;
        self
    }
}

/// Where a conversion is, passed to the progress callback after every expert.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PackProgress {
    /// Decoder layer being written.
    pub layer: usize,
    /// Experts written so far (all layers).
    pub experts_done: usize,
    /// Experts to write in all.
    pub experts_total: usize,
    /// Expert bytes written so far (unpadded).
    pub bytes_done: u64,
    /// Expert bytes to write in all (unpadded).
    pub bytes_total: u64,
}

/// What [`pack_experts`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackOutcome {
    /// A new pack was written (replacing a pack of the same checkpoint, if any).
    Written,
    /// An intact pack of the same checkpoint was already there; nothing was written.
    UpToDate,
}

/// The result of [`pack_experts`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PackSummary {
    /// The pack folder.
    pub dir: PathBuf,
    /// Written, or already up to date.
    pub outcome: PackOutcome,
    /// The checkpoint identity recorded in the pack.
    pub identity: u64,
    /// MoE layers packed.
    pub layers: usize,
    /// Experts packed.
    pub experts: usize,
    /// Expert bytes (unpadded).
    pub expert_bytes: u64,
    /// Bytes of the layer files (blobs padded to 16 KiB).
    pub file_bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Converts the experts of the checkpoint in `model_dir` into a pack, reading them through
/// [`SafetensorsStore`] (whatever the checkpoint holds, float or quantized, is copied
/// unchanged). See [`pack_experts_from`] for the rules about the output folder.
pub fn pack_experts(
    model_dir: impl AsRef<Path>,
    options: &PackOptions,
    progress: impl FnMut(&PackProgress) -> Result<()>,
) -> Result<PackSummary> {
    let dir = model_dir.as_ref();
    let cfg = ModelConfig::from_path(dir.join("config.json"))?;
    let ckpt = Arc::new(Checkpoint::open(dir)?);
    let source = SafetensorsStore::new(ckpt.clone(), &cfg)?;
    pack_experts_from(&source, &ckpt, &cfg, options, progress)
}

/// Writes the experts of every MoE layer of `cfg`, as `source` reads them, into a pack
/// that records `ckpt`'s identity.
///
/// The pack is written into `<out>.partial-<pid>` next to the output folder, every file
/// fsynced, `index.json` last, then renamed into place: an interrupted run never leaves a
/// folder that opens as a pack. If `progress` returns an error, the conversion stops, the
/// partial folder is removed and that error is returned. Leftover partial folders of dead
/// processes are removed first (Unix).
///
/// An existing output folder: an intact pack of the same checkpoint is kept
/// ([`PackOutcome::UpToDate`]) unless [`PackOptions::force`]; a broken one of the same
/// checkpoint is replaced; a pack of a different checkpoint, or a folder that is not a
/// pack, is an [`Error::Pack`] (delete it or choose another output).
pub fn pack_experts_from(
    source: &dyn ExpertStore,
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    options: &PackOptions,
    mut progress: impl FnMut(&PackProgress) -> Result<()>,
) -> Result<PackSummary> {
    let start = Instant::now();
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| ckpt.dir().join(PACK_DIR_NAME));
    let (identity, src) = source_json(ckpt, cfg)?;

    let moe_layers = cfg.moe_layers();
    let mut layouts = Vec::with_capacity(moe_layers.len());
    for &l in &moe_layers {
        let layout = source.layout(l).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the source expert store has no expert layout for MoE layer {l}"
            ))
        })?;
        layouts.push((l, layout.clone()));
    }
    let ne = cfg.num_experts;
    let expert_bytes: u64 = layouts.iter().map(|(_, x)| x.bytes as u64).sum::<u64>() * ne as u64;
    let file_bytes: u64 = layouts
        .iter()
        .map(|(_, x)| align_up(x.bytes, READ_ALIGN) as u64)
        .sum::<u64>()
        * ne as u64;
    let summary = |outcome| PackSummary {
        dir: out.clone(),
        outcome,
        identity,
        layers: layouts.len(),
        experts: layouts.len() * ne,
        expert_bytes,
        file_bytes,
        elapsed: start.elapsed(),
    };

    if out.exists() {
        let existing = if out.join(INDEX_FILE).is_file() {
            read_index(&out).ok().and_then(|i| {
                let id = parse_hex64(&i.source.identity)?;
                Some((id, i.source))
            })
        } else {
            None
        };
        match existing {
            Some((id, _)) if id == identity => {
                if !options.force && PackedStore::open(&out).is_ok() {
                    return Ok(summary(PackOutcome::UpToDate));
                }
            }
            Some((_, recorded)) => {
                return Err(Error::Pack {
                    reason: format!(
                        "holds a pack of a different checkpoint than {} ({}); not overwriting it: delete it or choose another output folder",
                        ckpt.dir().display(),
                        describe_difference(&recorded, ckpt),
                    ),
                    path: out,
                })
            }
            None => {
                return Err(Error::Pack {
                    reason: "exists and is not a moestream pack (no readable index.json); not overwriting it: delete it or choose another output folder".into(),
                    path: out,
                })
            }
        }
    }

    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "pack output {} has no usable folder name",
                out.display()
            ))
        })?
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    remove_stale(&parent, &name);
    let pid = std::process::id();
    let tmp = parent.join(format!("{name}.partial-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let index = IndexJson {
        format: PACK_FORMAT.into(),
        version: PACK_VERSION,
        block_bytes: READ_ALIGN as u64,
        checksum: CHECKSUM_ALGO.into(),
        source: src,
        layers: Vec::new(),
    };
    let written = write_pack(
        &tmp,
        source,
        index,
        &layouts,
        ne,
        expert_bytes,
        &mut progress,
    );
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let installed = install(&tmp, &out, &parent, &name, pid);
    if let Err(e) = installed {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(summary(PackOutcome::Written))
}

/// Writes the layer files and the index into `tmp`, fsyncing each.
fn write_pack(
    tmp: &Path,
    source: &dyn ExpertStore,
    mut index: IndexJson,
    layouts: &[(usize, ExpertLayout)],
    ne: usize,
    bytes_total: u64,
    progress: &mut dyn FnMut(&PackProgress) -> Result<()>,
) -> Result<()> {
    let largest = layouts.iter().map(|(_, x)| x.bytes).max().unwrap_or(0);
    let mut buf = AlignedBuf::new(align_up(largest, READ_ALIGN));
    let mut p = PackProgress {
        layer: 0,
        experts_done: 0,
        experts_total: layouts.len() * ne,
        bytes_done: 0,
        bytes_total,
    };
    for (layer, layout) in layouts {
        let (layer, n, padded) = (*layer, layout.bytes, align_up(layout.bytes, READ_ALIGN));
        p.layer = layer;
        let file_name = format!("layer-{layer:03}.experts");
        let path = tmp.join(&file_name);
        let mut file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut experts = Vec::with_capacity(ne);
        for e in 0..ne {
            let dst = &mut buf[..padded];
            source.read_expert(layer, e, dst)?;
            // Stores may write past the blob; the padding is zeros, always.
            dst[n..].fill(0);
            experts.push(ExpertJson {
                offset: (e * padded) as u64,
                length: n,
                checksum: hex64(xxh3_64(&dst[..n])),
            });
            file.write_all(dst).map_err(|err| Error::io(&path, err))?;
            p.experts_done += 1;
            p.bytes_done += n as u64;
            progress(&p)?;
        }
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        index.layers.push(LayerJson {
            layer,
            file: file_name,
            file_bytes: (ne * padded) as u64,
            expert_bytes: n,
            tensors: layout_to_json(layout),
            experts,
        });
    }
    let path = tmp.join(INDEX_FILE);
    let json = serde_json::to_string_pretty(&index)
        .map_err(|e| Error::InvalidArgument(format!("serializing the pack index: {e}")))?;
    let json = compact_pretty(&json, 100);
    let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(json.as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    f.sync_all().map_err(|e| Error::io(&path, e))?;
    sync_dir(tmp)
}

/// Joins the lines of every innermost object or array of pretty-printed JSON onto one line
/// when that line fits in `width` (one expert, one file, one format per line), repeatedly
/// outwards. Relies on the pretty printer's shape: a block opens on a line ending in `{`
/// or `[` and closes on a line of its own; string values never end a line with either.
fn compact_pretty(pretty: &str, width: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    // Per open block: its first line's index in `out`, and whether a child stayed open.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    for line in pretty.lines() {
        let t = line.trim();
        if t.ends_with('{') || t.ends_with('[') {
            stack.push((out.len(), false));
            out.push(line.to_string());
        } else if matches!(t, "}" | "}," | "]" | "],") && !stack.is_empty() {
            let (start, blocked) = stack.pop().unwrap_or_default();
            let mut joined = out[start].clone();
            for inner in &out[start + 1..] {
                joined.push(' ');
                joined.push_str(inner.trim());
            }
            joined.push(' ');
            joined.push_str(t);
            if !blocked && joined.len() <= width {
                out.truncate(start);
                out.push(joined);
            } else {
                out.push(line.to_string());
                if let Some(parent) = stack.last_mut() {
                    parent.1 = true;
                }
            }
        } else {
            out.push(line.to_string());
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Renames the finished `tmp` into `out`, moving a previous pack aside first.
fn install(tmp: &Path, out: &Path, parent: &Path, name: &str, pid: u32) -> Result<()> {
    if out.exists() {
        let old = parent.join(format!("{name}.old-{pid}"));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| Error::io(tmp, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, out).map_err(|e| Error::io(tmp, e))?;
    }
    sync_dir(parent)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Removes `<name>.partial-<pid>` / `<name>.old-<pid>` folders in `parent` left by
/// processes that no longer run (Unix; elsewhere they are left alone).
fn remove_stale(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let Some(rest) = n.strip_prefix(name) else {
            continue;
        };
        let pid = rest
            .strip_prefix(".partial-")
            .or_else(|| rest.strip_prefix(".old-"))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != me && !process_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return true;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_json() {
        let q = WeightFormat::Affine(AffineQuant::new(4, 64, DType::BF16).unwrap());
        let f = WeightFormat::Float(DType::F16);
        for w in [q, f] {
            let j = format_to_json(&w);
            let s = serde_json::to_string(&j).unwrap();
            let back: FormatJson = serde_json::from_str(&s).unwrap();
            assert_eq!(format_from_json(back).unwrap(), w);
        }
        let s = serde_json::to_string(&format_to_json(&q)).unwrap();
        assert_eq!(
            s,
            r#"{"type":"affine","bits":4,"group_size":64,"scale_dtype":"BF16"}"#
        );
    }

    #[test]
    fn layouts_round_trip_and_are_checked() {
        let q6 = WeightFormat::Affine(AffineQuant::new(6, 64, DType::F16).unwrap());
        let q3 = WeightFormat::Affine(AffineQuant::new(3, 32, DType::F32).unwrap());
        let layout = ExpertLayout::swiglu_with([q3, q3, q6], 128, 64).unwrap();
        let mut lj = LayerJson {
            layer: 3,
            file: "layer-003.experts".into(),
            file_bytes: 0,
            expert_bytes: layout.bytes,
            tensors: layout_to_json(&layout),
            experts: Vec::new(),
        };
        assert_eq!(layout_from_json(&lj).unwrap(), layout);
        lj.tensors[1].offset += 16;
        assert!(layout_from_json(&lj).is_err());
        lj.tensors = layout_to_json(&layout);
        lj.tensors[2].bytes += 1;
        assert!(layout_from_json(&lj).unwrap_err().contains("Down"));
        lj.tensors = layout_to_json(&layout);
        lj.tensors.swap(0, 1);
        assert!(layout_from_json(&lj).is_err());
    }

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
    fn compact_pretty_json_is_the_same_json() {
        let v = serde_json::json!({
            "a": [{"x": 1, "y": "}"}, {"x": 2, "y": "{"}],
            "b": {"c": [1, 2, 3], "d": {"e": []}},
            "long": ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]
        });
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let compact = compact_pretty(&pretty, 60);
        let back: serde_json::Value = serde_json::from_str(&compact).unwrap();
        assert_eq!(back, v);
        assert!(compact.contains(r#"{ "x": 1, "y": "}" },"#), "{compact}");
        assert!(compact
            .lines()
            .all(|l| l.len() <= 60 || !l.trim().ends_with(']')));
    }

    #[test]
    fn partial_names() {
        assert!(is_partial_name(Path::new("/a/moestream-pack.partial-12")));
        assert!(!is_partial_name(Path::new("/a/moestream-pack")));
        assert_eq!(parse_hex64(&hex64(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_hex64("12"), None);
    }
}
