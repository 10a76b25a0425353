//! Quantized values in a `.penni` file, losslessly: values that lie, group by group, on a
//! symmetric integer grid (`k * scale`, |k| <= 2^(b-1) - 1, as `penni quantize` writes them)
//! are stored as b-bit integers packed into bytes plus one f32 scale per group, instead of f32.
//! Detection is exact: a tensor is stored this way only if every value decodes to the same
//! number, so nothing that was not quantized changes.

/// The widest grid stored packed; wider quantizations stay f32.
pub const MAX_BITS: u8 = 8;

/// Largest integer of a `bits`-bit symmetric grid.
fn qmax(bits: u8) -> u32 {
    (1u32 << (bits - 1)) - 1
}

/// The scale a group with largest magnitude `m` has on a `bits` grid: the one the quantizer
/// uses ([`canonical_scale`]), recomputed from the stored values.
fn scale_of(m: f32, bits: u8) -> f32 {
    m / qmax(bits) as f32
}

/// The scale for a group whose largest magnitude is `m` on a `bits`-bit grid, chosen so that
/// the quantized group's largest value gives it back (`scale_of(qmax * s) == s`): then the
/// file stores the group losslessly.
pub fn canonical_scale(m: f32, bits: u8) -> f32 {
    let q = qmax(bits) as f32;
    let mut s = m / q;
    for _ in 0..8 {
        let back = scale_of(q * s, bits);
        if back == s {
            break;
        }
        s = back;
    }
    s
}

/// A grid found for some values: bits, a scale per group, and each value's integer offset by
/// qmax (0 ..= 2 qmax).
pub struct Grid {
    pub bits: u8,
    pub scales: Vec<f32>,
    pub codes: Vec<u32>,
}

/// The narrowest grid (2 ..= MAX_BITS bits) on which every value lies exactly, values grouped
/// by `group_of(i)` (< `groups`); None if there is none.
pub fn detect(values: &[f32], groups: usize, group_of: impl Fn(usize) -> usize) -> Option<Grid> {
    if values.is_empty() || groups == 0 {
        return None;
    }
    let mut max = vec![0f32; groups];
    for (i, v) in values.iter().enumerate() {
        if !v.is_finite() {
            return None;
        }
        let g = group_of(i);
        max[g] = max[g].max(v.abs());
    }
    'bits: for bits in 2..=MAX_BITS {
        let q = qmax(bits);
        let scales: Vec<f32> = max.iter().map(|&m| scale_of(m, bits)).collect();
        let mut codes = Vec::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            let s = scales[group_of(i)];
            let k = if v == 0.0 || s == 0.0 { 0.0 } else { (v / s).round_ties_even() };
            if k.abs() > q as f32 || k * s != v {
                continue 'bits;
            }
            codes.push((k as i64 + q as i64) as u32);
        }
        return Some(Grid { bits, scales, codes });
    }
    None
}

/// Bytes of `count` packed `bits`-bit codes.
pub fn packed_len(count: usize, bits: u8) -> Option<usize> {
    count.checked_mul(bits as usize).map(|b| b.div_ceil(8))
}

/// Codes packed LSB first, `bits` each.
pub fn pack(codes: &[u32], bits: u8) -> Vec<u8> {
    let mut out = vec![0u8; packed_len(codes.len(), bits).expect("a tensor's length fits")];
    for (i, &c) in codes.iter().enumerate() {
        for b in 0..bits as usize {
            if c >> b & 1 == 1 {
                let at = i * bits as usize + b;
                out[at / 8] |= 1 << (at % 8);
            }
        }
    }
    out
}

/// The values of `count` packed codes with their groups' scales; None when a code is outside
/// the grid (a corrupt file). The caller has checked `bytes.len() == packed_len(count, bits)`.
pub fn unpack(bytes: &[u8], count: usize, bits: u8, scales: &[f32], group_of: impl Fn(usize) -> usize) -> Option<Vec<f32>> {
    let q = qmax(bits);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = 0u32;
        for b in 0..bits as usize {
            let at = i * bits as usize + b;
            c |= ((bytes[at / 8] >> (at % 8) & 1) as u32) << b;
        }
        if c > 2 * q {
            return None;
        }
        let k = c as i64 - q as i64;
        out.push(if k == 0 { 0.0 } else { k as f32 * scales[group_of(i)] });
    }
    Some(out)
}

