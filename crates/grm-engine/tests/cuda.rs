//! The CUDA backend. Without a GPU only the first test does real work: it compiles every
//! kernel with NVRTC for sm_90 (CI installs NVRTC 13.0 from pip and sets
//! GRM_REQUIRE_NVRTC=1, so a missing NVRTC fails there). With a GPU, each kernel is compared
//! with its CPU reference on random inputs, and the whole model with transformers' logits and
//! the CPU engine. Every test that needs a GPU says "skipped" on stderr where there is none.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use grm_engine::backend::{AttentionMeta, AttentionParams, Backend, StepInputs};
use grm_engine::cpu::kv::CpuKv;
use grm_engine::cpu::{attention, ops, CpuAct};
use grm_engine::cuda::{kernels, CudaAct, CudaBackend, CudaOptions};
use grm_engine::device_sampler::{sample_row, RowSampling};
use grm_engine::kv::CopyOp;
use grm_engine::weights::WeightStore;
use grm_engine::{CpuBackend, Engine, EngineOptions, Event, Gemma2, SamplingParams, Work};

#[test]
fn every_kernel_compiles_for_sm_90_without_diagnostics() {
    if !kernels::nvrtc_present() {
        assert!(
            std::env::var_os("GRM_REQUIRE_NVRTC").is_none(),
            "{}",
            kernels::KernelError::NvrtcMissing
        );
        eprintln!("skipped: {}", kernels::KernelError::NvrtcMissing);
        return;
    }
    let version = kernels::nvrtc_version().unwrap();
    eprintln!("NVRTC {}.{}", version.0, version.1);
    if std::env::var_os("GRM_REQUIRE_NVRTC").is_some() {
        assert_eq!(version, (13, 0), "CI pins NVRTC 13.0");
    }
    let compiled = kernels::check_all("sm_90").unwrap_or_else(|e| panic!("{e}"));
    for (c, file) in compiled.iter().zip(kernels::FILES) {
        eprintln!("{}: {} bytes of sm_90 CUBIN", c.file, c.cubin.len());
        // Every kernel the backend loads is in the image, by its unmangled name.
        for k in file.kernels {
            let needle = format!("{k}\0");
            assert!(
                c.cubin
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{}: kernel {k} is not in the CUBIN",
                c.file
            );
        }
    }
    // A diagnostic is an error: a warning in a kernel would fail the check.
    static BAD: kernels::KernelFile = kernels::KernelFile {
        name: "bad.cu",
        source: "extern \"C\" __global__ void f(float* x) { int unused = 1; x[0] = 0.0f; }",
        kernels: &["f"],
    };
    let c = kernels::compile(&BAD, "sm_90").unwrap();
    assert!(c.log.contains("unused"), "{}", c.log);
}

/// The GPU, or `None` (with the reason on stderr) where there is none.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(CudaOptions::default()) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: no usable CUDA GPU ({e})");
            None
        }
    }
}

fn host(b: &CudaBackend, x: &CudaAct) -> Vec<f32> {
    b.to_host(x).2
}

/// A small deterministic generator of values in [-scale, scale).
struct Rnd(u64);
impl Rnd {
    fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
}

fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs() / (1.0 + w.abs());
        assert!(d <= tol, "{what}: element {i}: GPU {g} vs CPU {w}");
        worst = worst.max(d);
    }
    eprintln!("{what}: max relative difference {worst:.2e}");
}

