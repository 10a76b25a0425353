//! Static activation quantization: the tensors that an integer engine would read as integers
//! (every input of a convolution, a linear layer or a residual add) get a per-tensor
//! quantize-dequantize node (`Activation::QuantizeDequantize`, ONNX's QuantizeLinear ->
//! DequantizeLinear) whose range comes from running the model on calibration images.
//!
//! Activations are unsigned and asymmetric (qmin 0, qmax 2^bits - 1, a zero point), as
//! onnxruntime's static quantization writes them: after ReLU the range starts at 0 and all the
//! levels are used; a signed map (a residual branch before its add) gets a zero point inside.
//! The range always holds 0, so zero padding stays exact. Three ways to choose it from what
//! calibration saw:
//! - `min_max`: the smallest and largest values;
//! - `percentile`: the `percentile`-th and (100 - `percentile`)-th percentiles (outliers clip);
//! - `mse`: the range [min, max] shrunk by the factor in 1, 0.95, ..., 0.3 with the least mean
//!   squared quantization error over the sampled values.
//!
//! The basis maps between a PENNI layer's two stages (`DecomposedConv2d::basis_quant`) are
//! signed and get a symmetric grid (zero point 0, the signed integers -2^(bits-1)..2^(bits-1)-1,
//! the largest magnitude at 2^(bits-1) - 1), chosen the same three ways from the maps'
//! absolute values.

use std::collections::{BTreeMap, HashSet};

use penni_model::reference::{Activation as Batch, basis_maps, forward_all};
use penni_model::{Activation, Model, Node, Op};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};

/// How a tensor's range is chosen from its calibration values (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    #[default]
    MinMax,
    Percentile,
    Mse,
}

impl std::str::FromStr for Calibration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "min_max" | "minmax" => Ok(Calibration::MinMax),
            "percentile" => Ok(Calibration::Percentile),
            "mse" => Ok(Calibration::Mse),
            _ => Err(format!("unknown calibration '{s}': use min_max, percentile or mse")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationOptions {
    /// Bits per activation value, 2..=8.
    pub bits: u8,
    pub method: Calibration,
    /// For `Calibration::Percentile`: the upper percentile kept, in (50, 100].
    pub percentile: f64,
    /// Bits per basis-map value of the PENNI layers (signed, symmetric), 0 (f32) or 2..=8.
    pub basis_bits: u8,
}

/// One quantized tensor, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationRange {
    pub tensor: String,
    /// What calibration saw.
    pub min: f32,
    pub max: f32,
    /// The range chosen, and its quantization.
    pub low: f32,
    pub high: f32,
    pub scale: f32,
    pub zero_point: i32,
    /// Fraction of the sampled values outside the chosen range (clipped).
    pub clipped: f64,
}

/// Values kept per tensor and batch for the percentile and MSE choices.
const SAMPLES_PER_BATCH: usize = 1 << 14;

/// The tensors an integer engine would read as integers: inputs of convolutions, linear layers
/// and adds, not already quantized, in model order (the model input first).
pub fn quantizable_tensors(model: &Model) -> Vec<String> {
    let reads_integers = |n: &Node| matches!(n.op, Op::Conv2d(_) | Op::DecomposedConv2d(_) | Op::Linear { .. } | Op::Add);
    let already: HashSet<&str> = model
        .nodes
        .iter()
        .filter(|n| is_quantizer(n))
        .flat_map(|n| [n.output.as_str(), n.inputs[0].as_str()])
        .collect();
    let mut seen = HashSet::new();
    std::iter::once(model.input.name.as_str())
        .chain(model.nodes.iter().map(|n| n.output.as_str()))
        .filter(|t| !already.contains(t))
        .filter(|t| model.nodes.iter().any(|n| reads_integers(n) && n.inputs.iter().any(|i| i == t)))
        .filter(|t| seen.insert(*t))
        .map(str::to_string)
        .collect()
}

fn is_quantizer(n: &Node) -> bool {
    matches!(n.op, Op::Activation(Activation::QuantizeDequantize { .. }))
}

