//! Model configuration from GGUF metadata, one file per architecture, and the ToMoE layer.
