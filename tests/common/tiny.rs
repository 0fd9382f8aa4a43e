//! The random test models of `tomoe::model::random`, written to the test's scratch directory.
#![allow(dead_code)]

use std::path::PathBuf;
use tomoe::gguf::{QuantType, Value};

/// Writes a random model of `arch` ("llama" or "qwen2") with weights in `ty`.
pub fn tiny_model(arch: &str, ty: QuantType, seed: u64) -> PathBuf {
    tiny_model_with(arch, ty, seed, &[], &format!("tiny-{arch}-{}.gguf", ty.name()))
}

/// [`tiny_model`] with extra metadata (a key the builder writes too takes the value given
/// here), as `file_name` in the test's scratch directory.
pub fn tiny_model_with(arch: &str, ty: QuantType, seed: u64, extra: &[(&str, Value)], file_name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file_name);
    tomoe::model::random::write_model(&path, arch, ty, seed, extra).unwrap();
    path
}
