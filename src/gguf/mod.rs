//! GGUF v3: a memory-mapped, fully validated reader and an aligned, deterministic, atomic writer.
