//! Known answers from ggml itself (`kernels/testdata/ggml_quants.txt`,
//! written by `kernels/testdata/ggml_quants.py` from llama.cpp's libggml and
//! PyPI gguf, never from this crate): for every quant type, rows quantized
//! by ggml's quantizer, their decode by gguf-py, activations quantized by
//! ggml's CPU code and ggml's dot of the two. Checked here:
//!
//! * every ggml type id's name and sizes ([`GgmlType`]);
//! * our decode of ggml's bytes is bit-exact;
//! * our reference dot, and every table's dot, of ggml's weight and
//!   activation bytes match ggml's dot within f32 rounding;
//! * our quantizer gives ggml's bytes exactly for every type whose quantizer
//!   follows ggml's algorithm (Q4_K and Q5_K fit their sub-block scales
//!   with a search of their own, within 1.1x of ggml's error on these rows;
//!   Q6_K's simpler one stays within 1.3x);
//! * every table's activation quantizer matches ggml's within one code.

use super::{dequantize_row, quantize_row, DType, GgmlType};
use crate::dispatch::{available_isas, table_for};
use crate::quant::{aligned_bytes, with_weight_block, ActivationBlock, QuantBlock, WeightBlock};

const FIXTURE: &str = include_str!("../../testdata/ggml_quants.txt");

/// The generator of `ggml_quants.py`: integers over 2^15 (exact in f32).
fn lcg_row(seed: u64, n: usize, zero_run: bool) -> Vec<f32> {
    let mut state = seed;
    let mut draw = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    (0..n)
        .map(|i| {
            let mut s: i64 = (0..4).map(|_| (draw() & 0xFFFF) as i64).sum::<i64>() - 2 * 65536;
            if draw() % 37 == 0 {
                s *= 8;
            }
            let mut v = s as f32 / 32768.0;
            if zero_run && (64..96).contains(&i) {
                v = 0.0;
            }
            if zero_run && (160..176).contains(&i) {
                v = 0.75;
            }
            v
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn f32s(s: &str) -> Vec<f32> {
    (0..s.len() / 8)
        .map(|i| f32::from_bits(u32::from_str_radix(&s[8 * i..8 * i + 8], 16).unwrap()))
        .collect()
}

fn dtype_named(name: &str) -> DType {
    *DType::ALL
        .iter()
        .find(|d| d.name() == name)
        .unwrap_or_else(|| panic!("fixture type {name} is not in the registry"))
}

/// One `row` record of the fixture.
struct Row {
    dtype: DType,
    x: Vec<f32>,
    /// the activation row (seed + 1000)
    act_x: Vec<f32>,
    ggml: Vec<u8>,
    dequant: Vec<f32>,
    act: (DType, Vec<u8>),
    dot: f32,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut lines = FIXTURE.lines().filter(|l| !l.starts_with('#'));
    while let Some(line) = lines.next() {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] != "row" {
            continue;
        }
        let mut field = |tag: &str| {
            let l = lines.next().unwrap();
            l.strip_prefix(tag).unwrap().trim().to_string()
        };
        let (ggml, dequant, act, dot) =
            (field("ggml"), field("dequant"), field("act"), field("dot"));
        let (act_name, act_hex) = act.split_once(' ').unwrap();
        let seed: u64 = f[2].parse().unwrap();
        rows.push(Row {
            dtype: dtype_named(f[1]),
            x: lcg_row(seed, 256, f[3] == "1"),
            act_x: lcg_row(seed + 1000, 256, false),
            ggml: hex(&ggml),
            dequant: f32s(&dequant),
            act: (dtype_named(act_name), hex(act_hex)),
            dot: f32s(&dot)[0],
        });
    }
    rows
}

#[test]
fn ggml_type_facts_match_ggml() {
    let mut seen = 0;
    for line in FIXTURE.lines().filter(|l| l.starts_with("type ")) {
        let f: Vec<&str> = line.split(' ').collect();
        let t = GgmlType::from_id(f[1].parse().unwrap()).unwrap();
        assert_eq!(t.name(), f[2], "{line}");
        assert_eq!(t.block_size(), f[3].parse::<usize>().unwrap(), "{line}");
        assert_eq!(t.type_size(), f[4].parse::<usize>().unwrap(), "{line}");
        seen += 1;
    }
    // every type but Q2_0 (id 42), newer than the fixture's libggml
    assert_eq!(seen, GgmlType::ALL.len() - 1);
}

#[test]
fn every_fixture_type_is_covered() {
    let rows = rows();
    for d in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ] {
        assert_eq!(rows.iter().filter(|r| r.dtype == d).count(), 2, "{d}");
    }
}

/// Our decode of ggml's bytes is exactly gguf-py's (and ggml's).
#[test]
fn decode_is_bit_exact_with_ggml() {
    for r in rows() {
        let mut q = aligned_bytes(r.ggml.len());
        q.as_bytes_mut().copy_from_slice(&r.ggml);
        let mut y = vec![f32::NAN; r.x.len()];
        dequantize_row(r.dtype, q.as_bytes(), &mut y).unwrap();
        for (i, (a, b)) in y.iter().zip(&r.dequant).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} element {i}: {a} vs {b}",
                r.dtype
            );
        }
    }
}

