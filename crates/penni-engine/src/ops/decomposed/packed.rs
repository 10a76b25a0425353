//! The combination stage's coefficients packed into dense row blocks, beside CSR (from the
//! packing of sparse filters before a MAC array): output channels are grouped `r` at a time,
//! the rows of a group whose non-zero columns overlap most; each block stores the union of its
//! rows' columns and, per column, the `r` values (zeros where a row has no term). A kernel then
//! loads a column's pixel vectors once for `r` outputs instead of once per term, at the price of
//! the zeros' multiplications: it pays where loads, not FMAs, bound the CSR kernel.

use super::csr::Csr;

/// Rows of a CSR matrix in blocks of `r`.
pub(crate) struct RowBlocks {
    pub r: usize,
    /// Output row of each block slot, [block * r + k]; `u32::MAX` pads the last block.
    pub members: Vec<u32>,
    /// Per block, its range in `cols` (and `r` times that in `vals`).
    pub ptr: Vec<usize>,
    /// Column offsets (as in the CSR) of the block's union of columns.
    pub cols: Vec<usize>,
    /// `r` values per column entry, [entry * r + k].
    pub vals: Vec<f32>,
}

/// Rows per block in the engine's kernels: with blocks of 4 the zeros' multiplications cost
/// more than the shared loads save on every measured layer (fill about a third).
pub(crate) const PACK_ROWS: usize = 2;

/// Candidate rows the greedy grouping compares per block slot.
const WINDOW: usize = 128;

/// No output row in this block slot.
pub(crate) const NO_ROW: u32 = u32::MAX;

impl RowBlocks {
    /// Packs `m`'s rows `r` at a time. Greedy grouping: the unplaced row with the most terms
    /// opens a block, which then takes, one at a time, the unplaced row that adds the fewest new
    /// columns to it (ties: the one with more terms shared), among the next WINDOW unplaced rows
    /// by term count (so that planning a wide layer stays linear in its rows).
    pub fn pack(m: &Csr, r: usize) -> RowBlocks {
        let n = m.ptr.len() - 1;
        let row = |i: usize| (m.ptr[i]..m.ptr[i + 1]).map(|k| m.cols[k]);
        // dense column numbers for the bitsets
        let mut distinct: Vec<usize> = m.cols.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let id = |c: usize| distinct.binary_search(&c).unwrap_or(0);
        let words = distinct.len().div_ceil(64).max(1);
        let bits: Vec<Vec<u64>> = (0..n)
            .map(|i| {
                let mut b = vec![0u64; words];
                row(i).for_each(|c| b[id(c) / 64] |= 1 << (id(c) % 64));
                b
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(m.ptr[i + 1] - m.ptr[i]));
        let mut placed = vec![false; n];
        let mut out = RowBlocks {
            r,
            members: Vec::with_capacity(n.div_ceil(r) * r),
            ptr: vec![0],
            cols: vec![],
            vals: vec![],
        };
        for &seed in &order {
            if placed[seed] {
                continue;
            }
            placed[seed] = true;
            let mut block = vec![seed];
            let mut union = bits[seed].clone();
            while block.len() < r {
                let best = order.iter().copied().filter(|&i| !placed[i]).take(WINDOW).min_by_key(|&i| {
                    let (mut new, mut shared) = (0u32, 0u32);
                    for (a, u) in bits[i].iter().zip(&union) {
                        new += (a & !u).count_ones();
                        shared += (a & u).count_ones();
                    }
                    (new, std::cmp::Reverse(shared))
                });
                let Some(i) = best else { break };
                placed[i] = true;
                union.iter_mut().zip(&bits[i]).for_each(|(u, a)| *u |= a);
                block.push(i);
            }
            out.push_block(m, &block, &distinct, &union);
        }
        out
    }

    fn push_block(&mut self, m: &Csr, block: &[usize], distinct: &[usize], union: &[u64]) {
        let r = self.r;
        let first = self.cols.len();
        for (w, &word) in union.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                self.cols.push(distinct[w * 64 + b]);
            }
        }
        self.vals.resize(self.cols.len() * r, 0.0);
        for (k, &row) in block.iter().enumerate() {
            for t in m.ptr[row]..m.ptr[row + 1] {
                // both lists are in column order
                let e = first + self.cols[first..].partition_point(|&c| c < m.cols[t]);
                self.vals[e * r + k] += m.vals[t];
            }
        }
        self.members.extend(block.iter().map(|&i| i as u32));
        self.members.resize(self.members.len() + r - block.len(), NO_ROW);
        self.ptr.push(self.cols.len());
    }

    pub fn blocks(&self) -> usize {
        self.ptr.len() - 1
    }

    /// Multiplications per output pixel, zeros included (the CSR's are its terms).
    pub fn slots(&self) -> usize {
        self.vals.len()
    }

    /// Storage in floats (indices count as two), for `Plan::weight_bytes`.
    pub fn floats(&self) -> usize {
        self.ptr.len() * 2 + self.cols.len() * 2 + self.vals.len() + self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(rows: &[&[(usize, f32)]]) -> Csr {
        let mut m = Csr::new();
        for r in rows {
            for &(c, v) in *r {
                m.push(c, v);
            }
            m.end_row();
        }
        m
    }

    #[test]
    fn rows_that_share_columns_share_a_block_and_keep_their_values() {
        // rows 0 and 2 use columns {0, 64}, rows 1 and 3 use {128, 192}; row 4 is empty
        let m = csr(&[
            &[(0, 1.0), (64, 2.0)],
            &[(128, 3.0), (192, 4.0)],
            &[(0, 5.0), (64, 6.0)],
            &[(128, 7.0)],
            &[],
        ]);
        let p = RowBlocks::pack(&m, 2);
        assert_eq!(p.blocks(), 3);
        let mut seen = vec![];
        for b in 0..p.blocks() {
            let rows = &p.members[b * 2..b * 2 + 2];
            let cols = &p.cols[p.ptr[b]..p.ptr[b + 1]];
            seen.push((rows.to_vec(), cols.to_vec()));
        }
        assert!(seen.contains(&(vec![0, 2], vec![0, 64])));
        assert!(seen.contains(&(vec![1, 3], vec![128, 192])));
        assert!(seen.contains(&(vec![4, NO_ROW], vec![])));
        // every term is in its block, once; the rest of the slots are zero
        let total: f32 = p.vals.iter().sum();
        assert_eq!(total, 28.0);
        assert_eq!(p.slots(), 8);
    }
}
