//! GGUF reader tests on files built in memory: a valid v3 file with every metadata type, a table
//! of corruptions (each error must name the field at fault), `open` errors, and a fixed-seed
//! random-mutation run that must never panic.

use std::path::Path;

use glint::error::Error;
use glint::gguf::{Gguf, MetaValue};
use glint::quant::{dequantize, quantize, QuantType};

// ---------------------------------------------------------------------------------------------
// A small GGUF writer
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Kv {
    key: Vec<u8>,
    ty: u32,
    value: Vec<u8>,
}

#[derive(Clone)]
struct Ti {
    name: Vec<u8>,
    dims: Vec<u64>,
    ty: u32,
    /// Relative to the data section.
    offset: u64,
}

#[derive(Clone)]
struct Spec {
    magic: [u8; 4],
    version: u32,
    /// Overrides of the counts written in the header.
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Kv>,
    tensors: Vec<Ti>,
    /// Alignment used to pad the end of the tensor infos.
    alignment: usize,
    data: Vec<u8>,
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn kv(key: &str, ty: u32, value: Vec<u8>) -> Kv {
    Kv {
        key: key.as_bytes().to_vec(),
        ty,
        value,
    }
}

fn array(elem_ty: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut v = elem_ty.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(elems);
    v
}

impl Spec {
    fn build(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(
            &self
                .n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            b.extend_from_slice(&string(&kv.key));
            b.extend_from_slice(&kv.ty.to_le_bytes());
            b.extend_from_slice(&kv.value);
        }
        for t in &self.tensors {
            b.extend_from_slice(&string(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(self.alignment), 0);
        b.extend_from_slice(&self.data);
        b
    }

    fn kv_mut(&mut self, key: &str) -> &mut Kv {
        self.kvs
            .iter_mut()
            .find(|kv| kv.key == key.as_bytes())
            .expect("key in spec")
    }

    fn tensor_mut(&mut self, name: &str) -> &mut Ti {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name.as_bytes())
            .expect("tensor in spec")
    }
}

const F32_VALUES: [f32; 8] = [1.0, -2.0, 0.5, 3.25, -0.125, 8.0, 0.0, -1.5];

fn q8_input() -> Vec<f32> {
    (0..128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect()
}

fn q4k_input() -> Vec<f32> {
    (0..256)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 100.0)
        .collect()
}

/// A valid GGUF v3: kvs of every type (arrays and strings included) and three tensors:
/// a.f32 (F32 [4, 2]) at 0, b.q8_0 (Q8_0 [64, 2]) at 32, c.q4_k (Q4_K [256]) at 192.
fn valid_spec() -> Spec {
    let strings: Vec<u8> = ["hello", "wörld", ""]
        .iter()
        .flat_map(|s| string(s.as_bytes()))
        .collect();
    let ints: Vec<u8> = [1i32, -2, 3, 6]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let kvs = vec![
        kv("general.architecture", 8, string(b"qwen2")),
        kv("general.alignment", 4, 32u32.to_le_bytes().to_vec()),
        kv("general.name", 8, string(b"test model")),
        kv("t.u8", 0, vec![200]),
        kv("t.i8", 1, vec![(-5i8) as u8]),
        kv("t.u16", 2, 60000u16.to_le_bytes().to_vec()),
        kv("t.i16", 3, (-300i16).to_le_bytes().to_vec()),
        kv("t.u32", 4, 4_000_000_000u32.to_le_bytes().to_vec()),
        kv("t.i32", 5, (-7i32).to_le_bytes().to_vec()),
        kv("t.f32", 6, 1e-6f32.to_le_bytes().to_vec()),
        kv("t.bool", 7, vec![1]),
        kv("t.u64", 10, (1u64 << 40).to_le_bytes().to_vec()),
        kv("t.i64", 11, (-1i64 << 40).to_le_bytes().to_vec()),
        kv("t.f64", 12, 1e6f64.to_le_bytes().to_vec()),
        kv("t.empty", 9, array(5, 0, &[])),
        kv("tokenizer.ggml.token_type", 9, array(5, 4, &ints)),
        kv("tokenizer.ggml.tokens", 9, array(8, 3, &strings)),
    ];
    let mut data = vec![0u8; 336];
    for (i, v) in F32_VALUES.iter().enumerate() {
        data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    data[32..168].copy_from_slice(&quantize(QuantType::Q8_0, &q8_input()));
    data[192..336].copy_from_slice(&quantize(QuantType::Q4_K, &q4k_input()));
    let tensors = vec![
        Ti {
            name: b"a.f32".to_vec(),
            dims: vec![4, 2],
            ty: 0,
            offset: 0,
        },
        Ti {
            name: b"b.q8_0".to_vec(),
            dims: vec![64, 2],
            ty: 8,
            offset: 32,
        },
        Ti {
            name: b"c.q4_k".to_vec(),
            dims: vec![256],
            ty: 12,
            offset: 192,
        },
    ];
    Spec {
        magic: *b"GGUF",
        version: 3,
        n_tensors: None,
        n_kv: None,
        kvs,
        tensors,
        alignment: 32,
        data,
    }
}

fn parse(bytes: &[u8]) -> glint::error::Result<Gguf> {
    Gguf::parse(bytes, Path::new("test.gguf"))
}

/// Position of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

// ---------------------------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_a_valid_file() {
    let bytes = valid_spec().build();
    let g = parse(&bytes).expect("valid file");
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.metadata.len(), 17);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.data_offset as usize + 336, bytes.len());

