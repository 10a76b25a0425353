//! The one place a decomposed convolution's dataflow is chosen: a cost model per backend
//! (their kernels differ, so do the fitted weights) and a single rule on top of it.
//!
//! The rule, for `Strategy::Auto`: with the backend's estimates of basis-first (`bf`),
//! mix-first (`mf`) and a rebuilt dense kernel (`dense`) and the backend's margin `m`,
//! - `Dense` if dense < m * min(bf, mf),
//! - else `MixFirst` if mf < m * bf,
//! - else basis-first, `Fused` when the layer has at least two tiles of 64 output pixels per
//!   thread (enough to keep every thread busy), `BasisFirst` otherwise.
//!
//! The margin (a switch must win by 20% on the blocked backend, 10% on the planar one) is part
//! of each backend's model: each was fitted to its own measured kernel times. The blocked
//! backend also picks its combination orientation here (over pixels or over output channels),
//! whatever the strategy; the planar backend its coefficient layout (CSR or row pairs,
//! `packing_pays`, asked once the rows are packed, since the fill is known only then).

use penni_model::DecomposedConv2d;

use super::analysis::Coefs;
use crate::options::Strategy;
use crate::simd::L;

/// What the planner decided for one decomposed layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Choice {
    pub strategy: Strategy,
    /// Blocked backend, basis-first: combination vectorised over 16 output channels (basis
    /// maps stay channel-blocked) rather than over pixels.
    pub blocked_combination: bool,
    /// Planar backend, basis-first and fused: the combination's rows packed in row blocks (true), kept
    /// in CSR (false), or whichever `packing_pays` says once packed (None).
    pub packed: Option<bool>,
}

/// Output pixels per tile the `Fused` / `BasisFirst` split counts.
const TILE_PIXELS: usize = 4 * L;

/// Resolves the dataflow of one layer on the planar (`planar`) or blocked backend, for maps of
/// `hw_in` and `hw_out` pixels; `requested` other than `Auto` is kept, `force_blocked` (tests)
/// overrides the orientation.
pub(crate) fn choose(
    c: &DecomposedConv2d,
    co: &Coefs,
    planar: bool,
    hw_in: (usize, usize),
    hw_out: (usize, usize),
    batch: usize,
    threads: usize,
    requested: Strategy,
    force_blocked: Option<bool>,
    force_packed: Option<bool>,
) -> Choice {
    let (bf, mf, dense, margin, blocked) = if planar {
        let k = planar_costs(c, co, hw_in, hw_out);
        (k.basis_first, k.mix_first, k.dense, 0.9, false)
    } else {
        let k = blocked_costs(c, co, hw_in, hw_out);
        let blocked = force_blocked.unwrap_or(k.bf_blocked < k.bf_pixel);
        (k.bf_pixel.min(k.bf_blocked), k.mix_first, k.dense, 0.8, blocked)
    };
    let strategy = if requested != Strategy::Auto {
        requested
    } else if dense < margin * bf.min(mf) {
        Strategy::Dense
    } else if mf < margin * bf {
        Strategy::MixFirst
    } else if (batch * hw_out.0 * hw_out.1).div_ceil(TILE_PIXELS) >= 2 * threads {
        Strategy::Fused
    } else {
        Strategy::BasisFirst
    };
    Choice {
        strategy,
        blocked_combination: blocked,
        packed: force_packed,
    }
}

/// Whether the planar combination runs faster on `slots` packed row-block slots (zeros
/// included) than on its `nnz` CSR terms. Fitted to the kernel bench `benches/combination.rs`
/// on the real layers (`experiments/engine-bench/combination-*`): a CSR term costs about 1.5
/// cycles per output vector (a broadcast, an index and the pixel vectors' loads per FMA:
/// load-bound), a packed slot about 1.0 (one column's loads shared by the block's rows:
/// FMA-bound). That puts break-even at a fill (terms / slots) of two thirds, and the planar
/// backend's 10% margin moves the threshold to about 0.74.
pub(crate) fn packing_pays(nnz: usize, slots: usize) -> bool {
    1.0 * (slots as f64) < 0.9 * 1.5 * nnz as f64
}

