//! Decomposed (PENNI) convolution, everything about it in one folder: the coefficient analysis
//! (`analysis`), the cost models and the one strategy rule (`cost`), the CSR type (`csr`) and its packed row blocks (`packed`), and
//! the steps of both backends (`blocked`, `planar`, each with its kernels). A layer whose
//! strategy is `Dense` is rebuilt here and handed to the dense convolution.

pub(crate) mod analysis;
mod blocked;
pub(crate) mod cost;
pub(crate) mod csr;
pub(crate) mod int8;
mod packed;
mod planar;

use penni_model::batchnorm::Affine;
use penni_model::{DecomposedConv2d, Node};

use self::analysis::Coefs;
use self::cost::Choice;
use crate::error::EngineError;
use crate::layout::{Lay, map_lays};
use crate::ops::conv::{self, ConvIo};
use crate::options::Strategy;
use crate::step::StepOp;

/// The step of decomposed convolution `node` run as `choice` says, the batchnorm `fold` baked
/// into its coefficients and bias (`co` is the analysis of the folded coefficients).
pub(crate) fn step(
    node: &Node,
    c: &DecomposedConv2d,
    fold: &Affine,
    co: &Coefs,
    choice: Choice,
    io: ConvIo,
) -> Result<Box<dyn StepOp>, EngineError> {
    if choice.strategy == Strategy::Dense {
        let w = penni_model::reference::decomposed_weight(node)?;
        let b = node.params.get("bias").map(|t| t.data.as_slice());
        return conv::dense_step(&node.name, &c.conv, &w, b, fold, io, format!(" (rebuilt from d{})", c.num_bases));
    }
    Ok(match (io.xl, io.yl) {
        (Lay::Planar(xl), Lay::Planar(yl)) => Box::new(
            planar::PDecomp::new(
                node,
                &c.conv,
                fold,
                co,
                choice.strategy,
                choice.packed,
                io.x,
                xl,
                io.y,
                yl,
                io.res,
                io.act,
                io.batch,
                io.threads,
            )?
            .with_pool(io.pool),
        ),
        _ if io.pool.is_some() => {
            return Err(EngineError::Internal(format!(
                "'{}': a pool epilogue off the planar backend",
                node.name
            )));
        }
        (Lay::Map(xl), Lay::Map(yl)) => {
            let rl = map_lays(&io.rl)?;
            Box::new(blocked::DecompStep::new(
                node, c, fold, co, choice, io.x, xl, io.y, yl, io.res, rl, io.act, io.batch, io.threads,
            )?)
        }
        _ => return Err(EngineError::Internal(format!("'{}' is not a map-to-map convolution", node.name))),
    })
}
