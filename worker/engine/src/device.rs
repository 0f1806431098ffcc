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
    /// The concrete device on this machine, or an error naming what is missing.
    pub fn resolve(self) -> Result<tch::Device, EngineError> {
        let available = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        let available = usize::try_from(available).unwrap_or(0);
        match self {
            Self::Auto if available > 0 => Ok(tch::Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(index) if index < available => Ok(tch::Device::Cuda(index)),
            Self::Cuda(index) => Err(EngineError::CudaUnavailable { index, available }),
        }
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
    fn parses_precisions() {
        assert_eq!("fp16".parse::<Precision>().ok(), Some(Precision::F16));
        assert_eq!(
            "bf16".parse::<Precision>().ok().map(Precision::kind),
            Some(tch::Kind::BFloat16)
        );
        assert!("f8".parse::<Precision>().is_err());
    }
}
