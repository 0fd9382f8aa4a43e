//! The process's memory as the benchmarks report it.

/// The process's peak resident set in bytes (Linux's VmHWM): the model, its copies, the KV
/// caches and the scratch buffers held at once. `None` where `/proc/self/status` has no VmHWM
/// (not Linux).
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_grows_with_what_the_process_touches() {
        let before = super::peak_resident_bytes().expect("VmHWM on Linux");
        let touched = vec![1u8; 64 << 20];
        let after = super::peak_resident_bytes().expect("VmHWM on Linux");
        assert!(after >= before + (60 << 20), "{before} -> {after} after touching 64 MiB");
        drop(std::hint::black_box(touched));
    }
}