#[test]
fn row_kernels_match_their_cpu_references() {
    let Some(b) = gpu() else { return };
    // A bf16 weight on the device: norms and the gated product then also write their outputs
    // in bf16 (the products' input), each checked below against its f32 output rounded.
    let store = WeightStore::open(&fixtures().join("tiny-bf16")).unwrap();
    b.matrix(&store.get("model.embed_tokens.weight", &[262, 64]).unwrap())
        .unwrap();
    let twin = |what: &str, x: &CudaAct| {
        let h = x
            .half
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no bf16 twin"));
        let bits = b.stream().clone_dtoh(h).unwrap();
        let want: Vec<u16> = host(&b, x)
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        assert_eq!(bits[..want.len()], want[..], "{what}: the bf16 twin");
    };
    let mut r = Rnd(1);
    let (rows, cols) = (7, 300);
    let x = r.vec(rows * cols, 3.0);
    let y = r.vec(rows * cols, 3.0);
    let w = r.vec(cols, 0.5);
    let w2 = r.vec(cols, 0.5);
    let (gx, gy) = (
        b.act_from_host(rows, cols, &x),
        b.act_from_host(rows, cols, &y),
    );
    let (gw, gw2) = (b.vector(&w).unwrap(), b.vector(&w2).unwrap());

    let mut want = vec![0f32; x.len()];
    ops::rms_norm(&x, &w, 1e-6, &mut want);
    let normed = b.rms_norm(&gx, &gw, 1e-6);
    assert_close("rms_norm", &host(&b, &normed), &want, 1e-5);
    twin("rms_norm", &normed);

    let mut res = x.clone();
    ops::add_rms_norm(&mut res, &y, &w, 1e-6);
    let mut next = vec![0f32; x.len()];
    ops::rms_norm(&res, &w2, 1e-6, &mut next);
    let mut gres = b.act_from_host(rows, cols, &x);
    let gnext = b.add_rms_norm_then_norm(&mut gres, &gy, &gw, &gw2, 1e-6);
    assert_close("add_rms_norm (fused)", &host(&b, &gres), &res, 1e-5);
    assert_close(
        "rms_norm after the add (fused)",
        &host(&b, &gnext),
        &next,
        1e-5,
    );
    twin("rms_norm after the add (fused)", &gnext);
    let mut gres = b.act_from_host(rows, cols, &x);
    b.add_rms_norm(&mut gres, &gy, &gw, 1e-6);
    assert_close("add_rms_norm", &host(&b, &gres), &res, 1e-5);

    let mut want = vec![0f32; x.len()];
    ops::gelu_mul(&x, &y, &mut want);
    assert_close("gelu_mul", &host(&b, &b.gelu_mul(&gx, &gy)), &want, 1e-5);

    let mut big: Vec<f32> = x.iter().map(|v| v * 30.0).collect();
    let mut gbig = b.act_from_host(rows, cols, &big);
    ops::softcap(&mut big, 30.0);
    b.softcap(&mut gbig, 30.0);
    assert_close("softcap", &host(&b, &gbig), &big, 1e-5);

    // RoPE on 5 heads of 60, with the host's tables.
    let (heads, hd) = (5, 60);
    let half = hd / 2;
    let (mut cos, mut sin) = (vec![0f32; rows * half], vec![0f32; rows * half]);
    for row in 0..rows {
        grm_engine::rope::rope_tables(
            (row * 37) as u32,
            hd,
            10_000.0,
            &mut cos[row * half..(row + 1) * half],
            &mut sin[row * half..(row + 1) * half],
        );
    }
    let mut want = x.clone();
    for (row, chunk) in want.chunks_exact_mut(cols).enumerate() {
        ops::rope_row(
            chunk,
            heads,
            hd,
            &cos[row * half..(row + 1) * half],
            &sin[row * half..(row + 1) * half],
        );
    }
    let mut gq = b.act_from_host(rows, cols, &x);
    // The step's RoPE rows, as the CPU reads them and as the GPU holds them.
    let no_meta = AttentionMeta::default();
    let cstep = StepInputs {
        tokens: &[],
        meta: &no_meta,
        slots: &[],
        extra_slots: &[],
        cos: &cos,
        sin: &sin,
        group: 1,
        head_dim: 0,
    };
    let step = b.prepare_step(cstep);
    b.rope(&mut gq, heads, hd, &step);
    assert_close("rope", &host(&b, &gq), &want, 1e-6);

    // A stacked q, k, v row (5 query heads and 2 KV heads of 60 wide: 540 columns) split and
    // rotated in one pass, and a stacked gate, up product, against the CPU's split then
    // rotation and product.
    let kv_heads = 2;
    let width = (heads + 2 * kv_heads) * hd;
    let qkv = r.vec(rows * width, 3.0);
    let cpu = CpuBackend;
    let c_qkv = CpuAct {
        rows,
        cols: width,
        data: qkv.clone(),
    };
    let want = cpu.split_qkv_rope(&c_qkv, heads, kv_heads, hd, &cstep);
    let got = b.split_qkv_rope(
        &b.act_from_host(rows, width, &qkv),
        heads,
        kv_heads,
        hd,
        &step,
    );
    for (name, (g, w)) in ["q", "k", "v"].iter().zip(got.iter().zip(&want)) {
        assert_eq!((g.rows, g.cols), (w.rows, w.cols), "split_qkv_rope {name}");
        assert_close(
            &format!("split_qkv_rope {name}"),
            &host(&b, g),
            &w.data,
            1e-6,
        );
    }
    let gu = CpuAct {
        rows,
        cols: 2 * cols,
        data: x.iter().chain(&y).copied().collect(),
    };
    let want = cpu.gelu_mul_stacked(&gu);
    let got = b.gelu_mul_stacked(&b.act_from_host(rows, 2 * cols, &gu.data));
    assert_eq!((got.rows, got.cols), (rows, cols));
    assert_close("gelu_mul_stacked", &host(&b, &got), &want.data, 1e-5);
    twin("gelu_mul_stacked", &got);

    let pick = [6usize, 0, 3, 3];
    let want: Vec<f32> = pick
        .iter()
        .flat_map(|&i| x[i * cols..(i + 1) * cols].to_vec())
        .collect();
    assert_close(
        "gather_rows",
        &host(&b, &b.gather_rows(&gx, &pick)),
        &want,
        0.0,
    );
}

