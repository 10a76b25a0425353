//! The plan: the model turned, once per batch size, into a list of fused steps over buffers
//! placed in one arena. Building it folds batchnorm into convolutions, fuses residual adds and
//! activations into the producing step's epilogue, picks a kernel variant and (for decomposed
//! convolutions) a dataflow per layer, packs weights, and plans memory by liveness.

use std::collections::HashMap;
use std::time::Instant;

use penni_model::{Conv2d, Model, Node, Op, Shape};
use serde::Serialize;

use crate::arena::{AVec, Interval, place};
use crate::error::EngineError;
use crate::planar::{self, PLay};
use crate::pool::Pool;
use crate::simd::{Isa, L, Simd};
use crate::{conv, decomp, ops};

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

/// Options for [`Plan::new`].
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Worker threads including the caller; 0 = all cores.
    pub threads: usize,
    /// Dataflow for decomposed convolutions.
    pub decomposed_strategy: Strategy,
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

/// An activation applied in an epilogue: none, or a clamp to [lo, hi] (ReLU is [0, inf)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    None,
    Clip { lo: f32, hi: f32 },
}

impl Act {
    /// This activation followed by a clamp to [lo, hi]: still a single clamp.
    fn then(self, lo: f32, hi: f32) -> Act {
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

/// A channel-blocked feature map: per image `cb` blocks of [hs][ws][16] floats (16 channels
/// interleaved per pixel), with a zero border of `pad` = (top, left, bottom, right) pixels so
/// convolutions read their padding without bounds checks. Channels beyond `c` in the last block
/// hold finite values that no consumer uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MapLay {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub pad: [usize; 4],
}

impl MapLay {
    pub fn cb(&self) -> usize {
        self.c.div_ceil(L)
    }
    pub fn hs(&self) -> usize {
        self.h + self.pad[0] + self.pad[2]
    }
    pub fn ws(&self) -> usize {
        self.w + self.pad[1] + self.pad[3]
    }
    /// Floats per channel block.
    pub fn plane(&self) -> usize {
        self.hs() * self.ws() * L
    }
    /// Floats per image.
    pub fn img(&self) -> usize {
        self.cb() * self.plane()
    }
    /// Offset of interior pixel (y, x) within a plane.
    pub fn at(&self, y: usize, x: usize) -> usize {
        ((y + self.pad[0]) * self.ws() + x + self.pad[1]) * L
    }
    fn checked_img(&self) -> Option<usize> {
        self.cb()
            .checked_mul(self.h.checked_add(self.pad[0] + self.pad[2])?)?
            .checked_mul(self.w.checked_add(self.pad[1] + self.pad[3])?)?
            .checked_mul(L)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Lay {
    Map(MapLay),
    /// `len` contiguous values per image (vectors, and maps in plain NCHW order).
    Flat {
        len: usize,
    },
    /// A planar (NCHW) map with a zero border, for the planar backend.
    Planar(PLay),
    /// Step-local working memory, not per image.
    Scratch,
}

pub(crate) type ValId = usize;

#[derive(Clone, Debug)]
pub(crate) struct Val {
    pub lay: Lay,
    pub size: usize,
    pub off: usize,
}

/// What a step computes.
#[allow(clippy::large_enum_variant)]
pub(crate) enum StepOp {
    ToMap(ops::ToMap),
    CopyIn(ops::CopyIn),
    ToFlat(ops::ToFlat),
    Conv(conv::ConvStep),
    Decomp(decomp::DecompStep),
    Pool(ops::PoolStep),
    Gap(ops::GapStep),
    Softmax(ops::SoftmaxStep),
    Concat(ops::ConcatStep),
    Point(ops::PointStep),
    Elt(ops::EltStep),
    Linear(ops::LinearStep),
    ToPlanar(planar::ToPlanar),
    PToFlat(planar::PToFlat),
    PConv(planar::PConv),
    PDecomp(planar::PDecomp),
    PElt(planar::PElt),
    PGap(planar::PGap),
    PPool(planar::PPool),
}

pub(crate) struct Step {
    pub name: String,
    pub kind: String,
    pub macs: u64,
    /// Too little work to be worth waking other threads for.
    pub serial: bool,
    pub op: StepOp,
    pub reads: Vec<ValId>,
    pub writes: Vec<ValId>,
}

/// What every kernel needs at run time: where the arena is and how buffers are laid out.
pub(crate) struct Ctx<'a> {
    pub base: *mut f32,
    pub vals: &'a [Val],
    pub pool: &'a Pool,
    pub isa: Isa,
    pub input: *const f32,
    /// Run the step's tasks on the calling thread only (work too small to share).
    pub serial: bool,
}

// SAFETY: kernels write disjoint parts of the arena from different threads; the plan is only
// run through `&mut Plan`, so nothing else touches the arena meanwhile.
unsafe impl Sync for Ctx<'_> {}

impl Ctx<'_> {
    pub fn ptr(&self, v: ValId) -> *mut f32 {
        // SAFETY: offsets were placed inside the arena.
        unsafe { self.base.add(self.vals[v].off) }
    }
    /// Runs `n` tasks on the pool; a panic inside a kernel (a bug) becomes an error.
    pub fn par(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) -> Result<(), EngineError> {
        let ok = if self.serial {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (0..n).for_each(|i| f(i, 0)))).is_ok()
        } else {
            self.pool.for_each(n, f)
        };
        if ok {
            Ok(())
        } else {
            Err(EngineError::Internal("a kernel panicked".into()))
        }
    }
}