fn blocks_of<B: QuantBlock>(bytes: &[u8]) -> Vec<B> {
    let mut b = vec![B::zeroed(); bytes.len() / std::mem::size_of::<B>()];
    bytemuck::cast_slice_mut::<B, u8>(&mut b).copy_from_slice(bytes);
    b
}

fn dequantized<B: QuantBlock>(b: &[B]) -> Vec<f32> {
    let mut y = vec![0f32; b.len() * B::ELEMS];
    B::dequantize_ref(b, &mut y);
    y
}

/// The reference dot and every table's dot of ggml's weight and activation
/// bytes against ggml's dot, within f32 rounding of the products' L1 norm.
fn check_dot<W: WeightBlock>(r: &Row) {
    assert_eq!(
        <W::Act as QuantBlock>::DTYPE,
        r.act.0,
        "{}: activation type",
        r.dtype
    );
    let (w, a): (Vec<W>, Vec<W::Act>) = (blocks_of(&r.ggml), blocks_of(&r.act.1));
    let l1: f32 = dequantized(&w)
        .iter()
        .zip(dequantized(&a))
        .map(|(p, q)| (p * q).abs())
        .sum();
    let tol = 2e-6 * l1.max(1e-6);
    let got = W::vec_dot_ref(&w, &a);
    assert!(
        (got - r.dot).abs() <= tol,
        "{} reference: {got} vs ggml {}",
        r.dtype,
        r.dot
    );
    for isa in available_isas() {
        let got = (table_for(isa).unwrap().weight::<W>().dot)(&w, &a);
        assert!(
            (got - r.dot).abs() <= tol,
            "{} {isa}: {got} vs ggml {}",
            r.dtype,
            r.dot
        );
    }
}

#[test]
fn dots_match_ggmls_dot() {
    for r in rows() {
        with_weight_block!(r.dtype, W => check_dot::<W>(&r), panic!("{} has no dot", r.dtype));
    }
}

/// The reference and every table's quantizer for `A` against ggml's CPU
/// quantizer on the activation row: the same values within one code step
/// (ggml's SIMD quantizers and ours may round a tie differently).
fn check_activations<A: ActivationBlock>(r: &Row) {
    let ggml = dequantized(&blocks_of::<A>(&r.act.1));
    let mut quantizers = vec![(
        "reference".to_string(),
        A::quantize_ref as fn(&[f32], &mut [A]),
    )];
    for isa in available_isas() {
        quantizers.push((isa.to_string(), table_for(isa).unwrap().quantizer::<A>()));
    }
    for (name, quantize) in quantizers {
        let mut ours = vec![A::zeroed(); r.act_x.len() / A::ELEMS];
        quantize(&r.act_x, &mut ours);
        let ours = dequantized(&ours);
        for (k, ((o, g), x)) in ours
            .chunks(A::ELEMS)
            .zip(ggml.chunks(A::ELEMS))
            .zip(r.act_x.chunks(A::ELEMS))
            .enumerate()
        {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (p, q) in o.iter().zip(g) {
                assert!(
                    (p - q).abs() <= 1.01 * amax / 127.0,
                    "{} {name} block {k}: {p} vs ggml {q}",
                    A::DTYPE
                );
            }
        }
    }
}

#[test]
fn activation_quantizers_match_ggmls() {
    for r in rows() {
        match r.act.0 {
            DType::Q8_0 => check_activations::<crate::quant::q8_0::BlockQ8_0>(&r),
            DType::Q8_1 => check_activations::<crate::quant::q8_1::BlockQ8_1>(&r),
            DType::Q8_K => check_activations::<crate::quant::q8_k::BlockQ8K>(&r),
            other => panic!("{other} is no activation type of the fixture"),
        }
    }
}

fn rms(a: &[f32], b: &[f32]) -> f32 {
    (a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f32>() / a.len() as f32).sqrt()
}

/// Our quantizer against ggml's on the same rows: the same bytes (Rust
/// never fuses float operations, so this holds on every target), except
/// for the simplified k-quant searches, whose error is bounded instead.
#[test]
fn quantizers_match_ggmls() {
    let mut report = Vec::new();
    for r in rows() {
        let mut q = aligned_bytes(r.ggml.len());
        quantize_row(r.dtype, &r.x, q.as_bytes_mut()).unwrap();
        let mut y = vec![0f32; r.x.len()];
        dequantize_row(r.dtype, q.as_bytes(), &mut y).unwrap();
        let (ours, ggml) = (rms(&y, &r.x), rms(&r.dequant, &r.x));
        let same = q.as_bytes() == r.ggml.as_slice();
        report.push(format!(
            "{} rms ours {ours:.5} ggml {ggml:.5} same bytes {same}",
            r.dtype
        ));
        match r.dtype {
            // Q4_K/Q5_K fit each sub-block's (scale, min) by a weighted
            // least-squares search of their own: within 10% of ggml's.
            DType::Q4_K | DType::Q5_K => assert!(
                ours <= 1.1 * ggml,
                "{}: our error {ours} vs ggml's {ggml}",
                r.dtype
            ),
            DType::Q6_K => assert!(
                ours <= 1.3 * ggml,
                "{}: our error {ours} vs ggml's {ggml}",
                r.dtype
            ),
            _ => assert!(same, "{}: our bytes differ from ggml's", r.dtype),
        }
    }
    println!("{}", report.join("\n"));
}