/// A layer's q, k and v (and gate and up) stacked into one matrix on the GPU give, column
/// range by column range, the products of each alone.
#[test]
fn stacked_products_equal_their_parts() {
    let Some(b) = gpu() else { return };
    let mut r = Rnd(5);
    for dir in ["tiny-bf16", "tiny-f32"] {
        let store = WeightStore::open(&fixtures().join(dir)).unwrap();
        let names = [
            ("model.layers.1.self_attn.q_proj.weight", 96),
            ("model.layers.1.self_attn.k_proj.weight", 48),
            ("model.layers.1.self_attn.v_proj.weight", 48),
        ];
        let ts: Vec<_> = names
            .iter()
            .map(|(n, rows)| store.get(n, &[*rows, 64]).unwrap())
            .collect();
        let stacked = b
            .stacked_matrix(&ts.iter().collect::<Vec<_>>())
            .unwrap()
            .expect("the GPU stacks products of one type and width");
        let rows = 5;
        let x = b.act_from_host(rows, 64, &r.vec(rows * 64, 2.0));
        let all = host(&b, &b.linear(&x, &stacked));
        let mut at = 0;
        for (t, (n, w)) in ts.iter().zip(names) {
            let part = host(&b, &b.linear(&x, &b.matrix(t).unwrap()));
            let cols: Vec<f32> = (0..rows)
                .flat_map(|i| all[i * 192 + at..i * 192 + at + w].to_vec())
                .collect();
            // cuBLAS may choose another algorithm for the wider product: f32 rounding apart.
            assert_close(&format!("stacked {dir} {n}"), &cols, &part, 1e-5);
            at += w;
        }
    }
}

#[test]
fn embedding_products_and_scalar_head_match_the_cpu() {
    let Some(b) = gpu() else { return };
    let cpu = CpuBackend;
    let mut r = Rnd(2);
    for (dir, name, shape) in [
        ("tiny-bf16", "model.embed_tokens.weight", [262usize, 64]),
        ("tiny-f32", "model.layers.0.mlp.up_proj.weight", [96, 64]),
        (
            "tiny-bf16",
            "model.layers.1.self_attn.q_proj.weight",
            [96, 64],
        ),
        ("tiny-seq-cls", "score.weight", [1, 64]),
    ] {
        let store = WeightStore::open(&fixtures().join(dir)).unwrap();
        let t = store.get(name, &shape).unwrap();
        let (cm, gm) = (cpu.matrix(&t).unwrap(), b.matrix(&t).unwrap());
        let rows = 9;
        let x = r.vec(rows * shape[1], 2.0);
        let cx = CpuAct {
            rows,
            cols: shape[1],
            data: x.clone(),
        };
        let want = cpu.linear(&cx, &cm).data;
        // cuBLAS takes bf16 activations for bf16 weights: against the CPU's f32 inputs, each of
        // the 64 inputs may move by 2^-9 of itself (inputs up to 2, the fixtures' weights
        // scaled up), so a product may move by a few hundredths (measured on an H200: 2.3e-2);
        // the exact check is the one on rounded inputs below, to f32 accuracy.
        let got = host(&b, &b.linear(&b.act_from_host(rows, shape[1], &x), &gm));
        let tol = if t.dtype == grm_engine::weights::DType::F32 || shape[0] <= 8 {
            1e-4
        } else {
            6e-2
        };
        assert_close(&format!("linear {dir}/{name}"), &got, &want, tol);
        if t.dtype != grm_engine::weights::DType::F32 && shape[0] > 8 {
            let xr: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
            let want_r = cpu
                .linear(
                    &CpuAct {
                        rows,
                        cols: shape[1],
                        data: xr,
                    },
                    &cm,
                )
                .data;
            assert_close(
                &format!("linear {dir}/{name} (bf16 inputs)"),
                &got,
                &want_r,
                1e-4,
            );
        }
        if name.contains("embed") {
            let tokens = [0u32, 261, 5, 5, 100];
            let want = cpu.embed(&cm, &tokens, 8.0).data;
            assert_close("embed", &host(&b, &b.embed(&gm, &tokens, 8.0)), &want, 0.0);
        }
    }
}

/// The KV pool on the GPU, read back in the CPU's layout (f32 from bf16).
fn kv_to_cpu(b: &CudaBackend, kv: &grm_engine::cuda::CudaKv) -> CpuKv {
    let mut c = CpuKv::new(
        kv.layers,
        kv.num_blocks,
        kv.block_size,
        kv.kv_heads,
        kv.head_dim,
    );
    let k = b.stream().clone_dtoh(&kv.k).unwrap();
    let v = b.stream().clone_dtoh(&kv.v).unwrap();
    for l in 0..kv.layers {
        let span = l * kv.layer_stride..(l + 1) * kv.layer_stride;
        c.k[l] = k[span.clone()]
            .iter()
            .map(|&h| half::bf16::from_bits(h).to_f32())
            .collect();
        c.v[l] = v[span]
            .iter()
            .map(|&h| half::bf16::from_bits(h).to_f32())
            .collect();
    }
    c
}

