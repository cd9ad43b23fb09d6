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

/// A host-side matrix ready for upload: `rows` rows of `cols` elements of `format`, row-major, `data`
/// laid out as `layout` says. Borrowed from a memory-mapped file where it can be.
pub struct HostMatrix<'a> {
    pub name: String,
    pub format: QuantType,
    pub rows: usize,
    pub cols: usize,
    pub data: std::borrow::Cow<'a, [u8]>,
    pub layout: HostLayout,
}

/// How a [`HostMatrix`]'s data is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostLayout {
    /// The GPU layout of its format (engine/src/quant.rs), copied as it is.
    Gpu,
    /// ggml's blocks of a padded format (`quant::gpu_padded`: a GGUF file's Q8_0, Q4_0, Q5_0, Q6_K),
    /// put into the GPU layout as they are written into the buffer (`quant::repack_pieces`), so that
    /// no host copy of the whole matrix is made.
    File,
}

impl HostMatrix<'_> {
    /// Bytes of one row of `data`.
    fn host_row_bytes(&self) -> usize {
        match self.layout {
            HostLayout::Gpu => gpu_row_bytes(self.format, self.cols),
            HostLayout::File => self.format.row_bytes(self.cols),
        }
    }

    /// Rows `row ..` into `dst`, which holds a whole number of rows in the GPU layout.
    fn write_rows(&self, row: usize, mut dst: wgpu::WriteOnly<'_, [u8]>) {
        let n = dst.len() / gpu_row_bytes(self.format, self.cols);
        let rb = self.host_row_bytes();
        let src = &self.data[row * rb..(row + n) * rb];
        match self.layout {
            HostLayout::Gpu => dst.copy_from_slice(src),
            HostLayout::File => {
                let mut at = 0;
                crate::quant::repack_pieces(self.format, src, |piece| {
                    dst.slice(at..at + piece.len()).copy_from_slice(piece);
                    at += piece.len();
                });
            }
        }
    }

    /// The data in the GPU layout (a copy where it is the file's).
    pub fn gpu_data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.layout {
            HostLayout::Gpu => std::borrow::Cow::Borrowed(&self.data),
            HostLayout::File => crate::quant::repack_for_gpu_bytes(self.format, &self.data),
        }
    }
}

