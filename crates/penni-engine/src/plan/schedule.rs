//! When and where things run: how a batch is cut into micro-batches and whether threads run
//! separate micro-batches (lanes), and where every buffer lives in the arena (liveness).

use std::collections::HashMap;

use penni_model::{Model, Shape};

use super::build::{Builder, Built};
use super::core::Core;
use crate::arena::{AVec, Interval, place};
use crate::error::EngineError;
use crate::layout::Lay;
use crate::options::{Knobs, Strategy};
use crate::step::ValId;

/// Most bytes of activation memory a plan may allocate (a guard against absurd shapes).
const MAX_ARENA_BYTES: u128 = 1 << 40;

/// Activation bytes a micro-batch aims to keep per step (the L2 cache of these machines).
const MICRO_BATCH_BYTES: usize = 2 << 20;

/// Above this many bytes of weights, a batch runs whole: streaming the weights once per
/// micro-batch would cost more than the activations that fall out of cache.
const MICRO_BATCH_MAX_WEIGHTS: usize = 8 << 20;

/// How a plan runs its batch.
pub(super) struct Batching {
    /// Images per micro-batch (a divisor of the batch).
    pub micro: usize,
    /// Threads run separate micro-batches, each through its own copy of the network.
    pub lanes: bool,
}

/// Micro-batch and lanes for `batch` images on `threads` threads, from the weight size and the
/// largest per-image activation footprint of one step (forced by `knobs` in tests).
pub(super) fn batching(batch: usize, threads: usize, weight_bytes: usize, bytes_per_image: usize, knobs: &Knobs) -> Batching {
    let small_weights = weight_bytes <= MICRO_BATCH_MAX_WEIGHTS;
    let fit = (MICRO_BATCH_BYTES / bytes_per_image.max(1)).max(1);
    // the largest divisor of the batch up to `cap`
    let divisor = |cap: usize| (1..=batch.min(cap)).rev().find(|&m| batch.is_multiple_of(m)).unwrap_or(1);
    // Batch-parallel when every thread gets whole micro-batches (and the weights, which each
    // thread then streams on its own, are small): no thread ever waits for another inside a
    // layer, and each keeps its activations in its own core's cache.
    let lane_micro = divisor(fit.min(batch / threads.max(1)).max(1));
    let lane_chunks = batch / lane_micro;
    let lanes_auto =
        small_weights && threads > 1 && batch >= threads && (lane_chunks.is_multiple_of(threads) || lane_chunks >= 4 * threads);
    let lanes_wanted = knobs.lanes.unwrap_or(lanes_auto);
    // micro-batch: the largest divisor of the batch whose activations fit the budget
    let micro = match knobs.micro_batch {
        Some(m) if m >= 1 && batch.is_multiple_of(m) => m,
        _ if lanes_wanted => lane_micro,
        _ if !small_weights => batch,
        _ => divisor(fit),
    };
    let chunks = batch / micro;
    Batching {
        micro,
        lanes: lanes_wanted && threads > 1 && chunks > 1,
    }
}

/// The steps of `batch` images, with every buffer placed in one arena by liveness.
pub(super) fn build_core(
    model: &Model,
    shapes: &HashMap<String, Shape>,
    batch: usize,
    threads: usize,
    strategy: Strategy,
    knobs: Knobs,
) -> Result<Core, EngineError> {
    let Built { steps, mut vals, out_val } = Builder::new(model, shapes, batch, threads, strategy, knobs)?.build()?;

    // liveness: a buffer lives from its first writer to its last reader
    let n_steps = steps.len();
    let mut first = vec![usize::MAX; vals.len()];
    let mut last = vec![0usize; vals.len()];
    for (s, step) in steps.iter().enumerate() {
        for &v in step.writes.iter().chain(&step.reads) {
            first[v] = first[v].min(s);
            last[v] = last[v].max(s);
        }
    }
    last[out_val] = n_steps;
    let used: Vec<ValId> = (0..vals.len()).filter(|&v| first[v] != usize::MAX).collect();
    let intervals: Vec<Interval> = used
        .iter()
        .map(|&v| Interval {
            size: vals[v].size,
            first: first[v],
            last: last[v],
        })
        .collect();
    let (offsets, total) = place(&intervals);
    for (i, &v) in used.iter().enumerate() {
        vals[v].off = offsets[i];
    }
    let total_bytes = total as u128 * 4;
    if total_bytes > MAX_ARENA_BYTES {
        return Err(EngineError::TooLarge(total_bytes));
    }
    let out_len = match vals[out_val].lay {
        Lay::Flat { len } => len,
        _ => return Err(EngineError::Internal("the output buffer is not flat".into())),
    };
    let arena = AVec::zeros(total.max(16));
    Ok(Core {
        batch,
        out_val,
        out_len,
        steps,
        vals,
        arena,
    })
}
