//! The C ABI (see `include/tomoe.h`).
