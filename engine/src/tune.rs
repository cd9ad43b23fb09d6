//! Tuning files: the kernel shapes `glint lab --sweep --tune-out FILE` chose for one device, and how the
//! engine finds them at load ([`Tuning`]): a file given with `--tune FILE`, else the user cache's file
//! for this device's fingerprint, else [`Shapes::for_device`].
//!
//! ```text
//! {
//!   "schema": "glint-tune/1", "glint_version": "0.1.0", "created_utc": "2026-01-02T03:04:05Z",
//!   "device": { "fingerprint": "16 hex digits", "name", "backend", "driver" },
//!   "mode": "quick" | "thorough", "filter": "TEXT" | null, "dims": "the model shapes the sweep ran at",
//!   "shapes": { "reduce": "subgroup" | "shared", "tpr", "matvec_wg", "attn_wg", "block_tokens",
//!               "tiled_from": u32 | null, "lane_rows", "attn_split_keys", "attn_max_splits",
//!               "attn_split_tokens", "int8": "off" | "decode" | "matvec" (optional: off when absent) },
//!   "sweep": [ { "parameter", "default", "chosen", "default_ns", "chosen_ns", "cases" } ]
//! }
//! ```
//!
//! `shapes` is what the engine loads (every field of [`Shapes`], none other); `sweep` says why, and is
//! not read back. A file is refused, with the file named, when its fingerprint is not the device's
//! (shapes tuned for one device can be slow or invalid on another), when a field is missing or of the
//! wrong type, or when the shapes cannot run on the device ([`Shapes::check`]).
//!
//! The cache: `$GLINT_TUNE_DIR` when set, else the user cache directory (`dirs::cache_dir()`:
//! `$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on
//! Windows) + `glint/tune`; the file for a device is `<fingerprint>.json` there.

use crate::error::{Error, Result};
use crate::gpu::DeviceCaps;
use crate::kernels::{Reduce, Shapes};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `schema` value of tuning files this version writes and reads.
pub const SCHEMA: &str = "glint-tune/1";

/// Where the engine takes its kernel shapes from ([`crate::LoadOptions::tune`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tuning {
    /// The user cache's tuning file for this device when there is one ([`cache_path`]), else
    /// [`Shapes::for_device`].
    #[default]
    Auto,
    /// This tuning file (`--tune FILE`): it must be for this device.
    File(PathBuf),
    /// [`Shapes::for_device`], whatever the cache holds.
    Defaults,
}

impl Tuning {
    /// `--tune FILE` when given, else [`Tuning::Auto`].
    pub fn file_or_auto(file: Option<PathBuf>) -> Self {
        file.map_or(Tuning::Auto, Tuning::File)
    }
}

/// The device a tuning file was made on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneDevice {
    pub fingerprint: String,
    pub name: String,
    pub backend: String,
    pub driver: String,
}

/// One swept parameter: its default and chosen value, and the total time of its cases with each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamChoice {
    pub parameter: String,
    pub default: String,
    pub chosen: String,
    pub default_ns: f64,
    pub chosen_ns: f64,
    /// Cases the parameter was timed on.
    pub cases: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneFile {
    pub schema: String,
    pub glint_version: String,
    pub created_utc: String,
    pub device: TuneDevice,
    pub mode: String,
    #[serde(default)]
    pub filter: Option<String>,
    pub dims: String,
    pub shapes: Shapes,
    #[serde(default)]
    pub sweep: Vec<ParamChoice>,
}

