//! The coefficient analysis of a decomposed convolution, done once per layer and shared by the
//! strategy choice and by both backends' packing: the coefficients with the folded batchnorm's
//! scale applied, and which bases, input channels and (channel, basis) columns are live (used
//! by some non-zero coefficient). Dead ones cost nothing at run time.

use penni_model::batchnorm::Affine;
use penni_model::{DecomposedConv2d, Node};

use crate::epilogue::fold_weight;
use crate::error::EngineError;

/// Most bases one stage-1 kernel call handles (more are done in chunks).
pub(crate) const MAX_D: usize = 8;

pub(crate) struct Coefs {
    /// Bases (live or not) and kernel taps.
    pub d: usize,
    pub kk: usize,
    /// Input and output channels per group.
    pub cg: usize,
    pub og: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// Folded coefficients, [output channel][input channel in group][basis] like the tensor.
    folded: Vec<f32>,
    /// Live bases.
    pub jl: Vec<usize>,
    /// Live input channels.
    pub live_c: Vec<bool>,
    /// Live (input channel, live basis index) columns, [ci * jl.len() + jj].
    pub live_col: Vec<bool>,
    /// Non-zero coefficients.
    pub nnz: usize,
    /// Live (output channel, basis) rows: the maps mix-first computes.
    pub nu: usize,
}

impl Coefs {
    pub fn new(node: &Node, c: &DecomposedConv2d, fold: &Affine) -> Result<Coefs, EngineError> {
        let a = &node.param("coefficients")?.data;
        let d = c.num_bases;
        let (n_in, n_out) = (c.conv.in_channels, c.conv.out_channels);
        let (cg, og) = (n_in / c.conv.groups, n_out / c.conv.groups);
        if a.len() != n_out * cg * d || fold.scale.len() != n_out {
            return Err(EngineError::Internal(format!(
                "'{}': coefficients do not match the layer",
                node.name
            )));
        }
        // the f32 coefficient the kernels use: a zero after folding is a dead term too
        let folded: Vec<f32> = a.iter().enumerate().map(|(i, &v)| fold_weight(fold, i / (cg * d), v)).collect();
        let mut basis_live = vec![false; d];
        let mut nnz = 0;
        for (i, v) in folded.iter().enumerate() {
            if *v != 0.0 {
                basis_live[i % d] = true;
                nnz += 1;
            }
        }
        let jl: Vec<usize> = (0..d).filter(|&j| basis_live[j]).collect();
        let mut live_c = vec![false; n_in];
        let mut live_col = vec![false; n_in * jl.len()];
        let mut nu = 0;
        for n in 0..n_out {
            let g = n / og;
            for (jj, &j) in jl.iter().enumerate() {
                let mut row_live = false;
                for cl in 0..cg {
                    if folded[(n * cg + cl) * d + j] != 0.0 {
                        let ci = g * cg + cl;
                        live_c[ci] = true;
                        live_col[ci * jl.len() + jj] = true;
                        row_live = true;
                    }
                }
                nu += row_live as usize;
            }
        }
        Ok(Coefs {
            d,
            kk: c.conv.kernel[0] * c.conv.kernel[1],
            cg,
            og,
            n_in,
            n_out,
            folded,
            jl,
            live_c,
            live_col,
            nnz,
            nu,
        })
    }

    /// Live bases.
    pub fn dl(&self) -> usize {
        self.jl.len()
    }

    /// Folded coefficient of output `n`, global input channel `ci`, basis `j` (0 outside the
    /// output's group).
    #[inline]
    pub fn coef(&self, n: usize, ci: usize, j: usize) -> f32 {
        if ci / self.cg != n / self.og {
            return 0.0;
        }
        self.folded[(n * self.cg + ci % self.cg) * self.d + j]
    }

    /// Column numbers of the live (channel, live basis) pairs in order, -1 for dead ones, in a
    /// table of `len` entries (at least n_in * dl; the rest stays -1), and the column count.
    pub fn columns(&self, len: usize) -> (Vec<i32>, usize) {
        let dl = self.dl();
        let mut colmap = vec![-1i32; len.max(self.n_in * dl)];
        let mut ncols = 0;
        for ci in 0..self.n_in {
            for jj in 0..dl {
                if self.live_col[ci * dl + jj] {
                    colmap[ci * dl + jj] = ncols as i32;
                    ncols += 1;
                }
            }
        }
        (colmap, ncols)
    }

    /// The live bases in chunks of at most MAX_D, as even as possible: (first live index,
    /// count) and the chunk's basis values [tap][count], as the stage-1 kernels read them.
    pub fn basis_chunks(&self, bases: &[f32]) -> (Vec<(usize, usize)>, Vec<Vec<f32>>) {
        let (dl, kk) = (self.dl(), self.kk);
        let nchunks = dl.div_ceil(MAX_D);
        let (mut chunks, mut values) = (Vec::new(), Vec::new());
        let mut start = 0;
        for i in 0..nchunks {
            let cnt = (dl - start) / (nchunks - i);
            let mut vals = Vec::with_capacity(kk * cnt);
            for t in 0..kk {
                for jj in start..start + cnt {
                    vals.push(bases[self.jl[jj] * kk + t]);
                }
            }
            chunks.push((start, cnt));
            values.push(vals);
            start += cnt;
        }
        (chunks, values)
    }
}