#[test]
fn paged_attention_kv_writes_and_block_copies_match_the_cpu() {
    let Some(b) = gpu() else { return };
    let mut r = Rnd(3);
    for (heads, kv_heads, hd, bs) in [
        (4, 2, 24, 8),
        (8, 2, 128, 16),
        (8, 8, 64, 16),
        (16, 2, 256, 16),
    ] {
        let (layers, blocks) = (2, 24);
        let width = kv_heads * hd;
        let mut gkv = b.new_kv(layers, blocks, bs, kv_heads, hd).unwrap();
        let mut ckv = CpuKv::new(layers, blocks, bs, kv_heads, hd);
        // Two samples share a 2.5-block prompt (blocks 3, 7 and the partial 1, copied on write
        // into 9 for the second sample); a third sequence stands alone.
        let prompt_blocks = [3u32, 7, 1];
        let prompt_len = 2 * bs + bs / 2;
        // Each row into its slot, and some rows into a second slot too (a prompt tree's
        // branch blocks).
        let write_extra = |gkv: &mut _,
                           ckv: &mut CpuKv,
                           layer,
                           slots: &[usize],
                           extra: &[(usize, usize)],
                           r: &mut Rnd| {
            let k = r.vec(slots.len() * width, 2.0);
            let v = r.vec(slots.len() * width, 2.0);
            let (gk, gv) = (
                b.act_from_host(slots.len(), width, &k),
                b.act_from_host(slots.len(), width, &v),
            );
            let step = b.prepare_step(StepInputs {
                tokens: &[],
                meta: &AttentionMeta::default(),
                slots,
                extra_slots: extra,
                cos: &[],
                sin: &[],
                group: 1,
                head_dim: 0,
            });
            b.write_kv(gkv, layer, &gk, &gv, &step);
            let rows = slots.iter().copied().enumerate();
            for (i, s) in rows.chain(extra.iter().copied()) {
                let round = |x: &[f32]| x.iter().map(|&v| bf16_round(v)).collect::<Vec<_>>();
                ckv.write(
                    layer,
                    s,
                    &round(&k[i * width..(i + 1) * width]),
                    &round(&v[i * width..(i + 1) * width]),
                );
            }
        };
        let write = |gkv: &mut _, ckv: &mut CpuKv, layer, slots: &[usize], r: &mut Rnd| {
            write_extra(gkv, ckv, layer, slots, &[], r)
        };
        let prompt_slots: Vec<usize> = (0..prompt_len)
            .map(|j| prompt_blocks[j / bs] as usize * bs + j % bs)
            .collect();
        let alone: Vec<u32> = vec![11, 2, 15];
        let alone_len = 3 * bs - 3;
        let alone_slots: Vec<usize> = (0..alone_len)
            .map(|j| alone[j / bs] as usize * bs + j % bs)
            .collect();
        for layer in 0..layers {
            write(&mut gkv, &mut ckv, layer, &prompt_slots, &mut r);
            write(&mut gkv, &mut ckv, layer, &alone_slots, &mut r);
        }
        let op = CopyOp {
            src: 1,
            dst: 9,
            slots: bs / 2,
        };
        b.copy_blocks(&mut gkv, &[op]);
        ckv.copy(op);
        // Each sample's next token.
        let s0 = bs + bs / 2; // slot prompt_len, in block 1
        let s1 = 9usize * bs + bs / 2;
        for layer in 0..layers {
            write(&mut gkv, &mut ckv, layer, &[s0, s1], &mut r);
        }
        // Three rows into free block 20, the first and last also into block 21.
        let extra = [(0usize, 21 * bs + 1), (2, 21 * bs + 3)];
        for layer in 0..layers {
            let slots = [20 * bs, 20 * bs + 1, 20 * bs + 2];
            write_extra(&mut gkv, &mut ckv, layer, &slots, &extra, &mut r);
        }
        let back = kv_to_cpu(&b, &gkv);
        assert_eq!(
            back.k, ckv.k,
            "write_kv/copy_blocks keys ({heads}/{kv_heads}/{hd}/{bs})"
        );
        assert_eq!(back.v, ckv.v, "write_kv/copy_blocks values");

        // One step: the two samples decode (shared prompt blocks), the third sequence runs a
        // 5-token chunk ending mid-block, and a long run of the third's earlier positions
        // exercises the prefill tiles.
        let mut positions = vec![prompt_len as u32, prompt_len as u32];
        let mut span_of = vec![0u32, 1];
        for p in (alone_len - 5)..alone_len {
            positions.push(p as u32);
            span_of.push(2);
        }
        for p in 0..alone_len - 5 {
            positions.push(p as u32);
            span_of.push(3);
        }
        let meta = AttentionMeta {
            positions,
            span_of,
            spans: vec![vec![3, 7, 1], vec![3, 7, 9], alone.clone(), alone.clone()],
            block_size: bs,
        };
        attention_matches_cpu(
            &b,
            (&gkv, &ckv, layers),
            &meta,
            (heads, kv_heads, hd),
            &[
                (None, Some(50.0)),
                (Some(bs + 3), Some(50.0)),
                (Some(5), None),
                (None, None),
            ],
            &mut r,
            2e-5,
        );
    }
}