    assert_eq!(
        g.get("general.architecture"),
        Some(&MetaValue::String("qwen2".into()))
    );
    assert_eq!(g.get("t.u8"), Some(&MetaValue::U8(200)));
    assert_eq!(g.get("t.i8"), Some(&MetaValue::I8(-5)));
    assert_eq!(g.get("t.u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(g.get("t.i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(g.get("t.u32"), Some(&MetaValue::U32(4_000_000_000)));
    assert_eq!(g.get("t.i32"), Some(&MetaValue::I32(-7)));
    assert_eq!(g.get("t.f32"), Some(&MetaValue::F32(1e-6)));
    assert_eq!(g.get("t.bool"), Some(&MetaValue::Bool(true)));
    assert_eq!(g.get("t.u64"), Some(&MetaValue::U64(1 << 40)));
    assert_eq!(g.get("t.i64"), Some(&MetaValue::I64(-1 << 40)));
    assert_eq!(g.get("t.f64"), Some(&MetaValue::F64(1e6)));
    assert_eq!(g.get("t.empty"), Some(&MetaValue::Array(vec![])));
    assert_eq!(g.get("nope"), None);
    // Metadata keeps file order.
    assert_eq!(g.metadata[3].0, "t.u8");

    // Typed getters.
    assert_eq!(g.get_u32("t.u8").unwrap(), Some(200));
    assert_eq!(g.get_u32("t.u16").unwrap(), Some(60000));
    assert_eq!(g.get_u32("t.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_u32("general.alignment").unwrap(), Some(32));
    assert_eq!(g.get_u64("t.u64").unwrap(), Some(1 << 40));
    assert_eq!(g.get_f32("t.f32").unwrap(), Some(1e-6));
    assert_eq!(g.get_f32("t.f64").unwrap(), Some(1e6));
    assert_eq!(g.get_bool("t.bool").unwrap(), Some(true));
    assert_eq!(g.get_str("general.name").unwrap(), Some("test model"));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        Some(vec!["hello", "wörld", ""])
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        Some(vec![1, -2, 3, 6])
    );
    assert_eq!(g.get_i32_array("t.empty").unwrap(), Some(vec![]));
    assert_eq!(g.get_u32("absent").unwrap(), None);
    assert_eq!(g.get_str_array("absent").unwrap(), None);
    let wrong = [
        g.get_u32("t.i32").unwrap_err(), // negative
        g.get_u32("t.u64").unwrap_err(), // too large
        g.get_u32("general.name").unwrap_err(),
        g.get_f32("t.u32").unwrap_err(),
        g.get_str("t.u8").unwrap_err(),
        g.get_bool("t.u8").unwrap_err(),
        g.get_str_array("tokenizer.ggml.token_type").unwrap_err(),
        g.get_i32_array("tokenizer.ggml.tokens").unwrap_err(),
        g.get_i32_array("general.name").unwrap_err(),
    ];
    let keys = [
        "t.i32",
        "t.u64",
        "general.name",
        "t.u32",
        "t.u8",
        "t.u8",
        "token_type",
        "tokens",
        "general.name",
    ];
    for (e, key) in wrong.iter().zip(keys) {
        let msg = e.to_string();
        assert!(matches!(e, Error::Format { .. }), "{msg}");
        assert!(msg.contains(key) && msg.contains("expected"), "{msg}");
    }
    assert!(g
        .missing("qwen2.block_count")
        .to_string()
        .contains("qwen2.block_count"));

    // Tensors.
    assert_eq!(g.tensors.len(), 3);
    let a = g.tensor("a.f32").unwrap();
    assert_eq!(
        (a.dims.clone(), a.ggml_type, a.size),
        (vec![4, 2], QuantType::F32, 32)
    );
    assert_eq!(a.offset, g.data_offset);
    assert_eq!((a.n_elements(), a.row_len(), a.n_rows()), (8, 4, 2));
    let mut y = [0f32; 8];
    dequantize(QuantType::F32, g.tensor_data(a), &mut y);
    assert_eq!(y, F32_VALUES);

    let b = g.tensor("b.q8_0").unwrap();
    assert_eq!(
        (b.ggml_type, b.size, b.offset),
        (QuantType::Q8_0, 136, g.data_offset + 32)
    );
    let mut y = vec![0f32; 128];
    dequantize(QuantType::Q8_0, g.tensor_data(b), &mut y);
    let max_err = y
        .iter()
        .zip(q8_input())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err < 0.01, "Q8_0 tensor round trip: {max_err}");

    let c = g.tensor("c.q4_k").unwrap();
    assert_eq!(
        (c.ggml_type, c.size, c.offset),
        (QuantType::Q4_K, 144, g.data_offset + 192)
    );
    let mut y = vec![0f32; 256];
    dequantize(QuantType::Q4_K, g.tensor_data(c), &mut y);
    let max_err = y
        .iter()
        .zip(q4k_input())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err < 0.05, "Q4_K tensor round trip: {max_err}");
    assert!(g.tensor("d").is_none());

    // A TensorInfo that is not from this file gives an empty slice, not a panic.
    let mut foreign = c.clone();
    foreign.offset = u64::MAX - 10;
    assert!(g.tensor_data(&foreign).is_empty());
}

#[test]
fn accepts_version_2_custom_alignment_and_no_tensors() {
    let mut s = valid_spec();
    s.version = 2;
    assert_eq!(parse(&s.build()).unwrap().version, 2);

    let mut s = valid_spec();
    s.kv_mut("general.alignment").value = 64u32.to_le_bytes().to_vec();
    s.alignment = 64;
    s.tensor_mut("b.q8_0").offset = 64;
    s.tensor_mut("c.q4_k").offset = 256;
    s.data = vec![0; 400];
    let g = parse(&s.build()).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));

    let mut s = valid_spec();
    s.tensors.clear();
    s.data.clear();
    let g = parse(&s.build()).unwrap();
    assert!(g.tensors.is_empty());
    // Header only, no padding at all, still fine without tensors.
    let mut s = valid_spec();
    s.tensors.clear();
    s.data.clear();
    s.alignment = 1;
    assert!(parse(&s.build()).is_ok());
}

