//! Portability of the WGSL kernels without the target hardware: every kernel, for every
//! weight dtype it is compiled for, is parsed and validated by naga with only the
//! capabilities WebGPU core allows, has its override constants resolved exactly as wgpu
//! does at pipeline creation, and is translated to Metal Shading Language (what wgpu does
//! on macOS) and SPIR-V (Vulkan). Workgroup sizes and workgroup memory are checked against
//! WebGPU's default limits, and `kernels/` is checked to hold no kernel left untested.
//! Every kernel's typed parameter struct (`moestream::gpu::params`) is checked against the
//! WGSL `Params` uniform it fills.

use std::collections::BTreeSet;

use moestream::gpu::kernels::{self, Kernel, Variant};
use moestream::gpu::params;
use naga::back::{msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage, StorageAccess};

/// The entry point every kernel declares (the one `Gpu::pipeline` asks for).
const ENTRY_POINT: &str = "main";

/// What every device wgpu runs on allows: naga's defaults. Deliberately without
/// `SHADER_FLOAT16_IN_FLOAT32`: wgpu withholds it (`DownlevelFlags::SHADER_F16_IN_F32`) on
/// llvmpipe without native f16, so the kernels decode f16 with integer operations instead
/// of `unpack2x16float`. Nothing that needs a WebGPU feature (`shader-f16`, subgroups, f64,
/// ...) is included.
fn webgpu_core() -> Capabilities {
    Capabilities::default()
}

/// What a kernel variant may use beyond WebGPU core: subgroup operations (the `subgroups`
/// feature) and native f16 conversion (`unpack2x16float`).
fn capabilities(variant: Variant) -> Capabilities {
    let mut c = webgpu_core();
    if variant.subgroups {
        c |= Capabilities::SUBGROUP;
    }
    if variant.f16 {
        c |= Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    c
}

/// A validator for `variant`, with the subgroup operations wgpu enables for compute shaders
/// when the device has the `subgroups` feature.
fn validator(flags: ValidationFlags, variant: Variant) -> Validator {
    validator_with(flags, variant, Capabilities::empty())
}

/// [`validator`] with `extra` capabilities besides the variant's.
fn validator_with(flags: ValidationFlags, variant: Variant, extra: Capabilities) -> Validator {
    let mut v = Validator::new(flags, capabilities(variant) | extra);
    if variant.subgroups {
        v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    v
}

/// WebGPU default `maxComputeWorkgroupStorageSize`.
const MAX_WORKGROUP_STORAGE: u32 = 16384;
/// WebGPU default `maxComputeInvocationsPerWorkgroup`.
const MAX_INVOCATIONS: u32 = 256;
/// WebGPU default `maxComputeWorkgroupSizeX/Y/Z`.
const MAX_WORKGROUP_SIZE: [u32; 3] = [256, 256, 64];
/// WebGPU default `maxStorageBuffersPerShaderStage`.
const MAX_STORAGE_BUFFERS: usize = 8;
/// WebGPU default `maxUniformBuffersPerShaderStage`.
const MAX_UNIFORM_BUFFERS: usize = 12;

/// The oldest Metal Shading Language wgpu's Metal backend targets (macOS 10.13 / iOS 11).
const MSL_VERSION: (u8, u8) = (2, 0);
/// SPIR-V of Vulkan 1.0, the oldest wgpu's Vulkan backend targets.
const SPV_VERSION: (u8, u8) = (1, 0);
/// Subgroup variants: Metal's SIMD-group reductions (`simd_sum`) need MSL 2.1, Vulkan's
/// non-uniform group operations SPIR-V 1.3 (Vulkan 1.1), as wgpu requires for `subgroups`.
const MSL_VERSION_SUBGROUPS: (u8, u8) = (2, 1);
const SPV_VERSION_SUBGROUPS: (u8, u8) = (1, 3);

/// Scale/weight dtypes as the `WDT` override constant encodes them.
const WDTS: [(u32, &str); 3] = [(0, "f32"), (1, "f16"), (2, "bf16")];
/// Bits per code and group sizes of MLX affine quantization (`AffineQuant::new`).
const QUANT_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const QUANT_GROUPS: [u32; 3] = [32, 64, 128];

/// The override constants a kernel is compiled with (as `Kernel::constants` gives them to
/// `Gpu::pipeline_for`), each with a name for messages: nothing for kernels that read no
/// weights; the two KV cache dtypes for the kernels of the KV cache; the three weight dtypes
/// for float-weight kernels; every scale dtype x bits x
/// group size for quantized kernels; and each of those with every `FLAGS` value for the
/// kernels specialized by their flags (`Kernel::pipeline_flags`).
fn variants(kernel: Kernel) -> Vec<(Vec<(&'static str, f64)>, String)> {
    let base = base_variants(kernel);
    let Some((_, mask)) = kernel.pipeline_flags() else {
        return base;
    };
    let mut v = Vec::new();
    for (constants, label) in base {
        for flags in (0..=mask).filter(|f| f & !mask == 0) {
            let mut c = constants.clone();
            for entry in c.iter_mut().filter(|e| e.0 == "FLAGS") {
                entry.1 = f64::from(flags);
            }
            v.push((c, format!("{label}, FLAGS {flags}")));
        }
    }
    v
}

/// [`variants`] before the `FLAGS` values.
fn base_variants(kernel: Kernel) -> Vec<(Vec<(&'static str, f64)>, String)> {
    if kernel.is_quantized() {
        let mut v = Vec::new();
        for (wdt, dtype) in WDTS {
            for bits in QUANT_BITS {
                for group in QUANT_GROUPS {
                    v.push((
                        kernel.constants(wdt, Some((bits, group))),
                        format!("WDT {dtype}, BITS {bits}, GROUP {group}"),
                    ));
                }
            }
        }
        // MXFP4: e8m0 scales (`kernels::WDT_MXFP4`), 4-bit codes in blocks of 32.
        v.push((
            kernel.constants(kernels::WDT_MXFP4, Some((4, 32))),
            "MXFP4".to_string(),
        ));
        v
    } else if kernel.uses_kv_cache() {
        // KV cache elements: f32 and f16 (`KVDT`).
        [(0, "f32"), (1, "f16")]
            .iter()
            .map(|&(code, dtype)| (kernel.constants(code, None), format!("KVDT {dtype}")))
            .collect()
    } else if kernel.reads_weights() {
        WDTS.iter()
            .map(|&(wdt, dtype)| (kernel.constants(wdt, None), format!("WDT {dtype}")))
            .collect()
    } else {
        vec![(kernel.constants(0, None), "default".to_string())]
    }
}

/// Parses and validates a kernel's source in `variant` with the capabilities it may use.
fn parse_and_validate(kernel: Kernel, variant: Variant) -> (String, Module, ModuleInfo) {
    let name = format!("{} ({})", kernel.name(), variant.name());
    let source = kernel.source_for(variant);
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        panic!(
            "kernel {name}: WGSL does not parse:\n{}",
            e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
        )
    });
    let info = validator(ValidationFlags::default(), variant)
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "kernel {name}: naga validation failed with the variant's capabilities:\n{}",
                e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
            )
        });
    (source, module, info)
}