/// The GPU's attention for one step of `meta` against the CPU's, on random queries, for every
/// (window, softcap) of `cases` on every layer of the caches, with each prefill kernel: the f32
/// CUDA-core one at `tol`, and where the head size and the GPU allow, the tensor-core one
/// against the CPU on the same queries rounded to bf16 (its inputs), at a tolerance that covers
/// its weights' rounding to bf16 (at most 2^-8 of a weight; values lie in ±2).
fn attention_matches_cpu(
    b: &CudaBackend,
    (gkv, ckv, layers): (&grm_engine::cuda::CudaKv, &CpuKv, usize),
    meta: &AttentionMeta,
    (heads, kv_heads, hd): (usize, usize, usize),
    cases: &[(Option<usize>, Option<f32>)],
    r: &mut Rnd,
    tol: f32,
) {
    let rows = meta.positions.len();
    let q = r.vec(rows * heads * hd, 2.0);
    let gq = b.act_from_host(rows, heads * hd, &q);
    for mma in [false, true] {
        if b.set_mma_prefill(mma) != mma {
            eprintln!("skipped: no tensor-core prefill on this GPU");
            continue;
        }
        let kernel = if mma && hd % 16 == 0 {
            "tensor-core"
        } else {
            "f32"
        };
        let (q_ref, tol) = if kernel == "tensor-core" {
            (q.iter().map(|&x| bf16_round(x)).collect(), 1e-2)
        } else {
            (q.clone(), tol)
        };
        let step = b.prepare_step(StepInputs {
            tokens: &[],
            meta,
            slots: &[],
            extra_slots: &[],
            cos: &[],
            sin: &[],
            group: heads / kv_heads,
            head_dim: hd,
        });
        for &(window, softcap) in cases {
            let p = AttentionParams {
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                scale: (hd as f32).powf(-0.5),
                softcap,
                window,
            };
            for layer in 0..layers {
                let want = attention::attention(ckv, layer, &q_ref, meta, p);
                let got = host(b, &b.attention(gkv, layer, &gq, &step, p));
                assert_close(
                    &format!(
                        "attention ({kernel} prefill) {heads}h/{kv_heads}kv/{hd}d/bs{} rows {rows} window {window:?} cap {softcap:?} layer {layer}",
                        meta.block_size
                    ),
                    &got,
                    &want,
                    tol,
                );
            }
        }
    }
    b.set_mma_prefill(true);
}

/// Contexts past one decode split (256 keys) and prompt chunks over many key blocks: the split
/// decode kernel and its merge (rows of 1 to 1,100 keys in one step, so some splits of the short
/// rows see no key), and the prefill tiles, against the CPU, with and without a window shorter
/// than the context and the softcap; head groups of 1, 2, 3 and 16 (past the kernel's 4 heads
/// scored at once; 3 leaves a tensor-core tile short of its 64 pairs), block sizes of 8, 12, 16
/// and 32 (lanes over keys and dimensions), head sizes the tensor-core kernel takes (48 in its
/// 64-wide form, 64, 128, 256) and some it leaves to the f32 one (40).
#[test]
fn long_contexts_split_decode_and_prefill_tiles_match_the_cpu() {
    let Some(b) = gpu() else { return };
    let mut r = Rnd(11);
    for (heads, kv_heads, hd, bs) in [
        (8, 4, 256, 16),
        (32, 16, 128, 32),
        (32, 2, 64, 8),
        (4, 4, 40, 12),
        (6, 2, 48, 12),
    ] {
        let width = kv_heads * hd;
        // Decode rows at positions 0, 255, 256 and 1099, then a 300-row chunk at 700..999.
        let decode_pos = [0usize, 255, 256, 1099];
        let (chunk0, chunk_len) = (700usize, 300usize);
        let lens: Vec<usize> = decode_pos
            .iter()
            .map(|&p| p + 1)
            .chain([chunk0 + chunk_len])
            .collect();
        let need: Vec<usize> = lens.iter().map(|l| l.div_ceil(bs)).collect();
        let blocks = need.iter().sum::<usize>() + 3;
        // Each sequence's blocks, scattered over the pool.
        let mut order: Vec<u32> = (0..blocks as u32).collect();
        for i in (1..order.len()).rev() {
            let j = ((r.next(1.0) + 1.0) * 0.5 * (i + 1) as f32) as usize;
            order.swap(i, j.min(i));
        }
        let mut spans = Vec::new();
        let mut at = 0;
        for &n in &need {
            spans.push(order[at..at + n].to_vec());
            at += n;
        }
        let mut gkv = b.new_kv(1, blocks, bs, kv_heads, hd).unwrap();
        let mut ckv = CpuKv::new(1, blocks, bs, kv_heads, hd);
        let slots: Vec<usize> = (0..blocks * bs).collect();
        let k = r.vec(slots.len() * width, 2.0);
        let v = r.vec(slots.len() * width, 2.0);
        let step = b.prepare_step(StepInputs {
            tokens: &[],
            meta: &AttentionMeta::default(),
            slots: &slots,
            extra_slots: &[],
            cos: &[],
            sin: &[],
            group: 1,
            head_dim: 0,
        });
        b.write_kv(
            &mut gkv,
            0,
            &b.act_from_host(slots.len(), width, &k),
            &b.act_from_host(slots.len(), width, &v),
            &step,
        );
        let round = |x: &[f32]| x.iter().map(|&v| bf16_round(v)).collect::<Vec<_>>();
        for &s in &slots {
            let row = s * width..(s + 1) * width;
            ckv.write(0, s, &round(&k[row.clone()]), &round(&v[row]));
        }
        let mut positions: Vec<u32> = decode_pos.iter().map(|&p| p as u32).collect();
        let mut span_of: Vec<u32> = (0..decode_pos.len() as u32).collect();
        for p in chunk0..chunk0 + chunk_len {
            positions.push(p as u32);
            span_of.push(decode_pos.len() as u32);
        }
        let meta = AttentionMeta {
            positions,
            span_of,
            spans,
            block_size: bs,
        };
        attention_matches_cpu(
            &b,
            (&gkv, &ckv, 1),
            &meta,
            (heads, kv_heads, hd),
            &[
                (None, Some(50.0)),
                (Some(300), None),
                (Some(4096), Some(50.0)),
            ],
            &mut r,
            5e-5,
        );
    }
}

