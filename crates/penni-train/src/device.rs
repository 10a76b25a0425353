//! Where training runs, chosen at run time: burn's flex CPU backend (penni's own conv and
//! batchnorm kernels, always built) or a GPU through burn's CubeCL backends (cargo features
//! `wgpu` for Vulkan/Metal/DX12 and `cuda`). Evaluation always runs on penni-engine (CPU).

use burn::tensor::Device;

use crate::error::{Result, TrainError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainDevice {
    #[default]
    Cpu,
    /// The default wgpu adapter (`CUBECL_WGPU_DEFAULT_DEVICE` overrides wgpu's choice).
    Wgpu,
    /// CUDA device 0.
    Cuda,
}

impl std::str::FromStr for TrainDevice {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(TrainError::Config(format!("unknown device '{other}': expected cpu, wgpu or cuda"))),
        }
    }
}

impl std::fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl TrainDevice {
    /// The burn device (without autodiff), checked to work: a GPU runtime that cannot start
    /// (no adapter, no driver) is an error here, not a panic in the first step.
    pub fn open(self) -> Result<Device> {
        let device = match self {
            Self::Cpu => return Ok(Device::flex()),
            Self::Wgpu => wgpu_device()?,
            Self::Cuda => cuda_device()?,
        };
        probe(self, device)
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device> {
    Err(not_built("wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(not_built("cuda"))
}

#[allow(dead_code)]
fn not_built(feature: &str) -> TrainError {
    TrainError::Config(format!(
        "this penni was built without GPU support for --device {feature}; rebuild with `cargo build --release -p penni-cli --features {feature}`"
    ))
}

/// Runs one small op on the device; burn's GPU runtimes panic when they cannot start.
fn probe(which: TrainDevice, device: Device) -> Result<Device> {
    let d = device.clone();
    let ran = std::panic::catch_unwind(move || {
        let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &d);
        (t * 2.0).into_data().try_to_vec::<f32>().ok()
    });
    match ran {
        Ok(Some(v)) if v == [2.0, 4.0] => Ok(device),
        Ok(_) => Err(TrainError::Config(format!("device {which} returned wrong results for a test op"))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(TrainError::Config(format!("device {which} is not usable here: {why}")))
        }
    }
}