/// Workgroup memory a module declares, counted as WebGPU counts it against
/// `maxComputeWorkgroupStorageSize`: each variable's size rounded up to 16 bytes.
fn workgroup_bytes(module: &Module) -> u32 {
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .expect("layout of the module's types");
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == AddressSpace::WorkGroup)
        .map(|(_, g)| layouter[g.ty].size.div_ceil(16) * 16)
        .sum()
}

/// The Metal argument table wgpu-hal builds: one buffer slot per binding, in binding
/// order, plus the buffer of runtime-array sizes.
fn msl_resources(module: &Module) -> msl::EntryPointResources {
    let mut bound: Vec<_> = module
        .global_variables
        .iter()
        .filter_map(|(_, g)| g.binding.map(|b| (b, g.space)))
        .collect();
    bound.sort_by_key(|(b, _)| (b.group, b.binding));
    let mut resources = msl::EntryPointResources::default();
    for (slot, (binding, space)) in bound.iter().enumerate() {
        let mutable = matches!(space, AddressSpace::Storage { access } if access.contains(StorageAccess::STORE));
        resources.resources.insert(
            *binding,
            msl::BindTarget {
                buffer: Some(u8::try_from(slot).expect("fewer than 256 bindings")),
                mutable,
                ..Default::default()
            },
        );
    }
    resources.sizes_buffer = Some(u8::try_from(bound.len()).expect("fewer than 256 bindings"));
    resources
}

