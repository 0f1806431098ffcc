//! [`DeviceSpec`] and [`Precision`]: where and in which floating-point format the models run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// The device a configuration asks for. `auto` takes CUDA device 0 when there is one, else the
/// CPU; the others are taken literally and fail at start-up when the machine lacks them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 if present, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceSpec {
    /// The concrete device on this machine, or an error naming what is missing. `auto` logs the
    /// device it chose and why (a GPU host silently running on the CPU is the failure this
    /// guards against: see [`cuda_backend`]).
    pub fn resolve(self) -> Result<tch::Device, EngineError> {
        let available = cuda_device_count();
        match self {
            Self::Auto if available > 0 => {
                tracing::info!(
                    device = "cuda:0",
                    cuda_devices = available,
                    "device auto: chose CUDA device 0"
                );
                Ok(tch::Device::Cuda(0))
            }
            Self::Auto => {
                let backend = cuda_backend();
                tracing::info!(
                    device = "cpu",
                    reason = backend.why_no_cuda(),
                    "device auto: chose the CPU"
                );
                Ok(tch::Device::Cpu)
            }
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(index) if index < available => Ok(tch::Device::Cuda(index)),
            Self::Cuda(index) => Err(EngineError::CudaUnavailable { index, available }),
        }
    }
}

/// CUDA devices libtorch sees (0 without a CUDA backend or without a GPU).
fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// What this process has of libtorch's CUDA backend: for start-up logs, smoke tests and the bench.
/// Everything here is known without a GPU except `device_count`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CudaBackend {
    /// The libtorch this binary was built against has `libtorch_cuda.so`, and the binary links it
    /// (build.rs keeps it despite `--as-needed`).
    pub linked: bool,
    /// `libtorch_cuda.so` is mapped into this process (read from `/proc/self/maps`; `None` where
    /// that file does not exist).
    pub loaded: Option<bool>,
    /// libtorch's CUDA hooks are registered: the CUDA backend is usable once there is a device.
    /// Probed through the CUDA runtime version libtorch was built with, which the CPU-only stub
    /// hooks cannot report; `None` when not registered.
    pub cudart_version: Option<i64>,
    /// CUDA devices visible to libtorch.
    pub device_count: usize,
}

impl CudaBackend {
    /// True when the backend is registered (whether or not a GPU is present).
    pub fn present(&self) -> bool {
        self.cudart_version.is_some()
    }

    /// Why `auto` would not take a GPU here, in words.
    pub fn why_no_cuda(&self) -> &'static str {
        if self.device_count > 0 {
            "a CUDA device is present"
        } else if !self.linked {
            "the libtorch this binary was built against has no CUDA backend (CPU-only libtorch)"
        } else if self.loaded == Some(false) || !self.present() {
            "libtorch_cuda.so is not loaded in this process (a binary linked without it)"
        } else {
            "the CUDA backend is loaded but sees no device (no GPU, no driver, or \
             CUDA_VISIBLE_DEVICES hides them)"
        }
    }
}

/// Reports the CUDA backend of this process (see [`CudaBackend`]).
pub fn cuda_backend() -> CudaBackend {
    CudaBackend {
        linked: cfg!(libtorch_cuda),
        loaded: mapped_libraries().map(|libs| libs.iter().any(|l| l == "libtorch_cuda.so")),
        cudart_version: cudart_version(),
        device_count: cuda_device_count(),
    }
}

/// The file names of the shared objects mapped into this process, from `/proc/self/maps`
/// (`None` where there is no such file, e.g. not Linux).
pub fn mapped_libraries() -> Option<Vec<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut names: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter_map(|path| path.rsplit('/').next())
        .filter(|name| name.contains(".so"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    Some(names)
}

/// `at::globalContext().versionCUDART()` when libtorch's CUDA hooks are registered
/// (libtorch_cuda.so loaded): `hasCUDART()` is true only for the real hooks, and the version is
/// a compile-time constant of libtorch_cuda, so neither needs a GPU. The CPU stub would throw on
/// the version query, hence the check first.
fn cudart_version() -> Option<i64> {
    if tch::utils::has_cudart() {
        Some(tch::utils::version_cudart()).filter(|&version| version > 0)
    } else {
        None
    }
}

impl FromStr for DeviceSpec {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| EngineError::InvalidDevice(s.to_owned())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Floating-point format of the model weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float: the reference format, and the only sensible one on CPU.
    #[default]
    F32,
    /// IEEE half precision: the usual GPU format for SD-1.5.
    F16,
    /// bfloat16: half the memory of f32 with f32's range.
    Bf16,
}

impl Precision {
    /// The libtorch element kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            Self::F32 => tch::Kind::Float,
            Self::F16 => tch::Kind::Half,
            Self::Bf16 => tch::Kind::BFloat16,
        }
    }
}

