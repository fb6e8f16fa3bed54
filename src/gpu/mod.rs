//! The GPU device, its limits, and the cache of compiled pipelines.

pub mod kernels;
mod recorder;
mod tensor;
#[doc(hidden)]
pub mod testing;

pub(crate) use recorder::{grid_of, Bind, ParamArena, Recorder, Timer};
pub(crate) use tensor::{GpuMatrix, GpuVec};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kernels::Kernel;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Environment variable that overrides the adapter choice: an index into the list of
/// adapters, or a case-insensitive substring of the adapter name.
pub const ADAPTER_ENV: &str = "MOESTREAM_ADAPTER";

/// Which GPU adapter to run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterChoice {
    /// The best available: discrete, then integrated, then virtual, then software.
    #[default]
    Auto,
    /// The first adapter whose name contains this (case-insensitive).
    Name(String),
    /// The adapter at this index of the enumeration order.
    Index(usize),
}

/// Facts about the adapter a model runs on.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Backend (Vulkan, Metal, ...).
    pub backend: String,
    /// Device type (discrete, integrated, CPU, ...).
    pub device_type: String,
    /// Largest storage-buffer binding in bytes.
    pub max_binding_bytes: u64,
}

/// A compiled pipeline's identity: kernel, weight (or scale) dtype code, bits, group size.
type PipelineKey = (Kernel, u32, u32, u32);

pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    /// Largest storage binding (and buffer) we allocate, in bytes.
    pub max_binding: u64,
    pub uniform_align: u64,
    /// Whether passes can be timed with timestamp queries.
    pub timestamps: bool,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    error: Arc<Mutex<Option<String>>>,
    /// A small buffer bound where a kernel's optional input is unused.
    pub dummy: wgpu::Buffer,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.summary)
            .finish()
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl Gpu {
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        let choice = match std::env::var(ADAPTER_ENV) {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
                Ok(i) => AdapterChoice::Index(i),
                Err(_) => AdapterChoice::Name(v.trim().to_string()),
            },
            _ => choice.clone(),
        };
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let listing = || {
            adapters
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let info = a.get_info();
                    format!(
                        "{i}: {} ({:?}, {:?})",
                        info.name, info.backend, info.device_type
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        if adapters.is_empty() {
            return Err(Error::Adapter(
                "no GPU adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)".into(),
            ));
        }
        let adapter = match &choice {
            AdapterChoice::Auto => adapters
                .iter()
                .min_by_key(|a| rank(a.get_info().device_type)),
            AdapterChoice::Index(i) => adapters.get(*i),
            AdapterChoice::Name(n) => {
                let n = n.to_lowercase();
                adapters
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&n))
            }
        }
        .ok_or_else(|| {
            Error::Adapter(format!(
                "no adapter matches {choice:?}; available: {}",
                listing()
            ))
        })?;
        let info = adapter.get_info();
        let alimits = adapter.limits();
        // Ask for everything the adapter offers: large bindings matter for big weights.
        let limits = alimits.clone();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("moestream"),
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Adapter(format!("requesting a device from {}: {e}", info.name)))?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let max_binding =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        // Keep bindings a multiple of 16 bytes.
        let max_binding = max_binding & !15;
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            summary: AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                max_binding_bytes: max_binding,
            },
            max_binding,
            uniform_align: limits.min_uniform_buffer_offset_alignment as u64,
            timestamps: adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            error,
            dummy,
        })
    }

    /// Fails with the first error the device reported since the last check.
    pub fn check(&self) -> Result<()> {
        let err = self.error.lock().ok().and_then(|mut e| e.take());
        match err {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// The pipeline of a kernel, compiled once per (kernel, weight or scale dtype,
    /// quantization bits and group size); `quant` = (bits, group) sets the `BITS` and
    /// `GROUP` override constants of the quantized kernels.
    pub fn pipeline_q(
        &self,
        kernel: Kernel,
        wdt: Option<DType>,
        quant: Option<(u32, u32)>,
    ) -> Arc<wgpu::ComputePipeline> {
        let code = wdt.map_or(0, DType::shader_code);
        let (bits, group) = quant.unwrap_or((0, 0));
        let key = (kernel, code, bits, group);
        let mut pipes = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipes.get(&key) {
            return p.clone();
        }
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let module = modules.entry(kernel).or_insert_with(|| {
            self.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                })
        });
        let mut constants: Vec<(&str, f64)> = Vec::new();
        if kernel.reads_weights() {
            constants.push(("WDT", code as f64));
        }
        if quant.is_some() {
            constants.push(("BITS", bits as f64));
            constants.push(("GROUP", group as f64));
        }
        let pipeline = Arc::new(self.device.create_compute_pipeline(
            &wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: None,
                module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            },
        ));
        pipes.insert(key, pipeline.clone());
        pipeline
    }

    pub fn storage_buffer(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `bytes` (padded to 16 bytes).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.storage_buffer(label, bytes.len() as u64);
        let padded = bytes.len().div_ceil(4) * 4;
        if padded == bytes.len() {
            self.queue.write_buffer(&buf, 0, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(padded, 0);
            self.queue.write_buffer(&buf, 0, &v);
        }
        buf
    }
}