fn write_msl(module: &Module, info: &ModuleInfo, variant: Variant) -> Result<String, msl::Error> {
    let checks = naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::Restrict,
        buffer: naga::proc::BoundsCheckPolicy::Restrict,
        image_load: naga::proc::BoundsCheckPolicy::Restrict,
        binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
    };
    let options = msl::Options {
        lang_version: if variant.subgroups {
            MSL_VERSION_SUBGROUPS
        } else {
            MSL_VERSION
        },
        per_entry_point_map: [(ENTRY_POINT.to_string(), msl_resources(module))]
            .into_iter()
            .collect(),
        fake_missing_bindings: false,
        bounds_check_policies: checks,
        // moestream creates its pipelines with zero_initialize_workgroup_memory: false.
        zero_initialize_workgroup_memory: false,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, ENTRY_POINT.to_string())),
        ..Default::default()
    };
    msl::write_string(module, info, &options, &pipeline).map(|(text, _)| text)
}

fn write_spv(module: &Module, info: &ModuleInfo, variant: Variant) -> Result<Vec<u32>, spv::Error> {
    // The capabilities wgpu-hal's Vulkan backend enables on every device (and with the
    // subgroups feature).
    let mut capabilities = vec![
        spv::Capability::Shader,
        spv::Capability::Matrix,
        spv::Capability::Sampled1D,
        spv::Capability::Image1D,
        spv::Capability::ImageQuery,
        spv::Capability::DerivativeControl,
        spv::Capability::StorageImageExtendedFormats,
    ];
    let mut lang_version = SPV_VERSION;
    if variant.subgroups {
        capabilities.extend([
            spv::Capability::GroupNonUniform,
            spv::Capability::GroupNonUniformVote,
            spv::Capability::GroupNonUniformArithmetic,
            spv::Capability::GroupNonUniformBallot,
            spv::Capability::GroupNonUniformShuffle,
            spv::Capability::GroupNonUniformShuffleRelative,
        ]);
        lang_version = SPV_VERSION_SUBGROUPS;
    }
    let options = spv::Options {
        lang_version,
        capabilities: Some(capabilities.into_iter().collect()),
        // Vulkan descriptor (set, binding) = WGSL (group, binding).
        fake_missing_bindings: true,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            image_load: naga::proc::BoundsCheckPolicy::Restrict,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: ENTRY_POINT.to_string(),
    };
    spv::write_vec(module, info, &options, Some(&pipeline))
}

