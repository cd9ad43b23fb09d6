//! GGUF reader (versions 2 and 3, little-endian).
//!
//! Layout: `"GGUF"`, u32 version, u64 tensor_count, u64 kv_count; kv_count key/value pairs
//! (string key, u32 value type, value); tensor_count tensor infos (string name, u32 n_dims,
//! u64 dims\[n_dims\], u32 ggml type, u64 offset relative to the data section); padding to
//! `general.alignment` (default 32); the data section. Strings are a u64 length and UTF-8 bytes;
//! arrays a u32 element type, a u64 count and the elements.
//!
//! Everything is validated as llama.cpp's gguf.cpp does, and more: a malformed file gives an
//! [`Error::Format`] naming the field at fault, never a panic, and no count read from the file
//! is used to allocate memory before it has been checked against the file size.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::quant::QuantType;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// GGUF value type ids.
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Name of a GGUF value type id.
fn type_name(t: u32) -> &'static str {
    match t {
        ty::U8 => "u8",
        ty::I8 => "i8",
        ty::U16 => "u16",
        ty::I16 => "i16",
        ty::U32 => "u32",
        ty::I32 => "i32",
        ty::F32 => "f32",
        ty::BOOL => "bool",
        ty::STRING => "string",
        ty::ARRAY => "array",
        ty::U64 => "u64",
        ty::I64 => "i64",
        ty::F64 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of a value of type `t` (strings: the length prefix alone).
fn min_value_size(t: u32) -> Option<u64> {
    Some(match t {
        ty::U8 | ty::I8 | ty::BOOL => 1,
        ty::U16 | ty::I16 => 2,
        ty::U32 | ty::I32 | ty::F32 => 4,
        ty::U64 | ty::I64 | ty::F64 | ty::STRING => 8,
        ty::ARRAY => 12,
        _ => return None,
    })
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn gguf_type(&self) -> u32 {
        match self {
            MetaValue::U8(_) => ty::U8,
            MetaValue::I8(_) => ty::I8,
            MetaValue::U16(_) => ty::U16,
            MetaValue::I16(_) => ty::I16,
            MetaValue::U32(_) => ty::U32,
            MetaValue::I32(_) => ty::I32,
            MetaValue::F32(_) => ty::F32,
            MetaValue::Bool(_) => ty::BOOL,
            MetaValue::String(_) => ty::STRING,
            MetaValue::Array(_) => ty::ARRAY,
            MetaValue::U64(_) => ty::U64,
            MetaValue::I64(_) => ty::I64,
            MetaValue::F64(_) => ty::F64,
        }
    }

    /// The type's name: "u32", "string", "array"...
    pub fn type_name(&self) -> &'static str {
        type_name(self.gguf_type())
    }

    /// Any integer value as i128 (which holds every integer type exactly).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// An integer of any type whose value fits u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// An integer of any type whose value fits i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// An f32 or f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Short description for error messages: the type, and the value of a scalar.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::String(s) if s.len() > 40 => write!(f, "string of {} bytes", s.len()),
            MetaValue::String(s) => write!(f, "string {s:?}"),
            MetaValue::Array(a) => match a.first() {
                Some(e) => write!(f, "array of {} {}", a.len(), e.type_name()),
                None => write!(f, "empty array"),
            },
            MetaValue::Bool(v) => write!(f, "bool {v}"),
            MetaValue::F32(v) => write!(f, "f32 {v}"),
            MetaValue::F64(v) => write!(f, "f64 {v}"),
            v => write!(f, "{} {}", v.type_name(), v.as_i128().unwrap_or_default()),
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Sizes in ggml order: `dims[0]` varies fastest (a torch `[out, in]` weight is `[in, out]`).
    pub dims: Vec<u64>,
    pub ggml_type: QuantType,
    /// Absolute position of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the dims; checked not to overflow when parsed).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The bytes of an opened file.
enum Storage {
    Mmap(memmap2::Mmap),
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

/// A parsed GGUF file: metadata and tensor descriptions, with the file's bytes kept (memory-mapped
/// by [`Gguf::open`]) for [`Gguf::tensor_data`].
pub struct Gguf {
    pub version: u32,
    /// Key/value pairs in file order (keys unique).
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order (names unique).
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (a power of two).
    pub alignment: u64,
    /// Absolute position of the data section.
    pub data_offset: u64,
    path: PathBuf,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    data: Storage,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_bytes", &self.data.bytes().len())
            .finish()
    }
}

/// What [`parse_header`] extracts.
struct Header {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl Gguf {
    /// Opens and validates a GGUF file, memory-mapping it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let data = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; as with any mmap, the file must not be truncated or
            // modified by another process while it is open (model files are not).
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        Self::from_storage(data, path)
    }

    /// Parses and validates a GGUF file held in memory (copied); `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self> {
        let header = parse_header(bytes).map_err(|msg| Error::format(origin, msg))?;
        Ok(Self::assemble(
            header,
            Storage::Owned(bytes.to_vec()),
            origin,
        ))
    }

    /// Like [`Gguf::parse`], taking ownership of the bytes.
    pub fn from_vec(bytes: Vec<u8>, origin: &Path) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes), origin)
    }

    fn from_storage(data: Storage, origin: &Path) -> Result<Self> {
        let header = parse_header(data.bytes()).map_err(|msg| Error::format(origin, msg))?;
        Ok(Self::assemble(header, data, origin))
    }

    fn assemble(h: Header, data: Storage, origin: &Path) -> Self {
        Gguf {
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            alignment: h.alignment,
            data_offset: h.data_offset,
            path: origin.to_path_buf(),
            key_index: h.key_index,
            tensor_index: h.tensor_index,
            data,
        }
    }

    /// The path given to `open` / `parse`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        match self.key_index.get(key).and_then(|&i| self.metadata.get(i)) {
            Some((k, v)) if k == key => Some(v),
            // The pub fields were edited: fall back to a scan.
            _ => self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    /// The error for a required key that is absent.
    pub fn missing(&self, key: &str) -> Error {
        Error::format(&self.path, format!("missing metadata key '{key}'"))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &dyn fmt::Display) -> Error {
        Error::format(
            &self.path,
            format!("key '{key}': expected {expected}, found {found}"),
        )
    }

    /// An integer of any type whose value fits u32; `Ok(None)` when absent.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an unsigned integer that fits u32", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    /// An integer of any type whose value fits u64; `Ok(None)` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an unsigned integer", MetaValue::as_u64)
    }

    /// An f32, or an f64 narrowed to f32; `Ok(None)` when absent.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    /// A bool; `Ok(None)` when absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    /// A string; `Ok(None)` when absent.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// An array of strings; `Ok(None)` when absent.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed_array(key, "string", MetaValue::as_str)
    }

    /// An array of integers (of any type) that fit i32, e.g. `tokenizer.ggml.token_type`;
    /// `Ok(None)` when absent.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.typed_array(key, "integers that fit i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, expected, v)),
        }
    }

    fn typed_array<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Some(items) = v.as_array() else {
            return Err(self.wrong_type(key, &format!("an array of {expected}"), v));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match conv(item) {
                Some(x) => out.push(x),
                None => {
                    return Err(self.wrong_type(
                        key,
                        &format!("an array of {expected}"),
                        &format!("{item} at index {i}"),
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self
            .tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
        {
            Some(t) if t.name == name => Some(t),
            _ => self.tensors.iter().find(|t| t.name == name),
        }
    }

    /// The data of a tensor of this file (`t.size` bytes at `t.offset`). A `TensorInfo` that does
    /// not lie within this file (e.g. from another file) gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = t
            .offset
            .checked_add(t.size)
            .and_then(|end| Some(usize::try_from(t.offset).ok()?..usize::try_from(end).ok()?));
        range.and_then(|r| self.data.bytes().get(r)).unwrap_or(&[])
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A bounds-checked little-endian cursor. `what` closures name the field for error messages and
/// only run on error.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

type Msg = std::result::Result<(), String>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<&'a [u8], String> {
        match self
            .pos
            .checked_add(n)
            .and_then(|end| self.b.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "truncated file: {} at offset {} needs {n} bytes, the file has {} bytes",
                what(),
                self.pos,
                self.b.len()
            )),
        }
    }

    fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A string's bytes: u64 length, checked against the rest of the file, then the bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(format!(
                "{}: string length {len} at offset {} runs past the end of the file ({} bytes)",
                what(),
                self.pos - 8,
                self.b.len()
            ));
        }
        self.take(len as usize, what)
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Msg {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(format!(
                "{} {count} is implausible: at least {min_size} bytes each, but only {} bytes remain after offset {}",
                what(),
                self.remaining(),
                self.pos
            )),
        }
    }
}

