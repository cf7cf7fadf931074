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
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("CUDA device {ordinal} is not available: {}", cuda_error_text(&e)))
}

/// A driver error as `CUDA_ERROR_NAME (the driver's explanation)`; the explanation is
/// left out when the driver cannot give it (as the link-time libcuda stub cannot).
#[cfg(feature = "cuda")]
fn cuda_error_text(e: &candle_core::Error) -> String {
    use candle_core::cuda_backend::CudaError;
    let mut e = e;
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = inner;
    }
    if let candle_core::Error::Cuda(inner) = e
        && let Some(CudaError::Cuda(driver)) = inner.downcast_ref::<CudaError>()
    {
        let name = format!("{:?}", driver.0);
        return match driver.error_string() {
            Ok(text) => format!("{name} ({})", text.to_string_lossy()),
            Err(_) => name,
        };
    }
    super::checkpoint::first_line(&e.to_string()).to_string()
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

/// `--tf32`: lets the f32 matrix products on a CUDA device run on TF32 tensor cores (inputs
/// rounded to a 10-bit mantissa, f32 accumulation), several times the plain f32 rate on
/// Ampere and later GPUs at about 1e-3 relative error per product. It is a process-wide
/// cuBLAS setting, off by default so that CUDA results match the CPU's (the GPU check's
/// 1e-4); off the GPU it would change nothing, so asking for it there is refused.
pub fn set_tf32(device: &Device, on: bool) -> Result<()> {
    if on {
        if !device.is_cuda() {
            bail!("--tf32 changes CUDA matrix products only: use it with --device cuda (this run is on {})", device_name(device))
        }
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    Ok(())
}

/// Makes every copy queued on this thread's device stream complete. Candle's CUDA device
/// runs each thread on its own stream, so weights uploaded on one thread must have landed
/// before another thread (an explorer worker, an evaluation) reads them on its stream.
pub fn settle(d: &Device) -> Result<()> {
    Ok(d.synchronize()?)
}

/// One line about a device: `cpu`, or the GPU's name, compute capability and memory.
pub fn describe_device(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        #[cfg(feature = "cuda")]
        Device::Cuda(c) => {
            let ctx = c.cuda_stream().context().clone();
            let ordinal = ctx.ordinal();
            let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
            let cap = ctx.compute_capability().map(|(a, b)| format!("compute {a}.{b}")).unwrap_or_else(|_| "compute ?".into());
            let mem = ctx.total_mem().map(|m| format!("{:.0} GiB", m as f64 / (1u64 << 30) as f64)).unwrap_or_else(|_| "? GiB".into());
            format!("cuda:{ordinal} ({name}, {cap}, {mem})")
        }
        other => device_name(other),
    }
}

/// A short human name for a device.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}