/// Everything checked for one kernel compiled with one set of override constants.
fn check_variant(
    kernel: Kernel,
    variant: Variant,
    overrides: &[(&str, f64)],
    label: &str,
    module: &Module,
    info: &ModuleInfo,
    source: &str,
) {
    let name = kernel.name();
    let what = format!("kernel {name} ({label}, {} variant)", variant.name());

    let constants: naga::back::PipelineConstants =
        overrides.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ShaderStage::Compute, ENTRY_POINT)),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{what}: resolving override constants {constants:?} failed: {e}"));
    // (naga keeps the `overrides` arena; what matters is that no expression reads one.)
    let reads_override = |exprs: &naga::Arena<naga::Expression>| {
        exprs
            .iter()
            .any(|(_, e)| matches!(e, naga::Expression::Override(_)))
    };
    assert!(
        !reads_override(&resolved.global_expressions)
            && !resolved
                .functions
                .iter()
                .any(|(_, f)| reads_override(&f.expressions))
            && !resolved
                .entry_points
                .iter()
                .any(|ep| reads_override(&ep.function.expressions)),
        "{what}: expressions still read override constants after resolving {constants:?}"
    );
    // The resolved module must still be valid without extra capabilities.
    validator(ValidationFlags::all(), variant)
        .validate_resolved_overrides(&resolved)
        .unwrap_or_else(|e| {
            panic!(
                "{what}: the module with overrides resolved fails validation with the variant's capabilities:\n{}",
                e.emit_to_string_with_path(source, &format!("{name}.wgsl"))
            )
        });

    let ep = resolved
        .entry_points
        .iter()
        .find(|ep| ep.name == ENTRY_POINT)
        .unwrap_or_else(|| {
            panic!("{what}: no entry point `{ENTRY_POINT}` after resolving overrides")
        });
    assert_eq!(
        ep.stage,
        ShaderStage::Compute,
        "{what}: `{ENTRY_POINT}` is not a compute entry point"
    );
    let [x, y, z] = ep.workgroup_size;
    let invocations = x * y * z;
    assert!(
        invocations > 0 && invocations <= MAX_INVOCATIONS,
        "{what}: workgroup size {x}x{y}x{z} = {invocations} invocations, WebGPU allows at most {MAX_INVOCATIONS} by default"
    );
    for (axis, (size, max)) in ep.workgroup_size.iter().zip(MAX_WORKGROUP_SIZE).enumerate() {
        assert!(
            *size <= max,
            "{what}: workgroup size {size} along axis {axis} exceeds WebGPU's default maximum {max}"
        );
    }
    let wg_bytes = workgroup_bytes(&resolved);
    assert!(
        wg_bytes <= MAX_WORKGROUP_STORAGE,
        "{what}: {wg_bytes} bytes of workgroup memory, WebGPU's default maxComputeWorkgroupStorageSize is {MAX_WORKGROUP_STORAGE}"
    );

    let msl = write_msl(&resolved, &resolved_info, variant)
        .unwrap_or_else(|e| panic!("{what}: translation to MSL failed: {e:?}"));
    // naga renames `main` (reserved in Metal) to `main_`.
    let kernel_fn = msl
        .split("kernel void")
        .nth(1)
        .and_then(|rest| rest.split('(').next())
        .map(str::trim);
    assert!(
        kernel_fn.is_some_and(|f| f.starts_with(ENTRY_POINT)),
        "{what}: the MSL has no kernel function for entry point `{ENTRY_POINT}` (found {kernel_fn:?}):\n{msl}"
    );

    let words = write_spv(&resolved, &resolved_info, variant)
        .unwrap_or_else(|e| panic!("{what}: translation to SPIR-V failed: {e:?}"));
    assert_eq!(
        words.first(),
        Some(&0x0723_0203),
        "{what}: the SPIR-V does not start with the SPIR-V magic number"
    );
    assert!(words.len() > 5, "{what}: the SPIR-V is empty");
    println!(
        "{what} -> MSL kernel {}: workgroup {x}x{y}x{z}, {wg_bytes} B workgroup memory, MSL {} B, SPIR-V {} words",
        kernel_fn.unwrap_or_default(),
        msl.len(),
        words.len()
    );
}

#[test]
fn every_kernel_validates_and_translates_to_msl_and_spirv() {
    let mut checked = 0;
    for kernel in Kernel::ALL {
        for variant in Variant::ALL {
            if kernel.has_variant(variant) {
                check_kernel(kernel, variant);
                checked += 1;
            }
        }
    }
    // Portable, subgroups, f16 and both, of every kernel but the subgroup probe (which
    // exists only with subgroups) and the cooperative-matrix kernels (in no variant:
    // `cooperative_matrix_kernels_validate_and_translate_to_spirv`).
    let coop = Kernel::ALL
        .iter()
        .filter(|k| k.needs_cooperative_matrices())
        .count();
    assert_eq!(checked, 4 * (Kernel::ALL.len() - coop) - 2);
}

/// Every kernel with its parameters as immediate data (the `MOESTREAM_IMMEDIATES` path:
/// the loader rewrites the uniform declaration): the rewrite applies to every kernel, and
/// the result validates and translates to SPIR-V in each variant.
#[test]
fn every_kernel_validates_with_immediate_parameters() {
    let mut checked = 0;
    for kernel in Kernel::ALL {
        for variant in Variant::ALL {
            if !kernel.has_variant(variant) {
                continue;
            }
            let name = format!("{} ({})", kernel.name(), variant.name());
            let source = kernels::with_immediate_params(&kernel.source_for(variant))
                .unwrap_or_else(|| panic!("kernel {name}: no `{}`", kernels::PARAMS_UNIFORM));
            let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
                panic!(
                    "kernel {name}: WGSL with immediates does not parse:\n{}",
                    e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
                )
            });
            let mut v = validator(ValidationFlags::default(), variant);
            let mut v2 = validator_with(
                ValidationFlags::default(),
                variant,
                Capabilities::IMMEDIATES,
            );
            // Without the capability the immediates are refused: the check has teeth.
            assert!(
                v.validate(&module).is_err(),
                "kernel {name}: immediates without the capability"
            );
            let info = v2.validate(&module).unwrap_or_else(|e| {
                panic!(
                    "kernel {name}: naga validation with immediates failed:\n{}",
                    e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
                )
            });
            // Translated with the first set of override constants the kernel is built with.
            let constants: naga::back::PipelineConstants = base_variants(kernel)[0]
                .0
                .iter()
                .map(|&(k, v)| (k.to_string(), v))
                .collect();
            let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, ENTRY_POINT)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("kernel {name}: resolving overrides: {e}"));
            write_spv(&resolved, &resolved_info, variant)
                .unwrap_or_else(|e| panic!("kernel {name}: SPIR-V with immediates: {e}"));
            checked += 1;
        }
    }
    assert!(checked > Kernel::ALL.len());
}

