//! The memory this process may use, as the store's default budget sees it:
//! the machine's, or less where a cgroup (a container, a Kubernetes pod, a
//! systemd slice) limits it. A budget taken from the machine alone gets a
//! 2 GiB pod on a 64 GiB host OOM-killed long before anything spills.

use std::path::Path;

/// The least of the machine's memory and every cgroup limit on this
/// process, in bytes; `None` if not even the machine's can be read.
pub(crate) fn available() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| mem_total(&info));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|cgroups| cgroup_limit(&cgroups, Path::new("/sys/fs/cgroup")));
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The tightest memory limit on the cgroups `/proc/self/cgroup` names,
/// under `root` (`/sys/fs/cgroup`): cgroup v2's `memory.max` of the
/// process's group and each ancestor, or v1's `memory.limit_in_bytes`.
fn cgroup_limit(proc_self_cgroup: &str, root: &Path) -> Option<u64> {
    let mut limits = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: the group and its ancestors, up to the root.
            let mut dir = root.join(relative);
            loop {
                limits.extend(read_limit(&dir.join("memory.max")));
                if dir == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            // v1: inside a container the group is often mounted as the root.
            for dir in [root.join("memory").join(relative), root.join("memory")] {
                limits.extend(read_limit(&dir.join("memory.limit_in_bytes")));
            }
        }
    }
    limits.into_iter().min()
}

/// A limit file's value; `max` (v2) or a value past 2^60 (v1's "none")
/// is no limit.
fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 60).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("troupe-cgroup-{}-{n}", std::process::id()));
        for (path, contents) in files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().expect("a parent")).expect("dirs");
            std::fs::write(file, contents).expect("written");
        }
        root
    }

    #[test]
    fn the_tightest_limit_of_the_group_and_its_ancestors_counts() {
        let root = tree(&[
            ("memory.max", "max\n"),
            ("kubepods/memory.max", "8589934592\n"),
            ("kubepods/pod1/memory.max", "2147483648\n"),
            ("kubepods/pod1/app/memory.max", "max\n"),
        ]);
        assert_eq!(
            cgroup_limit("0::/kubepods/pod1/app\n", &root),
            Some(2 << 30)
        );
        // No limit anywhere.
        assert_eq!(cgroup_limit("0::/\n", &root), None);
        // cgroup v1, mounted as the container's root.
        let v1 = tree(&[("memory/memory.limit_in_bytes", "1073741824\n")]);
        assert_eq!(
            cgroup_limit("12:memory:/docker/abc\n3:cpu:/docker/abc\n", &v1),
            Some(1 << 30)
        );
        // v1's "no limit" is a huge number.
        let none = tree(&[("memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_limit("12:memory:/\n", &none), None);
        for dir in [root, v1, none] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn meminfo_is_read_in_bytes_and_the_machine_is_an_upper_bound() {
        assert_eq!(
            mem_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16 << 20)
        );
        assert_eq!(mem_total("nothing"), None);
        if let (Some(all), Some(machine)) = (
            available(),
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|i| mem_total(&i)),
        ) {
            assert!(all <= machine);
        }
    }
}
