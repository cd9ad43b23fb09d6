//! The device's own ceilings, measured in the same run as the cases, for the "% copy" column and the
//! roofline's two lines:
//! - copy bandwidth: a 64 MiB buffer-to-buffer copy (smaller where the device's buffers are), counted as
//!   64 MiB read + 64 MiB written, after one untimed copy (first touch of the pages);
//! - peak FLOP/s: shaders/peak_flops.wgsl, FMA chains with no memory traffic, its iteration count
//!   calibrated so that a run lasts about 20 ms (quick) or 100 ms (thorough);
//! - the empty timing bracket (two empty passes), the floor under every case's time.

use super::report::{CopyProbe, PeakProbe, Samples};
use super::timing::Timer;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

pub const PEAK_FLOPS: &str = include_str!("../../../shaders/peak_flops.wgsl");

/// Workgroups of the peak-FLOP/s dispatch (x 64 invocations: enough to fill a large GPU twice).
const PEAK_WORKGROUPS: u32 = 8192;
const PEAK_WG: u32 = 64;
/// FLOPs per invocation and iteration: 8 chains x vec4 x 2 (fma).
const PEAK_FLOP_PER_ITER: f64 = 64.0;

/// Copy bandwidth over `reps` timed copies.
pub fn copy(gpu: &Gpu, timer: &Timer, reps: usize) -> Result<CopyProbe> {
    let bytes = (64u64 << 20)
        .min(gpu.caps.max_buffer_size)
        .min(gpu.caps.max_storage_binding)
        & !3;
    let src = gpu.storage("lab copy src", bytes)?;
    let dst = gpu.storage("lab copy dst", bytes)?;
    gpu.queue.write_buffer(&src, 0, &vec![1u8; bytes as usize]);
    let copy = |enc: &mut wgpu::CommandEncoder| enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
    timer.time(&copy)?; // first touch of the pages
    let samples = (0..reps.max(1))
        .map(|_| timer.time(&copy))
        .collect::<Result<Vec<_>>>()?;
    Ok(CopyProbe {
        bytes,
        t: Samples::new(samples),
    })
}

/// The timing bracket alone.
pub fn empty_bracket(timer: &Timer, reps: usize) -> Result<Samples> {
    let samples = (0..reps.max(3))
        .map(|_| timer.time(&|_| {}))
        .collect::<Result<Vec<_>>>()?;
    Ok(Samples::new(samples))
}

/// Peak FLOP/s: calibrate the iteration count on one run, then `reps` timed runs of about `target_ns`.
pub fn peak_flops(gpu: &Gpu, timer: &Timer, reps: usize, target_ns: f64) -> Result<PeakProbe> {
    let wg = PEAK_WG.min(gpu.caps.max_workgroup_invocations);
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("peak_flops"),
            source: wgpu::ShaderSource::Wgsl(PEAK_FLOPS.into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("peak_flops"),
            layout: None,
            module: &module,
            entry_point: Some("peak_flops"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("WG", wg as f64)],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu(format!(
            "building the peak FLOP/s probe (shaders/peak_flops.wgsl) failed: {e}"
        )));
    }
    let out = gpu.storage("lab peak out", (PEAK_WORKGROUPS * wg * 4) as u64)?;
    let run = |iters: u32| -> Result<f64> {
        let params: [u32; 4] = [iters, 0.9999f32.to_bits(), 1e-4f32.to_bits(), 0];
        let p = gpu.uniform_init("lab peak params", bytemuck::cast_slice(&params));
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("peak_flops"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: p.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        timer.time(&|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("peak_flops"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(PEAK_WORKGROUPS, 1, 1);
        })
    };
    let probe_iters = 16u32;
    run(probe_iters)?; // first use: pipeline compilation on some drivers
    let t = run(probe_iters)?.max(1.0);
    let iters = ((probe_iters as f64 * target_ns / t) as u32).clamp(probe_iters, 1 << 22);
    let samples = (0..reps.max(1))
        .map(|_| run(iters))
        .collect::<Result<Vec<_>>>()?;
    let flops = PEAK_WORKGROUPS as f64 * wg as f64 * iters as f64 * PEAK_FLOP_PER_ITER;
    Ok(PeakProbe {
        flops,
        workgroups: PEAK_WORKGROUPS,
        workgroup_size: wg,
        iters,
        t: Samples::new(samples),
    })
}
