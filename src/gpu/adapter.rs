//! Choosing an adapter: what the caller and the environment ask for ([`AdapterChoice`],
//! `MOESTREAM_ADAPTER`, `MOESTREAM_KERNELS`, `MOESTREAM_COOPERATIVE_MATRICES`), what the
//! kernels need of a device (its limits), and what a model reports of the adapter it runs
//! on ([`AdapterSummary`]).

use super::kernels::Variant;
use crate::error::{Error, Result};

/// Environment variable that picks the adapter when the code leaves the choice at
/// [`AdapterChoice::Auto`]: an index into the list of adapters, or a case-insensitive
/// substring of the adapter name. A choice made in code wins over it.
pub const ADAPTER_ENV: &str = "MOESTREAM_ADAPTER";

/// Environment variable that restricts the optional GPU features the kernels use:
/// `portable` (none), `subgroups`, `f16` (native f16 conversion), or `all` (the default:
/// whatever the adapter offers). For comparing variants and for working around a driver.
pub const KERNELS_ENV: &str = "MOESTREAM_KERNELS";

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
#[non_exhaustive]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Backend (Vulkan, Metal, ...).
    pub backend: String,
    /// Device type (discrete, integrated, CPU, ...).
    pub device_type: String,
    /// Largest storage-buffer binding in bytes.
    pub max_binding_bytes: u64,
    /// The kernel variant in use: which optional features (subgroups, shader-f16) the
    /// kernels use on this adapter.
    pub variant: Variant,
    /// The subgroup size measured on the device, when the subgroup variant is in use.
    pub subgroup_size: Option<u32>,
    /// Whether the GPU is taken to have packed 4x8-bit integer dot products in hardware
    /// (`dot4I8Packed`): adapters on Vulkan and DirectX 12, whose desktop GPUs have them
    /// (and where lavapipe compiles them to vector code). Metal and GL emulate them with
    /// scalar integer multiplies, so there the quantized kernels keep f32 activations by
    /// default (`ModelBuilder::f32_activations`).
    pub integer_dot_products: bool,
    /// Whether the prefill mat-mats run on cooperative matrices (tensor cores; wgpu's
    /// experimental `EXPERIMENTAL_COOPERATIVE_MATRIX` with 16x16x16 f16 tiles summed in
    /// f32): asked for (`ModelBuilder::f16_prefill`) on an adapter that offers them with a
    /// subgroup size of 32.
    pub cooperative_matrices: bool,
}

/// `MOESTREAM_COOPERATIVE_MATRICES=1` turns `ModelBuilder::f16_prefill` on where the
/// builder does not say; `0` keeps test and benchmark devices from asking for
/// cooperative matrices.
pub const COOPERATIVE_MATRICES_ENV: &str = "MOESTREAM_COOPERATIVE_MATRICES";

/// Whether `adapter` offers what the cooperative-matrix kernels need: the experimental
/// feature, shader f16, and 16x16x16 f16 tiles with f32 sums.
pub(super) fn cooperative_matrices_offered(adapter: &wgpu::Adapter) -> bool {
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    adapter.features().contains(needed)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// The variant allowed by `MOESTREAM_KERNELS` (everything when unset).
pub(crate) fn allowed_variant() -> Result<Variant> {
    parse_variant(std::env::var(KERNELS_ENV).ok().as_deref().unwrap_or(""))
}

/// A `MOESTREAM_KERNELS` value: the optional features the kernels may use.
fn parse_variant(v: &str) -> Result<Variant> {
    match v.trim() {
        "" | "all" => Ok(Variant::new(true, true)),
        "portable" => Ok(Variant::PORTABLE),
        "subgroups" => Ok(Variant::new(true, false)),
        "f16" => Ok(Variant::new(false, true)),
        other => Err(Error::InvalidArgument(format!(
            "{KERNELS_ENV}={other:?}: expected portable, subgroups, f16 or all"
        ))),
    }
}

/// The process's wgpu instance, made on first use and kept: every model opens its device
/// through it (wgpu's advice: one instance per application). NVIDIA's Vulkan driver (580,
/// an H100) found no adapter once ~30 instances had been made and dropped in one
/// process: `examples/conformance` over 40 fixtures failed from the 29th-31st model on;
/// 45 models built in a row on one instance and device all loaded.
fn instance(backends: wgpu::Backends) -> &'static wgpu::Instance {
    static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        })
    })
}

