//! The device block of a lab report: the adapter as `glint devices` lists it (name, vendor and device
//! ids, backend, driver, features, limits) and its fingerprint.
//!
//! The fingerprint is a stable name for "this device with this driver on this backend": the 64-bit
//! FNV-1a hash of adapter name, vendor id, device id, driver, driver info and backend, joined by NUL
//! bytes, as 16 hex digits. It depends on nothing else (not the machine, the date or the Rust version),
//! so two reports with the same fingerprint ran on the same device, driver and backend, and a tuning
//! file keyed by it can be refused for another device.

use crate::gpu::{AdapterReport, Gpu};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    #[serde(flatten)]
    pub adapter: AdapterReport,
    /// [`fingerprint`] of the adapter's identity.
    pub fingerprint: String,
}

/// FNV-1a, 64 bits, of the identity fields joined by NUL bytes, as 16 lowercase hex digits.
pub fn fingerprint(
    name: &str,
    vendor: u32,
    device: u32,
    driver: &str,
    driver_info: &str,
    backend: &str,
) -> String {
    let text = [
        name,
        &vendor.to_string(),
        &device.to_string(),
        driver,
        driver_info,
        backend,
    ]
    .join("\0");
    format!("{:016x}", crate::gpu::fnv1a(&[text.as_bytes()]))
}

impl DeviceReport {
    pub fn new(adapter: AdapterReport) -> Self {
        let a = &adapter;
        let fingerprint = fingerprint(
            &a.name,
            a.vendor,
            a.device,
            &a.driver,
            &a.driver_info,
            &a.backend,
        );
        DeviceReport {
            adapter,
            fingerprint,
        }
    }

    /// The device a [`Gpu`] was opened on (`index`: its `--adapter` index).
    pub fn of(gpu: &Gpu, index: usize) -> Self {
        Self::new(gpu.adapter_report(index))
    }

    /// Driver name and info, one string ("llvmpipe Mesa 22.3.6 (LLVM 15.0.6)").
    pub fn driver(&self) -> String {
        format!("{} {}", self.adapter.driver, self.adapter.driver_info)
            .trim()
            .to_string()
    }

    /// "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu, llvmpipe Mesa 22.3.6 (LLVM 15.0.6))".
    pub fn describe(&self) -> String {
        let a = &self.adapter;
        format!(
            "{} ({}, {}, {})",
            a.name,
            a.backend,
            a.device_type,
            self.driver()
        )
    }

    /// The limits the kernels' shapes depend on, one line.
    pub fn limits(&self) -> String {
        let a = &self.adapter;
        format!(
            "max storage binding {} MiB, max buffer {} MiB, storage buffers/stage {}, workgroup memory {} KiB, \
             invocations/workgroup {}, workgroups/dimension {}, subgroup size {}..{}",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_storage_buffers_per_shader_stage,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension,
            a.subgroup_min_size,
            a.subgroup_max_size
        )
    }
}
