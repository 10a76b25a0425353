//! Weight quantization with hybrid bit widths per part (the first step of ESCALATE's hybrid
//! quantization): the few basis kernels of a PENNI layer are applied to every input channel and
//! pixel, each coefficient once per output, so the two can take different widths; dense k x k
//! convs and the 1x1 / linear weights take their own.
//!
//! Symmetric, per output channel (per basis for bases): scale = max |w| / (2^(b-1) - 1), every
//! value replaced by scale * round(w / scale), ties to even. Zeros stay exactly zero, so pruning
//! survives.
//! The values stay f32 on the integer grid, so every runtime (penni's engine, onnxruntime on the
//! export) computes what an integer kernel with these weights would, up to f32 accumulation.
//! Per-channel symmetric quantization is unchanged by a positive per-channel factor, so folding
//! batchnorm before it would not change the result. Activations are quantized by
//! [`crate::calibrate`], with the widths and the range choice of this section.

use penni_model::{Model, Op};
use serde::{Deserialize, Serialize};

use crate::calibrate::Calibration;
use crate::error::{CompressError, Result};

/// Bit widths per part (0 leaves that part in f32), and the activations' calibration: the
/// `[quantize]` section of a config.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantBits {
    /// PENNI basis kernels.
    pub bases: u8,
    /// PENNI coefficients.
    pub coefficients: u8,
    /// Dense k x k conv weights.
    pub weights: u8,
    /// 1x1 conv and linear weights.
    pub pointwise: u8,
    /// Activations read by convs, linear layers and adds (per tensor, unsigned), 0 or 2..=8.
    pub activations: u8,
    /// The basis maps between a PENNI layer's two stages (per tensor, signed), 0 or 2..=8:
    /// with them (and quantized activations and weights) the whole layer is integer.
    pub basis_maps: u8,
    /// How each activation range is chosen from the calibration images.
    pub calibration: Calibration,
    /// Upper percentile kept by `calibration = "percentile"`.
    pub percentile: f64,
    /// Training images that calibration runs.
    pub calibration_images: usize,
}

impl Default for QuantBits {
    fn default() -> Self {
        Self {
            bases: 8,
            coefficients: 8,
            weights: 8,
            pointwise: 8,
            activations: 8,
            // f32 maps by default: on penni's engine the f32 PENNI kernels outrun the integer
            // ones on these layers (experiments/quantize/README.md)
            basis_maps: 0,
            calibration: Calibration::MinMax,
            percentile: 99.99,
            calibration_images: 512,
        }
    }
}

