//! The default number of compute threads: one per physical core, and only the big cores of a
//! hybrid CPU. SMT siblings share a core's SIMD units, so a second thread per core only adds
//! synchronisation; a little core makes every parallel region wait for it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Threads a context uses when none are asked for: the physical (big) cores Linux reports,
/// at most the CPUs this process may run on; elsewhere the available parallelism.
pub fn default_threads() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    physical_cores(Path::new("/sys/devices/system/cpu")).map_or(available, |n| n.clamp(1, available))
}

/// Big physical cores under a sysfs CPU directory (`/sys/devices/system/cpu`), or `None` when
/// it cannot be read. A core is the set of its online SMT siblings; on a hybrid CPU only the
/// cores Linux lists as `cpu_core` (Intel) or whose `cpu_capacity` is at least half the
/// largest (Arm big.LITTLE) count.
fn physical_cores(sys: &Path) -> Option<usize> {
    let online = parse_cpu_list(fs::read_to_string(sys.join("online")).ok()?.trim())?;
    let intel_big = sys
        .parent()
        .and_then(Path::parent)
        .and_then(|devices| fs::read_to_string(devices.join("cpu_core/cpus")).ok())
        .and_then(|list| parse_cpu_list(list.trim()));
    // Per core (keyed by its siblings), the largest capacity among its CPUs.
    let mut cores: BTreeMap<String, u64> = BTreeMap::new();
    for cpu in online {
        if intel_big.as_ref().is_some_and(|big| !big.contains(&cpu)) {
            continue;
        }
        let dir = sys.join(format!("cpu{cpu}"));
        let siblings = fs::read_to_string(dir.join("topology/thread_siblings_list"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| cpu.to_string());
        let capacity = fs::read_to_string(dir.join("cpu_capacity")).ok().and_then(|s| s.trim().parse().ok());
        let entry = cores.entry(siblings).or_insert(0);
        *entry = (*entry).max(capacity.unwrap_or(1024));
    }
    let max = cores.values().copied().max()?;
    Some(cores.values().filter(|&&c| c * 2 >= max).count())
}

/// A Linux CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fake `devices` tree (`system/cpu` and `cpu_core`): per CPU its siblings list and optional capacity.
    fn fake_sysfs(name: &str, online: &str, cpus: &[(&str, Option<u64>)], intel_big: Option<&str>) -> PathBuf {
        let root = std::env::temp_dir().join(format!("tomoe-cpus-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let sys = root.join("system/cpu");
        fs::create_dir_all(&sys).unwrap();
        fs::write(sys.join("online"), format!("{online}\n")).unwrap();
        for (i, (siblings, capacity)) in cpus.iter().enumerate() {
            let dir = sys.join(format!("cpu{i}"));
            fs::create_dir_all(dir.join("topology")).unwrap();
            fs::write(dir.join("topology/thread_siblings_list"), format!("{siblings}\n")).unwrap();
            if let Some(c) = capacity {
                fs::write(dir.join("cpu_capacity"), format!("{c}\n")).unwrap();
            }
        }
        if let Some(big) = intel_big {
            fs::create_dir_all(root.join("cpu_core")).unwrap();
            fs::write(root.join("cpu_core/cpus"), format!("{big}\n")).unwrap();
        }
        sys
    }

    #[test]
    fn smt_siblings_count_once() {
        let sys = fake_sysfs("smt", "0-3", &[("0,2", None), ("1,3", None), ("0,2", None), ("1,3", None)], None);
        assert_eq!(physical_cores(&sys), Some(2));
    }

    #[test]
    fn arm_little_cores_are_left_out() {
        // 4 little cores (capacity 380), 3 big (870) and 1 prime (1024).
        let mut cpus: Vec<(String, Option<u64>)> = (0..4).map(|i| (i.to_string(), Some(380))).collect();
        cpus.extend((4..7).map(|i| (i.to_string(), Some(870))));
        cpus.push(("7".into(), Some(1024)));
        let cpus: Vec<(&str, Option<u64>)> = cpus.iter().map(|(s, c)| (s.as_str(), *c)).collect();
        let sys = fake_sysfs("arm", "0-7", &cpus, None);
        assert_eq!(physical_cores(&sys), Some(4));
    }

    #[test]
    fn intel_hybrid_counts_performance_cores() {
        // 2 P-cores with SMT (cpus 0-3), 4 E-cores (4-7).
        let cpus = [
            ("0-1", None),
            ("0-1", None),
            ("2-3", None),
            ("2-3", None),
            ("4", None),
            ("5", None),
            ("6", None),
            ("7", None),
        ];
        let sys = fake_sysfs("hybrid", "0-7", &cpus, Some("0-3"));
        assert_eq!(physical_cores(&sys), Some(2));
    }

    #[test]
    fn offline_cpus_and_bad_trees() {
        let sys = fake_sysfs("offline", "0,2", &[("0", None), ("1", None), ("2", None)], None);
        assert_eq!(physical_cores(&sys), Some(2));
        assert_eq!(physical_cores(Path::new("/nonexistent/cpu")), None);
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert!(default_threads() >= 1);
    }
}