fn utf8<'s>(bytes: &'s [u8], what: &dyn Fn() -> String) -> std::result::Result<&'s str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("{} is not valid UTF-8 ({e})", what()))
}

/// Reads one value of type `t` for metadata key `key` (`in_array`: an array element).
fn read_value(
    r: &mut Reader,
    t: u32,
    key: &str,
    in_array: bool,
) -> std::result::Result<MetaValue, String> {
    let what = || format!("value of key '{key}'");
    Ok(match t {
        ty::U8 => MetaValue::U8(r.array::<1>(&what)?[0]),
        ty::I8 => MetaValue::I8(r.array::<1>(&what)?[0] as i8),
        ty::U16 => MetaValue::U16(u16::from_le_bytes(r.array(&what)?)),
        ty::I16 => MetaValue::I16(i16::from_le_bytes(r.array(&what)?)),
        ty::U32 => MetaValue::U32(u32::from_le_bytes(r.array(&what)?)),
        ty::I32 => MetaValue::I32(i32::from_le_bytes(r.array(&what)?)),
        ty::F32 => MetaValue::F32(f32::from_le_bytes(r.array(&what)?)),
        ty::BOOL => MetaValue::Bool(r.array::<1>(&what)?[0] != 0),
        ty::U64 => MetaValue::U64(u64::from_le_bytes(r.array(&what)?)),
        ty::I64 => MetaValue::I64(i64::from_le_bytes(r.array(&what)?)),
        ty::F64 => MetaValue::F64(f64::from_le_bytes(r.array(&what)?)),
        ty::STRING => {
            let bytes = r.string(&what)?;
            MetaValue::String(match std::str::from_utf8(bytes) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    log::warn!("GGUF key '{key}': a string value is not valid UTF-8; invalid bytes replaced");
                    String::from_utf8_lossy(bytes).into_owned()
                }
            })
        }
        ty::ARRAY if in_array => {
            return Err(format!("key '{key}': arrays of arrays are not supported"))
        }
        ty::ARRAY => {
            let et = r.u32(&|| format!("element type of array key '{key}'"))?;
            let count = r.u64(&|| format!("element count of array key '{key}'"))?;
            let Some(min) = min_value_size(et).filter(|_| et != ty::ARRAY) else {
                return Err(if et == ty::ARRAY {
                    format!("key '{key}': arrays of arrays are not supported")
                } else {
                    format!("key '{key}': unknown array element type {et}")
                });
            };
            r.check_count(count, min, &|| {
                format!("key '{key}': array of {} count", type_name(et))
            })?;
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_value(r, et, key, true)?);
            }
            MetaValue::Array(items)
        }
        _ => return Err(format!("key '{key}': unknown value type {t}")),
    })
}

