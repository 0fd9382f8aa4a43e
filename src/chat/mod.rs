//! Chat templates and sampling.

mod sampler;
mod template;

pub use sampler::{Sampler, SamplerParams};
pub use template::{ChatError, ChatMessage, ChatTemplate};
