//! Picks the kernel set once, at first use, from the CPU's features (so one binary runs on
//! any x86-64 or aarch64). The sets themselves are built by the ISA files (`crate::kernels`).

use std::sync::OnceLock;

pub use crate::kernels::table::{FormatKernels, KernelSet};

/// The scalar reference set (always available).
pub fn scalar_set() -> KernelSet {
    KernelSet::scalar()
}

/// Every kernel set this CPU can run, best last (scalar first). For tests and benchmarks that
/// compare the sets; the runtime uses [`kernels`].
pub fn available_sets() -> Vec<KernelSet> {
    #[allow(unused_mut)]
    let mut sets = vec![scalar_set()];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = crate::kernels::avx2::kernel_set() {
            sets.push(s);
        }
        if let Some(s) = crate::kernels::avxvnni::kernel_set() {
            sets.push(s);
        }
        if let Some(s) = crate::kernels::avx512::kernel_set() {
            sets.push(s);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if let Some(s) = crate::kernels::neon::kernel_set(false) {
            sets.push(s);
        }
        if let Some(s) = crate::kernels::neon::kernel_set(true) {
            sets.push(s);
        }
    }
    sets
}

static BEST: OnceLock<KernelSet> = OnceLock::new();

/// The kernel set the runtime uses, chosen once: the best this CPU runs, or the one named by the
/// environment variable `TOMOE_KERNELS` (e.g. `scalar`, `avx2`) when this CPU has it, so that a
/// numerical difference can be traced to a kernel set without rebuilding.
pub fn kernels() -> &'static KernelSet {
    BEST.get_or_init(|| {
        let mut sets = available_sets();
        if let Ok(name) = std::env::var("TOMOE_KERNELS") {
            if let Some(i) = sets.iter().position(|s| s.name == name) {
                return sets.swap_remove(i);
            }
            let names: Vec<&str> = sets.iter().map(|s| s.name).collect();
            eprintln!("tomoe: TOMOE_KERNELS={name:?} is not available on this CPU (have: {names:?}); using the best");
        }
        sets.pop().expect("the scalar set is always present")
    })
}

/// Why [`select_kernels`] did not choose the named kernel set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectKernelsError {
    /// No set of that name runs on this CPU.
    #[error("kernel set {name:?} is not available on this CPU (available: {})", available.join(", "))]
    NotAvailable {
        name: String,
        /// The names of [`available_sets`].
        available: Vec<&'static str>,
    },
    /// The process already uses another set (chosen by an earlier call, or at the first use of
    /// [`kernels`]).
    #[error(
        "kernel set {requested:?} cannot be chosen: this process already uses {chosen:?} (the set is chosen once per process)"
    )]
    AlreadyChosen {
        requested: String,
        chosen: &'static str,
    },
}

/// Chooses the process-wide kernel set by name (one of [`available_sets`]' names) and returns it.
///
/// The set is global and chosen once per process, as ggml's CPU backend picks its kernels: by
/// the first call of this function, or else at the first use of [`kernels`] (the set named by
/// `TOMOE_KERNELS`, or the best). Call it before anything computes; a later call naming the set
/// in use succeeds, one naming another fails with [`SelectKernelsError::AlreadyChosen`].
pub fn select_kernels(name: &str) -> Result<&'static KernelSet, SelectKernelsError> {
    let mut sets = available_sets();
    let Some(i) = sets.iter().position(|s| s.name == name) else {
        let available = sets.iter().map(|s| s.name).collect();
        return Err(SelectKernelsError::NotAvailable {
            name: name.to_string(),
            available,
        });
    };
    let wanted = sets.swap_remove(i);
    let chosen = BEST.get_or_init(|| wanted);
    if chosen.name == name {
        Ok(chosen)
    } else {
        Err(SelectKernelsError::AlreadyChosen {
            requested: name.to_string(),
            chosen: chosen.name,
        })
    }
}
