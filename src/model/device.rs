//! `--device auto|cpu|cuda[:N]`.

use anyhow::{Result, bail};
use candle_core::Device;

/// Parses a device spec. `auto` picks CUDA device 0 when alignscope was built with the
/// `cuda` feature and a GPU is present, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto_device()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => match n.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => bail!("device {spec:?}: the CUDA ordinal must be a number (cuda:0)"),
                },
            };
            cuda_device(ordinal)
        }
        _ => bail!("unknown device {spec:?}: use auto, cpu, cuda or cuda:N"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| anyhow::anyhow!("CUDA device {ordinal} is not available: {}", super::checkpoint::first_line(&e.to_string())))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    bail!("this alignscope was built without CUDA: rebuild with `cargo build --release --features cuda`")
}

fn auto_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A short human name for a device.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}