impl FromStr for Precision {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(EngineError::InvalidPrecision(s.to_owned())),
        }
    }
}

/// The precision a configuration asks for: a fixed [`Precision`], or `auto` — f16 on CUDA (the
/// usual SD-1.5 GPU format, half the memory and tensor-core speed), f32 on the CPU (where f16 is
/// slow and only f32 is the reference). [`PrecisionSpec::resolve`] turns it into a [`Precision`]
/// once the device is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrecisionSpec {
    /// f16 on CUDA, f32 on the CPU.
    #[default]
    Auto,
    /// This precision on every device.
    Fixed(Precision),
}

impl PrecisionSpec {
    /// The precision to run with on `device`.
    pub fn resolve(self, device: tch::Device) -> Precision {
        match self {
            Self::Fixed(precision) => precision,
            Self::Auto if device.is_cuda() => Precision::F16,
            Self::Auto => Precision::F32,
        }
    }
}

impl FromStr for PrecisionSpec {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(Self::Auto)
        } else {
            s.parse().map(Self::Fixed)
        }
    }
}

impl fmt::Display for PrecisionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(Precision::F32) => f.write_str("f32"),
            Self::Fixed(Precision::F16) => f.write_str("f16"),
            Self::Fixed(Precision::Bf16) => f.write_str("bf16"),
        }
    }
}

impl Serialize for PrecisionSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PrecisionSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Process-wide backend settings for running on `device`, to call once at start-up after
/// [`DeviceSpec::resolve`]: on CUDA, cuDNN's benchmark mode (it times the convolution algorithms
/// for each input shape once and keeps the fastest: the UNet's shapes repeat every step). Returns
/// what it set, for the start-up log.
pub fn configure_backend(device: tch::Device) -> Vec<&'static str> {
    let mut set = Vec::new();
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
        set.push("cudnn.benchmark=true");
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("auto".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Auto));
        assert_eq!("CPU".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(3))
        );
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<DeviceSpec>().expect_err(bad);
            assert!(
                err.to_string()
                    .contains("expected auto, cpu, cuda or cuda:N"),
                "{err}"
            );
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves_and_missing_cuda_is_an_error() {
        assert_eq!(DeviceSpec::Cpu.resolve().ok(), Some(tch::Device::Cpu));
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let beyond = DeviceSpec::Cuda(count);
        let err = beyond.resolve().expect_err("device past the last one");
        assert!(
            err.to_string().contains(&format!("cuda:{count} requested")),
            "{err}"
        );
        let auto = DeviceSpec::Auto.resolve().expect("auto always resolves");
        assert_eq!(auto.is_cuda(), count > 0);
    }

    #[test]
    fn precision_auto_is_f16_on_cuda_and_f32_on_cpu() {
        let auto: PrecisionSpec = "AUTO".parse().expect("auto");
        assert_eq!(auto, PrecisionSpec::Auto);
        assert_eq!(auto.resolve(tch::Device::Cpu), Precision::F32);
        assert_eq!(auto.resolve(tch::Device::Cuda(0)), Precision::F16);
        for (text, precision) in [
            ("f32", Precision::F32),
            ("fp16", Precision::F16),
            ("bfloat16", Precision::Bf16),
        ] {
            let spec: PrecisionSpec = text.parse().expect(text);
            assert_eq!(spec, PrecisionSpec::Fixed(precision));
            assert_eq!(spec.resolve(tch::Device::Cuda(0)), precision);
            assert_eq!(spec.resolve(tch::Device::Cpu), precision);
            // Display round-trips.
            assert_eq!(spec.to_string().parse::<PrecisionSpec>().ok(), Some(spec));
        }
        let err = "half".parse::<PrecisionSpec>().expect_err("unknown");
        assert!(err.to_string().contains("half"), "{err}");
        let json: PrecisionSpec = serde_json::from_str("\"auto\"").expect("json");
        assert_eq!(json, PrecisionSpec::Auto);
        assert!(configure_backend(tch::Device::Cpu).is_empty());
    }

    #[test]
    fn parses_precisions() {
        assert_eq!("fp16".parse::<Precision>().ok(), Some(Precision::F16));
        assert_eq!(
            "bf16".parse::<Precision>().ok().map(Precision::kind),
            Some(tch::Kind::BFloat16)
        );
        assert!("f8".parse::<Precision>().is_err());
    }
}
