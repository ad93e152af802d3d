//! Memory-mapped safetensors: one file (`model.safetensors`) or shards listed in
//! `model.safetensors.index.json`. Tensors stay in the mapping; nothing is copied at load
//! (`mapped_file` guards the mappings against the files changing).

use crate::error::{EngineError, Result};
use crate::mapped_file::MappedFile;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// Element types the engine computes from (always accumulating in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
    /// Rounds an f32 to this type and back (how HF casts a constant to the weight dtype).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::BF16 => half::bf16::from_f32(x).to_f32(),
            DType::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

/// A tensor inside a mapped file.
#[derive(Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    map: Arc<MappedFile>,
    range: Range<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype.name(), self.shape)
    }
}

impl Tensor {
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map.bytes()[self.range.clone()]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// (rows, cols) of the tensor read as a matrix: a vector is one row, higher ranks fold
    /// their trailing dimensions into the columns.
    pub fn matrix_dims(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            s => (s[0], s[1..].iter().product()),
        }
    }

    /// Element `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        element(self.bytes(), self.dtype, i)
    }

    /// The whole tensor as f32 (for small tensors: norms, heads).
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.numel()).map(|i| self.get(i)).collect()
    }
}

/// Element `i` of a little-endian buffer of `dtype`, as f32.
#[inline]
pub fn element(bytes: &[u8], dtype: DType, i: usize) -> f32 {
    match dtype {
        DType::F32 => {
            let b = &bytes[4 * i..4 * i + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        DType::BF16 => {
            let b = &bytes[2 * i..2 * i + 2];
            f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }
        DType::F16 => {
            let b = &bytes[2 * i..2 * i + 2];
            half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
        }
    }
}

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// The weight files a model was loaded from, as long as something (a CPU backend's matrices)
/// still reads them: a backend that copied its weights away (a GPU's) drops its tensors, and
/// then a change to the files no longer concerns it.
#[derive(Clone, Default)]
pub struct ModelFiles(Vec<Weak<MappedFile>>);

impl ModelFiles {
    /// After every step (one `fstat` a file): why the weights in use can no longer be trusted.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.0
            .iter()
            .filter_map(Weak::upgrade)
            .try_for_each(|f| f.check())
    }

    /// Now and then: the headers reread and compared.
    pub fn check_headers(&self) -> std::result::Result<(), String> {
        self.0
            .iter()
            .filter_map(Weak::upgrade)
            .try_for_each(|f| f.check_header())
    }
}

/// Every tensor of a model directory.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<Arc<MappedFile>>,
    entries: HashMap<String, Entry>,
}

impl WeightStore {
    /// Maps `dir/model.safetensors`, or the shards of `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::config(&index, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::config(&index, "field `weight_map` is missing"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut store = WeightStore {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            entries: HashMap::new(),
        };
        for name in names {
            store.add_file(&dir.join(name))?;
        }
        Ok(store)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let mut map = MappedFile::open(path)?;
        let bad = |message: String| EngineError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(map.bytes()).map_err(|e| bad(e.to_string()))?;
        map.set_header(8 + header_len)?;
        let base = 8 + header_len;
        let file_index = self.files.len();
        for (name, info) in meta.tensors() {
            let dtype = match info.dtype {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F16 => DType::F16,
                other => {
                    return Err(EngineError::TensorDtype {
                        path: path.to_path_buf(),
                        name,
                        found: format!("{other:?}"),
                    })
                }
            };
            let (start, end) = info.data_offsets;
            let range = base + start..base + end;
            let numel: usize = info.shape.iter().product();
            if range.end > map.bytes().len() || end - start != numel * dtype.size() {
                return Err(bad(format!("tensor `{name}` lies outside the file")));
            }
            self.entries.insert(
                name,
                Entry {
                    file: file_index,
                    dtype,
                    shape: info.shape.clone(),
                    range,
                },
            );
        }
        tracing::debug!(file = %path.display(), identity = %map.identity(), "weights mapped");
        self.files.push(Arc::new(map));
        Ok(())
    }

    /// Whether a tensor of this name exists (with or without the `model.` prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn resolve(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name).or_else(|| {
            name.strip_prefix("model.")
                .and_then(|short| self.entries.get(short))
        })
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let e = self
            .resolve(name)
            .ok_or_else(|| EngineError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                files: self
                    .files
                    .iter()
                    .filter_map(|m| {
                        m.path()
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let map = &self.files[e.file];
        if e.shape != shape {
            return Err(EngineError::TensorShape {
                path: map.path().to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: e.shape.clone(),
            });
        }
        Ok(Tensor {
            dtype: e.dtype,
            shape: e.shape.clone(),
            map: Arc::clone(map),
            range: e.range.clone(),
        })
    }

    /// The mapped files, to be checked while tensors read from them are in use.
    pub fn files(&self) -> ModelFiles {
        ModelFiles(self.files.iter().map(Arc::downgrade).collect())
    }

    /// Total bytes of tensor data mapped.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.range.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_decode() {
        let f = 1.5f32.to_le_bytes();
        assert_eq!(element(&f, DType::F32, 0), 1.5);
        let b = half::bf16::from_f32(-2.25).to_bits().to_le_bytes();
        assert_eq!(element(&b, DType::BF16, 0), -2.25);
        let h = half::f16::from_f32(0.5).to_bits().to_le_bytes();
        assert_eq!(element(&h, DType::F16, 0), 0.5);
        assert_eq!(DType::BF16.round(59.866_5), 59.75);
    }
}