/// The cooperative-matrix kernels, with the capabilities the device gives them (subgroups,
/// shader f16, cooperative matrices): valid, every override set, SPIR-V with the
/// cooperative-matrix capability (their only backend besides Metal's 8x8 simdgroup
/// matrices, which these 16x16 tiles do not fit). Whether they compute the right numbers
/// is tests/qkernels.rs's on adapters that have them.
#[test]
fn cooperative_matrix_kernels_validate_and_translate_to_spirv() {
    let variant = Variant::new(true, true);
    let mut checked = 0;
    for kernel in Kernel::ALL
        .into_iter()
        .filter(|k| k.needs_cooperative_matrices())
    {
        let name = kernel.name();
        let source = kernel.source_for(variant);
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
            panic!(
                "kernel {name}: WGSL does not parse:\n{}",
                e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
            )
        });
        let caps =
            capabilities(variant) | Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX;
        let mut v = Validator::new(ValidationFlags::default(), caps);
        v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        let info = v.validate(&module).unwrap_or_else(|e| {
            panic!(
                "kernel {name}: naga validation failed:\n{}",
                e.emit_to_string_with_path(&source, &format!("{name}.wgsl"))
            )
        });
        let constants: naga::back::PipelineConstants = kernel
            .constants(0, kernel.is_quantized().then_some((4, 64)))
            .iter()
            .map(|&(k, v)| (k.to_string(), v))
            .collect();
        let (resolved, resolved_info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                .unwrap_or_else(|e| panic!("kernel {name}: overrides: {e}"));
        let options = spv::Options {
            lang_version: (1, 3),
            fake_missing_bindings: true,
            zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
            ..Default::default()
        };
        let pipeline = spv::PipelineOptions {
            shader_stage: ShaderStage::Compute,
            entry_point: ENTRY_POINT.to_string(),
        };
        let words = spv::write_vec(&resolved, &resolved_info, &options, Some(&pipeline))
            .unwrap_or_else(|e| panic!("kernel {name}: SPIR-V: {e}"));
        assert_eq!(words.first(), Some(&0x0723_0203), "kernel {name}: SPIR-V");
        println!(
            "{name}: {} B workgroup memory, SPIR-V {} words",
            workgroup_bytes(&resolved),
            words.len()
        );
        checked += 1;
    }
    assert!(checked > 0, "no cooperative-matrix kernel checked");
}

/// Every check of one kernel in one variant.
fn check_kernel(kernel: Kernel, variant: Variant) {
    {
        let name = kernel.name();
        let (source, module, info) = parse_and_validate(kernel, variant);

        let has_override = |c: &str| {
            module
                .overrides
                .iter()
                .any(|(_, o)| o.name.as_deref() == Some(c))
        };
        let has_wdt = has_override("WDT");
        assert_eq!(
            has_wdt,
            kernel.reads_weights(),
            "kernel {name}: reads_weights() is {} but the WGSL {} the `override WDT` constant",
            kernel.reads_weights(),
            if has_wdt { "declares" } else { "lacks" }
        );
        for c in ["BITS", "GROUP"] {
            let has = has_override(c);
            assert_eq!(
                has,
                kernel.is_quantized(),
                "kernel {name}: is_quantized() is {} but the WGSL {} the `override {c}` constant",
                kernel.is_quantized(),
                if has { "declares" } else { "lacks" }
            );
        }
        // Every override the module declares is one `Kernel::constants` sets (with a
        // quantization for quantized kernels), so no pipeline silently runs on a default.
        let set: Vec<&str> = kernel
            .constants(0, kernel.is_quantized().then_some((4, 64)))
            .iter()
            .map(|(k, _)| *k)
            .collect();
        for (_, o) in module.overrides.iter() {
            let oname = o.name.as_deref().unwrap_or("?");
            assert!(
                set.contains(&oname),
                "kernel {name}: declares `override {oname}`, which Kernel::constants does not set ({set:?})"
            );
        }

        let entry_points: Vec<_> = module
            .entry_points
            .iter()
            .map(|ep| ep.name.as_str())
            .collect();
        assert!(
            entry_points.contains(&ENTRY_POINT),
            "kernel {name}: no `{ENTRY_POINT}` entry point (found {entry_points:?})"
        );

        let storage = module
            .global_variables
            .iter()
            .filter(|(_, g)| matches!(g.space, AddressSpace::Storage { .. }))
            .count();
        let uniform = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == AddressSpace::Uniform)
            .count();
        assert!(
            storage <= MAX_STORAGE_BUFFERS,
            "kernel {name}: {storage} storage buffers, WebGPU allows {MAX_STORAGE_BUFFERS} per stage by default"
        );
        assert!(
            uniform <= MAX_UNIFORM_BUFFERS,
            "kernel {name}: {uniform} uniform buffers, WebGPU allows {MAX_UNIFORM_BUFFERS} per stage by default"
        );

        for (constants, label) in variants(kernel) {
            check_variant(kernel, variant, &constants, &label, &module, &info, &source);
        }
    }
}

