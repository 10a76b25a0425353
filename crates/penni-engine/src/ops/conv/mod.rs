//! Dense convolution, on both layouts: `blocked` (implicit GEMM on channel-blocked maps, tiles
//! chosen in `tiling`) and `planar` (register tiles over pixel vectors, reading input through
//! the masked `planar_access` tables, which the planar decomposed convolution shares), `int8`
//! (the blocked kernel on the integers of a quantized layer, VNNI where the CPU has it),
//! `planar_chain`: a 1x1 -> k x k -> 1x1 (Tucker-2) chain as one planar step, and `phases`: the
//! phase split that lets a narrow stride-2 planar layer load its taps instead of gathering.

pub(crate) mod blocked;
pub(crate) mod int8;
pub(crate) mod phases;
pub(crate) mod planar;
pub(crate) mod planar_access;
pub(crate) mod planar_chain;
pub(crate) mod tiling;

use penni_model::Conv2d;
use penni_model::batchnorm::Affine;

use crate::epilogue::Act;
use crate::error::EngineError;
use crate::layout::{Lay, map_lays};
use crate::ops::conv::planar_access::PoolEpi;
use crate::step::{StepOp, ValId};

/// What the planner hands a convolution-like step: its input, output and residual buffers
/// with their layouts, the activation of its epilogue, the batch and the thread count.
pub(crate) struct ConvIo {
    pub x: ValId,
    pub xl: Lay,
    pub y: ValId,
    pub yl: Lay,
    pub res: Vec<ValId>,
    pub rl: Vec<Lay>,
    pub act: Act,
    /// A max pool the epilogue computes (planar only): `y` is then the pooled map, `yl` the
    /// convolution's own output layout.
    pub pool: Option<PoolEpi>,
    pub batch: usize,
    pub threads: usize,
}

/// The step of a dense convolution with weights `w` (N x C/groups x kh x kw) and bias `b`, the
/// batchnorm `fold` baked in; `note` is appended to its description.
pub(crate) fn dense_step(
    name: &str,
    spec: &Conv2d,
    w: &[f32],
    b: Option<&[f32]>,
    fold: &Affine,
    io: ConvIo,
    note: String,
) -> Result<Box<dyn StepOp>, EngineError> {
    Ok(match (io.xl, io.yl) {
        (Lay::Planar(xl), Lay::Planar(yl)) => Box::new(
            planar::PConv::new(name, spec, w, b, fold, io.x, xl, io.y, yl, io.res, io.act, io.batch, io.threads)?
                .with_note(note)
                .with_pool(io.pool),
        ),
        _ if io.pool.is_some() => return Err(EngineError::Internal(format!("'{name}': a pool epilogue off the planar backend"))),
        (Lay::Map(xl), Lay::Map(yl)) => {
            let rl = map_lays(&io.rl)?;
            Box::new(
                blocked::ConvStep::new(name, spec, w, b, fold, io.x, xl, io.y, yl, io.res, rl, io.act, io.batch, io.threads)?
                    .with_note(note),
            )
        }
        _ => return Err(EngineError::Internal(format!("'{name}' is not a map-to-map convolution"))),
    })
}
