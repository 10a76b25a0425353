//! How a value is stored in the arena: the channel-blocked map of the blocked backend
//! ([`MapLay`]), the planar NCHW map of the planar backend ([`PLay`]), flat vectors, and step
//! scratch ([`Lay`]); plus element addressing shared by the layout-generic steps.

use crate::error::EngineError;
use crate::simd::L;

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
    /// Floats per image, or None when that overflows (absurd shapes are a user error).
    pub fn checked_img(&self) -> Option<usize> {
        self.cb()
            .checked_mul(self.h.checked_add(self.pad[0] + self.pad[2])?)?
            .checked_mul(self.w.checked_add(self.pad[1] + self.pad[3])?)?
            .checked_mul(L)
    }
}

/// Planar map storage: per image `c` planes of h*w floats (rounded up to 16 for alignment).
/// Planes have no border: planar kernels mask the lanes that fall outside the map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PLay {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl PLay {
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    pub fn plane(&self) -> usize {
        self.hw().div_ceil(L) * L
    }
    pub fn img(&self) -> usize {
        self.c * self.plane()
    }
    pub fn checked_img(&self) -> Option<usize> {
        self.h.checked_mul(self.w)?.div_ceil(L).checked_mul(L)?.checked_mul(self.c)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Lay {
    Map(MapLay),
    /// `len` contiguous values per image (vectors, and maps in plain NCHW order).
    Flat {
        len: usize,
    },
    /// A planar (NCHW) map, for the planar backend.
    Planar(PLay),
    /// Step-local working memory, not per image.
    Scratch,
}

impl Lay {
    /// Floats per image (0 for scratch).
    pub fn img_floats(&self) -> usize {
        match self {
            Lay::Map(m) => m.img(),
            Lay::Planar(p) => p.img(),
            Lay::Flat { len } => *len,
            Lay::Scratch => 0,
        }
    }

    /// Offset of (channel k, pixel y, x) of image `img` in a buffer of this layout.
    pub fn elem(&self, img: usize, k: usize, y: usize, x: usize) -> usize {
        match self {
            Lay::Map(m) => img * m.img() + (k / L) * m.plane() + m.at(y, x) + k % L,
            Lay::Planar(p) => img * p.img() + k * p.plane() + y * p.w + x,
            // vectors: one pixel per channel
            Lay::Flat { len } => img * len + k,
            Lay::Scratch => 0,
        }
    }
}

/// The lane mask of the first `n` lanes of a vector (all of them from 16 on).
pub(crate) fn prefix(n: usize) -> u16 {
    if n >= L { u16::MAX } else { (1u16 << n) - 1 }
}

/// Zeroes the padding border of every channel block of `batch` images of a blocked map.
pub(crate) fn zero_borders_raw(base: *mut f32, m: &MapLay, batch: usize) {
    if m.pad == [0; 4] || base.is_null() {
        return;
    }
    let row = m.ws() * L;
    for blk in 0..batch * m.cb() {
        // SAFETY: the buffer holds batch * cb planes of hs*ws*16 floats.
        unsafe {
            let p = base.add(blk * m.plane());
            std::ptr::write_bytes(p, 0, m.pad[0] * row);
            std::ptr::write_bytes(p.add((m.pad[0] + m.h) * row), 0, m.pad[2] * row);
            for y in m.pad[0]..m.pad[0] + m.h {
                let r = p.add(y * row);
                std::ptr::write_bytes(r, 0, m.pad[1] * L);
                std::ptr::write_bytes(r.add((m.pad[1] + m.w) * L), 0, m.pad[3] * L);
            }
        }
    }
}

/// The blocked layouts of a step's inputs (all of them must be blocked).
pub(crate) fn map_lays(l: &[Lay]) -> Result<Vec<MapLay>, EngineError> {
    l.iter()
        .map(|l| match l {
            Lay::Map(m) => Ok(*m),
            _ => Err(mixed()),
        })
        .collect()
}

/// The planar layouts of a step's inputs (all of them must be planar).
pub(crate) fn planar_lays(l: &[Lay]) -> Result<Vec<PLay>, EngineError> {
    l.iter()
        .map(|l| match l {
            Lay::Planar(p) => Ok(*p),
            _ => Err(mixed()),
        })
        .collect()
}

/// Steps that read several buffers (concat, products) need them all in the output's layout.
pub(crate) fn same_layout_kind(l: &[Lay], out: Lay) -> Result<(), EngineError> {
    if l.iter().all(|l| std::mem::discriminant(l) == std::mem::discriminant(&out)) {
        Ok(())
    } else {
        Err(mixed())
    }
}

fn mixed() -> EngineError {
    EngineError::Internal("mixed layouts in one step".into())
}