fn parse_header(b: &[u8]) -> std::result::Result<Header, String> {
    let mut r = Reader { b, pos: 0 };

    let magic: [u8; 4] = r.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic \"{}\" (hex {:02x} {:02x} {:02x} {:02x}), expected \"GGUF\": not a GGUF file",
            magic.escape_ascii(),
            magic[0],
            magic[1],
            magic[2],
            magic[3]
        ));
    }
    let version = r.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        0 => return Err("version 0 is invalid, expected 2 or 3".into()),
        1 => return Err("version 1 (GGUF v1) is not supported, expected 2 or 3: reconvert the model".into()),
        v if v & 0xffff == 0 => {
            return Err(format!(
                "version {v:#x} looks byte-swapped: big-endian GGUF files are not supported (expected 2 or 3)"
            ))
        }
        v => return Err(format!("version {v} is not supported, expected 2 or 3")),
    }
    let n_tensors = r.u64(&|| "tensor_count".into())?;
    let n_kv = r.u64(&|| "kv_count".into())?;
    // Smallest kv: u64 key length + u32 type + 1-byte value. Smallest tensor info: u64 name
    // length + u32 n_dims + one u64 dim + u32 type + u64 offset.
    r.check_count(n_kv, 13, &|| "kv_count".into())?;
    r.check_count(n_tensors, 32, &|| "tensor_count".into())?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut key_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = utf8(r.string(&|| format!("key of kv {i}"))?, &|| {
            format!("key of kv {i}")
        })?
        .to_owned();
        let t = r.u32(&|| format!("value type of key '{key}'"))?;
        let value = read_value(&mut r, t, &key, false)?;
        if let Some(first) = key_index.insert(key.clone(), metadata.len()) {
            return Err(format!("duplicate key '{key}' (kv {first} and kv {i})"));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index
        .get(ALIGNMENT_KEY)
        .and_then(|&i| metadata.get(i))
        .map(|(_, v)| v)
    {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(MetaValue::U32(a)) => {
            return Err(format!("{ALIGNMENT_KEY} {a} is not a power of two"))
        }
        Some(v) => return Err(format!("{ALIGNMENT_KEY} must be a u32, found {v}")),
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = utf8(r.string(&|| format!("name of tensor {i}"))?, &|| {
            format!("name of tensor {i}")
        })?
        .to_owned();
        let info = read_tensor_info(&mut r, &name)?;
        if let Some(first) = tensor_index.insert(name.clone(), tensors.len()) {
            return Err(format!(
                "duplicate tensor name '{name}' (tensors {first} and {i})"
            ));
        }
        tensors.push(info);
    }

    // Data section: after the tensor infos, aligned. Offsets become absolute here.
    let data_offset = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| "data section offset overflows".to_string())?;
    let file_len = b.len() as u64;
    for t in &mut tensors {
        let rel = t.offset;
        if rel % alignment != 0 {
            return Err(format!(
                "tensor '{}': offset {rel} is not a multiple of the alignment {alignment}",
                t.name
            ));
        }
        let end = data_offset
            .checked_add(rel)
            .and_then(|abs| abs.checked_add(t.size));
        if end.is_none_or(|end| end > file_len) {
            return Err(format!(
                "tensor '{}': offset {rel} + size {} past end of data (data section starts at {data_offset}, file {file_len} bytes)",
                t.name, t.size
            ));
        }
        t.offset = data_offset + rel;
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.offset + a.size > b.offset {
            return Err(format!(
                "tensors '{}' (bytes {}..{}) and '{}' (bytes {}..{}) overlap",
                a.name,
                a.offset - data_offset,
                a.offset + a.size - data_offset,
                b.name,
                b.offset - data_offset,
                b.offset + b.size - data_offset
            ));
        }
    }

    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// Reads and checks the rest of a tensor info after its name. `offset` is left relative.
