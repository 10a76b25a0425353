//! penni-engine: a pure-Rust CPU inference engine for penni IR models, dense and
//! PENNI-decomposed.
//!
//! ```no_run
//! use penni_engine::{EngineOptions, Plan};
//! let model = penni_model::zoo::build("resnet20", &Default::default()).unwrap();
//! let mut plan = Plan::new(&model, 1, &EngineOptions::default()).unwrap();
//! let logits = plan.run(&vec![0.0; 3 * 32 * 32]).unwrap();
//! assert_eq!(logits.len(), 10);
//! ```
//!
//! How it works. [`Plan::new`] compiles the graph once per batch size:
//! - batchnorm is folded into the preceding convolution (for a decomposed convolution the
//!   per-channel scale multiplies the coefficient rows and the shift becomes a bias); ReLU/Clip
//!   chains become one clamp in the producer's epilogue; a residual add whose operand comes from
//!   a convolution is added in that convolution's epilogue, before the activation;
//! - two backends, chosen per model and batch by which computes fewer wasted lanes (weighted by
//!   the kernels' measured speeds). Wide dense models use a channel-blocked layout (16
//!   channels per pixel vector, one AVX-512 register, zero borders sized for the consumers'
//!   padding) and an implicit-GEMM convolution with a register tile and K-blocking chosen per
//!   layer (1x1 convolutions are a plain GEMM on the activations, no im2col). Mostly-decomposed
//!   (PENNI) models and narrow ones (Tucker-2 factors of a few channels) use planar NCHW maps
//!   and kernels vectorised over 16 pixels: the basis stage
//!   reads shifted pixel vectors of one channel with per-tap lane masks (no padding), the
//!   combination is a CSR sparse matrix times pixel rows, nothing is transposed and dead
//!   channels and bases cost nothing; a Tucker-2 convolution (1x1 -> k x k -> 1x1) is one step
//!   whose intermediate maps stay in per-thread scratch;
//! - decomposed convolutions run in one of four dataflows picked per layer, see [`Strategy`];
//! - a large batch runs as micro-batches (the whole network on a few images at a time) so that
//!   activations stay in cache, unless the weights are the bigger stream;
//! - every buffer and kernel scratch is placed in one arena by liveness;
//! - work is split into tasks over a spinning thread pool (steps of a few microseconds stay on
//!   one thread); each output value is computed in a fixed order, so results do not depend on
//!   the thread count.
//!
//! Kernels are compiled for AVX-512 and for a portable fallback, chosen at run time.

// Kernels index fixed-size register tiles with constant-bound loops on purpose (that is what
// keeps the accumulators in registers), and kernel entry points take many geometric arguments.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

// What lives where (each module uses only modules earlier in this list; `ops` never uses
// `plan`): error (EngineError), simd (vector types, ISA dispatch), arena (aligned storage,
// liveness placement), thread_pool (the spinning pool), options (public options and report
// types), layout (blocked maps, planar maps, flat vectors), epilogue (clamp, residual count,
// batchnorm folding), step (value ids, the run-time context, the StepOp trait), ops (one
// module per op family: steps, their layouts and kernels), plan (fusion, building,
// scheduling, memory; Plan itself), bench (latency and memory report).
mod arena;
mod bench;
mod epilogue;
mod error;
mod layout;
mod ops;
mod options;
mod plan;
/// The vector abstraction, from penni-simd (shared with penni-train).
mod simd {
    pub use penni_simd::*;
}
mod step;
mod thread_pool;

pub use bench::{BenchReport, bench, peak_rss_bytes, pseudo_random_input};
pub use error::EngineError;
pub use options::{EngineOptions, LayerTiming, Strategy};
pub use plan::Plan;

#[doc(hidden)]
pub mod testing {
    //! Hooks for this crate's own tests: plan with the portable kernels.
    use crate::options::{IntKernels, Knobs};
    use crate::simd::Isa;
    use crate::{EngineError, EngineOptions, Plan};

    /// A plan that runs the portable kernels instead of the detected ISA's.
    pub fn plan_fallback(model: &penni_model::Model, batch: usize, opts: &EngineOptions) -> Result<Plan, EngineError> {
        Plan::with_isa(model, batch, opts, Isa::Fallback)
    }

    /// A plan on a forced backend (planar or channel-blocked) and, for the blocked backend's
    /// basis-first layers, a forced combination orientation (over output channels or pixels).
    pub fn plan_backend(
        model: &penni_model::Model,
        batch: usize,
        opts: &EngineOptions,
        planar: bool,
        blocked_combination: Option<bool>,
    ) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                blocked_combination,
                planar: Some(planar),
                ..Knobs::on(Isa::detect())
            },
        )
    }

    /// A plan on the planar backend whose basis-first combinations are forced packed in row
    /// blocks (true) or kept in CSR (false), on the detected ISA's kernels or the portable ones.
    pub fn plan_packed(
        model: &penni_model::Model,
        batch: usize,
        opts: &EngineOptions,
        packed: bool,
        portable: bool,
    ) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                packed_combination: Some(packed),
                planar: Some(true),
                ..Knobs::on(if portable { Isa::Fallback } else { Isa::detect() })
            },
        )
    }

    /// A plan that runs its batch in micro-batches of `micro` images (a divisor of the batch).
    pub fn plan_micro(model: &penni_model::Model, batch: usize, opts: &EngineOptions, micro: usize) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                micro_batch: Some(micro),
                ..Knobs::on(Isa::detect())
            },
        )
    }

    /// A plan with a forced micro-batch and batch-parallel lanes forced on or off.
    pub fn plan_lanes(
        model: &penni_model::Model,
        batch: usize,
        opts: &EngineOptions,
        micro: usize,
        lanes: bool,
    ) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                micro_batch: Some(micro),
                lanes: Some(lanes),
                ..Knobs::on(Isa::detect())
            },
        )
    }

    /// A plan on a forced backend with the portable kernels, the integer ones included (which
    /// a plan uses only where the CPU has VNNI).
    pub fn plan_int8_portable(model: &penni_model::Model, batch: usize, opts: &EngineOptions, planar: bool) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                planar: Some(planar),
                int8: IntKernels::Always,
                ..Knobs::on(Isa::Fallback)
            },
        )
    }

    /// Like `plan_backend`, with the portable kernels.
    pub fn plan_backend_fallback(
        model: &penni_model::Model,
        batch: usize,
        opts: &EngineOptions,
        planar: bool,
    ) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                planar: Some(planar),
                ..Knobs::on(Isa::Fallback)
            },
        )
    }
}
