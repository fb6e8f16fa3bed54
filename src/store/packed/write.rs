//! Writing a pack: [`pack_experts`] and its options, progress and summary.

use super::*;

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
#[non_exhaustive]
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
}
