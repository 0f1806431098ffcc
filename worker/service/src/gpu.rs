//! GPU memory for `/metrics`, read through NVML (the NVIDIA Management Library).
//!
//! Why NVML and not libtorch: `tch` exposes no CUDA allocator statistics, and NVML also sees what
//! the allocator does not (the CUDA context, cuDNN workspaces, other processes on the same GPU),
//! which is what an operator sizing a fleet needs. `libnvidia-ml.so` ships with the driver and is
//! loaded at run time, so machines without an NVIDIA driver simply report no GPU metrics.

use std::fmt::{self, Write};

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// One GPU's memory, as sampled at scrape time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// NVML's device index (PCI order; not remapped by `CUDA_VISIBLE_DEVICES`).
    pub index: u32,
    /// The GPU's model name.
    pub name: String,
    /// Bytes allocated on the device by every process.
    pub used: u64,
    /// Bytes installed.
    pub total: u64,
    /// Bytes this worker process holds on the device, where the driver reports it.
    pub process: Option<u64>,
}

/// An NVML session, opened once at start-up when the engine runs on CUDA.
pub struct GpuMemory {
    nvml: Nvml,
}

impl fmt::Debug for GpuMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuMemory").finish_non_exhaustive()
    }
}

impl GpuMemory {
    /// Opens NVML; `None` (with the reason) where there is no NVIDIA driver.
    pub fn open() -> Result<Self, String> {
        Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| e.to_string())
    }

    /// Samples every device; devices that cannot be read are left out.
    pub fn sample(&self) -> Vec<DeviceMemory> {
        let pid = std::process::id();
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = self.nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok()?;
                let process = device.running_compute_processes().ok().and_then(|procs| {
                    procs
                        .iter()
                        .filter(|p| p.pid == pid)
                        .map(|p| match p.used_gpu_memory {
                            UsedGpuMemory::Used(bytes) => Some(bytes),
                            UsedGpuMemory::Unavailable => None,
                        })
                        .sum::<Option<u64>>()
                });
                Some(DeviceMemory {
                    index,
                    name: device.name().unwrap_or_default(),
                    used: memory.used,
                    total: memory.total,
                    process,
                })
            })
            .collect()
    }
}

/// Appends the GPU memory gauges in the Prometheus text format.
pub fn render(devices: &[DeviceMemory], out: &mut String) {
    if devices.is_empty() {
        return;
    }
    let label = |d: &DeviceMemory| {
        let name = d.name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("gpu=\"{}\",name=\"{name}\"", d.index)
    };
    out.push_str("# HELP inpaint_gpu_memory_used_bytes GPU memory allocated by every process (NVML).\n# TYPE inpaint_gpu_memory_used_bytes gauge\n");
    for d in devices {
        let _ = writeln!(
            out,
            "inpaint_gpu_memory_used_bytes{{{}}} {}",
            label(d),
            d.used
        );
    }
    out.push_str("# HELP inpaint_gpu_memory_total_bytes GPU memory installed (NVML).\n# TYPE inpaint_gpu_memory_total_bytes gauge\n");
    for d in devices {
        let _ = writeln!(
            out,
            "inpaint_gpu_memory_total_bytes{{{}}} {}",
            label(d),
            d.total
        );
    }
    out.push_str("# HELP inpaint_gpu_memory_process_bytes GPU memory held by this worker process (NVML).\n# TYPE inpaint_gpu_memory_process_bytes gauge\n");
    for d in devices {
        if let Some(bytes) = d.process {
            let _ = writeln!(
                out,
                "inpaint_gpu_memory_process_bytes{{{}}} {bytes}",
                label(d)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_per_device_with_escaped_names() {
        let mut out = String::new();
        render(&[], &mut out);
        assert!(out.is_empty(), "no GPU, no GPU metrics");
        render(
            &[
                DeviceMemory {
                    index: 0,
                    name: "NVIDIA H100 \"SXM\"".into(),
                    used: 1_000,
                    total: 80_000,
                    process: Some(600),
                },
                DeviceMemory {
                    index: 1,
                    name: "NVIDIA H100".into(),
                    used: 5,
                    total: 80_000,
                    process: None,
                },
            ],
            &mut out,
        );
        assert!(out.contains(
            "inpaint_gpu_memory_used_bytes{gpu=\"0\",name=\"NVIDIA H100 \\\"SXM\\\"\"} 1000\n"
        ));
        assert!(
            out.contains("inpaint_gpu_memory_total_bytes{gpu=\"1\",name=\"NVIDIA H100\"} 80000\n")
        );
        assert!(out.contains("inpaint_gpu_memory_process_bytes{gpu=\"0\""));
        assert!(!out.contains("inpaint_gpu_memory_process_bytes{gpu=\"1\""));
    }

    #[test]
    fn opening_without_a_driver_is_an_error_not_a_panic() {
        // On a machine with an NVIDIA driver this samples real devices instead.
        match GpuMemory::open() {
            Ok(gpu) => {
                for device in gpu.sample() {
                    assert!(device.used <= device.total, "{device:?}");
                }
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
