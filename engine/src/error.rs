//! One error type for the whole engine. Every variant names the file, field or limit at fault and what
//! was expected, so the CLI can print it as is.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what was expected (bad magic, truncated, bad JSON...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The model's configuration or weights are inconsistent or unsupported.
    #[error("model: {0}")]
    Model(String),
    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// No usable GPU adapter, a device limit was exceeded, or a GPU operation failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// Bad user input: a prompt longer than the context, an unknown flag value...
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
