//! Timing one submit of recorded GPU work.
//!
//! With TIMESTAMP_QUERY: the GPU's own clock. The work records its own passes (the engine's plans open
//! theirs), so the timestamps are written by two empty compute passes recorded just before and after it
//! (ComputePassTimestampWrites: beginning-of-pass on the first, end-of-pass on the second). The cost of
//! that empty bracket is measured by the probes and printed in the header; it is not subtracted.
//! Without TIMESTAMP_QUERY: wall clock from submit to the end of a blocking poll.

use super::report::{ClockKind, ClockReport};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use std::time::Instant;

enum Clock {
    Timestamps {
        set: wgpu::QuerySet,
        resolve: wgpu::Buffer,
        read: wgpu::Buffer,
        period_ns: f64,
    },
    Wall,
}

pub struct Timer<'g> {
    gpu: &'g Gpu,
    clock: Clock,
}

impl<'g> Timer<'g> {
    /// GPU timestamps where the device has them, else the wall clock.
    pub fn new(gpu: &'g Gpu) -> Self {
        let clock = if gpu.caps.timestamps {
            Clock::Timestamps {
                set: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("lab timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("lab timestamps resolve"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                read: gpu.readback("lab timestamps read", 16),
                period_ns: gpu.queue.get_timestamp_period() as f64,
            }
        } else {
            Clock::Wall
        };
        Timer { gpu, clock }
    }

    pub fn report(&self) -> ClockReport {
        match &self.clock {
            Clock::Timestamps { period_ns, .. } => ClockReport {
                kind: ClockKind::GpuTimestamps,
                period_ns: Some(*period_ns),
                description: format!(
                    "GPU timestamps (TIMESTAMP_QUERY, {period_ns} ns/tick), an empty pass before and after the work"
                ),
            },
            Clock::Wall => ClockReport {
                kind: ClockKind::Wall,
                period_ns: None,
                description:
                    "wall clock from submit to the end of a blocking poll (the device has no TIMESTAMP_QUERY)"
                        .into(),
            },
        }
    }

    /// Nanoseconds of one submit of what `work` records (encoding is not timed).
    pub fn time(&self, work: &dyn Fn(&mut wgpu::CommandEncoder)) -> Result<f64> {
        let gpu = self.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let bracket = |enc: &mut wgpu::CommandEncoder, begin: Option<u32>, end: Option<u32>| {
            if let Clock::Timestamps { set, .. } = &self.clock {
                let _ = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("lab timestamp"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: begin,
                        end_of_pass_write_index: end,
                    }),
                });
            }
        };
        bracket(&mut enc, Some(0), None);
        work(&mut enc);
        bracket(&mut enc, None, Some(1));
        match &self.clock {
            Clock::Timestamps {
                set,
                resolve,
                read,
                period_ns,
            } => {
                enc.resolve_query_set(set, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
                gpu.queue.submit([enc.finish()]);
                let b = gpu.read_mapped(read, 16)?;
                let t0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
                let t1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                Ok(t1.saturating_sub(t0) as f64 * period_ns)
            }
            Clock::Wall => {
                let cmd = enc.finish();
                let t = Instant::now();
                gpu.queue.submit([cmd]);
                gpu.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
                Ok(t.elapsed().as_nanos() as f64)
            }
        }
    }
}