/// Estimated cycles per output vector of the planar kernels.
struct PlanarCosts {
    basis_first: f64,
    mix_first: f64,
    dense: f64,
}

fn planar_costs(c: &DecomposedConv2d, co: &Coefs, hw_in: (usize, usize), hw_out: (usize, usize)) -> PlanarCosts {
    let kk = co.kk as f64;
    let lc = co.live_c.iter().filter(|&&l| l).count() as f64;
    let dl = co.dl() as f64;
    let nu = co.nu as f64;
    let nnz = co.nnz as f64;
    let rin = (hw_in.0 * hw_in.1) as f64 / (hw_out.0 * hw_out.1) as f64;
    let n = c.conv.out_channels as f64;
    // weights fitted to measured kernel times (cycles per output vector on AVX-512)
    PlanarCosts {
        basis_first: 0.8 * lc * dl * kk + 1.5 * nnz + 4.0 * n,
        mix_first: 2.5 * (nu * kk + rin * (nnz + nu)) + 4.0 * n,
        dense: 0.75 * n * co.cg as f64 * kk + 4.0 * n,
    }
}

/// Estimated cycles per output pixel of each way to run a layer on the blocked backend (FMAs
/// at two per cycle where loads keep up, one per cycle in the load-bound sparse kernels, a
/// 16x16 transpose costing 64 shuffles on one port).
pub(crate) struct BlockedCosts {
    /// Basis-first with the combination vectorised over pixels (transposes in between).
    bf_pixel: f64,
    /// Basis-first with the combination vectorised over 16 output channels, skipping
    /// all-zero 16-row blocks of a column (no transposes).
    bf_blocked: f64,
    mix_first: f64,
    dense: f64,
}

fn blocked_costs(c: &DecomposedConv2d, co: &Coefs, hw_in: (usize, usize), hw_out: (usize, usize)) -> BlockedCosts {
    let rin = (hw_in.0 * hw_in.1) as f64 / (hw_out.0 * hw_out.1) as f64;
    let dl = co.dl() as f64;
    let kk = co.kk as f64;
    let nbo = c.conv.out_channels.div_ceil(L);
    let live_cbs = (0..c.conv.in_channels.div_ceil(L))
        .filter(|cb| co.live_c[cb * L..((cb + 1) * L).min(c.conv.in_channels)].iter().any(|&l| l))
        .count() as f64;
    let stage1 = live_cbs * dl * kk / 2.0;
    let nnz = co.nnz as f64;
    let bf_pixel = stage1 + live_cbs * dl * 4.0 + nnz / 16.0 + nbo as f64 * 5.0;
    let bf_blocked = stage1 + block_columns(co) as f64 + nbo as f64;
    let mix_first = rin * (live_cbs * 4.0 + nnz / 16.0 + nbo as f64 * dl * 4.0) + nbo as f64 * dl * kk / 2.0 + nbo as f64;
    let dense = if c.conv.groups == 1 {
        let icn = if c.conv.in_channels < L {
            c.conv.in_channels
        } else {
            c.conv.in_channels.div_ceil(L) * L
        };
        nbo as f64 * icn as f64 * kk / 2.0 + nbo as f64
    } else {
        f64::INFINITY
    };
    BlockedCosts {
        bf_pixel,
        bf_blocked,
        mix_first,
        dense,
    }
}

/// Columns (input channel, live basis) summed over output blocks of 16 rows that hold a
/// non-zero in that column: the work of the channel-vectorised combination.
fn block_columns(co: &Coefs) -> usize {
    let dl = co.dl();
    let mut total = 0;
    let mut seen = vec![false; co.n_in * dl];
    for nb in 0..co.n_out.div_ceil(L) {
        seen.iter_mut().for_each(|v| *v = false);
        for n in nb * L..((nb + 1) * L).min(co.n_out) {
            let g = n / co.og;
            for cl in 0..co.cg {
                let ci = g * co.cg + cl;
                for (jj, &j) in co.jl.iter().enumerate() {
                    if co.coef(n, ci, j) != 0.0 && !seen[ci * dl + jj] {
                        seen[ci * dl + jj] = true;
                        total += 1;
                    }
                }
            }
        }
    }
    total
}