#[test]
fn portable_kernel_sources_do_not_enable_extensions() {
    // `enable f16;` and friends need features beyond WebGPU core (and are absent on
    // many Metal/Vulkan devices): no variant needs an enable directive (subgroup builtins
    // are gated by the device feature, unpack2x16float is core WGSL).
    for kernel in Kernel::ALL {
        for variant in Variant::ALL {
            if !kernel.has_variant(variant) {
                continue;
            }
            let enables: Vec<String> = kernel
                .source_for(variant)
                .lines()
                .map(|l| l.split("//").next().unwrap_or("").trim().to_string())
                .filter(|l| l.starts_with("enable ") || l.starts_with("requires "))
                .collect();
            let want: Vec<String> = Vec::new();
            assert_eq!(
                enables,
                want,
                "kernel {} ({}): enable directives",
                kernel.name(),
                variant.name()
            );
        }
    }
    for kernel in Kernel::ALL {
        if kernel.needs_subgroups() || kernel.needs_cooperative_matrices() {
            continue;
        }
        let source = kernel.source();
        for (n, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").trim_start();
            assert!(
                !code.starts_with("enable ") && !code.starts_with("requires "),
                "kernel {}: line {} of its source needs a WGSL extension: {line:?}",
                kernel.name(),
                n + 1
            );
        }
    }
}

#[test]
fn kernels_folder_holds_exactly_one_file_per_kernel() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let mut files = BTreeSet::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("reading {dir}: {e}"));
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && file_name == "include" {
            continue;
        }
        if is_dir {
            // A kernel in another folder would be compiled by nobody's test.
            others.push(file_name);
        } else if let Some(stem) = file_name.strip_suffix(".wgsl") {
            files.insert(stem.to_string());
        }
    }
    assert!(
        others.is_empty(),
        "{dir} holds folders other than include/: {others:?}"
    );

    let kernels: BTreeSet<String> = Kernel::ALL.iter().map(|k| k.name().to_string()).collect();
    assert_eq!(kernels.len(), Kernel::ALL.len(), "two kernels share a name");
    let untested: Vec<_> = files.difference(&kernels).collect();
    let missing: Vec<_> = kernels.difference(&files).collect();
    assert!(
        untested.is_empty() && missing.is_empty(),
        "kernels/*.wgsl and Kernel::ALL differ: files with no Kernel (untested): {untested:?}; \
         Kernel names with no file: {missing:?}"
    );

    // Each kernel's source is its file after the shared includes it names, in order.
    for (kernel, variant) in Kernel::ALL
        .iter()
        .flat_map(|&k| Variant::ALL.iter().map(move |&v| (k, v)))
        .filter(|(k, v)| k.has_variant(*v))
    {
        let path = format!("{dir}/{}.wgsl", kernel.name());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let mut want = String::new();
        for inc in kernel.includes_for(variant) {
            let ipath = format!("{dir}/include/{}.wgsl", inc.name());
            let itext =
                std::fs::read_to_string(&ipath).unwrap_or_else(|e| panic!("reading {ipath}: {e}"));
            want.push_str(&itext);
            want.push('\n');
        }
        want.push_str(&text);
        assert!(
            kernel.source_for(variant) == want,
            "kernel {} ({}): Kernel::source_for() is not {:?} followed by {path}",
            kernel.name(),
            variant.name(),
            kernel.includes_for(variant)
        );
    }
}

