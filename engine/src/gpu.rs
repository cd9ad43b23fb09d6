//! GPU context: adapter selection, device creation with the adapter's own limits, and the few buffer
//! helpers everything else uses. No model logic lives here.

use crate::error::{Error, Result};
use std::path::PathBuf;
use wgpu::util::DeviceExt;

/// Which graphics API to run on. `None` in [`GpuOptions`] means "best available": Vulkan, Metal or DX12,
/// and GL only as a last resort.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(Self::Vulkan),
            "metal" | "mtl" => Ok(Self::Metal),
            "dx12" | "d3d12" => Ok(Self::Dx12),
            "gl" | "gles" | "opengl" => Ok(Self::Gl),
            other => Err(Error::Input(format!(
                "--backend: unknown backend '{other}' (expected vulkan, metal, dx12 or gl)"
            ))),
        }
    }
    fn backends(self) -> wgpu::Backends {
        match self {
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to pick the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to one backend. Without it, WGPU_BACKEND is honoured, else all native backends are tried.
    pub backend: Option<BackendChoice>,
    /// Index into the list that `glint devices` prints (for the chosen backends).
    pub adapter: Option<usize>,
}

/// What a kernel needs to know about the device to pick its shape.
#[derive(Clone, Debug)]
pub struct DeviceCaps {
    /// A CPU rasteriser (lavapipe, WARP, SwiftShader): barriers and workgroup memory are costly there.
    pub cpu_device: bool,
    /// SUBGROUP is enabled and the subgroup size is fixed (min == max), so a row reduction can be one
    /// subgroup wide without barriers.
    pub subgroup_size: Option<u32>,
    pub shader_f16: bool,
    pub timestamps: bool,
    /// Storage buffers with initial data are mapped at creation and written in place (a CPU device
    /// with MAPPABLE_PRIMARY_BUFFERS), not uploaded through a staging buffer.
    pub direct_upload: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_invocations: u32,
    pub max_storage_buffers_per_stage: u32,
    /// The device's identity (adapter, driver, backend) as 16 hex digits
    /// ([`crate::lab::device::fingerprint`]): what a tuning file is keyed by.
    pub fingerprint: String,
}

pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: DeviceCaps,
    /// Bytes of every buffer created through this context (wgpu has no portable memory query).
    allocated: std::sync::atomic::AtomicU64,
    /// The driver's compiled pipelines, kept on disk between runs (backends with PIPELINE_CACHE).
    pub pipeline_cache: Option<PipelineCacheFile>,
    /// The first error the device raised outside an error scope, or its loss: every later read back
    /// reports it ([`Gpu::check_fault`]) instead of the process aborting (wgpu's default handler
    /// panics) or hanging.
    fault: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// Buffers alive on the device now ([`Gpu::live_buffers`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveBuffers {
    pub buffers: u64,
    /// Device memory bound to them (allocator granularity included).
    pub bytes: u64,
}

/// A `wgpu::PipelineCache` and the file it was read from and is saved to: in the user cache directory
/// ([`cache_dir`]), named by wgpu's adapter key (vendor and device), glint's version and a hash of every
/// shader's source, so a driver, device or shader change starts a fresh file. wgpu checks the file's
/// header against the driver and ignores a file that does not match; deleting it is always safe.
pub struct PipelineCacheFile {
    pub cache: wgpu::PipelineCache,
    pub path: PathBuf,
    /// Whether the file existed and was handed to the driver (a warm start).
    pub loaded: bool,
}

/// glint's cache directory: `$GLINT_CACHE_DIR`, else `$XDG_CACHE_HOME/glint`, else `~/.cache/glint`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GLINT_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("glint")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("glint")))
}

