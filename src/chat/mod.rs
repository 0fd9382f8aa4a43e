//! Chat templates and sampling.

mod sampler;
mod template;

pub use sampler::{argmax, Sampler, SamplerParams};
pub use template::{ChatError, ChatMessage, ChatTemplate};

// The server shares a model's template and moves samplers between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ChatTemplate>();
    send_sync::<Sampler>();
};
