//! The public option and report types: what a caller chooses ([`EngineOptions`], [`Strategy`])
//! and what [`Plan::profile`](crate::Plan::profile) reports ([`LayerTiming`]); and the internal
//! knobs tests force ([`Knobs`]).

use serde::Serialize;

use crate::simd::Isa;

/// How a decomposed (PENNI) convolution is evaluated (spec section 5). The choice changes the
/// order of floating-point sums, not the result beyond round-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Strategy {
    /// Per layer, the cheapest of basis-first, mix-first and `Dense` by a cost model fitted to
    /// measured kernel times (counting multiply-accumulates, loads and stores); basis-first runs
    /// fused unless the layer has too few tiles to keep every thread busy.
    #[default]
    Auto,
    /// Basis maps of the whole layer first (C*d maps in memory), then the sparse combination.
    BasisFirst,
    /// Sparse mixing at input resolution first (N*d maps), then one small convolution per basis.
    MixFirst,
    /// Basis-first, streamed tile by tile: a tile's basis maps go straight into the combination.
    Fused,
    /// Rebuild the dense kernel w = A B at plan time and run a dense convolution: the cheapest
    /// for layers with very few input channels (an RGB stem), where the basis stage costs more
    /// than the convolution it replaces. `Auto` picks it only where it needs fewer operations.
    Dense,
}

/// Options for [`Plan::new`](crate::Plan::new).
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Worker threads including the caller; 0 = all cores.
    pub threads: usize,
    /// Dataflow for decomposed convolutions.
    pub decomposed_strategy: Strategy,
    /// Run quantized convolutions on the f32 kernels (their quantizers as quantize-dequantize
    /// in the epilogues) instead of the integer ones: for comparisons.
    pub f32_kernels_only: bool,
}

/// Time spent in one planned step (one or more fused IR nodes).
#[derive(Clone, Debug, Serialize)]
pub struct LayerTiming {
    /// The IR nodes the step computes, joined by '+'.
    pub name: String,
    /// What kernel runs, e.g. "conv 3x3 s1 [ob4 3x2]" or "penni 3x3 fused d5 nnz1234".
    pub kind: String,
    pub median_ns: u64,
    /// Multiply-accumulates the step performs for the whole batch (useful ones, not padding).
    pub macs: u64,
}

/// Internal choices that tests force to reach every kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Knobs {
    pub isa: Isa,
    /// Force the combination orientation of basis-first layers (None = by cost).
    pub blocked_combination: Option<bool>,
    /// Force the planar backend's basis-first combination packed in row blocks (true) or CSR
    /// (false) (None = by cost).
    pub packed_combination: Option<bool>,
    /// Force the planar (true) or the channel-blocked (false) backend.
    pub planar: Option<bool>,
    /// Force the micro-batch (a divisor of the batch).
    pub micro_batch: Option<usize>,
    /// Force batch-parallel lanes on or off (None = when every thread gets micro-batches).
    pub lanes: Option<bool>,
    /// Where the quantized convolutions that qualify run on the integer kernels.
    pub int8: IntKernels,
}

impl Knobs {
    /// Every choice by cost on `isa`, the integer kernels where the CPU has VNNI.
    pub fn on(isa: Isa) -> Knobs {
        Knobs {
            isa,
            blocked_combination: None,
            packed_combination: None,
            planar: None,
            micro_batch: None,
            lanes: None,
            int8: IntKernels::Vnni,
        }
    }
}

/// Where quantized convolutions run on the integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntKernels {
    /// Nowhere: f32 kernels throughout.
    Off,
    /// Where the CPU has VNNI; elsewhere the f32 kernels are faster than the portable integer
    /// ones, and give the same result up to f32 round-off.
    Vnni,
    /// Also portably (tests: the same integers on every CPU).
    Always,
}