fn read_tensor_info(r: &mut Reader, name: &str) -> std::result::Result<TensorInfo, String> {
    let n_dims = r.u32(&|| format!("n_dims of tensor '{name}'"))?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(format!(
            "tensor '{name}': n_dims {n_dims} out of range 1..={MAX_DIMS}"
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        let d = r.u64(&|| format!("dims[{j}] of tensor '{name}'"))?;
        if d == 0 {
            return Err(format!("tensor '{name}': dims[{j}] is 0"));
        }
        dims.push(d);
    }
    // ggml keeps element counts in int64_t.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("tensor '{name}': dims {dims:?}: element count overflows int64"))?;
    let type_id = r.u32(&|| format!("type of tensor '{name}'"))?;
    let ggml_type =
        QuantType::from_ggml(type_id).map_err(|msg| format!("tensor '{name}': {msg}"))?;
    let bs = ggml_type.block_size() as u64;
    if dims[0] % bs != 0 {
        return Err(format!(
            "tensor '{name}': dims[0] = {} is not a multiple of the {ggml_type} block size {bs}",
            dims[0]
        ));
    }
    let size = (n_elements / bs)
        .checked_mul(ggml_type.block_bytes() as u64)
        .ok_or_else(|| format!("tensor '{name}': dims {dims:?}: byte size overflows u64"))?;
    let offset = r.u64(&|| format!("offset of tensor '{name}'"))?;
    Ok(TensorInfo {
        name: name.to_owned(),
        dims,
        ggml_type,
        offset,
        size,
    })
}
