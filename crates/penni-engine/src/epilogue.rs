//! What every producing step applies to its outputs: the folded batchnorm (a per-channel
//! affine map baked into weights and bias), residual adds and a clamp ([`Act`]).

use penni_model::batchnorm::Affine;

use crate::error::EngineError;
use crate::simd::Simd;

/// Most residual inputs an epilogue adds.
pub(crate) const MAX_RES: usize = 3;

/// An activation applied in an epilogue: none, or a clamp to [lo, hi] (ReLU is [0, inf)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    None,
    Clip { lo: f32, hi: f32 },
}

impl Act {
    /// This activation followed by a clamp to [lo, hi]: still a single clamp.
    pub fn then(self, lo: f32, hi: f32) -> Act {
        match self {
            Act::None => Act::Clip { lo, hi },
            Act::Clip { lo: a, hi: b } => Act::Clip {
                lo: a.max(lo).min(hi),
                hi: b.max(lo).min(hi),
            },
        }
    }
}

/// The activation as vectors, ready for an epilogue.
#[derive(Clone, Copy)]
pub(crate) struct ActV<S: Simd> {
    clip: bool,
    lo: S::V,
    hi: S::V,
}

impl<S: Simd> ActV<S> {
    #[inline(always)]
    pub unsafe fn new(a: Act) -> Self {
        unsafe {
            match a {
                Act::None => ActV {
                    clip: false,
                    lo: S::zero(),
                    hi: S::zero(),
                },
                Act::Clip { lo, hi } => ActV {
                    clip: true,
                    lo: S::splat(lo),
                    hi: S::splat(hi),
                },
            }
        }
    }
    #[inline(always)]
    pub unsafe fn apply(&self, v: S::V) -> S::V {
        unsafe { if self.clip { S::min(S::max(v, self.lo), self.hi) } else { v } }
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
    (b.map_or(0.0, |b| b[n] as f64) * f.scale[n] + f.shift[n]) as f32
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
