//! A checkpoint folder: `config.json` plus one `model.safetensors` or sharded files listed
//! in `model.safetensors.index.json`. Every file is validated on open (header bounds, data
//! extent equal to the file size), then memory-mapped for the resident weights; experts are
//! read from the same files with positioned reads by
//! [`SafetensorsStore`](crate::SafetensorsStore).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::{AffineQuant, WeightFormat};

mod matrix;

pub use matrix::MatrixView;

/// Where one tensor's bytes live.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TensorEntry {
    /// Index of the file in [`Checkpoint::files`].
    pub file: usize,
    /// Stored element type.
    pub dtype: safetensors::Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Length of the data in bytes.
    pub len: usize,
}

/// One safetensors file of a checkpoint.
#[derive(Debug)]
#[non_exhaustive]
pub struct CheckpointFile {
    /// Its path.
    pub path: PathBuf,
    /// An open handle, shared with readers.
    pub file: Arc<File>,
    map: Mmap,
}

/// An opened, validated safetensors checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<CheckpointFile>,
    tensors: HashMap<String, TensorEntry>,
}

/// A borrowed view of one floating-point tensor.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TensorView<'a> {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: &'a [usize],
    /// Raw little-endian bytes.
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The values converted to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.dtype.decode(self.bytes)
    }
}

impl Checkpoint {
    /// Opens every safetensors file of the checkpoint in `dir` and indexes its tensors.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (names, weight_map) = if index_path.exists() {
            let (names, map) = read_index(&index_path)?;
            (names, Some(map))
        } else if single.exists() {
            (vec!["model.safetensors".to_string()], None)
        } else {
            let mut found: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Safetensors {
                    path: dir.clone(),
                    reason: "no model.safetensors, model.safetensors.index.json or *.safetensors file in this folder".into(),
                });
            }
            (found, None)
        };

        let mut files = Vec::with_capacity(names.len());
        let mut tensors = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; a checkpoint modified while open is documented
            // as unsupported, as with every mmap-based loader.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
                    path: path.clone(),
                    reason: describe_safetensors_error(&e, map.len()),
                })?;
            let data_start = 8 + header_len as u64;
            for (tname, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                tensors.insert(
                    tname,
                    TensorEntry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        offset: data_start + start as u64,
                        len: end - start,
                    },
                );
            }
            files.push(CheckpointFile {
                path,
                file: Arc::new(file),
                map,
            });
        }
        if let Some(map) = weight_map {
            for (tname, fname) in map {
                let ok = tensors
                    .get(&tname)
                    .is_some_and(|t| names.get(t.file) == Some(&fname));
                if !ok {
                    return Err(Error::Safetensors {
                        path: dir.join(&fname),
                        reason: format!(
                            "model.safetensors.index.json places tensor {tname:?} in this file, but it is not there"
                        ),
                    });
                }
            }
        }
        Ok(Checkpoint {
            dir,
            files,
            tensors,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files, in index order.
    pub fn files(&self) -> &[CheckpointFile] {
        &self.files
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of all tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Where a tensor lives, or [`Error::MissingTensor`].
    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })
    }

    /// Path of the file holding `entry`.
    pub fn path_of(&self, entry: &TensorEntry) -> &Path {
        &self.files[entry.file].path
    }

    /// A floating-point tensor, checked against the expected shape.
    pub fn float(&self, name: &str, expected: &[usize]) -> Result<TensorView<'_>> {
        let e = self.entry(name)?;
        let path = self.path_of(e);
        if e.shape != expected {
            return Err(Error::Shape {
                name: name.to_string(),
                path: path.to_path_buf(),
                expected: expected.to_vec(),
                found: e.shape.clone(),
            });
        }
        let dtype = DType::from_safetensors(e.dtype).ok_or_else(|| Error::Dtype {
            name: name.to_string(),
            path: path.to_path_buf(),
            found: format!("{:?}", e.dtype),
            expected: "F32, F16 or BF16",
        })?;
        let start = e.offset as usize;
        let bytes = &self.files[e.file].map[start..start + e.len];
        Ok(TensorView {
            dtype,
            shape: &e.shape,
            bytes,
        })
    }
}

/// Shard file names, and (tensor, file) pairs of the weight map.
type IndexContents = (Vec<String>, Vec<(String, String)>);

fn read_index(path: &Path) -> Result<IndexContents> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files = BTreeSet::new();
    let mut pairs = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(bad(format!(
                "weight_map[{tensor:?}] = {f:?} is not a plain file name"
            )));
        }
        files.insert(f.to_string());
        pairs.push((tensor.clone(), f.to_string()));
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok((files.into_iter().collect(), pairs))
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {file_len} bytes, too short for a safetensors header"),
        E::InvalidHeaderLength => format!(
            "the header length exceeds the file size ({file_len} bytes): truncated or not a safetensors file"
        ),
        E::MetadataIncompleteBuffer => format!(
            "the tensor data does not match the file size ({file_len} bytes): the file is truncated or has trailing bytes"
        ),
        other => other.to_string(),
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving a file cursor.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0usize;
        while done < buf.len() {
            let n = file.seek_read(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}