impl TuneFile {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a tuning file serialises")
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(path, format!("{}\n", self.to_json())).map_err(|e| Error::io(path, e))
    }

    /// Read and parse a tuning file; errors name the file and the field at fault. Does not check the
    /// device (see [`load`]).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::format(path, msg);
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "invalid JSON: {e} (a `glint lab --sweep --tune-out` file)"
            ))
        })?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(bad(format!(
                    "field 'schema' is '{other}', expected '{SCHEMA}' (a `glint lab --sweep --tune-out` file)"
                )))
            }
            None => {
                return Err(bad(format!(
                    "field 'schema' is missing: not a tuning file ('{SCHEMA}', written by `glint lab --sweep --tune-out`)"
                )))
            }
        }
        match v.get("device").and_then(|d| d.get("fingerprint")) {
            Some(serde_json::Value::String(_)) => {}
            Some(other) => {
                return Err(bad(format!(
                    "field 'device.fingerprint' is {other}, expected a string of 16 hex digits"
                )))
            }
            None => return Err(bad("field 'device.fingerprint' is missing".into())),
        }
        match v.get("shapes") {
            Some(serde_json::Value::Object(m)) => check_shape_fields(m).map_err(&bad)?,
            Some(other) => {
                return Err(bad(format!(
                    "field 'shapes' is {other}, expected an object of kernel shapes"
                )))
            }
            None => return Err(bad("field 'shapes' is missing".into())),
        }
        serde_json::from_value(v).map_err(|e| bad(format!("not a valid '{SCHEMA}' file: {e}")))
    }
}

/// Each field of a file's `shapes` on its own, so that an error names it (serde's own errors give a
/// line and column for a value of the wrong type): every field is put in turn into a valid set of
/// shapes and that set parsed.
fn check_shape_fields(
    m: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    let base = Shapes {
        reduce: Reduce::Shared,
        tpr: 32,
        matvec_wg: 128,
        attn_wg: 64,
        block_tokens: 8,
        tiled_from: None,
        lane_rows: 2,
        attn_split_keys: 512,
        attn_max_splits: 16,
        attn_split_tokens: 8,
        int8: crate::kernels::Int8::Off,
    };
    let base = serde_json::to_value(base).expect("shapes serialise");
    let serde_json::Value::Object(base) = base else {
        unreachable!("shapes serialise to an object")
    };
    for (k, v) in m {
        if !base.contains_key(k) {
            return Err(format!(
                "field 'shapes.{k}' is not a kernel shape (expected: {})",
                base.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut one = base.clone();
        one.insert(k.clone(), v.clone());
        if let Err(e) = serde_json::from_value::<Shapes>(serde_json::Value::Object(one)) {
            let e = e.to_string();
            return Err(format!("field 'shapes.{k}' is {v}: {e}"));
        }
    }
    // int8 came later: files without it read as off.
    if let Some(k) = base.keys().find(|k| !m.contains_key(*k) && *k != "int8") {
        return Err(format!("field 'shapes.{k}' is missing"));
    }
    Ok(())
}

/// The shapes of the tuning file `path`, which must have been made for the device of `caps` (same
/// fingerprint) and hold shapes it can run.
pub fn load(path: &Path, caps: &DeviceCaps) -> Result<Shapes> {
    let f = TuneFile::read(path)?;
    if f.device.fingerprint != caps.fingerprint {
        return Err(Error::format(
            path,
            format!(
                "this tuning file is for device fingerprint {} ({}, {}, {}), but this device's \
                 fingerprint is {}: tune this device with `glint lab --sweep --tune-out FILE`",
                f.device.fingerprint,
                f.device.name,
                f.device.backend,
                f.device.driver,
                caps.fingerprint
            ),
        ));
    }
    f.shapes
        .check(caps)
        .map_err(|e| Error::format(path, format!("field 'shapes': {e}")))?;
    Ok(f.shapes)
}

/// The directory of the cached tuning files: `$GLINT_TUNE_DIR`, else `<user cache>/glint/tune`.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("GLINT_TUNE_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => dirs::cache_dir().map(|d| d.join("glint").join("tune")),
    }
}

/// Where the cache keeps the tuning file of the device with this fingerprint.
pub fn cache_path(fingerprint: &str) -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("{fingerprint}.json")))
}

/// The shapes the engine runs with on the device of `caps`, and the tuning file they came from
/// (`None`: [`Shapes::for_device`]).
pub fn shapes_for(caps: &DeviceCaps, tuning: &Tuning) -> Result<(Shapes, Option<PathBuf>)> {
    match tuning {
        Tuning::Defaults => Ok((Shapes::for_device(caps), None)),
        Tuning::File(p) => Ok((load(p, caps)?, Some(p.clone()))),
        Tuning::Auto => match cache_path(&caps.fingerprint) {
            Some(p) if p.is_file() => Ok((load(&p, caps)?, Some(p))),
            _ => Ok((Shapes::for_device(caps), None)),
        },
    }
}
