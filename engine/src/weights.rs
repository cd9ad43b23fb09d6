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

/// Where the rows of a stacked matrix's second format start (q and k in one format stacked with v in
/// another, as one QKV matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub format: QuantType,
    /// The first row in `format`.
    pub row: usize,
    /// The word of the buffer where those rows start.
    pub word: usize,
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
    /// Rows from `second.row` on are in another format (a stacked matrix, one chunk).
    pub second: Option<Segment>,
}

impl Matrix {
    pub fn upload(gpu: &Gpu, m: &HostMatrix) -> Result<Matrix> {
        Self::upload_chunked(gpu, m, gpu.caps.max_storage_binding)
    }

    /// Stack matrices of the same width into one (rows of `parts[0]`, then `parts[1]`, ...), for one
    /// dispatch over all of them. At most two formats, in two runs (A.., B..), both float or both
    /// quantized, the second starting on a multiple of `align` rows, and the whole within one binding;
    /// None when they cannot be stacked.
    pub fn upload_stacked(gpu: &Gpu, parts: &[HostMatrix], align: usize) -> Result<Option<Matrix>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        for p in parts {
            check_host(p)?;
        }
        let cols = first.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return Ok(None);
        }
        let split = parts.iter().position(|p| p.format != first.format);
        let second = match split {
            None => None,
            Some(i) => {
                let f = parts[i].format;
                let rows: usize = parts[..i].iter().map(|p| p.rows).sum();
                let words: usize = parts[..i].iter().map(|p| p.data.len() / 4).sum();
                let floats = |t: QuantType| FLOATS.contains(&t);
                if parts[i..].iter().any(|p| p.format != f)
                    || floats(f) != floats(first.format)
                    || !rows.is_multiple_of(align)
                {
                    return Ok(None);
                }
                Some(Segment {
                    format: f,
                    row: rows,
                    word: words,
                })
            }
        };
        let total: u64 = parts.iter().map(|p| p.data.len() as u64).sum();
        if total > gpu.caps.max_storage_binding {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(total as usize);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        let name = parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let rows = parts.iter().map(|p| p.rows).sum();
        let buffer = gpu.storage_init(&name, &data)?;
        Ok(Some(Matrix {
            name,
            format: first.format,
            rows,
            cols,
            chunks: vec![MatrixChunk {
                buffer,
                row_start: 0,
                rows,
            }],
            second,
        }))
    }

    /// Interleave the rows of two matrices of one shape and format (a0, b0, a1, b1, ...): the MLP's
    /// gate and up as one matrix whose row pairs the GLU epilogue combines. Chunks hold whole pairs.
    /// None when the formats or shapes differ.
    pub fn upload_interleaved(gpu: &Gpu, a: &HostMatrix, b: &HostMatrix) -> Result<Option<Matrix>> {
        if a.format != b.format
            || a.rows != b.rows
            || a.cols != b.cols
            || a.data.len() != b.data.len()
        {
            return Ok(None);
        }
        let row_bytes = gpu_row_bytes(a.format, a.cols);
        let mut data = Vec::with_capacity(2 * a.data.len());
        for r in 0..a.rows {
            data.extend_from_slice(&a.data[r * row_bytes..(r + 1) * row_bytes]);
            data.extend_from_slice(&b.data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let host = HostMatrix {
            name: format!("{}|{}", a.name, b.name),
            format: a.format,
            rows: 2 * a.rows,
            cols: a.cols,
            data: std::borrow::Cow::Owned(data),
        };
        Self::upload_aligned(gpu, &host, gpu.caps.max_storage_binding, 2).map(Some)
    }

    /// Upload with chunks of at most `max_chunk_bytes` (the binding limit; tests pass less to exercise
    /// the split on small matrices).
    pub fn upload_chunked(gpu: &Gpu, m: &HostMatrix, max_chunk_bytes: u64) -> Result<Matrix> {
        Self::upload_aligned(gpu, m, max_chunk_bytes, 1)
    }

    /// As `upload_chunked`, every chunk a multiple of `align` rows.
    fn upload_aligned(
        gpu: &Gpu,
        m: &HostMatrix,
        max_chunk_bytes: u64,
        align: usize,
    ) -> Result<Matrix> {
        let row_bytes = check_host(m)?;
        let max_rows = (max_chunk_bytes.min(gpu.caps.max_storage_binding) as usize / row_bytes)
            .max(align)
            / align
            * align;
        // Split into equal chunks, each under the binding limit.
        let n_chunks = m.rows.div_ceil(max_rows);
        let per_chunk = m.rows.div_ceil(n_chunks).div_ceil(align) * align;
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
            second: None,
        })
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// Check a host matrix's size and row length against its format; its row bytes.
fn check_host(m: &HostMatrix) -> Result<usize> {
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
    Ok(row_bytes)
}

/// A vector of f32 (norm weight, bias) on the GPU.
pub fn upload_f32(gpu: &Gpu, name: &str, v: &[f32]) -> Result<wgpu::Buffer> {
    gpu.storage_init(name, bytemuck::cast_slice(v))
}