/// Where the rows of a stacked matrix's second format start (q and k in one format stacked with v in
/// another, as one QKV matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub format: QuantType,
    /// The first row in `format`.
    pub row: usize,
    /// The word of the buffer where those rows start: a multiple of 4 (the first run is padded to
    /// it), so that the quantized matvec's vec4 loads see the second run's blocks as they see a
    /// buffer's first (matvec_quant.wgsl, `unit_fetch`).
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
        for p in parts {
            check_host(p)?;
        }
        let shapes: Vec<Shape> = parts.iter().map(|p| (p.format, p.rows, p.cols)).collect();
        let Some(second) = stack_layout(gpu, &shapes, align) else {
            return Ok(None);
        };
        let name = parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let total = stacked_bytes(&shapes, second);
        let buffer = gpu.storage_fill(&name, total, |mut dst| {
            let mut at = 0;
            for p in parts {
                if let Some(s) = second.filter(|s| s.format == p.format) {
                    // The second run starts at its segment's word (after the first run's padding).
                    at = at.max(s.word * 4);
                }
                let len = p.rows * gpu_row_bytes(p.format, p.cols);
                p.write_rows(0, dst.slice(at..at + len));
                at += len;
            }
        })?;
        Ok(Some(Self::stacked(name, &shapes, second, buffer)))
    }

    /// The stacked matrix of `shapes` (`stack_layout` said it stacks) in `buffer`.
    fn stacked(
        name: String,
        shapes: &[Shape],
        second: Option<Segment>,
        buffer: wgpu::Buffer,
    ) -> Matrix {
        let rows = shapes.iter().map(|s| s.1).sum();
        Matrix {
            name,
            format: shapes[0].0,
            rows,
            cols: shapes[0].2,
            chunks: vec![MatrixChunk {
                buffer,
                row_start: 0,
                rows,
            }],
            second,
        }
    }

    /// Interleave the rows of two matrices of one shape and format (a0, b0, a1, b1, ...): the MLP's
    /// gate and up as one matrix whose row pairs the GLU epilogue combines. Chunks hold whole pairs.
    /// None when the formats or shapes differ.
    pub fn upload_interleaved(gpu: &Gpu, a: &HostMatrix, b: &HostMatrix) -> Result<Option<Matrix>> {
        if a.format != b.format || a.rows != b.rows || a.cols != b.cols || a.layout != b.layout {
            return Ok(None);
        }
        check_host(a)?;
        let row_bytes = check_host(b)?;
        // Row r of the result is row r / 2 of a (r even) or of b (r odd), written straight into the
        // buffers.
        let fill = |row_start: usize, mut dst: wgpu::WriteOnly<'_, [u8]>| {
            for i in 0..dst.len() / row_bytes {
                let r = row_start + i;
                let src = if r.is_multiple_of(2) { a } else { b };
                src.write_rows(r / 2, dst.slice(i * row_bytes..(i + 1) * row_bytes));
            }
        };
        let name = format!("{}|{}", a.name, b.name);
        let shape = (a.format, 2 * a.rows, a.cols);
        Self::upload_rows(gpu, &name, shape, gpu.caps.max_storage_binding, 2, fill).map(Some)
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
        check_host(m)?;
        let fill = |row_start: usize, dst: wgpu::WriteOnly<'_, [u8]>| m.write_rows(row_start, dst);
        let shape = (m.format, m.rows, m.cols);
        Self::upload_rows(gpu, &m.name, shape, max_chunk_bytes, align, fill)
    }

    /// A matrix of `shape` (format, rows, cols) in equal chunks of whole multiples of `align` rows, each
    /// at most `max_chunk_bytes` (and the binding limit); `fill(row_start, dst)` writes a chunk's rows
    /// from `row_start` on into `dst` (a whole number of rows in the GPU layout).
    fn upload_rows(
        gpu: &Gpu,
        name: &str,
        shape: Shape,
        max_chunk_bytes: u64,
        align: usize,
        fill: impl Fn(usize, wgpu::WriteOnly<'_, [u8]>),
    ) -> Result<Matrix> {
        let row_bytes = gpu_row_bytes(shape.0, shape.2);
        let plan = chunk_rows(gpu, shape, max_chunk_bytes, align);
        let n_chunks = plan.len();
        let mut chunks = Vec::with_capacity(n_chunks);
        for (row_start, rows) in plan {
            let label = if n_chunks == 1 {
                name.to_string()
            } else {
                format!("{name}[{row_start}..{}]", row_start + rows)
            };
            chunks.push(MatrixChunk {
                buffer: gpu.storage_fill(&label, rows * row_bytes, |dst| fill(row_start, dst))?,
                row_start,
                rows,
            });
        }
        Ok(Self::chunked(name, shape, chunks))
    }

    fn chunked(name: &str, (format, rows, cols): Shape, chunks: Vec<MatrixChunk>) -> Matrix {
        Matrix {
            name: name.to_string(),
            format,
            rows,
            cols,
            chunks,
            second: None,
        }
    }

    /// A matrix of `shape` laid out exactly as `upload` (or, `pairs`, `upload_interleaved` of two
    /// matrices of half its rows) would, every chunk bound to `buffer` instead of holding data: what
    /// a forward needs to list its pipelines ([`crate::graph::Graph::probe`]) before the weights are
    /// read.
    pub fn placeholder(
        gpu: &Gpu,
        name: &str,
        shape: Shape,
        pairs: bool,
        buffer: &wgpu::Buffer,
    ) -> Matrix {
        let align = if pairs { 2 } else { 1 };
        let chunks = chunk_rows(gpu, shape, gpu.caps.max_storage_binding, align)
            .into_iter()
            .map(|(row_start, rows)| MatrixChunk {
                buffer: buffer.clone(),
                row_start,
                rows,
            })
            .collect();
        Self::chunked(name, shape, chunks)
    }

    /// The placeholder of `upload_stacked` over matrices of `shapes`; None when they would not stack.
    pub fn placeholder_stacked(
        gpu: &Gpu,
        name: String,
        shapes: &[Shape],
        align: usize,
        buffer: &wgpu::Buffer,
    ) -> Option<Matrix> {
        let second = stack_layout(gpu, shapes, align)?;
        Some(Self::stacked(name, shapes, second, buffer.clone()))
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// A matrix's (format, rows, cols).
pub type Shape = (QuantType, usize, usize);

/// Whether matrices of `shapes` stack into one (`Matrix::upload_stacked`): None if not, else where
/// the rows of their second format start, if they have one.
fn stack_layout(gpu: &Gpu, shapes: &[Shape], align: usize) -> Option<Option<Segment>> {
    let &(first, _, cols) = shapes.first()?;
    if shapes.iter().any(|s| s.2 != cols) {
        return None;
    }
    let bytes = |s: &Shape| gpu_row_bytes(s.0, s.2) * s.1;
    let second = match shapes.iter().position(|s| s.0 != first) {
        None => None,
        Some(i) => {
            let f = shapes[i].0;
            let rows: usize = shapes[..i].iter().map(|s| s.1).sum();
            let words: usize = shapes[..i].iter().map(|s| bytes(s) / 4).sum();
            let floats = |t: QuantType| FLOATS.contains(&t);
            if shapes[i..].iter().any(|s| s.0 != f)
                || floats(f) != floats(first)
                || !rows.is_multiple_of(align)
            {
                return None;
            }
            Some(Segment {
                format: f,
                row: rows,
                word: words.next_multiple_of(4),
            })
        }
    };
    let total = stacked_bytes(shapes, second) as u64;
    (total <= gpu.caps.max_storage_binding).then_some(second)
}

/// The bytes of matrices of `shapes` stacked with `second` (from `stack_layout`): the first run, its
/// padding up to the second's word, the second run.
fn stacked_bytes(shapes: &[Shape], second: Option<Segment>) -> usize {
    let bytes = |s: &Shape| gpu_row_bytes(s.0, s.2) * s.1;
    match second {
        None => shapes.iter().map(bytes).sum(),
        Some(seg) => {
            seg.word * 4
                + shapes
                    .iter()
                    .filter(|s| s.0 == seg.format)
                    .map(bytes)
                    .sum::<usize>()
        }
    }
}

/// The chunks (first row, rows) of a matrix of `shape`: equal, each a whole multiple of `align` rows
/// and at most `max_chunk_bytes` (and the binding limit).
fn chunk_rows(gpu: &Gpu, shape: Shape, max_chunk_bytes: u64, align: usize) -> Vec<(usize, usize)> {
    let (format, rows, cols) = shape;
    let row_bytes = gpu_row_bytes(format, cols);
    let max_rows =
        (max_chunk_bytes.min(gpu.caps.max_storage_binding) as usize / row_bytes).max(align) / align
            * align;
    let n_chunks = rows.div_ceil(max_rows);
    let per_chunk = rows.div_ceil(n_chunks.max(1)).div_ceil(align) * align;
    (0..rows)
        .step_by(per_chunk.max(1))
        .map(|r| (r, per_chunk.min(rows - r)))
        .collect()
}

/// Check a host matrix's size and row length against its format; its row bytes.
fn check_host(m: &HostMatrix) -> Result<usize> {
    let host_bytes = m.host_row_bytes();
    if m.data.len() != host_bytes * m.rows
        || (m.layout == HostLayout::File && !crate::quant::gpu_padded(m.format))
    {
        return Err(Error::Model(format!(
            "tensor '{}': {} bytes ({:?} layout), expected {} for [{}, {}] {}",
            m.name,
            m.data.len(),
            m.layout,
            host_bytes * m.rows,
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
    Ok(gpu_row_bytes(m.format, m.cols))
}

/// A vector of f32 (norm weight, bias) on the GPU.
pub fn upload_f32(gpu: &Gpu, name: &str, v: &[f32]) -> Result<wgpu::Buffer> {
    gpu.storage_init(name, bytemuck::cast_slice(v))
}