#[test]
fn open_reads_a_file_and_names_missing_paths() {
    let bytes = valid_spec().build();
    let path = std::env::temp_dir().join(format!("glint-gguf-test-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let opened = Gguf::open(&path);
    std::fs::remove_file(&path).unwrap();
    let g = opened.unwrap();
    assert_eq!(g.path(), path.as_path());
    let parsed = parse(&bytes).unwrap();
    assert_eq!(g.tensors, parsed.tensors);
    assert_eq!(g.metadata, parsed.metadata);
    let t = g.tensor("c.q4_k").unwrap();
    assert_eq!(g.tensor_data(t), parsed.tensor_data(t));

    let missing = Path::new("/nonexistent/dir/model.gguf");
    let err = Gguf::open(missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/dir/model.gguf"),
        "{err}"
    );

    let empty = std::env::temp_dir().join(format!("glint-gguf-empty-{}.gguf", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let err = Gguf::open(&empty).unwrap_err();
    std::fs::remove_file(&empty).unwrap();
    assert!(err.to_string().contains("magic"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Corruptions
// ---------------------------------------------------------------------------------------------

type Corruption = Box<dyn Fn(&mut Spec) -> Vec<u8>>;

/// A corruption that edits the spec, then builds it.
fn edit(f: fn(&mut Spec)) -> Corruption {
    Box::new(move |s| {
        f(s);
        s.build()
    })
}

/// A corruption that works on the bytes.
fn raw(f: fn(&mut Spec) -> Vec<u8>) -> Corruption {
    Box::new(f)
}

/// Truncates the valid file inside the first occurrence of `needle`, plus `extra` bytes.
fn truncated_in(s: &Spec, needle: &[u8], extra: usize) -> Vec<u8> {
    let mut b = s.build();
    let at = find(&b, needle) + extra;
    b.truncate(at);
    b
}

#[test]
fn corrupt_files_are_rejected_naming_the_field() {
    let cases: Vec<(&str, Corruption, &[&str])> = vec![
        (
            "bad magic",
            edit(|s| s.magic = *b"GGUG"),
            &["magic", "GGUG", "expected \"GGUF\""],
        ),
        ("empty file", raw(|_| vec![]), &["truncated", "magic"]),
        ("version 0", edit(|s| s.version = 0), &["version 0"]),
        (
            "version 1",
            edit(|s| s.version = 1),
            &["version 1", "not supported"],
        ),
        (
            "version 4",
            edit(|s| s.version = 4),
            &["version 4", "not supported"],
        ),
        (
            "byte-swapped version",
            edit(|s| s.version = 3u32.swap_bytes()),
            &["version 0x3000000", "big-endian"],
        ),
        (
            "truncated in magic",
            raw(|s| s.build()[..3].to_vec()),
            &["truncated", "magic"],
        ),
        (
            "truncated in version",
            raw(|s| s.build()[..6].to_vec()),
            &["truncated", "version"],
        ),
        (
            "truncated in tensor_count",
            raw(|s| s.build()[..15].to_vec()),
            &["truncated", "tensor_count"],
        ),
        (
            "truncated in kv_count",
            raw(|s| s.build()[..23].to_vec()),
            &["truncated", "kv_count"],
        ),
        (
            "truncated early in the kvs",
            raw(|s| s.build()[..60].to_vec()),
            &["kv_count", "implausible"],
        ),
        (
            "truncated in the last kv's value",
            raw(|s| truncated_in(s, b"hello", 2)),
            &["tokenizer.ggml.tokens"],
        ),
        (
            "truncated in a tensor name",
            raw(|s| truncated_in(s, b"b.q8_0", 2)),
            &["name of tensor 1", "string length"],
        ),
        (
            "truncated in a tensor's dims",
            raw(|s| truncated_in(s, b"c.q4_k", 12)),
            &["truncated", "dims[0]", "c.q4_k"],
        ),
        (
            "truncated in the data",
            raw(|s| {
                let b = s.build();
                b[..b.len() - 1].to_vec()
            }),
            &["c.q4_k", "past end of data"],
        ),
        (
            "huge tensor_count",
            edit(|s| s.n_tensors = Some(u64::MAX / 3)),
            &["tensor_count", "implausible"],
        ),
        (
            "huge kv_count",
            edit(|s| s.n_kv = Some(1 << 50)),
            &["kv_count", "implausible"],
        ),
        (
            "huge key length",
            raw(|s| {
                let mut b = s.build();
                b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            }),
            &["key of kv 0", "string length 1099511627776"],
        ),
        (
            "huge string value length",
            edit(|s| s.kv_mut("general.name").value = (u64::MAX - 3).to_le_bytes().to_vec()),
            &["general.name", "string length"],
        ),
        (
            "huge array count",
            edit(|s| {
                s.kv_mut("tokenizer.ggml.tokens").value[4..12]
                    .copy_from_slice(&(1u64 << 62).to_le_bytes())
            }),
            &["tokenizer.ggml.tokens", "implausible"],
        ),
        (
            "non-UTF-8 key",
            edit(|s| s.kvs[2].key = vec![b'a', 0xff, 0xfe]),
            &["key of kv 2", "UTF-8"],
        ),
        (
            "non-UTF-8 tensor name",
            edit(|s| s.tensors[1].name = vec![0xc3, 0x28]),
            &["name of tensor 1", "UTF-8"],
        ),
        (
            "duplicate key",
            edit(|s| s.kvs[5].key = b"t.u8".to_vec()),
            &["duplicate key 't.u8'"],
        ),
        (
            "duplicate tensor",
            edit(|s| s.tensors[2].name = b"a.f32".to_vec()),
            &["duplicate tensor name 'a.f32'"],
        ),
        (
            "unknown value type",
            edit(|s| s.kv_mut("t.u8").ty = 13),
            &["t.u8", "unknown value type 13"],
        ),
        (
            "unknown array element type",
            edit(|s| s.kv_mut("t.empty").value = array(77, 0, &[])),
            &["t.empty", "unknown array element type 77"],
        ),
        (
            "array of arrays",
            edit(|s| s.kv_mut("t.empty").value = array(9, 1, &array(5, 0, &[]))),
            &["t.empty", "arrays of arrays"],
        ),
        (
            "n_dims 5",
            edit(|s| s.tensor_mut("a.f32").dims = vec![1, 1, 1, 1, 8]),
            &["a.f32", "n_dims 5"],
        ),
        (
            "n_dims 0",
            edit(|s| s.tensor_mut("a.f32").dims = vec![]),
            &["a.f32", "n_dims 0"],
        ),
        (
            "zero dim",
            edit(|s| s.tensor_mut("b.q8_0").dims = vec![64, 0]),
            &["b.q8_0", "dims[1] is 0"],
        ),
        (
            "dims overflow",
            edit(|s| s.tensor_mut("a.f32").dims = vec![1 << 32, 1 << 32, 1 << 32]),
            &["a.f32", "overflows"],
        ),
        (
            "unknown type id 99",
            edit(|s| s.tensor_mut("a.f32").ty = 99),
            &["a.f32", "unknown ggml type 99"],
        ),
        (
            "unsupported Q2_K",
            edit(|s| s.tensor_mut("c.q4_k").ty = 10),
            &["c.q4_k", "Q2_K", "not supported"],
        ),
        (
            "dims[0] not a multiple of the block size",
            edit(|s| s.tensor_mut("b.q8_0").dims = vec![48, 2]),
            &["b.q8_0", "dims[0] = 48", "Q8_0 block size 32"],
        ),
        (
            "misaligned offset",
            edit(|s| s.tensor_mut("b.q8_0").offset = 33),
            &["b.q8_0", "offset 33", "alignment 32"],
        ),
        (
            "tensor past end of file",
            edit(|s| s.tensor_mut("c.q4_k").offset = 4096),
            &["c.q4_k", "offset 4096", "past end of data"],
        ),
        (
            "offset overflow",
            edit(|s| s.tensor_mut("c.q4_k").offset = u64::MAX - 31),
            &["c.q4_k", "past end of data"],
        ),
        (
            "overlapping tensors",
            edit(|s| s.tensor_mut("b.q8_0").offset = 160),
            &["overlap", "b.q8_0", "c.q4_k"],
        ),
        (
            "same offset",
            edit(|s| s.tensor_mut("b.q8_0").offset = 0),
            &["overlap", "a.f32", "b.q8_0"],
        ),
        (
            "alignment 3",
            edit(|s| s.kv_mut("general.alignment").value = 3u32.to_le_bytes().to_vec()),
            &["general.alignment", "3", "power of two"],
        ),
        (
            "alignment 0",
            edit(|s| s.kv_mut("general.alignment").value = 0u32.to_le_bytes().to_vec()),
            &["general.alignment", "power of two"],
        ),
        (
            "alignment of the wrong type",
            edit(|s| {
                let a = s.kv_mut("general.alignment");
                a.ty = 10;
                a.value = 32u64.to_le_bytes().to_vec();
            }),
            &["general.alignment", "must be a u32", "u64"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, corrupt, expected) in &cases {
        let bytes = corrupt(&mut valid_spec());
        match parse(&bytes) {
            Ok(_) => failures.push(format!("{name}: parsed without error")),
            Err(e) => {
                let msg = e.to_string();
                if !matches!(e, Error::Format { ref path, .. } if path == Path::new("test.gguf")) {
                    failures.push(format!("{name}: not a Format error for test.gguf: {msg}"));
                }
                for want in expected.iter() {
                    if !msg.contains(want) {
                        failures.push(format!("{name}: message lacks {want:?}: {msg}"));
                    }
                }
                println!("{name}: {msg}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Random mutations
// ---------------------------------------------------------------------------------------------

/// xorshift64 PRNG with a fixed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Applies 1 to 4 random edits: byte flips, random bytes, plausible-looking integers (small,
/// huge, type ids) written over any field, truncation, duplication or deletion of a span.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len().max(1);
        let at = rng.below(len);
        match rng.below(8) {
            0 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(x) = b.get_mut(at) {
                    *x = rng.next() as u8;
                }
            }
            2 | 3 => {
                let v: u64 = match rng.below(6) {
                    0 => 0,
                    1 => rng.below(16) as u64,
                    2 => rng.below(300) as u64,
                    3 => u64::MAX - rng.below(64) as u64,
                    4 => 1 << rng.below(64),
                    _ => rng.next(),
                };
                let width = [1, 2, 4, 8][rng.below(4)];
                for (i, byte) in v.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                let end = (at + rng.below(64)).min(b.len());
                let span = b[at.min(end)..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, span);
            }
            6 => {
                let end = (at + rng.below(64)).min(b.len());
                b.drain(at.min(end)..end);
            }
            _ => {
                let to = rng.below(b.len() + 1);
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(to..to, junk);
            }
        }
    }
    b
}

/// What a fuzz target does with an input: parse, then touch everything a loader would.
fn exercise(bytes: &[u8]) -> bool {
    let Ok(g) = parse(bytes) else { return false };
    for (key, _) in &g.metadata {
        let _ = (
            g.get_u32(key),
            g.get_u64(key),
            g.get_f32(key),
            g.get_str(key),
        );
        let _ = (g.get_bool(key), g.get_str_array(key), g.get_i32_array(key));
    }
    for t in &g.tensors {
        let data = g.tensor_data(t);
        assert_eq!(data.len() as u64, t.size, "{}", t.name);
        let mut out = vec![0f32; t.n_elements() as usize];
        dequantize(t.ggml_type, data, &mut out);
    }
    true
}

#[test]
fn random_mutations_never_panic() {
    let bases = [valid_spec().build(), {
        let mut s = valid_spec();
        s.version = 2;
        s.tensors.truncate(1);
        s.data.truncate(32);
        s.build()
    }];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut total) = (0, 0);
    for i in 0..4000 {
        let input = mutate(&bases[i % 2], &mut rng);
        total += 1;
        if exercise(&input) {
            ok += 1;
        }
    }
    println!(
        "{total} mutated inputs: {ok} parsed, {} rejected",
        total - ok
    );
    assert!(
        ok > 0 && ok < total,
        "mutations should give both valid and invalid files"
    );
}