impl Step {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        match &self.op {
            StepOp::ToMap(s) => s.exec(ctx),
            StepOp::CopyIn(s) => s.exec(ctx),
            StepOp::ToFlat(s) => s.exec(ctx),
            StepOp::Conv(s) => s.exec(ctx),
            StepOp::Decomp(s) => s.exec(ctx),
            StepOp::Pool(s) => s.exec(ctx),
            StepOp::Gap(s) => s.exec(ctx),
            StepOp::Softmax(s) => s.exec(ctx),
            StepOp::Concat(s) => s.exec(ctx),
            StepOp::Point(s) => s.exec(ctx),
            StepOp::Elt(s) => s.exec(ctx),
            StepOp::Linear(s) => s.exec(ctx),
            StepOp::ToPlanar(s) => s.exec(ctx),
            StepOp::PToFlat(s) => s.exec(ctx),
            StepOp::PConv(s) => s.exec(ctx),
            StepOp::PDecomp(s) => s.exec(ctx),
            StepOp::PElt(s) => s.exec(ctx),
            StepOp::PGap(s) => s.exec(ctx),
            StepOp::PPool(s) => s.exec(ctx),
        }
    }

    fn weight_bytes(&self) -> usize {
        4 * match &self.op {
            StepOp::Conv(s) => s.weight_floats(),
            StepOp::Decomp(s) => s.weight_floats(),
            StepOp::Elt(s) => s.weight_floats(),
            StepOp::Linear(s) => s.weight_floats(),
            StepOp::PConv(s) => s.weight_floats(),
            StepOp::PDecomp(s) => s.weight_floats(),
            StepOp::PElt(s) => s.weight_floats(),
            _ => 0,
        }
    }
}

/// The steps and arena of one micro-batch.
struct Core {
    batch: usize,
    out_val: ValId,
    out_len: usize,
    steps: Vec<Step>,
    vals: Vec<Val>,
    arena: AVec,
}

impl Core {
    fn ctx<'a>(&'a mut self, pool: &'a Pool, isa: Isa, input: &[f32]) -> Ctx<'a> {
        Ctx {
            base: self.arena.mut_ptr(),
            vals: &self.vals,
            pool,
            isa,
            input: input.as_ptr(),
            serial: false,
        }
    }

    fn output(&self) -> &[f32] {
        let off = self.vals[self.out_val].off;
        &self.arena.as_slice()[off..off + self.batch * self.out_len]
    }

    /// Runs every step; with `timing`, calls `timed(step, ns)` after each.
    fn run<F: FnMut(usize, u64)>(&mut self, pool: &Pool, isa: Isa, input: &[f32], timing: bool, timed: &mut F) -> Result<(), EngineError> {
        let steps = std::mem::take(&mut self.steps);
        let result = (|| {
            let mut ctx = self.ctx(pool, isa, input);
            for (i, s) in steps.iter().enumerate() {
                ctx.serial = s.serial;
                if timing {
                    let t = Instant::now();
                    s.exec(&ctx)?;
                    timed(i, t.elapsed().as_nanos() as u64);
                } else {
                    s.exec(&ctx)?;
                }
            }
            Ok(())
        })();
        self.steps = steps;
        result
    }

    /// Largest number of bytes one step touches per image (its inputs, outputs and scratch).
    fn bytes_per_image(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.reads.iter().chain(&s.writes).map(|&v| self.vals[v].size * 4).sum::<usize>() / self.batch)
            .max()
            .unwrap_or(0)
    }
}

/// A model compiled for one batch size: run it as often as you like; `run` does not allocate.
///
/// A large batch is run as micro-batches, the whole network on a few images at a time, so that
/// activations stay in the L2 cache between layers (unless the weights are the larger stream).
pub struct Plan {
    isa: Isa,
    batch: usize,
    input_len: usize,
    input_shape: Shape,
    output_shape: Shape,
    core: Core,
    /// Batch-parallel mode: one serial copy of the network for each thread but the first
    /// (which runs `core`); empty when the threads share each layer instead.
    lanes: Vec<Core>,
    /// The one-thread pool that lanes run their steps on.
    serial: Pool,
    /// Micro-batches per run (the core's batch times this is the plan's batch).
    chunks: usize,
    /// The whole batch's output when it is computed in several micro-batches.
    out: Vec<f32>,
    pool: Pool,
    weight_bytes: usize,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("batch", &self.batch)
            .field("micro_batch", &self.core.batch)
            .field("threads", &self.pool.threads())
            .field(
                "steps",
                &self
                    .core
                    .steps
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.kind))
                    .collect::<Vec<_>>(),
            )
            .field("arena_peak_bytes", &self.arena_peak_bytes())
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

/// Most bytes of activation memory a plan may allocate (a guard against absurd shapes).
const MAX_ARENA_BYTES: u128 = 1 << 40;

/// Activation bytes a micro-batch aims to keep per step (the L2 cache of these machines).
const MICRO_BATCH_BYTES: usize = 2 << 20;

/// Above this many bytes of weights, a batch runs whole: streaming the weights once per
/// micro-batch would cost more than the activations that fall out of cache.
const MICRO_BATCH_MAX_WEIGHTS: usize = 8 << 20;

