//! Every shader module the engine builds passes naga validation and translates to SPIR-V (Vulkan), MSL
//! (Metal) and HLSL (DX12), for every entry point and every weight-format specialisation. Needs no GPU:
//! this is the evidence that Metal and DX12 accept what Vulkan runs.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// The override sets a module is checked with: every weight format it takes (float formats 0..3 for the
/// float-only kernels, quantized 3..=10 for matvec_quant, all 0..=10 for the modules composed with
/// dequant.wgsl), for matvec kernels both the decode (TOK = 1) and the prefill (TOK = 8) shapes and 1, 2
/// and 4 rows per invocation, the fused variants (NORM, GLU, GATHER, a second format WFMT2), both KV
/// cache types (KVF) and the q/k norm (QK_NORM).
fn constants_for(name: &str, module: &naga::Module) -> Vec<PipelineConstants> {
    let has = |n: &str| {
        module
            .overrides
            .iter()
            .any(|(_, o)| o.name.as_deref() == Some(n))
    };
    let mut sets = vec![PipelineConstants::default()];
    if has("WFMT") {
        let dequant = module
            .functions
            .iter()
            .any(|(_, f)| f.name.as_deref() == Some("dq_elem"));
        let formats = if name.starts_with("matvec_quant") {
            3..11
        } else if dequant {
            0..11
        } else {
            0..3
        };
        sets = formats
            .map(|f| {
                let mut c = PipelineConstants::default();
                c.insert("WFMT".into(), f as f64);
                c
            })
            .collect();
    }
    if has("TPR") {
        for c in &mut sets {
            c.insert("TPR".into(), 32.0);
        }
    }
    if has("RPI") {
        sets = sets
            .into_iter()
            .flat_map(|c| {
                [1.0, 2.0, 4.0].map(|rpi| {
                    let mut c = c.clone();
                    c.insert("RPI".into(), rpi);
                    c
                })
            })
            .collect();
    }
    if has("TOK") {
        sets = sets
            .into_iter()
            .flat_map(|c| {
                [1.0, 8.0].map(|tok| {
                    let mut c = c.clone();
                    c.insert("TOK".into(), tok);
                    c
                })
            })
            .collect();
    }
    // The fused linear variants the engine builds: plain, the input norm fused, the norm with the
    // SiLU-gated gate/up epilogue, and the LM head's norm with the output-row gather; each also with a
    // stacked matrix's second format (WFMT2) where the module has one.
    if has("NORM") {
        let fused: [&[(&str, f64)]; 4] = [
            &[],
            &[("NORM", 1.0)],
            &[("NORM", 1.0), ("GLU", 1.0)],
            &[("NORM", 1.0), ("GATHER", 1.0)],
        ];
        sets = sets
            .into_iter()
            .flat_map(|c| {
                let has = &has;
                fused.iter().map(move |f| {
                    let mut c = c.clone();
                    // (the quantize has NORM and GATHER but no GLU)
                    for &(k, v) in f.iter().filter(|(k, _)| has(k)) {
                        c.insert(k.into(), v);
                    }
                    c
                })
            })
            .collect();
    }
    if has("WFMT2") {
        // Q8_0 (code 3) as the second format of every set: the real file's Q5_0 q/k with Q8_0 v.
        let extra: Vec<PipelineConstants> = sets
            .iter()
            .filter(|c| c.get("WFMT").is_some_and(|&f| f >= 3.0) && !c.contains_key("GLU"))
            .map(|c| {
                let mut c = c.clone();
                c.insert("WFMT2".into(), 3.0);
                c
            })
            .collect();
        for c in &mut sets {
            let f = c.get("WFMT").copied().unwrap_or(0.0);
            c.insert("WFMT2".into(), f);
        }
        sets.extend(extra);
    }
    // Both cache element types, and Qwen3's per-head q/k norm.
    for (flag, values) in [("KVF", [0.0, 1.0]), ("QK_NORM", [0.0, 1.0])] {
        if has(flag) {
            sets = sets
                .into_iter()
                .flat_map(|c| {
                    values.map(|v| {
                        let mut c = c.clone();
                        c.insert(flag.into(), v);
                        c
                    })
                })
                .collect();
        }
    }
    sets
}

#[test]
fn all_shaders_validate_and_translate() {
    let mut modules = glint::kernels::all_modules();
    modules.extend(glint::lab::shader_modules());
    assert!(modules.len() >= 10);
    for (name, src) in modules {
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        // unpack2x16float needs SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on Vulkan, Metal and DX12.
        let caps = Capabilities::SUBGROUP
            | Capabilities::SHADER_FLOAT16
            | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let info = Validator::new(ValidationFlags::all(), caps)
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: validation: {}", e.emit_to_string(&src)));
        for ep in &module.entry_points {
            for consts in constants_for(&name, &module) {
                let (m, i) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, &ep.name)),
                    &consts,
                )
                .unwrap_or_else(|e| panic!("{name}/{}: overrides: {e}", ep.name));

                let spv_opts = naga::back::spv::Options {
                    lang_version: (1, 3),
                    ..Default::default()
                };
                let spv_pipe = naga::back::spv::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: ep.name.clone(),
                };
                let words = naga::back::spv::write_vec(&m, &i, &spv_opts, Some(&spv_pipe))
                    .unwrap_or_else(|e| panic!("{name}/{}: SPIR-V: {e}", ep.name));
                assert_eq!(words[0], 0x0723_0203, "SPIR-V magic");

                let msl_opts = naga::back::msl::Options {
                    lang_version: (2, 4),
                    ..Default::default()
                };
                let msl_pipe = naga::back::msl::PipelineOptions {
                    entry_point: Some((naga::ShaderStage::Compute, ep.name.clone())),
                    ..Default::default()
                };
                let (msl, _) = naga::back::msl::write_string(&m, &i, &msl_opts, &msl_pipe)
                    .unwrap_or_else(|e| panic!("{name}/{}: MSL: {e}", ep.name));
                assert!(msl.contains("kernel"), "{name}: MSL has a kernel function");

                let hlsl_opts = naga::back::hlsl::Options {
                    shader_model: naga::back::hlsl::ShaderModel::V6_0,
                    ..Default::default()
                };
                let hlsl_pipe = naga::back::hlsl::PipelineOptions {
                    entry_point: Some((naga::ShaderStage::Compute, ep.name.clone())),
                };
                let mut hlsl = String::new();
                naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
                    .write(&m, &i, None)
                    .unwrap_or_else(|e| panic!("{name}/{}: HLSL: {e}", ep.name));
                assert!(
                    hlsl.contains("numthreads"),
                    "{name}: HLSL has a compute entry point"
                );
            }
        }
    }
}
