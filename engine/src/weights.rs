//! Weights on the GPU. A matrix is uploaded once, in the layout its kernels read, and split by rows into
//! chunks that each fit one storage binding (the device's max_storage_buffer_binding_size: 128 MiB on
//! lavapipe, so the 151936 x 896 embedding / LM head of Qwen2-0.5B takes several).

use crate::error::{Error, Result};
use crate::gpu::Gpu;

pub use crate::quant::QuantType;

pub use crate::uniforms::wfmt;

/// The float formats (matvec.wgsl / matmul.wgsl); the others are block quantizations.
pub const FLOATS: [QuantType; 3] = [QuantType::F32, QuantType::F16, QuantType::BF16];

/// Bytes of one row of `cols` elements in the GPU layout (quant.rs documents it).
pub fn gpu_row_bytes(t: QuantType, cols: usize) -> usize {
    t.gpu_row_words(cols) * 4
}

/// A host-side matrix ready for upload: `rows` rows of `cols` elements, `data` in the GPU layout of
/// `format`, row-major. Borrowed from a memory-mapped file where the file layout already matches.
pub struct HostMatrix<'a> {
    pub name: String,
    pub format: QuantType,
    pub rows: usize,
    pub cols: usize,
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// One binding's worth of rows.
#[derive(Clone)]
pub struct MatrixChunk {
    pub buffer: wgpu::Buffer,
    pub row_start: usize,
    pub rows: usize,
}

/// A weight matrix [rows, cols] on the GPU (torch's [out_features, in_features]).
#[derive(Clone)]
pub struct Matrix {
    pub name: String,
    pub format: QuantType,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<MatrixChunk>,
}

impl Matrix {
    pub fn upload(gpu: &Gpu, m: &HostMatrix) -> Result<Matrix> {
        Self::upload_chunked(gpu, m, gpu.caps.max_storage_binding)
    }

    /// Upload with chunks of at most `max_chunk_bytes` (the binding limit; tests pass less to exercise
    /// the split on small matrices).
    pub fn upload_chunked(gpu: &Gpu, m: &HostMatrix, max_chunk_bytes: u64) -> Result<Matrix> {
        let row_bytes = gpu_row_bytes(m.format, m.cols);
        if m.data.len() != row_bytes * m.rows {
            return Err(Error::Model(format!(
                "tensor '{}': {} bytes, expected {} for [{}, {}] {}",
                m.name,
                m.data.len(),
                row_bytes * m.rows,
                m.rows,
                m.cols,
                m.format.name()
            )));
        }
        if !m.cols.is_multiple_of(8) || !m.cols.is_multiple_of(m.format.block_size()) {
            return Err(Error::Model(format!(
                "tensor '{}': row length {} is not a multiple of 8 and of the {} block size {}",
                m.name,
                m.cols,
                m.format.name(),
                m.format.block_size()
            )));
        }
        let max_rows =
            (max_chunk_bytes.min(gpu.caps.max_storage_binding) as usize / row_bytes).max(1);
        // Split into equal chunks, each under the binding limit.
        let n_chunks = m.rows.div_ceil(max_rows);
        let per_chunk = m.rows.div_ceil(n_chunks);
        let mut chunks = Vec::with_capacity(n_chunks);
        let mut row_start = 0;
        while row_start < m.rows {
            let rows = per_chunk.min(m.rows - row_start);
            let bytes = &m.data[row_start * row_bytes..(row_start + rows) * row_bytes];
            let label = if n_chunks == 1 {
                m.name.clone()
            } else {
                format!("{}[{}..{}]", m.name, row_start, row_start + rows)
            };
            chunks.push(MatrixChunk {
                buffer: gpu.storage_init(&label, bytes)?,
                row_start,
                rows,
            });
            row_start += rows;
        }
        Ok(Matrix {
            name: m.name.clone(),
            format: m.format,
            rows: m.rows,
            cols: m.cols,
            chunks,
        })
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// A vector of f32 (norm weight, bias) on the GPU.
pub fn upload_f32(gpu: &Gpu, name: &str, v: &[f32]) -> Result<wgpu::Buffer> {
    gpu.storage_init(name, bytemuck::cast_slice(v))
}