/// The checks above are only worth something if they can fail: the same validator rejects
/// what WebGPU core lacks, and the layout count sees workgroup arrays.
#[test]
fn checks_reject_what_webgpu_core_lacks() {
    let validate = |src: &str| {
        let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
        Validator::new(ValidationFlags::default(), webgpu_core())
            .validate(&module)
            .map(|_| module)
            .map_err(|e| e.emit_to_string(src))
    };
    let f16 = "enable f16;\n@group(0) @binding(0) var<storage, read_write> o: array<f16>;\n\
               @compute @workgroup_size(1) fn main() { o[0] = o[1] * 2.0h; }";
    assert!(
        validate(f16).is_err(),
        "a shader needing the shader-f16 feature passed validation with WebGPU-core capabilities"
    );

    let big = "var<workgroup> a: array<f32, 4097>;\nvar<workgroup> b: array<u32, 3>;\n\
               @group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
               @compute @workgroup_size(64) fn main() { o[0] = a[0] + f32(b[0]); }";
    let module = validate(big).unwrap_or_else(|e| panic!("test shader does not validate: {e}"));
    assert_eq!(
        workgroup_bytes(&module),
        16400 + 16,
        "workgroup bytes (4097 * 4 -> 16400, 3 * 4 -> 16)"
    );
    assert!(workgroup_bytes(&module) > MAX_WORKGROUP_STORAGE);
}

/// Each kernel that declares a uniform has a typed parameter struct in
/// `moestream::gpu::params` (`params::ALL`, found by `params::layout_of`) whose fields are
/// the WGSL struct's, by name and in order, each of the same type (`u32` or `f32`) at the
/// same offset,
/// and whose size is the WGSL struct's (naga's layout), a multiple of 16 bytes; the uniform
/// is binding 0 of group 0, where the recorder binds the parameters. And every struct of
/// `params::ALL` serves a kernel.
#[test]
fn every_kernel_has_a_params_struct_matching_its_uniform() {
    let mut checked = Vec::new();
    for kernel in Kernel::ALL {
        let name = kernel.name();
        let variant = Variant::new(kernel.needs_subgroups(), false);
        let src = kernel.source_for(variant);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let uniforms: Vec<_> = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == AddressSpace::Uniform)
            .map(|(_, g)| g)
            .collect();
        let layout = params::layout_of(kernel);
        let Some(uniform) = uniforms.first() else {
            assert!(layout.is_none(), "{name}: a params struct but no uniform");
            continue;
        };
        assert_eq!(uniforms.len(), 1, "{name}: one uniform");
        assert_eq!(
            uniform.binding,
            Some(naga::ResourceBinding {
                group: 0,
                binding: 0
            }),
            "{name}: the uniform is not @group(0) @binding(0)"
        );
        let layout = layout.unwrap_or_else(|| {
            panic!("{name}: declares a uniform but has no struct in gpu::params::ALL")
        });
        let naga::TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else {
            panic!("{name}: the uniform is not a struct");
        };
        let names: Vec<&str> = members
            .iter()
            .map(|m| m.name.as_deref().unwrap_or("?"))
            .collect();
        assert_eq!(
            names, layout.fields,
            "{name} / {}: field names",
            layout.name
        );
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m.offset as usize, 4 * i, "{name}: offset of {}", names[i]);
            let wgsl_type = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Uint,
                    width: 4,
                }) => "u32",
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Float,
                    width: 4,
                }) => "f32",
                ref other => panic!("{name}: field {} is {other:?}, not a u32 or f32", names[i]),
            };
            assert_eq!(
                layout.types[i], wgsl_type,
                "{name} / {}: type of {}",
                layout.name, names[i]
            );
        }
        assert_eq!(*span as usize, layout.size, "{name}: struct size");
        assert_eq!(layouter[uniform.ty].size as usize, layout.size, "{name}");
        assert_eq!(layout.size % 16, 0, "{name}: not padded to 16 bytes");
        checked.push(layout.name);
    }
    for l in params::ALL {
        assert!(
            checked.contains(&l.name),
            "{}: serves no kernel of Kernel::ALL",
            l.name
        );
    }
}
