//! The runtime side of a plan: value ids, the run-time context kernels read buffers through
//! ([`Ctx`]), and the [`StepOp`] trait every op family's step implements.

use crate::error::EngineError;
use crate::layout::{Lay, zero_borders_raw};
use crate::simd::Isa;
use crate::thread_pool::Pool;

/// Index of a buffer in the plan's value table.
pub(crate) type ValId = usize;

/// A buffer: its layout, size in floats and (once placed) offset in the arena.
#[derive(Clone, Debug)]
pub(crate) struct Val {
    pub lay: Lay,
    pub size: usize,
    pub off: usize,
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

    /// Zeroes the padding border of a blocked map (nothing for other layouts).
    pub fn zero_borders(&self, v: ValId, batch: usize) {
        if let Lay::Map(m) = self.vals[v].lay {
            zero_borders_raw(self.ptr(v), &m, batch);
        }
    }
}

/// One planned step of an op family: built once by the planner, run once per (micro-)batch.
/// Dispatch through this trait happens once per step; kernels inside are monomorphic.
pub(crate) trait StepOp: Send + Sync {
    /// Runs the step on the buffers of `ctx`.
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError>;
    /// What kernel runs, for profiles and `Plan::describe` (e.g. "conv 3x3 s1 16->16 [ob1 3x8]").
    fn describe(&self) -> String;
    /// Multiply-accumulates of one run (useful ones, not padding); 0 for data movement.
    fn macs(&self) -> u64 {
        0
    }
    /// Its time in multiply-accumulates of the f32 kernels (what the planner weighs when it
    /// decides whether a step is worth sharing out): `macs` unless its kernels are faster.
    fn f32_equivalent_macs(&self) -> u64 {
        self.macs()
    }
    /// Floats of packed weights, biases and sparse structures the step holds.
    fn weight_floats(&self) -> usize {
        0
    }
    /// Scratch buffers the step needs, in floats, one entry per slot.
    fn scratch_floats(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Tells the step where scratch slot `slot` was placed.
    fn set_scratch(&mut self, _slot: usize, _v: ValId) {}
}

/// A step and what the planner knows about it.
pub(crate) struct Step {
    /// The IR nodes it computes, joined by '+'.
    pub name: String,
    pub kind: String,
    pub macs: u64,
    /// Too little work to be worth waking other threads for.
    pub serial: bool,
    pub op: Box<dyn StepOp>,
    pub reads: Vec<ValId>,
    pub writes: Vec<ValId>,
}