/// 64-bit FNV-1a over the bytes of `parts`, in order (the pipeline cache file's shader hash, the lab's
/// device fingerprint).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The device's pipeline cache, from its file when there is one. None where the backend has no
/// pipeline cache (wgpu: Vulkan only), no cache directory is known, or `GLINT_PIPELINE_CACHE=0`.
fn open_pipeline_cache(
    device: &wgpu::Device,
    info: &wgpu::AdapterInfo,
) -> Option<PipelineCacheFile> {
    if !device.features().contains(wgpu::Features::PIPELINE_CACHE)
        || std::env::var("GLINT_PIPELINE_CACHE").is_ok_and(|v| v == "0")
    {
        return None;
    }
    let key = wgpu::util::pipeline_cache_key(info)?;
    let sources: Vec<String> = crate::kernels::all_modules()
        .into_iter()
        .map(|(_, src)| src)
        .collect();
    let mut parts: Vec<&[u8]> = sources.iter().map(|s| s.as_bytes()).collect();
    parts.push(info.driver.as_bytes());
    parts.push(info.driver_info.as_bytes());
    let path = cache_dir()?.join("pipelines").join(format!(
        "{key}_glint{}_{:016x}.bin",
        env!("CARGO_PKG_VERSION"),
        fnv1a(&parts)
    ));
    let data = std::fs::read(&path).ok();
    // SAFETY: the data is what `PipelineCache::get_data` wrote for an adapter with this key (vendor,
    // device) and driver; wgpu validates its header and the driver its contents (`fallback`: an
    // unusable file gives an empty cache instead of an error).
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("glint pipelines"),
            data: data.as_deref(),
            fallback: true,
        })
    };
    log::info!(
        "pipeline cache {} ({})",
        path.display(),
        if data.is_some() { "read" } else { "new" }
    );
    Some(PipelineCacheFile {
        cache,
        path,
        loaded: data.is_some(),
    })
}

/// One adapter as `glint devices` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterReport {
    /// Index in the adapter list of the chosen backends (`--adapter`).
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub device: u32,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub features: Vec<String>,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn chosen_backends(opts: &GpuOptions) -> wgpu::Backends {
    match opts.backend {
        Some(b) => b.backends(),
        None => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
    }
}

/// All adapters on the chosen backends, native APIs first and GL last, in a stable order.
fn adapters(opts: &GpuOptions) -> Vec<wgpu::Adapter> {
    let inst = instance(chosen_backends(opts));
    let mut list = pollster::block_on(inst.enumerate_adapters(chosen_backends(opts)));
    list.sort_by_key(|a| {
        let i = a.get_info();
        let backend_rank = match i.backend {
            wgpu::Backend::Gl => 2,
            wgpu::Backend::Noop => 3,
            _ => 0,
        };
        let type_rank = match i.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        (backend_rank, type_rank)
    });
    list.retain(|a| a.get_info().backend != wgpu::Backend::Noop);
    list
}

pub fn list_adapters(opts: &GpuOptions) -> Vec<AdapterReport> {
    adapters(opts)
        .iter()
        .enumerate()
        .map(|(index, a)| adapter_report(index, a))
        .collect()
}

/// What `glint devices` (and the kernel lab's header) reports of one adapter.
fn adapter_report(index: usize, a: &wgpu::Adapter) -> AdapterReport {
    let i = a.get_info();
    let l = a.limits();
    let f = a.features();
    let mut features: Vec<String> = [
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
        (wgpu::Features::SUBGROUP, "SUBGROUP"),
        (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            "TIMESTAMP_QUERY_INSIDE_PASSES",
        ),
        (wgpu::Features::PIPELINE_CACHE, "PIPELINE_CACHE"),
        (wgpu::Features::IMMEDIATES, "IMMEDIATES"),
    ]
    .iter()
    .filter(|(flag, _)| f.contains(*flag))
    .map(|(_, n)| n.to_string())
    .collect();
    features.sort();
    AdapterReport {
        index,
        name: i.name.clone(),
        backend: format!("{:?}", i.backend),
        device_type: format!("{:?}", i.device_type),
        driver: i.driver.clone(),
        driver_info: i.driver_info.clone(),
        vendor: i.vendor,
        device: i.device,
        subgroup_min_size: i.subgroup_min_size,
        subgroup_max_size: i.subgroup_max_size,
        features,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
    }
}

