//! A pack's `index.json` (its layers, tensors, blobs and checksums) and the identity of
//! the checkpoint it was made from.

use super::*;

/// The index file of a pack.
pub(super) const INDEX_FILE: &str = "index.json";

/// Checksum algorithm named in the index.
pub(super) const CHECKSUM_ALGO: &str = "xxh3-64";

/// Domain separator of the identity hash (changes if what it covers changes).
const IDENTITY_DOMAIN: &[u8] = b"moestream-pack identity v1\0";

/// Largest safetensors header the identity hash reads (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

// ---------------------------------------------------------------------------------------
// index.json
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct IndexJson {
    pub(super) format: String,
    pub(super) version: u32,
    /// Alignment of every blob's offset and padded length.
    pub(super) block_bytes: u64,
    /// Checksum algorithm of `experts[].checksum`.
    pub(super) checksum: String,
    pub(super) source: SourceJson,
    pub(super) layers: Vec<LayerJson>,
}

/// The checkpoint a pack was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SourceJson {
    /// xxh3-64 over config.json and every safetensors file's name, size and header.
    pub(super) identity: String,
    pub(super) model_type: String,
    pub(super) num_hidden_layers: usize,
    pub(super) hidden_size: usize,
    pub(super) moe_intermediate_size: usize,
    pub(super) num_experts: usize,
    pub(super) config_json: FileIdJson,
    pub(super) files: Vec<FileIdJson>,
}

/// One source file as covered by the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FileIdJson {
    pub(super) name: String,
    pub(super) bytes: u64,
    /// xxh3-64 of what the identity covers: the whole config.json, or the 8-byte length
    /// prefix plus JSON header of a safetensors file.
    pub(super) xxh3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LayerJson {
    pub(super) layer: usize,
    pub(super) file: String,
    pub(super) file_bytes: u64,
    /// Unpadded bytes of one expert blob (`ExpertLayout::bytes`).
    pub(super) expert_bytes: usize,
    pub(super) tensors: Vec<TensorJson>,
    pub(super) experts: Vec<ExpertJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TensorJson {
    pub(super) role: RoleJson,
    pub(super) format: FormatJson,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) offset: usize,
    pub(super) bytes: usize,
    /// Byte offset of the f32 bias (`rows` values), for experts with biases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) bias: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RoleJson {
    Gate,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum FormatJson {
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
pub(super) enum DTypeJson {
    F32,
    F16,
    BF16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ExpertJson {
    pub(super) offset: u64,
    pub(super) length: usize,
    pub(super) checksum: String,
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

pub(super) fn layout_to_json(layout: &ExpertLayout) -> Vec<TensorJson> {
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
pub(super) fn layout_from_json(l: &LayerJson) -> std::result::Result<ExpertLayout, String> {
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

pub(super) fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

pub(super) fn parse_hex64(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Reads and checks `index.json` (format name and version first, so a newer format gets a
/// clear message rather than a field error).
pub(super) fn read_index(dir: &Path) -> Result<IndexJson> {
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

pub(super) fn source_json(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<(u64, SourceJson)> {
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
pub(super) fn describe_difference(recorded: &SourceJson, ckpt: &Checkpoint) -> String {
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
}
