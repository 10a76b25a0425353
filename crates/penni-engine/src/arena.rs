//! 64-byte aligned f32 storage and the liveness-based placement of buffers in one arena.

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk([f32; 16]);

/// A zero-initialised, 64-byte aligned f32 buffer (aligned so a 16-lane vector never splits a
/// cache line).
pub(crate) struct AVec {
    data: Vec<Chunk>,
    len: usize,
}

impl AVec {
    pub fn zeros(len: usize) -> AVec {
        AVec {
            data: vec![Chunk([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    pub fn from_slice(v: &[f32]) -> AVec {
        let mut a = AVec::zeros(v.len());
        a.as_mut_slice().copy_from_slice(v);
        a
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn ptr(&self) -> *const f32 {
        self.data.as_ptr() as *const f32
    }

    pub fn mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr() as *mut f32
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `data` holds at least `len` initialised floats.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.mut_ptr(), self.len) }
    }
}

/// A buffer to place: `size` floats, live from step `first` to step `last` inclusive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interval {
    pub size: usize,
    pub first: usize,
    pub last: usize,
}

/// Places buffers so that two buffers live at the same time never overlap, largest first at the
/// lowest free offset (greedy by size, the usual heuristic for static memory planning). Offsets
/// are multiples of 16 floats. Returns the offsets and the arena size in floats.
pub(crate) fn place(bufs: &[Interval]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    order.sort_by(|&a, &b| bufs[b].size.cmp(&bufs[a].size).then(bufs[a].first.cmp(&bufs[b].first)));
    let mut offsets = vec![0usize; bufs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0usize;
    for &i in &order {
        let b = bufs[i];
        let size = b.size.div_ceil(16) * 16;
        // occupied ranges of buffers whose lifetime overlaps this one
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| bufs[j].first <= b.last && b.first <= bufs[j].last)
            .map(|&j| (offsets[j], offsets[j] + bufs[j].size.div_ceil(16) * 16))
            .collect();
        busy.sort_unstable();
        let mut off = 0usize;
        for (s, e) in busy {
            if off + size <= s {
                break;
            }
            off = off.max(e);
        }
        offsets[i] = off;
        total = total.max(off + size);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_buffers_never_overlap_and_dead_ones_are_reused() {
        let bufs = [
            Interval {
                size: 100,
                first: 0,
                last: 1,
            },
            Interval {
                size: 50,
                first: 1,
                last: 2,
            },
            Interval {
                size: 100,
                first: 2,
                last: 3,
            },
            Interval {
                size: 10,
                first: 0,
                last: 3,
            },
        ];
        let (off, total) = place(&bufs);
        for i in 0..bufs.len() {
            assert_eq!(off[i] % 16, 0);
            for j in 0..i {
                let live = bufs[i].first <= bufs[j].last && bufs[j].first <= bufs[i].last;
                let (a, b) = (off[i]..off[i] + bufs[i].size, off[j]..off[j] + bufs[j].size);
                if live {
                    assert!(a.end <= b.start || b.end <= a.start, "{i} and {j} overlap");
                }
            }
        }
        // 0 and 2 are never live together: they share memory
        assert!(total < 112 + 64 + 112 + 16);
    }
}