/// Per tensor: min, max and a strided sample of the values.
#[derive(Default)]
struct Stats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

/// `model` with a quantize-dequantize node on every tensor of [`quantizable_tensors`] (unless
/// `opts.bits` is 0) and a grid on the basis maps of every PENNI layer (unless
/// `opts.basis_bits` is 0), ranges from running `batches` through the reference forward pass.
pub fn calibrate_activations(model: &Model, batches: &[Batch], opts: &CalibrationOptions) -> Result<(Model, Vec<ActivationRange>)> {
    model.validate()?;
    if opts.bits == 1 || opts.bits > 8 {
        return Err(CompressError::Invalid(format!(
            "activation bits must be 0 (f32) or 2..=8, got {}",
            opts.bits
        )));
    }
    if opts.method == Calibration::Percentile && !(opts.percentile > 50.0 && opts.percentile <= 100.0) {
        return Err(CompressError::Invalid(format!(
            "the calibration percentile must be in (50, 100], got {}",
            opts.percentile
        )));
    }
    if opts.basis_bits == 1 || opts.basis_bits > 8 {
        return Err(CompressError::Invalid(format!(
            "basis-map bits must be 0 (f32) or 2..=8, got {}",
            opts.basis_bits
        )));
    }
    if batches.iter().all(|b| b.n == 0) {
        return Err(CompressError::Invalid("calibration needs at least one image".into()));
    }
    let tensors = if opts.bits == 0 { vec![] } else { quantizable_tensors(model) };
    let mut stats: BTreeMap<&str, Stats> = tensors.iter().map(|t| (t.as_str(), Stats::default())).collect();
    // PENNI layers whose basis maps get a grid, by node index
    let layers: Vec<usize> = if opts.basis_bits == 0 {
        vec![]
    } else {
        (0..model.nodes.len())
            .filter(|&i| matches!(&model.nodes[i].op, Op::DecomposedConv2d(dc) if dc.basis_quant.is_none()))
            .collect()
    };
    let mut map_stats: Vec<Stats> = layers.iter().map(|_| Stats::default()).collect();
    for batch in batches.iter().filter(|b| b.n > 0) {
        let all = forward_all(model, batch)?;
        for (t, s) in stats.iter_mut() {
            s.record(t, &all[*t].data)?;
        }
        for (&i, s) in layers.iter().zip(&mut map_stats) {
            let node = &model.nodes[i];
            let maps = basis_maps(node, &all[node.inputs[0].as_str()])?;
            s.record(&format!("{}.basis_maps", node.output), &maps.data)?;
        }
    }
    let qmax = (1i32 << opts.bits) - 1;
    let mut ranges = Vec::new();
    let mut out = model.clone();
    for t in &tensors {
        let s = stats.get_mut(t.as_str()).expect("one entry per tensor");
        let (low, high) = choose_range(s, opts, qmax);
        let (scale, zero_point) = affine_params(low, high, qmax);
        let q = Activation::QuantizeDequantize {
            scale,
            zero_point,
            qmin: 0,
            qmax,
        };
        let clipped = s.samples.iter().filter(|&&x| x < low || x > high).count() as f64 / s.samples.len().max(1) as f64;
        ranges.push(ActivationRange {
            tensor: t.clone(),
            min: s.min,
            max: s.max,
            low,
            high,
            scale,
            zero_point,
            clipped,
        });
        insert_quantizer(&mut out, t, q);
    }
    let qmax = (1i32 << opts.basis_bits.saturating_sub(1)) - 1;
    for (&i, s) in layers.iter().zip(&mut map_stats) {
        let scale = symmetric_scale(s, opts, qmax);
        let node = &model.nodes[i];
        let clipped = s
            .samples
            .iter()
            .filter(|&&x| x > scale * qmax as f32 || x < -scale * (qmax + 1) as f32)
            .count() as f64
            / s.samples.len().max(1) as f64;
        ranges.push(ActivationRange {
            tensor: format!("{}.basis_maps", node.output),
            min: s.min,
            max: s.max,
            low: -scale * (qmax + 1) as f32,
            high: scale * qmax as f32,
            scale,
            zero_point: 0,
            clipped,
        });
        let name = node.name.clone();
        if let Some(Op::DecomposedConv2d(dc)) = out.node_mut(&name).map(|n| &mut n.op) {
            dc.basis_quant = Some(symmetric_grid(scale, qmax));
        }
    }
    out.validate()?;
    Ok((out, ranges))
}

