//! A GPU context for driving single kernels through `Graph`, as the model does.

use glint::graph::Graph;
use glint::kernels::{Kernels, Shapes};

pub struct Ctx {
    pub gpu: glint::gpu::Gpu,
    pub k: Kernels,
    pub step: wgpu::Buffer,
    pub dummy: wgpu::Buffer,
}

/// A context with the device's kernel shapes.
pub fn ctx() -> Option<Ctx> {
    ctx_with(|_| {})
}

/// A context whose kernel shapes are the device's, adjusted by `f` (to test every variant).
pub fn ctx_with(f: impl FnOnce(&mut Shapes)) -> Option<Ctx> {
    let gpu = super::gpu()?;
    let mut shapes = Shapes::for_device(&gpu.caps);
    f(&mut shapes);
    let k = Kernels::new(&gpu, shapes).expect("pipelines");
    let step = gpu.uniform_init("step", &[0u8; 16]);
    let dummy = gpu.storage("dummy", 16).unwrap();
    Some(Ctx {
        gpu,
        k,
        step,
        dummy,
    })
}

impl Ctx {
    pub fn buf(&self, v: &[f32]) -> wgpu::Buffer {
        self.gpu.storage_init("t", bytemuck::cast_slice(v)).unwrap()
    }
    pub fn read(&self, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
        self.gpu.read_f32(b, 0, n).unwrap()
    }
    pub fn graph(&self) -> Graph<'_> {
        Graph::new(&self.gpu, &self.k, &self.step, &self.dummy)
    }
}
