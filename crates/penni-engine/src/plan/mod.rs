//! The plan: the model turned, once per batch size, into a list of steps over buffers placed in
//! one arena, and the code that runs it (micro-batches, batch-parallel lanes, profiling).
//!
//! - `fuse`: which IR nodes become one step (batchnorm, residual add and activation folded into
//!   the producer);
//! - `build`: the builder, one step per group through the op families of `crate::ops`, the
//!   choice of backend and of each buffer's layout;
//! - `schedule`: micro-batching and lanes, and the placement of every buffer by liveness;
//! - `core`: the steps and arena of one micro-batch and the loop that runs them.

mod build;
mod core;
mod fuse;
mod schedule;

use penni_model::{Model, Op, Shape, passes};

use self::core::Core;
use self::schedule::{Batching, batching, build_core};
use crate::error::EngineError;
use crate::ops::decomposed;
use crate::options::{EngineOptions, IntKernels, Knobs, LayerTiming};
use crate::simd::Isa;
use crate::thread_pool::Pool;

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

/// The model as the engine runs it, `None` when nothing changes: MLCNN's exact conv-pool
/// rewrites, where the model has pools (a linear conv's average pool computed at the pooled
/// resolution: the input windows averaged once, then a strided conv with a fraction of the
/// work; monotone activations moved after max pools, so they run on the pooled map in the
/// pool's epilogue), and PENNI layers with quantized basis maps that no integer kernel takes
/// split into their two stages (a grouped basis conv, the quantizer, a 1x1 combination).
fn rewrites(model: &Model, knobs: &Knobs) -> Result<Option<Model>, EngineError> {
    let pools = model.nodes.iter().any(|n| matches!(&n.op, Op::AvgPool2d(_) | Op::MaxPool2d(_)));
    let quantized_penni = model
        .nodes
        .iter()
        .any(|n| matches!(&n.op, Op::DecomposedConv2d(d) if d.basis_quant.is_some()));
    if !pools && !quantized_penni {
        return Ok(None);
    }
    let mut m = model.clone();
    let grids = build::activation_grids(model);
    let integer = build::int8_allowed(knobs) && knobs.planar != Some(false);
    let mut changed = passes::split_quantized_decomposed(&mut m, |n| {
        let keep = match &n.op {
            Op::DecomposedConv2d(c) => {
                integer
                    && grids
                        .get(&n.inputs[0])
                        .is_some_and(|&xg| decomposed::int8::IntPenni::of(n, c, xg).is_some())
            }
            _ => false,
        };
        !keep
    })?;
    if pools {
        changed += passes::pool_before_conv(&mut m) + passes::activation_after_max_pool(&mut m);
    }
    Ok((changed > 0).then_some(m))
}

impl Plan {
    /// Compiles `model` for `batch` images at a time. Fails with a clear error when the model
    /// is invalid, when an option is out of range or when a layer cannot be planned.
    pub fn new(model: &Model, batch: usize, opts: &EngineOptions) -> Result<Plan, EngineError> {
        Plan::with_isa(model, batch, opts, Isa::detect())
    }

    pub(crate) fn with_isa(model: &Model, batch: usize, opts: &EngineOptions, isa: Isa) -> Result<Plan, EngineError> {
        Plan::with_knobs(model, batch, opts, Knobs::on(isa))
    }

    pub(crate) fn with_knobs(model: &Model, batch: usize, opts: &EngineOptions, knobs: Knobs) -> Result<Plan, EngineError> {
        let knobs = Knobs {
            int8: if opts.f32_kernels_only { IntKernels::Off } else { knobs.int8 },
            ..knobs
        };
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
        let mut shapes = model.validate()?;
        let rewritten;
        let model = match rewrites(model, &knobs)? {
            Some(m) => {
                shapes = m.validate()?;
                rewritten = m;
                &rewritten
            }
            None => model,
        };
        // a one-image plan tells the weight and per-image activation sizes (a full-batch one
        // would touch a full-batch arena, which then shows in the process's peak memory)
        let strategy = opts.decomposed_strategy;
        let mut core = build_core(model, &shapes, 1, threads, strategy, knobs)?;
        let weight_bytes = core.steps.iter().map(|s| 4 * s.op.weight_floats()).sum();
        let Batching { micro, lanes: lanes_on } = batching(batch, threads, weight_bytes, core.bytes_per_image(), &knobs);
        let chunks = batch / micro;
        let lane_threads = if lanes_on { 1 } else { threads };
        if micro != 1 || lanes_on {
            core = build_core(model, &shapes, micro, lane_threads, strategy, knobs)?;
        }
        let mut lanes = Vec::new();
        if lanes_on {
            for _ in 1..threads {
                lanes.push(build_core(model, &shapes, micro, 1, strategy, knobs)?);
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
