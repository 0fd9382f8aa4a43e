//! Every way reading, writing or querying a GGUF file can fail, each naming the field at fault.

use std::path::PathBuf;

/// A GGUF error. Reader variants name the key, tensor or header field at fault and, where it
/// helps, the byte offset in the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),

    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },

    #[error("GGUF version {0} (0x{0:08x}) looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian(u32),

    #[error("GGUF version 1 is not supported (it uses 32-bit counts); convert the file to version 3")]
    VersionV1,

    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),

    #[error("file truncated while reading {what} at offset {offset}: need {needed} bytes, {available} left")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error("{what} is {count}, more than {max} (what the {remaining} bytes left in the file can hold, or the reader's limit)")]
    CountTooLarge {
        what: String,
        count: u64,
        max: u64,
        remaining: u64,
    },

    #[error("{what}: string length {len} exceeds the {remaining} bytes left in the file (or the 1 GiB limit)")]
    StringTooLong { what: String, len: u64, remaining: u64 },

    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },

    #[error("metadata key {index} is empty")]
    EmptyKey { index: u64 },

    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),

    #[error("metadata key '{key}' has unknown value type id {type_id}")]
    UnknownValueType { key: String, type_id: u32 },

    #[error("metadata key '{key}' is an array of arrays, which GGUF readers do not accept")]
    NestedArray { key: String },

    #[error("general.alignment must be a u32, found {found}")]
    AlignmentType { found: &'static str },

    #[error("alignment {0} is not a nonzero power of two")]
    InvalidAlignment(u64),

    #[error("tensor {index}: name of {len} bytes is too long (ggml allows at most 63)")]
    TensorNameTooLong { index: u64, len: usize },

    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),

    #[error("tensor '{tensor}' has {n_dims} dimensions (allowed: 1 to 4)")]
    BadDimCount { tensor: String, n_dims: u64 },

    #[error("tensor '{tensor}' has ggml type id {type_id}, which is unknown or not supported")]
    UnsupportedTensorType { tensor: String, type_id: u32 },

    #[error("tensor '{tensor}': row length {row_len} is not a multiple of the {ty} block size {block_size}")]
    RowNotBlockMultiple {
        tensor: String,
        ty: &'static str,
        row_len: u64,
        block_size: usize,
    },

    #[error("tensor '{tensor}': shape {dims:?} overflows (element count or byte size)")]
    ShapeOverflow { tensor: String, dims: Vec<u64> },

    #[error("tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error("tensor '{tensor}': data [{offset}, {offset}+{n_bytes}) lies outside the {data_len}-byte data section")]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        n_bytes: u64,
        data_len: u64,
    },

    #[error("tensors '{first}' and '{second}' overlap in the data section")]
    OverlappingTensors { first: String, second: String },

    #[error("the data section would start at offset {start}, past the end of the {file_len}-byte file")]
    DataSectionOutOfBounds { start: u64, file_len: u64 },

    #[error("tensor '{tensor}': {got} data bytes given, its shape and type need {expected}")]
    TensorDataSize { tensor: String, expected: u64, got: u64 },

    #[error("tensor '{tensor}' has no data: pass it to the streaming writer in order")]
    MissingTensorData { tensor: String },

    #[error("streaming write: expected data for tensor '{expected}', got '{got}'")]
    StreamOrder { expected: String, got: String },

    #[error("streaming write: data for {missing} tensor(s) was never written")]
    StreamIncomplete { missing: usize },

    #[error("tensor '{tensor}' cannot be viewed as a matrix: {source}")]
    TensorView {
        tensor: String,
        source: tomoe_quant::QuantError,
    },

    #[error("metadata key '{0}' is missing")]
    MissingKey(String),

    #[error("metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error("metadata key '{key}': value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },
}