fn build_core(
    model: &Model,
    shapes: &HashMap<String, Shape>,
    batch: usize,
    threads: usize,
    strategy: Strategy,
    knobs: Knobs,
) -> Result<Core, EngineError> {
    let mut b = Builder::new(model, shapes, batch, threads, strategy, knobs)?;
    b.build()?;
    let Builder {
        steps, mut vals, out_val, ..
    } = b;

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

impl Plan {
    /// Compiles `model` for `batch` images at a time. Fails with a clear error when the model
    /// is invalid, when an option is out of range or when a layer cannot be planned.
    pub fn new(model: &Model, batch: usize, opts: &EngineOptions) -> Result<Plan, EngineError> {
        Plan::with_isa(model, batch, opts, Isa::detect())
    }

    pub(crate) fn with_isa(model: &Model, batch: usize, opts: &EngineOptions, isa: Isa) -> Result<Plan, EngineError> {
        Plan::with_knobs(
            model,
            batch,
            opts,
            Knobs {
                isa,
                blocked_combination: None,
                planar: None,
                micro_batch: None,
                lanes: None,
            },
        )
    }

    pub(crate) fn with_knobs(model: &Model, batch: usize, opts: &EngineOptions, knobs: Knobs) -> Result<Plan, EngineError> {
        let isa = knobs.isa;
        if batch == 0 {
            return Err(EngineError::Options("batch size must be at least 1".into()));
        }
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        if threads > 1024 {
            return Err(EngineError::Options(format!(
                "{threads} threads is more than this engine supports (1024)"
            )));
        }
        let shapes = model.validate()?;
        // a one-image plan tells the weight and per-image activation sizes (a full-batch one
        // would touch a full-batch arena, which then shows in the process's peak memory)
        let mut core = build_core(model, &shapes, 1, threads, opts.decomposed_strategy, knobs)?;
        let weight_bytes = core.steps.iter().map(Step::weight_bytes).sum();
        let small_weights = weight_bytes <= MICRO_BATCH_MAX_WEIGHTS;
        let fit = (MICRO_BATCH_BYTES / core.bytes_per_image().max(1)).max(1);
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
        let lanes_on = lanes_wanted && threads > 1 && chunks > 1;
        let lane_threads = if lanes_on { 1 } else { threads };
        if micro != 1 || lanes_on {
            core = build_core(model, &shapes, micro, lane_threads, opts.decomposed_strategy, knobs)?;
        }
        let mut lanes = Vec::new();
        if lanes_on {
            for _ in 1..threads {
                lanes.push(build_core(model, &shapes, micro, 1, opts.decomposed_strategy, knobs)?);
            }
        }
        let pool = Pool::new(threads).map_err(|e| EngineError::Threads(e.to_string()))?;
        let serial = Pool::new(1).map_err(|e| EngineError::Threads(e.to_string()))?;
        let out = if chunks > 1 { vec![0.0; batch * core.out_len] } else { Vec::new() };
        Ok(Plan {
            isa,
            batch,
            input_len: model.input_shape().numel(),
            input_shape: model.input_shape(),
            output_shape: shapes[&model.output],
            core,
            lanes,
            serial,
            chunks,
            out,
            pool,
            weight_bytes,
        })
    }

    fn check_input(&self, input: &[f32]) -> Result<(), EngineError> {
        let expected = self.batch * self.input_len;
        if input.len() != expected {
            return Err(EngineError::InputLength {
                got: input.len(),
                expected,
                batch: self.batch,
                shape: self.input_shape.to_string(),
            });
        }
        Ok(())
    }

    fn run_chunks<F: FnMut(usize, u64)>(&mut self, input: &[f32], timing: bool, timed: &mut F) -> Result<(), EngineError> {
        if !self.lanes.is_empty() && !timing {
            return self.run_lanes(input);
        }
        let (per_in, per_out) = (self.core.batch * self.input_len, self.core.batch * self.core.out_len);
        // profiling a batch-parallel plan times its first lane alone, micro-batch after micro-batch
        let pool = if self.lanes.is_empty() { &self.pool } else { &self.serial };
        for k in 0..self.chunks {
            let chunk = &input[k * per_in..(k + 1) * per_in];
            self.core.run(pool, self.isa, chunk, timing, timed)?;
            if self.chunks > 1 {
                self.out[k * per_out..(k + 1) * per_out].copy_from_slice(self.core.output());
            }
        }
        Ok(())
    }

    /// Batch-parallel run: the pool hands out micro-batches, and thread `t` runs them through
    /// its own copy of the network (thread 0 through `core`, thread t > 0 through `lanes[t - 1]`).
    fn run_lanes(&mut self, input: &[f32]) -> Result<(), EngineError> {
        struct Shared(Vec<*mut Core>, *mut f32);
        // SAFETY: see below; the pointers are only used inside the pool job.
        unsafe impl Sync for Shared {}
        impl Shared {
            fn core(&self, tid: usize) -> *mut Core {
                self.0[tid]
            }
            fn out(&self) -> *mut f32 {
                self.1
            }
        }
        let (per_in, per_out) = (self.core.batch * self.input_len, self.core.batch * self.core.out_len);
        let cores: Vec<*mut Core> = std::iter::once(&mut self.core as *mut Core)
            .chain(self.lanes.iter_mut().map(|c| c as *mut Core))
            .collect();
        let shared = Shared(cores, self.out.as_mut_ptr());
        let failure = std::sync::Mutex::new(None);
        let (isa, serial) = (self.isa, &self.serial);
        let ok = self.pool.for_each(self.chunks, &|k, tid| {
            // SAFETY: a pool thread runs one task at a time and thread ids are distinct, so core
            // `tid` is used by this thread alone; micro-batch k owns output rows k*per_out.. only.
            let core = unsafe { &mut *shared.core(tid) };
            match core.run(serial, isa, &input[k * per_in..(k + 1) * per_in], false, &mut |_, _| {}) {
                Ok(()) => unsafe {
                    std::ptr::copy_nonoverlapping(core.output().as_ptr(), shared.out().add(k * per_out), per_out);
                },
                Err(e) => *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e),
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        if !ok {
            return Err(EngineError::Internal("a kernel panicked".into()));
        }
        Ok(())
    }

    fn output(&self) -> &[f32] {
        if self.chunks > 1 { &self.out } else { self.core.output() }
    }

    /// Runs the model on `input` (batch x C x H x W values, NCHW order) and returns the output
    /// (batch x the output shape, NCHW order for a feature map).
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32], EngineError> {
        self.check_input(input)?;
        self.run_chunks(input, false, &mut |_, _| {})?;
        Ok(self.output())
    }

    /// Runs the model `reps` times (at least once) and reports the median time of every step
    /// (summed over the micro-batches of a run).
    pub fn profile(&mut self, input: &[f32], reps: usize) -> Result<Vec<LayerTiming>, EngineError> {
        self.check_input(input)?;
        let reps = reps.max(1);
        let n = self.core.steps.len();
        let mut times = vec![Vec::with_capacity(reps); n];
        for _ in 0..reps {
            let mut run = vec![0u64; n];
            self.run_chunks(input, true, &mut |i, ns| run[i] += ns)?;
            for (t, r) in times.iter_mut().zip(run) {
                t.push(r);
            }
        }
        let chunks = self.chunks as u64;
        Ok(self
            .core
            .steps
            .iter()
            .zip(times)
            .map(|(s, mut t)| {
                t.sort_unstable();
                LayerTiming {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    median_ns: t[t.len() / 2],
                    macs: s.macs * chunks,
                }
            })
            .collect())
    }

    /// Shape of one example's output.
    pub fn output_shape(&self) -> Shape {
        self.output_shape
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Images run through the network together (a divisor of the batch).
    pub fn micro_batch(&self) -> usize {
        self.core.batch
    }

    /// Whether the threads run separate micro-batches (each through its own copy of the
    /// network) rather than sharing every layer.
    pub fn batch_parallel(&self) -> bool {
        !self.lanes.is_empty()
    }

    /// Threads the plan runs on (the caller included).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Size of the activation memory: the arena holding every intermediate buffer and kernel
    /// scratch (placed by liveness, so buffers never live together share memory), plus the
    /// output of the whole batch when it runs in micro-batches.
    pub fn arena_peak_bytes(&self) -> usize {
        (self.core.arena.len() + self.lanes.iter().map(|c| c.arena.len()).sum::<usize>() + self.out.len()) * 4
    }

    /// Bytes of packed weights, biases and sparse coefficient structures the plan holds.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Multiply-accumulates of one run (the whole batch), as the planned kernels count them.
    pub fn macs(&self) -> u64 {
        self.core.steps.iter().map(|s| s.macs).sum::<u64>() * self.chunks as u64
    }

    /// One line per planned step: its nodes and kernel (for `penni inspect`-style output).
    pub fn describe(&self) -> Vec<String> {
        self.core.steps.iter().map(|s| format!("{} : {}", s.name, s.kind)).collect()
    }
}

/// Largest (output vectors x kernel taps) of a layer on the planar backend (about 64 MB of
/// tables); a model with a larger layer runs on the channel-blocked backend.
const PLANAR_MAX_TAPS: u128 = 1 << 22;

/// Steps with fewer multiply-accumulates than this (10 to 20 microseconds) run on one thread:
/// measured on a 2-core VM, handing a step to a second thread costs several microseconds.
const SERIAL_MACS: u64 = 1_000_000;
/// Steps without multiply-accumulates that write fewer floats than this run on one thread.
const SERIAL_FLOATS: usize = 16 * 1024;

/// Internal choices that tests force to reach every kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Knobs {
    pub isa: Isa,
    /// Force the combination orientation of basis-first layers (None = by cost).
    pub blocked_combination: Option<bool>,
    /// Force the planar (true) or the channel-blocked (false) backend.
    pub planar: Option<bool>,
    /// Force the micro-batch (a divisor of the batch).
    pub micro_batch: Option<usize>,
    /// Force batch-parallel lanes on or off (None = when every thread gets micro-batches).
    pub lanes: Option<bool>,
}

/// One step-to-be: IR nodes fused together, anchored at the last of them in node order.
struct Group {
    anchor: usize,
    kind: GKind,
    /// Main input first; for convolutions the residuals follow.
    inputs: Vec<String>,
    output: String,
    act: Act,
    names: Vec<String>,
}

enum GKind {
    /// A dense or decomposed convolution with the batchnorms folded into it.
    Conv {
        node: usize,
        bns: Vec<usize>,
    },
    Add,
    Affine {
        node: usize,
    },
    Act,
    Pool {
        node: usize,
    },
    Gap,
    Flatten,
    Linear {
        node: usize,
    },
    Softmax {
        log: bool,
    },
    Concat,
    Point(ops::PointOp),
}

/// Per-output-channel affine map (scale, shift) of one or more folded batchnorms.
pub(crate) fn bn_fold(nodes: &[&Node], channels: usize) -> Result<(Vec<f64>, Vec<f64>), EngineError> {
    let mut scale = vec![1f64; channels];
    let mut shift = vec![0f64; channels];
    for node in nodes {
        let Op::BatchNorm2d { eps, .. } = node.op else { continue };
        let g = &node.param("weight")?.data;
        let b = &node.param("bias")?.data;
        let m = &node.param("running_mean")?.data;
        let v = &node.param("running_var")?.data;
        for c in 0..channels {
            let s = g[c] as f64 / (v[c] as f64 + eps as f64).sqrt();
            scale[c] *= s;
            shift[c] = (shift[c] - m[c] as f64) * s + b[c] as f64;
        }
    }
    Ok((scale, shift))
}

struct Builder<'m> {
    model: &'m Model,
    shapes: &'m HashMap<String, Shape>,
    batch: usize,
    threads: usize,
    strategy: Strategy,
    knobs: Knobs,
    /// For each tensor, the (node, occurrence count) pairs that read it.
    readers: HashMap<&'m str, usize>,
    steps: Vec<Step>,
    vals: Vec<Val>,
    val_of: HashMap<String, ValId>,
    out_val: ValId,
}

impl<'m> Builder<'m> {
    fn new(
        model: &'m Model,
        shapes: &'m HashMap<String, Shape>,
        batch: usize,
        threads: usize,
        strategy: Strategy,
        knobs: Knobs,
    ) -> Result<Self, EngineError> {
        if let Some(n) = model.nodes.iter().find(|n| matches!(n.op, Op::Pad { .. })) {
            return Err(EngineError::Unsupported {
                node: n.name.clone(),
                message: "a Pad is run only when it is folded into the padding of the convs that read it".into(),
            });
        }
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &model.nodes {
            for i in &n.inputs {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        Ok(Builder {
            model,
            shapes,
            batch,
            threads,
            strategy,
            knobs,
            readers,
            steps: vec![],
            vals: vec![],
            val_of: HashMap::new(),
            out_val: 0,
        })
    }

    /// The node that is the only reader of `t` (read exactly once, and not the model output):
    /// only then can `t` disappear into a fused step.
    fn sole_reader(&self, t: &str) -> Option<usize> {
        if t == self.model.output || self.readers.get(t).copied() != Some(1) {
            return None;
        }
        self.model.nodes.iter().position(|n| n.inputs.iter().any(|i| i == t))
    }

    /// Follows ReLU/Clip nodes that are the sole readers of `t`, composing them into `act`.
    fn absorb_acts(&self, t: &mut String, act: &mut Act, anchor: &mut usize, names: &mut Vec<String>, absorbed: &mut [bool]) {
        while let Some(j) = self.sole_reader(t) {
            let node = &self.model.nodes[j];
            let (lo, hi) = match node.op {
                Op::Relu => (0.0, f32::INFINITY),
                Op::Clip { min, max } => (min, max),
                _ => break,
            };
            if absorbed[j] {
                break;
            }
            *act = act.then(lo, hi);
            absorbed[j] = true;
            *anchor = j;
            names.push(node.name.clone());
            *t = node.output.clone();
        }
    }

    fn groups(&self) -> Vec<Group> {
        let nodes = &self.model.nodes;
        let mut absorbed = vec![false; nodes.len()];
        let mut groups = Vec::new();
        for i in 0..nodes.len() {
            if absorbed[i] {
                continue;
            }
            absorbed[i] = true;
            let node = &nodes[i];
            let mut t = node.output.clone();
            let mut act = Act::None;
            let mut anchor = i;
            let mut names = vec![node.name.clone()];
            let mut inputs = vec![node.inputs[0].clone()];
            let kind = match &node.op {
                Op::Conv2d(_) | Op::DecomposedConv2d(_) => {
                    let mut bns = Vec::new();
                    while let Some(j) = self.sole_reader(&t) {
                        if !matches!(nodes[j].op, Op::BatchNorm2d { .. }) || absorbed[j] {
                            break;
                        }
                        absorbed[j] = true;
                        bns.push(j);
                        anchor = j;
                        names.push(nodes[j].name.clone());
                        t = nodes[j].output.clone();
                    }
                    if let Some(j) = self.sole_reader(&t) {
                        let add = &nodes[j];
                        if matches!(add.op, Op::Add) && !absorbed[j] && add.inputs.len() <= 4 {
                            absorbed[j] = true;
                            anchor = j;
                            names.push(add.name.clone());
                            let mut skipped = false;
                            for x in &add.inputs {
                                if !skipped && *x == t {
                                    skipped = true;
                                } else {
                                    inputs.push(x.clone());
                                }
                            }
                            t = add.output.clone();
                        }
                    }
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Conv { node: i, bns }
                }
                Op::Add => {
                    inputs = node.inputs.clone();
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Add
                }
                Op::BatchNorm2d { .. } => {
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Affine { node: i }
                }
                Op::Relu | Op::Clip { .. } => {
                    let (lo, hi) = match node.op {
                        Op::Clip { min, max } => (min, max),
                        _ => (0.0, f32::INFINITY),
                    };
                    act = Act::None.then(lo, hi);
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Act
                }
                Op::MaxPool2d(_) | Op::AvgPool2d(_) => GKind::Pool { node: i },
                Op::GlobalAvgPool => GKind::Gap,
                Op::Flatten => GKind::Flatten,
                // rejected by Builder::new
                Op::Pad { .. } => continue,
                Op::Softmax { log } => GKind::Softmax { log: *log },
                Op::Concat => {
                    inputs = node.inputs.clone();
                    GKind::Concat
                }
                Op::Activation(a) => GKind::Point(ops::PointOp::Unary(*a)),
                Op::Mul => {
                    inputs = node.inputs.clone();
                    GKind::Point(ops::PointOp::Mul)
                }
                Op::Linear { .. } => {
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Linear { node: i }
                }
            };
            groups.push(Group {
                anchor,
                kind,
                inputs,
                output: t,
                act,
                names,
            });
        }
        groups.sort_by_key(|g| g.anchor);
        groups
    }

    fn new_val(&mut self, lay: Lay, size: usize) -> ValId {
        self.vals.push(Val { lay, size, off: 0 });
        self.vals.len() - 1
    }

    /// A per-image buffer of the given layout for the whole batch.
    fn batch_val(&mut self, lay: Lay) -> Result<ValId, EngineError> {
        let (per, slack) = match lay {
            Lay::Map(m) => (m.checked_img(), 0),
            Lay::Planar(p) => (p.checked_img(), 0),
            Lay::Flat { len } => (Some(len), 0),
            Lay::Scratch => (Some(0), 0),
        };
        let size = per
            .and_then(|p| p.checked_mul(self.batch))
            .and_then(|p| p.checked_add(slack))
            .ok_or(EngineError::TooLarge(u128::MAX))?;
        Ok(self.new_val(lay, size))
    }

    /// Step-local working memory of `floats` floats.
    pub(crate) fn scratch(&mut self, floats: usize) -> ValId {
        self.new_val(Lay::Scratch, floats.max(16))
    }

    fn shape(&self, t: &str) -> Shape {
        self.shapes[t]
    }

    fn push(&mut self, names: &[String], kind: String, macs: u64, op: StepOp, reads: Vec<ValId>, writes: Vec<ValId>) {
        // a step of a few microseconds runs on one thread: handing out its tasks and waiting
        // for the others would cost about as much as it saves
        let floats: usize = writes.iter().map(|&v| self.vals[v].size).sum();
        let serial = if macs > 0 { macs < SERIAL_MACS } else { floats < SERIAL_FLOATS };
        self.steps.push(Step {
            name: names.join("+"),
            kind,
            macs,
            serial,
            op,
            reads,
            writes,
        });
    }

    fn input_val(&self, t: &str, node: &str) -> Result<ValId, EngineError> {
        self.val_of
            .get(t)
            .copied()
            .ok_or_else(|| EngineError::Internal(format!("tensor '{t}' read by '{node}' has no buffer")))
    }

    /// Planar backend when most convolution work is decomposed (a PENNI model), blocked
    /// otherwise. Dense-equivalent MACs of k>1 dense convolutions are compared with those of
    /// decomposed ones.
    fn planar_mode(&self) -> bool {
        let (mut dense, mut dec) = (0u128, 0u128);
        for n in &self.model.nodes {
            let out = match self.shapes.get(&n.output) {
                Some(Shape::Map { h, w, .. }) => (h * w) as u128,
                _ => continue,
            };
            let (spec, decomposed): (Conv2d, bool) = match &n.op {
                Op::Conv2d(c) => (*c, false),
                Op::DecomposedConv2d(c) => (c.conv, true),
                _ => continue,
            };
            let kk = (spec.kernel[0] * spec.kernel[1]) as u128;
            // the planar kernels keep a (vector, tap) table per layer: refuse absurd sizes
            if out.div_ceil(16) * kk > PLANAR_MAX_TAPS {
                return false;
            }
            let work = (spec.out_channels * spec.in_channels / spec.groups) as u128 * kk * out;
            match (decomposed, kk > 1) {
                (true, _) => dec += work,
                (false, true) => dense += work,
                _ => {}
            }
        }
        dec > 0 && dec >= dense
    }

    /// Resolves `Auto` for a decomposed convolution on the planar backend.
    fn planar_strategy(&self, n: &Node, c: &Conv2d) -> Result<Strategy, EngineError> {
        if self.strategy != Strategy::Auto {
            return Ok(self.strategy);
        }
        let hw = |t: &str| match self.shape(t) {
            Shape::Map { h, w, .. } => (h, w),
            Shape::Vector(_) => (1, 1),
        };
        let (yh, yw) = hw(&n.output);
        let (bf, mf, dense) = planar::costs(n, c, hw(&n.inputs[0]), (yh, yw))?;
        Ok(if dense < 0.9 * bf.min(mf) {
            Strategy::Dense
        } else if mf < 0.9 * bf {
            Strategy::MixFirst
        } else if (self.batch * yh * yw).div_ceil(64) >= 2 * self.threads {
            Strategy::Fused
        } else {
            Strategy::BasisFirst
        })
    }

    fn build(&mut self) -> Result<(), EngineError> {
        let model = self.model;
        let groups = self.groups();
        let planar = self.knobs.planar.unwrap_or_else(|| self.planar_mode());

        // 1. what each planned consumer needs of its input's storage: padding for convolutions
        let mut pads: HashMap<String, [usize; 4]> = HashMap::new();
        let mut strategies: HashMap<usize, Strategy> = HashMap::new();
        for g in &groups {
            if let GKind::Conv { node, .. } = g.kind {
                let n = &model.nodes[node];
                let need = match &n.op {
                    Op::Conv2d(c) => c.padding,
                    Op::DecomposedConv2d(c) if planar => {
                        strategies.insert(node, self.planar_strategy(n, &c.conv)?);
                        c.conv.padding
                    }
                    Op::DecomposedConv2d(c) => {
                        let s = decomp::choose_strategy(
                            n,
                            self.shape(&n.inputs[0]),
                            self.shape(&n.output),
                            self.batch,
                            self.threads,
                            self.strategy,
                        )?;
                        strategies.insert(node, s);
                        if s == Strategy::MixFirst { [0; 4] } else { c.conv.padding }
                    }
                    _ => [0; 4],
                };
                let e = pads.entry(g.inputs[0].clone()).or_default();
                for k in 0..4 {
                    e[k] = e[k].max(need[k]);
                }
            }
        }
        let map_lay = |shape: Shape, t: &str| {
            let p = pads.get(t).copied().unwrap_or_default();
            match shape {
                // planar maps have no border: kernels mask the lanes that fall outside
                Shape::Map { c, h, w } if planar => Lay::Planar(PLay { c, h, w }),
                Shape::Map { c, h, w } => Lay::Map(MapLay { c, h, w, pad: p }),
                Shape::Vector(len) => Lay::Flat { len },
            }
        };

        // 2. the model input, converted to the working layout if anything reads it
        let input_name = model.input.name.clone();
        if self.readers.contains_key(input_name.as_str()) {
            let lay = map_lay(model.input_shape(), &input_name);
            let v = self.batch_val(lay)?;
            self.val_of.insert(input_name.clone(), v);
            let op = match lay {
                Lay::Planar(p) => StepOp::ToPlanar(planar::ToPlanar {
                    dst: v,
                    lay: p,
                    batch: self.batch,
                }),
                Lay::Map(m) => StepOp::ToMap(ops::ToMap {
                    dst: v,
                    lay: m,
                    batch: self.batch,
                }),
                _ => return Err(EngineError::Internal("the model input is not a map".into())),
            };
            self.push(std::slice::from_ref(&input_name), "input".into(), 0, op, vec![], vec![v]);
        }

        // 3. one step per group
        for g in &groups {
            let out_shape = self.shape(&g.output);
            if let GKind::Flatten = g.kind {
                let src = self.input_val(&g.inputs[0], &g.names[0])?;
                if let Some(op) = self.flatten_step(src)? {
                    let dst = op.1;
                    self.val_of.insert(g.output.clone(), dst);
                    self.push(&g.names, "flatten".into(), 0, op.0, vec![src], vec![dst]);
                } else {
                    // a vector is already flat: the output is the same buffer
                    self.val_of.insert(g.output.clone(), src);
                }
                continue;
            }
            if let GKind::Softmax { log } = g.kind {
                self.softmax_step(g, log)?;
                continue;
            }
            let dst = self.batch_val(map_lay(out_shape, &g.output))?;
            self.val_of.insert(g.output.clone(), dst);
            let ins: Vec<ValId> = g.inputs.iter().map(|t| self.input_val(t, &g.names[0])).collect::<Result<_, _>>()?;
            let lays: Vec<Lay> = ins.iter().map(|&v| self.vals[v].lay).collect();
            let ylay = self.vals[dst].lay;
            match &g.kind {
                GKind::Conv { node, bns } => {
                    let n = &model.nodes[*node];
                    let bn_nodes: Vec<&Node> = bns.iter().map(|&j| &model.nodes[j]).collect();
                    let out_c = match out_shape {
                        Shape::Map { c, .. } => c,
                        Shape::Vector(n) => n,
                    };
                    let (scale, shift) = bn_fold(&bn_nodes, out_c)?;
                    let (res, act, batch, threads) = (ins[1..].to_vec(), g.act, self.batch, self.threads);
                    let strategy = strategies.get(node).copied();
                    let (spec, w, b): (Conv2d, Option<Vec<f32>>, Option<&[f32]>) = match &n.op {
                        Op::Conv2d(c) => (*c, None, n.params.get("bias").map(|t| t.data.as_slice())),
                        Op::DecomposedConv2d(c) if strategy == Some(Strategy::Dense) => (
                            c.conv,
                            Some(penni_model::reference::decomposed_weight(n)?),
                            n.params.get("bias").map(|t| t.data.as_slice()),
                        ),
                        Op::DecomposedConv2d(c) => (c.conv, None, None),
                        _ => unreachable!("conv group"),
                    };
                    let dense_w: Option<&[f32]> = match &n.op {
                        Op::Conv2d(_) => Some(&n.param("weight")?.data),
                        _ => w.as_deref(),
                    };
                    let rebuilt = if w.is_some() {
                        format!(" (rebuilt from d{})", spec_bases(n))
                    } else {
                        String::new()
                    };
                    match (lays[0], ylay, dense_w) {
                        (Lay::Planar(xl), Lay::Planar(yl), Some(wd)) => {
                            let st =
                                planar::PConv::new(&n.name, &spec, wd, b, &scale, &shift, ins[0], xl, dst, yl, res, act, batch, threads)?;
                            let (kind, macs) = (st.describe() + &rebuilt, st.macs);
                            self.push(&g.names, kind, macs, StepOp::PConv(st), ins.clone(), vec![dst]);
                        }
                        (Lay::Planar(xl), Lay::Planar(yl), None) => {
                            let s = strategy.unwrap_or(Strategy::Fused);
                            let mut st = planar::PDecomp::new(n, &spec, &scale, &shift, s, ins[0], xl, dst, yl, res, act, batch, threads)?;
                            let mut writes = vec![dst];
                            for (slot, floats) in st.scratch_needs() {
                                let v = self.scratch(floats);
                                st.set_scratch(slot, v);
                                writes.push(v);
                            }
                            let (kind, macs) = (st.describe(), st.macs);
                            self.push(&g.names, kind, macs, StepOp::PDecomp(st), ins.clone(), writes);
                        }
                        (Lay::Map(xl), Lay::Map(yl), Some(wd)) => {
                            let rl = map_lays(&lays[1..])?;
                            let st = conv::ConvStep::new(
                                &n.name, &spec, wd, b, &scale, &shift, ins[0], xl, dst, yl, res, rl, act, batch, threads,
                            )?;
                            let (kind, macs) = (st.describe() + &rebuilt, st.macs);
                            self.push(&g.names, kind, macs, StepOp::Conv(st), ins.clone(), vec![dst]);
                        }
                        (Lay::Map(xl), Lay::Map(yl), None) => {
                            let Op::DecomposedConv2d(c) = &n.op else {
                                unreachable!("decomposed")
                            };
                            let rl = map_lays(&lays[1..])?;
                            let s = strategy.unwrap_or(Strategy::Fused);
                            let mut st = decomp::DecompStep::new(
                                n,
                                c,
                                &scale,
                                &shift,
                                s,
                                ins[0],
                                xl,
                                dst,
                                yl,
                                res,
                                rl,
                                act,
                                batch,
                                threads,
                                self.knobs.blocked_combination,
                            )?;
                            let mut writes = vec![dst];
                            for (slot, floats) in st.scratch_needs() {
                                let v = self.scratch(floats);
                                st.set_scratch(slot, v);
                                writes.push(v);
                            }
                            let (kind, macs) = (st.describe(), st.macs);
                            self.push(&g.names, kind, macs, StepOp::Decomp(st), ins.clone(), writes);
                        }
                        _ => return Err(EngineError::Internal(format!("'{}' is not a map-to-map convolution", n.name))),
                    }
                }
                GKind::Add | GKind::Act | GKind::Affine { .. } => {
                    let (scale, shift) = match g.kind {
                        GKind::Affine { node } => {
                            let n = &model.nodes[node];
                            let c = match self.shape(&n.output) {
                                Shape::Map { c, .. } => c,
                                Shape::Vector(n) => n,
                            };
                            let (s, b) = bn_fold(&[n], c)?;
                            (Some(s), Some(b))
                        }
                        _ => (None, None),
                    };
                    let kind = match g.kind {
                        GKind::Add => format!("add x{}", ins.len()),
                        GKind::Affine { .. } => "batchnorm".into(),
                        _ => "activation".into(),
                    };
                    let op = match ylay {
                        Lay::Planar(ol) => {
                            planar_lays(&lays)?;
                            let affine = scale
                                .zip(shift)
                                .map(|(s, b)| (s.iter().map(|v| *v as f32).collect(), b.iter().map(|v| *v as f32).collect()));
                            StepOp::PElt(planar::PElt {
                                ins: ins.clone(),
                                out: dst,
                                ol,
                                affine,
                                act: g.act,
                                batch: self.batch,
                            })
                        }
                        _ => StepOp::Elt(ops::EltStep::new(
                            ins.clone(),
                            lays.clone(),
                            dst,
                            ylay,
                            scale,
                            shift,
                            g.act,
                            self.batch,
                        )),
                    };
                    self.push(&g.names, kind, 0, op, ins.clone(), vec![dst]);
                }
                GKind::Pool { node } => {
                    let n = &model.nodes[*node];
                    let (p, max) = match &n.op {
                        Op::MaxPool2d(p) => (p.clone(), true),
                        Op::AvgPool2d(p) => (p.clone(), false),
                        _ => unreachable!("pool group"),
                    };
                    let kind = format!(
                        "{}pool {}x{} s{}",
                        if max { "max" } else { "avg" },
                        p.kernel[0],
                        p.kernel[1],
                        p.stride[0]
                    );
                    let op = match (lays[0], ylay) {
                        (Lay::Planar(xl), Lay::Planar(yl)) => StepOp::PPool(planar::PPool {
                            x: ins[0],
                            xl,
                            y: dst,
                            yl,
                            p,
                            max,
                            batch: self.batch,
                        }),
                        (Lay::Map(xl), Lay::Map(yl)) => StepOp::Pool(ops::PoolStep {
                            x: ins[0],
                            y: dst,
                            xl,
                            yl,
                            p,
                            max,
                            batch: self.batch,
                        }),
                        _ => return Err(EngineError::Internal("pool on a vector".into())),
                    };
                    self.push(&g.names, kind, 0, op, ins.clone(), vec![dst]);
                }
                GKind::Gap => {
                    let op = match (lays[0], ylay) {
                        (Lay::Planar(xl), Lay::Planar(yl)) => StepOp::PGap(planar::PGap {
                            x: ins[0],
                            xl,
                            y: dst,
                            yl,
                            batch: self.batch,
                        }),
                        (Lay::Map(xl), Lay::Map(yl)) => StepOp::Gap(ops::GapStep {
                            x: ins[0],
                            y: dst,
                            xl,
                            yl,
                            batch: self.batch,
                        }),
                        _ => return Err(EngineError::Internal("global pool on a vector".into())),
                    };
                    self.push(&g.names, "global avgpool".into(), 0, op, ins.clone(), vec![dst]);
                }
                GKind::Linear { node } => {
                    let n = &model.nodes[*node];
                    let st = ops::LinearStep::new(n, ins[0], dst, g.act, self.batch)?;
                    let macs = st.macs();
                    self.push(
                        &g.names,
                        format!("linear {}x{}", st.inf, st.outf),
                        macs,
                        StepOp::Linear(st),
                        ins.clone(),
                        vec![dst],
                    );
                }
                GKind::Concat => {
                    same_layout_kind(&lays, ylay)?;
                    let st = ops::ConcatStep {
                        ins: ins.iter().copied().zip(lays.iter().copied()).collect(),
                        out: dst,
                        ol: ylay,
                        batch: self.batch,
                    };
                    self.push(
                        &g.names,
                        format!("concat x{}", ins.len()),
                        0,
                        StepOp::Concat(st),
                        ins.clone(),
                        vec![dst],
                    );
                }
                GKind::Point(op) => {
                    same_layout_kind(&lays, ylay)?;
                    let dims = |s: Shape| match s {
                        Shape::Map { c, h, w } => (c, h, w),
                        Shape::Vector(n) => (n, 1, 1),
                    };
                    let (c, h, w) = dims(out_shape);
                    let ins = g
                        .inputs
                        .iter()
                        .zip(&ins)
                        .zip(&lays)
                        .map(|((t, v), l)| {
                            let (_, ih, iw) = dims(self.shape(t));
                            (*v, *l, ih, iw)
                        })
                        .collect();
                    let kind = match op {
                        ops::PointOp::Unary(a) => a.name().to_lowercase(),
                        ops::PointOp::Mul => "mul".into(),
                    };
                    let st = ops::PointStep {
                        op: *op,
                        ins,
                        out: dst,
                        ol: ylay,
                        c,
                        h,
                        w,
                        batch: self.batch,
                    };
                    let reads = st.ins.iter().map(|i| i.0).collect();
                    self.push(&g.names, kind, 0, StepOp::Point(st), reads, vec![dst]);
                }
                GKind::Flatten | GKind::Softmax { .. } => unreachable!("handled above"),
            }
        }

        // 4. the output, flat and in NCHW order
        let out_name = model.output.clone();
        self.out_val = if model.producer(&out_name).is_none() {
            let len = model.input_shape().numel();
            let dst = self.batch_val(Lay::Flat { len })?;
            self.push(
                std::slice::from_ref(&out_name),
                "copy input".into(),
                0,
                StepOp::CopyIn(ops::CopyIn {
                    dst,
                    len: len * self.batch,
                }),
                vec![],
                vec![dst],
            );
            dst
        } else {
            let v = self.input_val(&out_name, "output")?;
            match self.flatten_step(v)? {
                Some((op, dst)) => {
                    self.push(std::slice::from_ref(&out_name), "output to NCHW".into(), 0, op, vec![v], vec![dst]);
                    dst
                }
                None => v,
            }
        };
        Ok(())
    }

    /// Softmax works on plain NCHW order, so its output is flat: fine for the model output and
    /// a flatten, the only readers allowed after a softmax over a feature map.
    fn softmax_step(&mut self, g: &Group, log: bool) -> Result<(), EngineError> {
        let (c, hw) = match self.shape(&g.output) {
            Shape::Map { c, h, w } => {
                if let Some(r) = self
                    .model
                    .nodes
                    .iter()
                    .find(|n| n.inputs.contains(&g.output) && !matches!(n.op, Op::Flatten))
                {
                    return Err(EngineError::Unsupported {
                        node: g.names[0].clone(),
                        message: format!(
                            "a softmax over a feature map may only end the network or feed a Flatten, not '{}'",
                            r.name
                        ),
                    });
                }
                (c, h * w)
            }
            Shape::Vector(n) => (n, 1),
        };
        let mut src = self.input_val(&g.inputs[0], &g.names[0])?;
        if let Some((op, flat)) = self.flatten_step(src)? {
            self.push(&g.names, "to NCHW".into(), 0, op, vec![src], vec![flat]);
            src = flat;
        }
        let dst = self.batch_val(Lay::Flat { len: c * hw })?;
        self.val_of.insert(g.output.clone(), dst);
        let kind = if log { "log-softmax" } else { "softmax" };
        let op = StepOp::Softmax(ops::SoftmaxStep {
            src,
            dst,
            c,
            hw,
            log,
            batch: self.batch,
        });
        self.push(&g.names, kind.into(), 0, op, vec![src], vec![dst]);
        Ok(())
    }

    /// The step that turns map `src` into plain NCHW order, and its output (None: already flat).
    fn flatten_step(&mut self, src: ValId) -> Result<Option<(StepOp, ValId)>, EngineError> {
        let batch = self.batch;
        Ok(match self.vals[src].lay {
            Lay::Map(m) => {
                let dst = self.batch_val(Lay::Flat { len: m.c * m.h * m.w })?;
                Some((StepOp::ToFlat(ops::ToFlat { src, dst, lay: m, batch }), dst))
            }
            Lay::Planar(p) => {
                let dst = self.batch_val(Lay::Flat { len: p.c * p.h * p.w })?;
                Some((StepOp::PToFlat(planar::PToFlat { src, lay: p, dst, batch }), dst))
            }
            _ => None,
        })
    }
}

fn spec_bases(n: &Node) -> usize {
    match &n.op {
        Op::DecomposedConv2d(c) => c.num_bases,
        _ => 0,
    }
}

fn planar_lays(l: &[Lay]) -> Result<Vec<PLay>, EngineError> {
    l.iter()
        .map(|l| match l {
            Lay::Planar(p) => Ok(*p),
            _ => Err(EngineError::Internal("mixed layouts in one step".into())),
        })
        .collect()
}

/// Steps that read several buffers (concat, products) need them all in the output's layout.
fn same_layout_kind(l: &[Lay], out: Lay) -> Result<(), EngineError> {
    if l.iter().all(|l| std::mem::discriminant(l) == std::mem::discriminant(&out)) {
        Ok(())
    } else {
        Err(EngineError::Internal("mixed layouts in one step".into()))
    }
}

fn map_lays(l: &[Lay]) -> Result<Vec<MapLay>, EngineError> {
    l.iter()
        .map(|l| match l {
            Lay::Map(m) => Ok(*m),
            _ => Err(EngineError::Internal("mixed layouts in one step".into())),
        })
        .collect()
}