#[test]
fn sampling_on_the_gpu_matches_its_cpu_reference() {
    let Some(b) = gpu() else { return };
    let mut r = Rnd(4);
    let vocab = 5000;
    let rows = 64;
    let logits = r.vec(rows * vocab, 6.0);
    let settings: Vec<RowSampling> = (0..rows)
        .map(|i| RowSampling {
            temperature: [0.0, 0.7, 1.0, 1.3][i % 4],
            top_p: [1.0, 0.9, 0.5, 0.95][(i / 4) % 4],
            seed: 1000 + i as u64,
            step: (i * 7) as u64,
        })
        .collect();
    let got = b.sample_rows(&b.act_from_host(rows, vocab, &logits), &settings);
    let want: Vec<u32> = settings
        .iter()
        .enumerate()
        .map(|(i, s)| sample_row(&logits[i * vocab..(i + 1) * vocab], *s))
        .collect();
    // Greedy rows agree exactly; sampled rows may differ only where the two orders of
    // summation put the draw on the other side of a boundary: rare, never systematic.
    let mut differ = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if settings[i].temperature == 0.0 {
            assert_eq!(g, w, "greedy row {i}");
        } else if g != w {
            differ += 1;
        }
    }
    eprintln!(
        "sampled rows that differ from the reference: {differ} of {}",
        rows * 3 / 4
    );
    assert!(
        differ <= 2,
        "{differ} sampled rows differ from the CPU reference"
    );
}

