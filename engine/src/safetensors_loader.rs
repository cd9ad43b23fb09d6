//! Hugging Face safetensors weights: one `model.safetensors` or a sharded set named by
//! `model.safetensors.index.json`, memory-mapped; tensors are looked up by their transformers names.

use crate::error::{Error, Result};
use crate::weights::{HostLayout, HostMatrix, QuantType};
use memmap2::Mmap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The bytes of one shard: memory-mapped by [`SafetensorsWeights::open`], owned by
/// [`SafetensorsWeights::from_bytes`].
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Storage)>,
    index: HashMap<String, Entry>,
}

fn map(path: &Path) -> Result<Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; like every memory-mapping loader we rely on it not being
    // truncated while the model loads.
    unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

impl SafetensorsWeights {
    /// Open `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let v = crate::config::read_json(&index_path)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "no 'weight_map' object"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(Error::format(
                dir,
                "no weights: expected model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut weights = SafetensorsWeights {
            files: Vec::new(),
            index: HashMap::new(),
        };
        for path in shard_paths {
            let mmap = map(&path)?;
            weights.add_shard(path, Storage::Mmap(mmap))?;
        }
        Ok(weights)
    }

    /// One safetensors file held in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &Path) -> Result<Self> {
        let mut weights = SafetensorsWeights {
            files: Vec::new(),
            index: HashMap::new(),
        };
        weights.add_shard(origin.to_path_buf(), Storage::Owned(bytes))?;
        Ok(weights)
    }

    /// Validate a shard's header and index its tensors.
    fn add_shard(&mut self, path: PathBuf, data: Storage) -> Result<()> {
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(data.bytes()).map_err(|e| {
                Error::format(
                    &path,
                    format!("not a valid safetensors file ({e}); truncated or corrupt?"),
                )
            })?;
        let base = 8 + header_len;
        let file = self.files.len();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            self.index.insert(
                name,
                Entry {
                    file,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                },
            );
        }
        self.files.push((path, data));
        Ok(())
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index.get(name).ok_or_else(|| {
            let path = &self.files.first().map(|f| f.0.clone()).unwrap_or_default();
            Error::format(path, format!("tensor '{name}' is missing"))
        })
    }

    fn check_shape(&self, name: &str, e: &Entry, want: &[usize]) -> Result<()> {
        if e.shape != want {
            return Err(Error::format(
                &self.files[e.file].0,
                format!(
                    "tensor '{name}' has shape {:?}, config.json implies {want:?}",
                    e.shape
                ),
            ));
        }
        Ok(())
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].1.bytes()[e.start..e.end]
    }

    /// A [rows, cols] matrix in its stored float format (bf16, f16 or f32), borrowed from the map.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>> {
        let (e, format) = self.matrix_entry(name, rows, cols)?;
        Ok(HostMatrix {
            name: name.to_string(),
            format,
            rows,
            cols,
            data: Cow::Borrowed(self.bytes(e)),
            layout: HostLayout::Gpu,
        })
    }

    /// The format of a [rows, cols] matrix, from the header alone.
    pub fn format(&self, name: &str, rows: usize, cols: usize) -> Result<QuantType> {
        self.matrix_entry(name, rows, cols).map(|(_, f)| f)
    }

    fn matrix_entry(&self, name: &str, rows: usize, cols: usize) -> Result<(&Entry, QuantType)> {
        let e = self.entry(name)?;
        self.check_shape(name, e, &[rows, cols])?;
        let format = match e.dtype {
            safetensors::Dtype::F32 => QuantType::F32,
            safetensors::Dtype::F16 => QuantType::F16,
            safetensors::Dtype::BF16 => QuantType::BF16,
            other => {
                return Err(Error::format(
                    &self.files[e.file].0,
                    format!("tensor '{name}' has dtype {other:?}; supported: BF16, F16, F32"),
                ))
            }
        };
        Ok((e, format))
    }

    /// A vector (norm weight or bias) of `len` elements, converted to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        self.check_shape(name, e, &[len])?;
        let b = self.bytes(e);
        let out = match e.dtype {
            safetensors::Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::format(
                    &self.files[e.file].0,
                    format!("tensor '{name}' has dtype {other:?}; supported: BF16, F16, F32"),
                ))
            }
        };
        Ok(out)
    }

    /// Total bytes of all tensors (for progress reporting).
    pub fn total_bytes(&self) -> u64 {
        self.index.values().map(|e| (e.end - e.start) as u64).sum()
    }
}
