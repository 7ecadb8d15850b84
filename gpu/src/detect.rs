//! Finding a node's GPUs.

use troupe_core::{GpuDetector, GpuInfo};

/// Finds the node's CUDA GPUs through libtorch, with their names and
/// memory from `nvidia-smi` when it is installed. Give it to
/// [`Config::gpu_detector`](troupe_core::Config::gpu_detector).
///
/// On a machine without a GPU (or without a CUDA libtorch) it finds none,
/// and the node offers no `GPU` resource.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detector;

/// Whether libtorch can use CUDA here.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

impl GpuDetector for Detector {
    fn detect(&self) -> Result<Vec<GpuInfo>, String> {
        let count = tch::Cuda::device_count();
        let count =
            u32::try_from(count).map_err(|_| format!("libtorch reported {count} CUDA devices"))?;
        let smi = nvidia_smi();
        Ok((0..count)
            .map(|ordinal| {
                let known = smi.iter().find(|(index, _, _)| *index == ordinal);
                GpuInfo {
                    ordinal,
                    name: known
                        .map_or_else(|| "CUDA device".to_owned(), |(_, name, _)| name.clone()),
                    memory_bytes: known.and_then(|(_, _, mib)| mib.map(|m| m * 1024 * 1024)),
                }
            })
            .collect())
    }
}

/// `(index, name, MiB)` per GPU from nvidia-smi, or nothing if it is absent.
/// libtorch's C API has no memory query; nvidia-smi ships with the driver.
fn nvidia_smi() -> Vec<(u32, String, Option<u64>)> {
    let Ok(out) = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_smi_line)
        .collect()
}

fn parse_smi_line(line: &str) -> Option<(u32, String, Option<u64>)> {
    let mut fields = line.split(',').map(str::trim);
    let index = fields.next()?.parse().ok()?;
    let name = fields.next()?.to_owned();
    let mib = fields.next().and_then(|m| m.parse().ok());
    Some((index, name, mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_lines() {
        assert_eq!(
            parse_smi_line("0, NVIDIA H100 80GB HBM3, 81559"),
            Some((0, "NVIDIA H100 80GB HBM3".to_owned(), Some(81559)))
        );
        assert_eq!(
            parse_smi_line("1, Tesla T4, [N/A]"),
            Some((1, "Tesla T4".to_owned(), None))
        );
        assert_eq!(parse_smi_line("garbage"), None);
    }

    #[test]
    fn detection_agrees_with_libtorch() {
        let found = Detector.detect().unwrap();
        assert_eq!(found.len() as i64, tch::Cuda::device_count());
        for (i, gpu) in found.iter().enumerate() {
            assert_eq!(gpu.ordinal, i as u32);
        }
    }

    /// Only on a GPU machine (`--include-ignored`): there, detection finds
    /// every device, in ordinal order.
    #[test]
    #[ignore = "needs a CUDA GPU: run with --include-ignored on a GPU machine"]
    fn a_gpu_machine_detects_its_gpus() {
        assert!(super::cuda_available(), "this check needs a CUDA GPU");
        let found = Detector.detect().unwrap();
        assert!(!found.is_empty());
        assert_eq!(found.len() as i64, tch::Cuda::device_count());
    }
}
