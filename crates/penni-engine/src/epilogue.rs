//! What every producing step applies to its outputs: the folded batchnorm (a per-channel
//! affine map baked into weights and bias), residual adds, a clamp and a quantizer ([`Act`]).

use penni_model::batchnorm::Affine;

use crate::error::EngineError;
use crate::simd::Simd;

/// Most residual inputs an epilogue adds.
pub(crate) const MAX_RES: usize = 3;

/// What an epilogue applies around its residual adds: optionally a quantizer of the step's own
/// result before the adds (a quantized model rounds a conv's output, then adds the shortcut),
/// then none, a clamp to [lo, hi] (ReLU is [0, inf)), or a clamp followed by a per-tensor
/// quantize-dequantize (`Activation::QuantizeDequantize`), so a quantized model's activations
/// are rounded where they are written, not in a pass of their own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Act {
    pre: Option<Quant>,
    post: Post,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Post {
    None,
    Clip { lo: f32, hi: f32 },
    Quant { lo: f32, hi: f32, q: Quant },
}

/// The integer grid of a quantize-dequantize, as floats for the vector epilogue, beside the IR
/// activation it came from (whose `apply` the scalar epilogues call).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quant {
    pub scale: f32,
    pub zero_point: f32,
    pub qmin: f32,
    pub qmax: f32,
    source: penni_model::Activation,
}

impl Quant {
    /// The quantizer of an IR activation, if it is one.
    pub fn of(a: &penni_model::Activation) -> Option<Quant> {
        match *a {
            penni_model::Activation::QuantizeDequantize {
                scale,
                zero_point,
                qmin,
                qmax,
            } => Some(Quant {
                scale,
                zero_point: zero_point as f32,
                qmin: qmin as f32,
                qmax: qmax as f32,
                source: *a,
            }),
            _ => None,
        }
    }
}

impl Act {
    /// Nothing: the identity.
    pub const NONE: Act = Act {
        pre: None,
        post: Post::None,
    };

    /// The quantizer `q` of the step's result before its residual adds.
    pub fn quantize_before_residuals(q: Quant) -> Act {
        Act {
            pre: Some(q),
            post: Post::None,
        }
    }

    /// This activation followed by the quantizer `q`; None after a quantizer already (a clamp
    /// or quantizer after a quantizer is not one epilogue).
    pub fn then_quantize(self, q: Quant) -> Option<Act> {
        let post = match self.post {
            Post::None => Post::Quant {
                lo: f32::NEG_INFINITY,
                hi: f32::INFINITY,
                q,
            },
            Post::Clip { lo, hi } => Post::Quant { lo, hi, q },
            Post::Quant { .. } => return None,
        };
        Some(Act { post, ..self })
    }

    /// Whether a clamp can still follow.
    pub fn ends_with_quantizer(self) -> bool {
        matches!(self.post, Post::Quant { .. })
    }

    /// The activation after the residual adds, of one value (scalar epilogues).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self.post {
            Post::None => x,
            Post::Clip { lo, hi } => x.max(lo).min(hi),
            Post::Quant { lo, hi, q } => q.source.apply(x.max(lo).min(hi)),
        }
    }

    /// This activation followed by a clamp to [lo, hi]: still a single clamp.
    /// Not after a quantizer (see [`Act::ends_with_quantizer`]).
    pub fn then(self, lo: f32, hi: f32) -> Act {
        let post = match self.post {
            Post::None => Post::Clip { lo, hi },
            Post::Clip { lo: a, hi: b } => Post::Clip {
                lo: a.max(lo).min(hi),
                hi: b.max(lo).min(hi),
            },
            Post::Quant { .. } => unreachable!("the fuser ends an epilogue at its quantizer"),
        };
        Act { post, ..self }
    }
}

/// A quantize-dequantize as vectors.
#[derive(Clone, Copy)]
struct QuantV<S: Simd> {
    scale: S::V,
    inv_scale: S::V,
    zero_point: S::V,
    qmin: S::V,
    qmax: S::V,
    neg_zero_point: S::V,
}

impl<S: Simd> QuantV<S> {
    #[inline(always)]
    unsafe fn new(q: Quant) -> Self {
        unsafe {
            QuantV {
                scale: S::splat(q.scale),
                inv_scale: S::splat(1.0 / q.scale),
                zero_point: S::splat(q.zero_point),
                qmin: S::splat(q.qmin),
                qmax: S::splat(q.qmax),
                neg_zero_point: S::splat(-q.zero_point),
            }
        }
    }

    #[inline(always)]
    unsafe fn apply(&self, v: S::V) -> S::V {
        unsafe {
            // x * (1/s) for x / s: a division costs several times an epilogue's other work, and
            // the two round to different integers only within an ulp of a rounding edge, where
            // the summation order of the kernels already decides
            let k = S::add(S::round_even(S::mul(v, self.inv_scale)), self.zero_point);
            let k = S::min(S::max(k, self.qmin), self.qmax);
            // (k - zero point) is an exact integer: one rounding, as in the reference
            S::mul(S::add(k, self.neg_zero_point), self.scale)
        }
    }
}

/// The activation as vectors, ready for an epilogue.
#[derive(Clone, Copy)]
pub(crate) struct ActV<S: Simd> {
    pre: Option<QuantV<S>>,
    clip: bool,
    lo: S::V,
    hi: S::V,
    quant: Option<QuantV<S>>,
}

impl<S: Simd> ActV<S> {
    #[inline(always)]
    pub unsafe fn new(a: Act) -> Self {
        unsafe {
            let (clip, lo, hi, q) = match a.post {
                Post::None => (false, 0.0, 0.0, None),
                Post::Clip { lo, hi } => (true, lo, hi, None),
                Post::Quant { lo, hi, q } => (true, lo, hi, Some(q)),
            };
            ActV {
                pre: a.pre.map(|q| QuantV::new(q)),
                clip,
                lo: S::splat(lo),
                hi: S::splat(hi),
                quant: q.map(|q| QuantV::new(q)),
            }
        }
    }

    /// The quantizer before the residual adds (the identity without one).
    #[inline(always)]
    pub unsafe fn pre(&self, v: S::V) -> S::V {
        unsafe { self.pre.as_ref().map_or(v, |q| q.apply(v)) }
    }

    /// The activation after the residual adds.
    #[inline(always)]
    pub unsafe fn apply(&self, v: S::V) -> S::V {
        unsafe {
            let v = if self.clip { S::min(S::max(v, self.lo), self.hi) } else { v };
            match &self.quant {
                Some(q) => q.apply(v),
                None => v,
            }
        }
    }
}

/// Weight `w` of output channel `n` with the folded batchnorm's scale (in f64, rounded once).
#[inline]
pub(crate) fn fold_weight(f: &Affine, n: usize, w: f32) -> f32 {
    (w as f64 * f.scale[n]) as f32
}

/// Bias of output channel `n` after the folded batchnorm: scale * b + shift.
#[inline]
pub(crate) fn fold_bias(f: &Affine, b: Option<&[f32]>, n: usize) -> f32 {
    f.folded_bias(b, n)
}

/// The epilogue adds at most MAX_RES residual maps: an error naming `node` beyond that.
pub(crate) fn check_residuals(node: &str, count: usize) -> Result<(), EngineError> {
    if count > MAX_RES {
        return Err(EngineError::Unsupported {
            node: node.to_string(),
            message: format!("more than {MAX_RES} residual inputs"),
        });
    }
    Ok(())
}
