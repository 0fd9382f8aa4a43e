//! Typed errors for caller-supplied shapes and buffers.

use crate::formats::QuantType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: row length {cols} is not a multiple of the block size {block}")]
    RowNotBlockMultiple { ty: QuantType, cols: usize, block: usize },
    #[error("{ty}: size of {rows} x {cols} overflows usize")]
    SizeOverflow { ty: QuantType, rows: usize, cols: usize },
    #[error("{ty}: {rows} x {cols} needs {expected} bytes, got {actual}")]
    DataLength { ty: QuantType, rows: usize, cols: usize, expected: usize, actual: usize },
    #[error("input of {len} values is not a whole number of vectors of {cols}")]
    InputLength { len: usize, cols: usize },
}