impl QuantBits {
    pub fn validate(&self) -> Result<()> {
        let bad: Vec<String> = [
            ("bases", self.bases),
            ("coefficients", self.coefficients),
            ("weights", self.weights),
            ("pointwise", self.pointwise),
        ]
        .iter()
        .filter(|(_, b)| *b == 1 || *b > 16)
        .map(|(n, b)| format!("quantize.{n} must be 0 (f32) or 2..=16 bits, got {b}"))
        .collect();
        let mut bad = bad;
        for (name, b) in [("activations", self.activations), ("basis_maps", self.basis_maps)] {
            if b == 1 || b > 8 {
                bad.push(format!("quantize.{name} must be 0 (f32) or 2..=8 bits, got {b}"));
            }
        }
        if !(self.percentile > 50.0 && self.percentile <= 100.0) {
            bad.push(format!("quantize.percentile must be in (50, 100], got {}", self.percentile));
        }
        if (self.activations > 0 || self.basis_maps > 0) && self.calibration_images == 0 {
            bad.push("quantize.calibration_images must be at least 1 when activations or basis maps are quantized".into());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(CompressError::Invalid(bad.join("; ")))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizedTensor {
    pub node: String,
    pub param: String,
    pub bits: u8,
    pub values: usize,
    pub nonzero: usize,
    /// ||w - q|| / ||w||.
    pub relative_error: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantReport {
    pub tensors: Vec<QuantizedTensor>,
    /// Bits to store the quantized tensors' non-zeros and one f32 scale per channel (sparse
    /// indices not counted), and the same tensors' non-zeros in f32.
    pub quantized_bits: u64,
    pub f32_bits: u64,
}

/// Quantizes `values` in place in `groups` equal consecutive runs, each with its own scale.
/// Returns the relative error.
pub fn quantize_groups(values: &mut [f32], groups: usize, bits: u8) -> f64 {
    if bits == 0 || groups == 0 || values.is_empty() {
        return 0.0;
    }
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    let len = values.len().div_ceil(groups);
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for g in values.chunks_mut(len) {
        let m = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        if m == 0.0 {
            continue;
        }
        // the scale the file recomputes from the group's largest value: stored packed, exactly
        let scale = penni_model::grid::canonical_scale(m, bits);
        for v in g.iter_mut() {
            // ties to even, as ONNX QuantizeLinear and the trainer's fake quantization round
            let q = (*v / scale).round_ties_even().clamp(-qmax, qmax) * scale;
            err += ((*v - q) as f64).powi(2);
            norm += (*v as f64).powi(2);
            *v = q;
        }
    }
    if norm > 0.0 { (err / norm).sqrt() } else { 0.0 }
}

/// The model with its weights quantized at `bits` (module docs).
pub fn quantize_weights(model: &Model, bits: &QuantBits) -> Result<(Model, QuantReport)> {
    model.validate()?;
    bits.validate()?;
    let mut out = model.clone();
    let mut report = QuantReport::default();
    for node in &mut out.nodes {
        // (param, bits, groups)
        let parts: Vec<(&str, u8, usize)> = match &node.op {
            Op::Conv2d(c) if c.kernel[0] * c.kernel[1] == 1 => vec![("weight", bits.pointwise, c.out_channels)],
            Op::Conv2d(c) => vec![("weight", bits.weights, c.out_channels)],
            Op::Linear { out_features, .. } => vec![("weight", bits.pointwise, *out_features)],
            Op::DecomposedConv2d(c) => vec![
                ("bases", bits.bases, c.num_bases),
                ("coefficients", bits.coefficients, c.conv.out_channels),
            ],
            _ => continue,
        };
        let name = node.name.clone();
        for (param, b, groups) in parts {
            let t = node.param_mut(param)?;
            let nonzero = t.data.iter().filter(|v| **v != 0.0).count();
            let relative_error = quantize_groups(&mut t.data, groups, b);
            let width = if b == 0 { 32 } else { b as u64 };
            report.quantized_bits += nonzero as u64 * width + if b == 0 { 0 } else { 32 * groups as u64 };
            report.f32_bits += nonzero as u64 * 32;
            report.tensors.push(QuantizedTensor {
                node: name.clone(),
                param: param.into(),
                bits: b,
                values: t.data.len(),
                nonzero,
                relative_error,
            });
        }
    }
    round_biases_to_integer_grid(&mut out);
    out.validate()?;
    Ok((out, report))
}

/// Puts each bias of a conv or linear layer that reads a quantized activation (of a PENNI
/// layer whose combination reads quantized basis maps) and has integer weights (coefficients)
/// on the int32 grid of input scale x weight scale, where an integer engine
/// (onnxruntime's QLinearConv on the QDQ export) adds it: the model then computes what those
/// engines do. The change is at most half a step of that fine grid.
fn round_biases_to_integer_grid(model: &mut Model) {
    let input_scale = model.activation_scales();
    for node in &mut model.nodes {
        // (output channels, the integer layer's input scale, its weight)
        let (channels, s_in, weight) = match &node.op {
            Op::Conv2d(c) => (
                c.out_channels,
                node.inputs.first().and_then(|x| input_scale.get(x)).copied(),
                "weight",
            ),
            Op::Linear { out_features, .. } => (
                *out_features,
                node.inputs.first().and_then(|x| input_scale.get(x)).copied(),
                "weight",
            ),
            // the combination stage reads the quantized basis maps
            Op::DecomposedConv2d(dc) => match dc.basis_quant {
                Some(penni_model::Activation::QuantizeDequantize { scale, .. }) => (dc.conv.out_channels, Some(scale), "coefficients"),
                _ => continue,
            },
            _ => continue,
        };
        let Some(s_in) = s_in else {
            continue;
        };
        let Some((w_scales, _)) = node
            .params
            .get(weight)
            .and_then(|w| penni_model::grid::int8_channels(&w.data, channels))
        else {
            continue;
        };
        if let Some(b) = node.params.get_mut("bias") {
            penni_model::grid::round_bias(&mut b.data, &penni_model::grid::bias_scales(s_in, &w_scales));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_on_the_grid_and_zeros_stay_zero() {
        let mut v = vec![0.5, -0.25, 0.0, 0.1, 1.0, -1.0, 0.0, 0.3];
        let e = quantize_groups(&mut v, 2, 3);
        // group 1: max 0.5, qmax 3 -> grid step 1/6
        let step = 0.5f32 / 3.0;
        for x in &v[..4] {
            assert!(((x / step).round() * step - x).abs() < 1e-6, "{x}");
        }
        assert_eq!(v[2], 0.0);
        assert_eq!(v[6], 0.0);
        assert!(e > 0.0 && e < 0.2, "{e}");
        // 2 bits: ternary {-m, 0, m} per group
        let mut t = vec![0.9, -0.2, 0.6, -1.0];
        quantize_groups(&mut t, 1, 2);
        assert_eq!(t, vec![1.0, 0.0, 1.0, -1.0]);
        // 0 bits: untouched
        let mut u = vec![0.123f32];
        assert_eq!(quantize_groups(&mut u, 1, 0), 0.0);
        assert_eq!(u, vec![0.123]);
    }

    #[test]
    fn more_bits_less_error() {
        let base: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let errs: Vec<f64> = [2u8, 3, 4, 6, 8, 12]
            .iter()
            .map(|b| quantize_groups(&mut base.clone(), 4, *b))
            .collect();
        assert!(errs.windows(2).all(|w| w[1] < w[0]), "{errs:?}");
        assert!(errs[5] < 1e-3);
    }
}