/// A weight as ONNX's `DequantizeLinear(int8, scale per output channel)` spells it: the
/// integers and one scale per channel (`channels` equal runs), when every run lies on a
/// symmetric grid of at most 8 bits; a run of zeros gets scale 1. None otherwise.
pub fn int8_channels(values: &[f32], channels: usize) -> Option<(Vec<f32>, Vec<i8>)> {
    if channels == 0 || !values.len().is_multiple_of(channels) {
        return None;
    }
    let run = values.len() / channels;
    let g = detect(values, channels, |i| i / run)?;
    let q = qmax(g.bits) as i64;
    let ints = g.codes.iter().map(|&c| (c as i64 - q) as i8).collect();
    let scales = g.scales.iter().map(|&s| if s > 0.0 { s } else { 1.0 }).collect();
    Some((scales, ints))
}

/// The factor from the integer sum of a conv or linear layer's output channel to its output:
/// input scale x weight scale x the scale of a batchnorm folded into it, in f64, rounded once.
pub fn int_output_factor(input_scale: f32, weight_scale: f32, bn_scale: f64) -> f32 {
    (input_scale as f64 * weight_scale as f64 * bn_scale) as f32
}

/// The factor from the integer sum of a basis map (input codes x basis codes) to its code on
/// the basis maps' grid, before rounding: input scale x basis scale / map scale, in f64,
/// rounded once.
pub fn basis_map_factor(input_scale: f32, basis_scale: f32, map_scale: f32) -> f32 {
    (input_scale as f64 * basis_scale as f64 / map_scale as f64) as f32
}

/// The scale of a bias on the integer grid of an integer conv or linear layer: input scale
/// times the output channel's weight scale, as ONNX QDQ writes int32 biases.
pub fn bias_scales(input_scale: f32, weight_scales: &[f32]) -> Vec<f32> {
    weight_scales.iter().map(|&w| input_scale * w).collect()
}

/// `bias` rounded onto its int32 grid (ties to even); values too large for int32 stay.
pub fn round_bias(bias: &mut [f32], scales: &[f32]) {
    for (b, &s) in bias.iter_mut().zip(scales) {
        let k = (*b / s).round_ties_even();
        if k.abs() < i32::MAX as f32 {
            *b = k * s;
        }
    }
}

/// The int32 integers of a bias that lies exactly on its grid ([`round_bias`]); None otherwise.
pub fn int32_bias(bias: &[f32], scales: &[f32]) -> Option<Vec<i32>> {
    bias.iter()
        .zip(scales)
        .map(|(&b, &s)| {
            let k = (b / s).round_ties_even();
            (k.abs() < i32::MAX as f32 && k * s == b).then_some(k as i32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_values_are_found_packed_and_given_back_exactly() {
        let mut rng = crate::zoo::InitRng::new(3);
        for bits in 2..=MAX_BITS {
            let groups = 5;
            let per = 37;
            let mut values = Vec::new();
            for _ in 0..groups {
                let raw: Vec<f32> = (0..per).map(|_| rng.normal() * 3.0).collect();
                let m = raw.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = canonical_scale(m, bits);
                let q = qmax(bits) as f32;
                values.extend(raw.iter().map(|v| (v / s).round_ties_even().clamp(-q, q) * s));
            }
            let g = detect(&values, groups, |i| i / per).expect("on a grid");
            assert!(g.bits <= bits, "{bits} bits found as {}", g.bits);
            let bytes = pack(&g.codes, g.bits);
            assert_eq!(bytes.len(), packed_len(values.len(), g.bits).unwrap());
            let back = unpack(&bytes, values.len(), g.bits, &g.scales, |i| i / per).unwrap();
            assert_eq!(back, values, "{bits} bits");
        }
        // values off any grid stay f32
        let raw: Vec<f32> = (0..100).map(|_| rng.normal()).collect();
        assert!(detect(&raw, 1, |_| 0).is_none());
    }
}
