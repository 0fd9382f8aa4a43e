//! The converter (feature `convert`): dense model → trained routers and expert masks → MoE GGUF.
