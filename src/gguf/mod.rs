//! GGUF v2/v3: a memory-mapped, fully validated reader and an aligned, deterministic, atomic writer.
//!
//! - `parse` (private): decoding and validation of the whole header, once.
//! - [`GgufFile`]: the validated file; zero-copy [`Tensor`] views and metadata; typed getters.
//! - [`GgufWriter`]: builds files; whole, streamed tensor by tensor, or atomically replaced.

mod error;
mod getters;
mod parse;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, Tensor, TensorInfo};
pub use tomoe_quant::QuantType;
pub use value::{Array, Strings, Value};
pub use writer::{GgufWriter, TensorStream};