impl Gpu {
    /// Open the adapter the options name (or the best one) with every limit the adapter offers.
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        let list = adapters(opts);
        if list.is_empty() {
            let which = match opts.backend {
                Some(b) => format!("{b:?}"),
                None => "any backend (Vulkan, Metal, DX12, GL)".into(),
            };
            return Err(Error::Gpu(format!(
                "no GPU adapter found on {which}. Install a GPU driver (on Linux without a GPU, \
                 Mesa's software Vulkan device: apt-get install mesa-vulkan-drivers libvulkan1), \
                 or pick another --backend"
            )));
        }
        let n = list.len();
        let adapter = match opts.adapter {
            Some(i) if i >= n => {
                return Err(Error::Input(format!(
                    "--adapter {i}: only {n} adapter(s) found (0..{}); see `glint devices`",
                    n - 1
                )))
            }
            Some(i) => list.into_iter().nth(i).expect("index checked"),
            None => list.into_iter().next().expect("list not empty"),
        };
        let info = adapter.get_info();
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::PIPELINE_CACHE;
        // On a CPU device every buffer lives in host memory anyway: with MAPPABLE_PRIMARY_BUFFERS a
        // weight buffer is mapped at creation and written in place, instead of through a staging
        // buffer and a copy at the next submit (half the bytes moved at load). Never on a GPU, where
        // mappable storage would sit in slow host-visible memory.
        let wanted = if info.device_type == wgpu::DeviceType::Cpu {
            wanted | wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
        } else {
            wanted
        };
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("glint"),
            required_features: features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("request_device on '{}': {e}", info.name)))?;
        let fixed_subgroup = features.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == info.subgroup_max_size
            && info.subgroup_min_size >= 4;
        let caps = DeviceCaps {
            cpu_device: info.device_type == wgpu::DeviceType::Cpu,
            subgroup_size: fixed_subgroup.then_some(info.subgroup_min_size),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            direct_upload: features.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            fingerprint: crate::lab::device::fingerprint(
                &info.name,
                info.vendor,
                info.device,
                &info.driver,
                &info.driver_info,
                &format!("{:?}", info.backend),
            ),
        };
        log::info!(
            "GPU: {} ({:?}, {:?}), subgroup {:?}, max binding {} MiB",
            info.name,
            info.backend,
            info.device_type,
            caps.subgroup_size,
            caps.max_storage_binding >> 20
        );
        let pipeline_cache = open_pipeline_cache(&device, &info);
        let fault = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let keep = |f: &std::sync::Arc<std::sync::Mutex<Option<String>>>, msg: String| {
            log::error!("{msg}");
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(msg);
        };
        let f = fault.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            keep(&f, format!("GPU error: {e}"));
        }));
        let f = fault.clone();
        let name = info.name.clone();
        device.set_device_lost_callback(move |reason, msg| {
            keep(
                &f,
                format!(
                    "the GPU device '{name}' was lost ({reason:?}: {msg}); glint must be restarted"
                ),
            );
        });
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            caps,
            allocated: Default::default(),
            pipeline_cache,
            fault,
        })
    }

    /// The device's first uncaptured error or its loss, as an error (None: healthy).
    pub fn check_fault(&self) -> Result<()> {
        let f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match &*f {
            Some(msg) => Err(Error::Gpu(msg.clone())),
            None => Ok(()),
        }
    }

    /// Create a buffer inside an out-of-memory error scope: a device that cannot allocate it gives
    /// an error naming the buffer and its size, not a later fault.
    fn create_checked(
        &self,
        label: &str,
        size: u64,
        make: impl FnOnce() -> wgpu::Buffer,
    ) -> Result<wgpu::Buffer> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let b = make();
        match pollster::block_on(scope.pop()) {
            None => {
                self.count(size.max(16));
                Ok(b)
            }
            Some(e) => Err(Error::Gpu(format!(
                "out of GPU memory creating buffer '{label}' of {:.1} MiB ({:.1} MiB already \
                 allocated on {}): {e}",
                size as f64 / (1u64 << 20) as f64,
                self.allocated_bytes() as f64 / (1u64 << 20) as f64,
                self.info.name
            ))),
        }
    }

    /// The pipeline cache to build pipelines with, if any.
    pub fn pipelines(&self) -> Option<&wgpu::PipelineCache> {
        self.pipeline_cache.as_ref().map(|c| &c.cache)
    }

    /// Write the pipeline cache back to its file (after the model's pipelines are built), through a
    /// temporary file and a rename so a concurrent reader never sees half a file. Failures are logged,
    /// never fatal: the cache only saves time.
    pub fn save_pipeline_cache(&self) {
        let Some(c) = &self.pipeline_cache else {
            return;
        };
        let Some(data) = c.cache.get_data() else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = c.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = c.path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, &c.path)
        };
        if let Err(e) = write() {
            log::warn!("pipeline cache {}: not saved: {e}", c.path.display());
        }
    }

    /// The adapter as `glint devices` lists it (`index`: its place in the list it was chosen from, or
    /// 0 when it was the default choice).
    pub fn adapter_report(&self, index: usize) -> AdapterReport {
        adapter_report(index, &self.adapter)
    }

    /// A one-line description: "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// Bytes allocated in buffers so far (weights, KV cache, activations, uniforms).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the device holds now, as wgpu's own counters see it (its `counters` feature): live
    /// buffers and the bytes of device memory bound to them. Unlike [`Gpu::allocated_bytes`], which
    /// only grows, these fall when a buffer is dropped, so a leak shows as growth over a long run.
    /// Backends whose allocator keeps no count (GL) report 0 bytes.
    pub fn live_buffers(&self) -> LiveBuffers {
        let hal = self.device.get_internal_counters().hal;
        LiveBuffers {
            buffers: hal.buffers.read().max(0) as u64,
            bytes: hal.buffer_memory.read().max(0) as u64,
        }
    }

    fn count(&self, bytes: u64) {
        self.allocated
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A storage buffer holding `data`, checked against the device's binding limit.
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.storage_fill(label, data.len(), |mut dst| dst.copy_from_slice(data))
    }

    /// A storage buffer of `len` bytes that `fill` writes, in place where the device lets the host map
    /// a buffer at creation (no staging copy, no host-side buffer of the whole: stacked and
    /// interleaved weights are written part by part), else through a host buffer and
    /// create_buffer_init. Zero-padded to a multiple of 16 bytes, so that a kernel may bind it as
    /// `array<vec4<u32>>` (matvec_quant.wgsl). Checked against the device's binding limit.
    pub fn storage_fill(
        &self,
        label: &str,
        len: usize,
        fill: impl FnOnce(wgpu::WriteOnly<'_, [u8]>),
    ) -> Result<wgpu::Buffer> {
        let padded = len.next_multiple_of(16);
        self.check_binding(label, padded as u64)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        if !self.caps.direct_upload || len == 0 {
            let mut data = vec![0u8; padded];
            fill(data[..len].as_mut().into());
            return self.create_checked(label, padded as u64, || {
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(label),
                        contents: &data,
                        usage,
                    })
            });
        }
        // Mapped at creation with MAP_WRITE: wgpu maps the buffer's own memory (no staging buffer),
        // the data is written once, in place.
        let size = padded as u64;
        let b = self.create_checked(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: usage | wgpu::BufferUsages::MAP_WRITE,
                mapped_at_creation: true,
            })
        })?;
        {
            let mut view = b
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Gpu(format!("mapping buffer '{label}' at creation: {e}")))?;
            fill(view.slice(..len));
        }
        b.unmap();
        Ok(b)
    }

    /// A zeroed storage buffer of `size` bytes.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.check_binding(label, size)?;
        self.create_checked(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })
    }

    pub fn uniform_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        self.count(data.len() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    pub fn readback(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn check_binding(&self, label: &str, size: u64) -> Result<()> {
        if size > self.caps.max_storage_binding {
            return Err(Error::Gpu(format!(
                "buffer '{label}' is {size} bytes, over the device's max_storage_buffer_binding_size \
                 of {} bytes ({})",
                self.caps.max_storage_binding,
                self.info.name
            )));
        }
        Ok(())
    }

    /// Map a MAP_READ buffer after the submissions that fill it, and copy `size` bytes out.
    pub fn read_mapped(&self, buf: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = buf.slice(0..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|_| Error::Gpu("map_async callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("map_async: {e}")))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("get_mapped_range: {e}")))?
            .to_vec();
        buf.unmap();
        Ok(out)
    }

    /// Copy `size` bytes of a storage buffer back to the CPU (tests, debugging, all-logits mode).
    pub fn read_buffer(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let rb = self.readback("readback", size);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, offset, &rb, 0, size);
        self.queue.submit([enc.finish()]);
        self.read_mapped(&rb, size)
    }

    pub fn read_f32(&self, src: &wgpu::Buffer, offset_elems: u64, n: usize) -> Result<Vec<f32>> {
        let bytes = self.read_buffer(src, offset_elems * 4, n as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
