//! Chat templates and sampling.