impl Stats {
    /// Adds the values `v` of tensor `t` seen on one calibration batch.
    fn record(&mut self, t: &str, v: &[f32]) -> Result<()> {
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(CompressError::Invalid(format!(
                "tensor '{t}' holds {bad} on a calibration image: the model overflows"
            )));
        }
        let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        if self.samples.is_empty() {
            (self.min, self.max) = (lo, hi);
        } else {
            (self.min, self.max) = (self.min.min(lo), self.max.max(hi));
        }
        let stride = v.len().div_ceil(SAMPLES_PER_BATCH).max(1);
        self.samples.extend(v.iter().step_by(stride));
        Ok(())
    }
}

/// The signed grid of step `scale` around 0, -qmax - 1..=qmax (the whole range of the signed
/// integers, as ONNX's int8 holds it; the scale puts the largest magnitude at qmax).
fn symmetric_grid(scale: f32, qmax: i32) -> Activation {
    Activation::QuantizeDequantize {
        scale,
        zero_point: 0,
        qmin: -qmax - 1,
        qmax,
    }
}

/// The step of the symmetric grid that `opts.method` chooses for values seen in `s`.
fn symmetric_scale(s: &mut Stats, opts: &CalibrationOptions, qmax: i32) -> f32 {
    let amax = s.min.abs().max(s.max.abs());
    let magnitude = match opts.method {
        Calibration::MinMax => amax,
        Calibration::Percentile => {
            let mut a: Vec<f32> = s.samples.iter().map(|x| x.abs()).collect();
            a.sort_by(f32::total_cmp);
            a.get(((opts.percentile / 100.0) * a.len().saturating_sub(1) as f64).round() as usize)
                .copied()
                .unwrap_or(amax)
        }
        Calibration::Mse => {
            let err = |f: f32| {
                let q = symmetric_grid((amax * f / qmax as f32).max(f32::MIN_POSITIVE), qmax);
                s.samples.iter().map(|&x| ((x - q.apply(x)) as f64).powi(2)).sum::<f64>()
            };
            let best = (0..=14)
                .map(|i| 1.0 - 0.05 * i as f32)
                .map(|f| (f, err(f)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(1.0, |(f, _)| f);
            amax * best
        }
    };
    // a map of zeros: any step represents it
    if magnitude > f32::MIN_POSITIVE * qmax as f32 {
        magnitude / qmax as f32
    } else {
        1.0
    }
}

/// The range [low, high] (holding 0) that `opts.method` chooses.
fn choose_range(s: &mut Stats, opts: &CalibrationOptions, qmax: i32) -> (f32, f32) {
    let widen = |lo: f32, hi: f32| (lo.min(0.0), hi.max(0.0));
    match opts.method {
        Calibration::MinMax => widen(s.min, s.max),
        Calibration::Percentile => {
            s.samples.sort_by(f32::total_cmp);
            let at = |p: f64| s.samples[((p / 100.0) * (s.samples.len() - 1) as f64).round() as usize];
            widen(at(100.0 - opts.percentile), at(opts.percentile))
        }
        Calibration::Mse => {
            let (lo, hi) = widen(s.min, s.max);
            let err = |f: f32| {
                let (scale, zp) = affine_params(lo * f, hi * f, qmax);
                let q = Activation::QuantizeDequantize {
                    scale,
                    zero_point: zp,
                    qmin: 0,
                    qmax,
                };
                s.samples.iter().map(|&x| ((x - q.apply(x)) as f64).powi(2)).sum::<f64>()
            };
            let best = (0..=14)
                .map(|i| 1.0 - 0.05 * i as f32)
                .map(|f| (f, err(f)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(1.0, |(f, _)| f);
            (lo * best, hi * best)
        }
    }
}

/// Scale and zero point that map [low, high] (low <= 0 <= high) onto 0..=qmax.
fn affine_params(low: f32, high: f32, qmax: i32) -> (f32, i32) {
    let span = high - low;
    if span.is_nan() || span <= f32::MIN_POSITIVE {
        // a constant zero map: any scale represents it
        return (1.0, 0);
    }
    let scale = span / qmax as f32;
    let zero_point = ((-low / scale).round() as i32).clamp(0, qmax);
    (scale, zero_point)
}

/// Puts `q` on tensor `t`: a new node right after `t`'s producer, read by all of `t`'s readers.
fn insert_quantizer(model: &mut Model, t: &str, q: Activation) {
    let name = model.unused_name(&format!("{t}:quantize"));
    let output = model.unused_name(&format!("{t}:quantized"));
    for n in &mut model.nodes {
        for i in n.inputs.iter_mut().filter(|i| *i == t) {
            *i = output.clone();
        }
    }
    if model.output == t {
        model.output = output.clone();
    }
    let at = model.producer(t).map_or(0, |p| p + 1);
    model.nodes.insert(
        at,
        Node {
            name,
            op: Op::Activation(q),
            inputs: vec![t.to_string()],
            output,
            params: BTreeMap::new(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qdq(scale: f32, zero_point: i32, qmax: i32) -> Activation {
        Activation::QuantizeDequantize {
            scale,
            zero_point,
            qmin: 0,
            qmax,
        }
    }

    #[test]
    fn the_range_holds_zero_and_maps_onto_all_levels() {
        let (s, z) = affine_params(0.0, 2.55, 255);
        assert_eq!(z, 0);
        assert!((s - 0.01).abs() < 1e-7);
        let (s, z) = affine_params(-1.0, 3.0, 255);
        assert_eq!(z, 64);
        let q = qdq(s, z, 255);
        assert_eq!(q.apply(0.0), 0.0);
        assert!((q.apply(3.0) - 3.0).abs() <= s);
        assert!((q.apply(-1.0) + 1.0).abs() <= s);
        // beyond the range: clipped
        assert!((q.apply(10.0) - (255 - z) as f32 * s).abs() < 1e-5);
        assert_eq!(affine_params(0.0, 0.0, 255), (1.0, 0));
    }

    #[test]
    fn quantize_dequantize_rounds_half_to_even_as_onnx() {
        let q = qdq(1.0, 0, 255);
        assert_eq!(q.apply(2.5), 2.0);
        assert_eq!(q.apply(3.5), 4.0);
        assert_eq!(q.apply(-0.5), 0.0);
        assert_eq!(q.apply(300.0), 255.0);
    }

    #[test]
    fn percentile_and_mse_clip_outliers_min_max_does_not() {
        let mut samples: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        samples.push(50.0);
        let stats = || Stats {
            min: 0.0,
            max: 50.0,
            samples: samples.clone(),
        };
        let opts = |method| CalibrationOptions {
            bits: 8,
            method,
            percentile: 99.9,
            basis_bits: 8,
        };
        assert_eq!(choose_range(&mut stats(), &opts(Calibration::MinMax), 255), (0.0, 50.0));
        let (_, hi) = choose_range(&mut stats(), &opts(Calibration::Percentile), 255);
        assert!(hi < 1.0, "{hi}");
        // least squared error: at 8 bits the grid is fine enough that clipping the outlier
        // costs more than it saves; at 4 bits (16 levels) the grid error dominates, and it clips
        let (_, hi) = choose_range(&mut stats(), &opts(Calibration::Mse), 255);
        assert_eq!(hi, 50.0);
        let (_, hi) = choose_range(&mut stats(), &opts(Calibration::Mse), 15);
        assert!(hi < 50.0, "{hi}");
    }
}