/// The adapter `choice` names (the environment's [`ADAPTER_ENV`] filling in
/// [`AdapterChoice::Auto`]); no device is opened.
pub(crate) fn pick_adapter(choice: &AdapterChoice) -> Result<wgpu::Adapter> {
    // The environment fills in only what the code left open.
    let choice = match (choice, std::env::var(ADAPTER_ENV)) {
        (AdapterChoice::Auto, Ok(v)) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(i) => AdapterChoice::Index(i),
            Err(_) => AdapterChoice::Name(v.trim().to_string()),
        },
        _ => choice.clone(),
    };
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let adapters = pollster::block_on(instance(backends).enumerate_adapters(backends));
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
    Ok(adapter.clone())
}

/// The largest buffer moestream binds as one storage binding on a device of `limits` (a
/// multiple of 16 bytes), and the name of the wgpu limit that sets it
/// (`max_storage_buffer_binding_size` or `max_buffer_size`, whichever is smaller).
pub(crate) fn binding_limit(limits: &wgpu::Limits) -> (u64, &'static str) {
    let (bytes, name) = if limits.max_storage_buffer_binding_size <= limits.max_buffer_size {
        (
            limits.max_storage_buffer_binding_size,
            "max_storage_buffer_binding_size",
        )
    } else {
        (limits.max_buffer_size, "max_buffer_size")
    };
    (bytes & !15, name)
}

/// What moestream's kernels need of a device beyond its buffer sizes (which the memory
/// plan checks against what a model needs): the WebGPU default compute limits, which
/// `tests/shaders.rs` checks every kernel against. (name, needed, the device's value).
fn required_limits(l: &wgpu::Limits) -> [(&'static str, u64, u64); 9] {
    [
        ("max_bind_groups", 1, l.max_bind_groups.into()),
        (
            "max_storage_buffers_per_shader_stage",
            8,
            l.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            1,
            l.max_uniform_buffers_per_shader_stage.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            16384,
            l.max_compute_workgroup_storage_size.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            256,
            l.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            256,
            l.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroup_size_y",
            16,
            l.max_compute_workgroup_size_y.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            65535,
            l.max_compute_workgroups_per_dimension.into(),
        ),
        // The uniform parameters of a session's dispatches live in 64 KiB buffers.
        ("max_buffer_size", 65536, l.max_buffer_size),
    ]
}

/// Checks that a device of `limits` and `downlevel` capabilities runs moestream's kernels:
/// compute shaders, and [`required_limits`]. The first shortfall is an
/// [`Error::DeviceRequirement`] naming it.
pub(crate) fn check_device(
    limits: &wgpu::Limits,
    downlevel: &wgpu::DownlevelCapabilities,
) -> Result<()> {
    if !downlevel
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    {
        return Err(Error::DeviceRequirement {
            what: "downlevel flag COMPUTE_SHADERS",
            needed: 1,
            found: 0,
        });
    }
    for (what, needed, found) in required_limits(limits) {
        if found < needed {
            return Err(Error::DeviceRequirement {
                what,
                needed,
                found,
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_variant_setting() {
        assert_eq!(parse_variant("").ok(), Some(Variant::new(true, true)));
        assert_eq!(parse_variant(" all ").ok(), Some(Variant::new(true, true)));
        assert_eq!(parse_variant("portable").ok(), Some(Variant::PORTABLE));
        assert_eq!(
            parse_variant("subgroups").ok(),
            Some(Variant::new(true, false))
        );
        assert_eq!(parse_variant("f16").ok(), Some(Variant::new(false, true)));
        let e = parse_variant("fast").unwrap_err().to_string();
        assert!(e.contains("MOESTREAM_KERNELS") && e.contains("fast"), "{e}");
    }
}