#[test]
fn the_model_on_the_gpu_matches_transformers_and_the_cpu_engine() {
    let Some(b) = gpu() else { return };
    drop(b);
    let r = reference();
    let gpu_model = |name: &str| {
        Gemma2::load(
            &fixtures().join(name),
            CudaBackend::new(CudaOptions::default()).unwrap(),
        )
        .unwrap()
    };
    // Logits at every position, against transformers (bf16 weights, f32 compute): the GPU
    // rounds activations to bf16 before each product and keeps K/V in bf16.
    let m = gpu_model("tiny-bf16");
    for (i, p) in r.prompts.iter().enumerate() {
        let out = m.run_once(p, true).unwrap();
        let d = max_diff(
            &out.data,
            &ref_tensor(&format!("logits_bf16_f32compute.{i}")),
        );
        eprintln!(
            "GPU bf16 prompt {i} ({} tokens): max |Δlogit| vs transformers = {d:.2e}",
            p.len()
        );
        // bf16 activations and K/V through every layer of weights scaled up for the softcaps:
        // on the long prompt the logits (capped at ±30) move by about 1% of the cap (measured
        // on an H200: 0.33); the greedy check below is the end-to-end one.
        assert!(d < 0.6, "prompt {i}: {d}");
    }
    let m = gpu_model("tiny-f32");
    for (i, p) in r.prompts.iter().enumerate() {
        let out = m.run_once(p, true).unwrap();
        let d = max_diff(&out.data, &ref_tensor(&format!("logits_f64.{i}")));
        eprintln!(
            "GPU f32 prompt {i} ({} tokens): max |Δlogit| vs float64 = {d:.2e}",
            p.len()
        );
        // f32 weights, but bf16 activations into cuBLAS and bf16 K/V (measured on an H200:
        // 0.035, 0.098 and 0.215 for prompts of 3, 29 and 61 tokens).
        assert!(d < 0.35, "prompt {i}: {d}");
    }
    let m = gpu_model("tiny-seq-cls");
    for (p, want) in r.prompts.iter().zip(&r.rewards) {
        let got = m.run_once(p, false).unwrap().data[0];
        assert!(
            (f64::from(got) - want).abs() < 2e-2,
            "reward {got} vs {want}"
        );
    }

    // Greedy continuations through the whole engine (paged KV, prefix sharing, 4 samples
    // of each prompt), token for token with transformers while the CPU's margin between the
    // two best tokens is clear of bf16 noise.
    let cpu = model("tiny-f32");
    let engine = Engine::start(
        gpu_model("tiny-f32"),
        EngineOptions {
            num_blocks: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    for (p, want) in r.prompts.iter().zip(&r.greedy) {
        let params = SamplingParams {
            max_new_tokens: want.len(),
            ignore_stop: true,
            stream: false,
            logprobs: None,
            ..Default::default()
        };
        let mut sub = engine
            .submit_blocking(Work::Generate {
                prompt: p.clone(),
                samples: vec![params; 4],
            })
            .unwrap();
        let mut full = p.clone();
        full.extend(want);
        let logits = cpu.run_once(&full, true).unwrap();
        let clear = (0..want.len())
            .take_while(|&i| {
                let mut row = logits.row(p.len() - 1 + i).to_vec();
                row.sort_by(|a, b| b.total_cmp(a));
                row[0] - row[1] > 0.02
            })
            .count();
        let mut samples = 0;
        while let Some(ev) = sub.next_blocking() {
            if let Event::Sample { tokens, .. } = ev {
                assert_eq!(tokens[..clear], want[..clear], "greedy on the GPU");
                samples += 1;
            }
        }
        assert_eq!(samples, 4);
        eprintln!("greedy: {clear} of {} tokens checked", want.len());
    }
}

/// Decode steps replayed from CUDA graphs give the logits of the same steps run launch by
/// launch: two samples of two prompts of different lengths decode 40 greedy steps on a model
/// with graphs and on one without, fed the same tokens; the rows' positions cross a decode split
/// (256 keys) and the samples' blocks are scattered, so replays read new positions, block
/// tables, RoPE rows and slots from the buffers the graph was recorded over. A change of batch
/// size (one sample ends) is a new shape, recorded in turn; a one-token run in a KV cache of its
/// own, of the same shape, is recorded over its own cache.
#[test]
fn decode_steps_replayed_from_cuda_graphs_match_eager_ones() {
    use grm_engine::ForwardBatch;
    let Some(b) = gpu() else { return };
    drop(b);
    let load = |graphs: bool| {
        let b = CudaBackend::new(CudaOptions::default()).unwrap();
        b.set_graphs(graphs);
        Gemma2::load(&fixtures().join("tiny-bf16"), b).unwrap()
    };
    let (with, without) = (load(true), load(false));
    let bs = 16;
    let (mut kv_a, mut kv_b) = (
        with.new_kv(64, bs).unwrap(),
        without.new_kv(64, bs).unwrap(),
    );
    let r = reference();
    let prompts: Vec<Vec<u32>> = vec![r.prompts[1].clone(), vec![5; 240]];
    // Each sequence's blocks: interleaved, so no two are neighbours.
    let blocks = |seq: usize| -> Vec<u32> { (0..30u32).map(|i| 2 * i + seq as u32).collect() };
    let slot = |seq: usize, pos: usize| blocks(seq)[pos / bs] as usize * bs + pos % bs;
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    // Prefill both prompts in one step.
    let mut batch = ForwardBatch::default();
    batch.meta.block_size = bs;
    for (seq, p) in prompts.iter().enumerate() {
        for (pos, &t) in p.iter().enumerate() {
            batch.tokens.push(t);
            batch.slots.push(slot(seq, pos));
            batch.meta.positions.push(pos as u32);
            batch.meta.span_of.push(seq as u32);
        }
        batch
            .meta
            .spans
            .push(blocks(seq)[..p.len().div_ceil(bs)].to_vec());
        batch.outputs.push(batch.tokens.len() - 1);
    }
    let (a, bo) = (
        with.forward(&mut kv_a, &batch),
        without.forward(&mut kv_b, &batch),
    );
    assert_eq!(a.data, bo.data, "prefill");
    let mut next: Vec<u32> = (0..2).map(|i| argmax(a.row(i))).collect();
    let mut lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    for step in 0..50 {
        // The first sample stops after 30 steps: the batch shrinks to one row.
        let live: Vec<usize> = if step < 30 { vec![0, 1] } else { vec![1] };
        if step == 40 {
            // A one-token run in a cache of its own has the one-row shape: it is recorded over
            // that cache, and the next decode step over this one again, never replayed over
            // the wrong cache.
            for _ in 0..3 {
                let (a, bo) = (
                    with.run_once(&[7], false).unwrap(),
                    without.run_once(&[7], false).unwrap(),
                );
                assert_eq!(a.data, bo.data, "a one-token run beside the decode steps");
            }
        }
        let mut batch = ForwardBatch::default();
        batch.meta.block_size = bs;
        for (row, &seq) in live.iter().enumerate() {
            batch.tokens.push(next[seq]);
            batch.slots.push(slot(seq, lens[seq]));
            batch.meta.positions.push(lens[seq] as u32);
            batch.meta.span_of.push(row as u32);
            batch
                .meta
                .spans
                .push(blocks(seq)[..(lens[seq] + 1).div_ceil(bs)].to_vec());
            batch.outputs.push(row);
        }
        let (a, bo) = (
            with.forward(&mut kv_a, &batch),
            without.forward(&mut kv_b, &batch),
        );
        assert_eq!(a.data, bo.data, "decode step {step}: graph against eager");
        for (row, &seq) in live.iter().enumerate() {
            next[seq] = argmax(a.row(row));
            lens[seq] += 1;
        }
    }
    let (recordings, replays) = with.backend().graph_counts();
    eprintln!("graphs: {recordings} recorded, {replays} replays");
    // Two shapes (two rows, one row), each recorded at its second step; the longer sample
    // crosses 256 keys at step 16, a third shape.
    assert!(recordings >= 2, "{recordings} recordings");
    assert!(replays >= 30, "{replays} replays");
    assert_eq!(without.backend().graph_counts(), (0, 0));
}

/// A GRM request's shuffled prompts as one prefix tree on the GPU (shared blocks, branch
/// blocks filled by extra KV writes, in one step and spread over steps): each greedy sample
/// gets the CPU's greedy tokens of its prompt alone, while the CPU's margin between the two
/// best tokens is clear of bf16 noise, and every shared position is computed once.
#[test]
fn a_prompt_tree_on_the_gpu_gives_each_prompt_its_own_greedy_tokens() {
    use grm_engine::scheduler::prompt_tree::unique_tokens;
    use grm_engine::workload::{grm_prompts, GrmShape};
    use grm_engine::{Scheduler, SchedulerConfig};
    let Some(b) = gpu() else { return };
    drop(b);
    let cpu = model("tiny-f32");
    let w = grm_prompts(&GrmShape {
        header: 37,
        responses: vec![11, 9, 13],
        footer: 5,
        samples: 6,
        vocab: 262,
        seed: 4,
    });
    let greedy = SamplingParams {
        max_new_tokens: 8,
        ignore_stop: true,
        stream: false,
        logprobs: None,
        ..Default::default()
    };
    // The CPU's greedy tokens of each prompt alone, and how many of them have a clear margin.
    let mut want = Vec::new();
    for p in &w.prompts {
        let mut s =
            Scheduler::new(model("tiny-f32"), 64, 16, false, SchedulerConfig::default()).unwrap();
        s.submit(
            0,
            Work::Generate {
                prompt: p.clone(),
                samples: vec![greedy.clone()],
            },
        )
        .unwrap();
        let mut tokens = Vec::new();
        while !s.is_idle() {
            for (_, ev) in s.step() {
                if let Event::Sample { tokens: t, .. } = ev {
                    tokens = t;
                }
            }
        }
        let mut full = p.clone();
        full.extend(&tokens);
        let logits = cpu.run_once(&full, true).unwrap();
        let clear = (0..tokens.len())
            .take_while(|&i| {
                let mut row = logits.row(p.len() - 1 + i).to_vec();
                row.sort_by(|a, b| b.total_cmp(a));
                row[0] - row[1] > 0.02
            })
            .count();
        want.push((tokens, clear));
    }
    let prompts: Vec<&[u32]> = w.prompts.iter().map(|p| &p[..]).collect();
    for batch in [512, 24] {
        let gpu_model = Gemma2::load(
            &fixtures().join("tiny-f32"),
            CudaBackend::new(CudaOptions::default()).unwrap(),
        )
        .unwrap();
        let cfg = SchedulerConfig {
            max_batch_tokens: batch,
            ..Default::default()
        };
        let mut s = Scheduler::new(gpu_model, 128, 16, true, cfg).unwrap();
        let samples = (0..6)
            .map(|i| (w.sample_prompt[i], greedy.clone()))
            .collect();
        s.submit(
            1,
            Work::GenerateTree {
                prompts: w.prompts.clone(),
                samples,
            },
        )
        .unwrap();
        let mut done = 0;
        while !s.is_idle() {
            for (_, ev) in s.step() {
                if let Event::Sample { sample, tokens, .. } = ev {
                    let (cpu_tokens, clear) = &want[w.sample_prompt[sample]];
                    assert_eq!(
                        tokens[..*clear],
                        cpu_tokens[..*clear],
                        "batch {batch}, sample {sample}"
                    );
                    done += 1;
                }
            }
        }
        assert_eq!(done, 6);
        assert_eq!(
            s.counters().prompt_tokens_computed as usize,
            unique_tokens(&prompts)
        );
        assert_eq!(s.kv_stats().blocks_used, 0);
        eprintln!(
            "prompt tree on the GPU, batch {batch}: {} prompts, clear tokens {:?}",
            w.prompts.len(),
            want.iter().map(|w| w.1).collect::<Vec<_>>()
        );
    }
}
