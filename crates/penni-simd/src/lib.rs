//! A 16-lane f32 vector abstraction, shared by penni-engine's inference kernels and
//! penni-train's training kernels. Every kernel is written once, generic over [`Simd`], and
//! instantiated for AVX-512 (one zmm register) and for a portable fallback ([f32; 16], which the
//! compiler vectorises with whatever the baseline target offers). The ISA is detected once at
//! plan time; each step calls a `#[target_feature]` entry point so the whole loop nest of a task
//! is compiled for that ISA and the trait methods (all `#[inline(always)]`) melt into it.

// Every method of `Simd` has the one safety contract stated on the trait (run only on a CPU
// with the ISA; pointers valid for 16 floats, or for the masked lanes).
#![allow(clippy::missing_safety_doc)]

mod int8;
pub use int8::{Dot8, IntIsa};

/// Lanes per vector: 16 f32 = one AVX-512 register, also the channel block of the internal
/// activation layout.
pub const L: usize = 16;

/// The instruction set a plan runs its kernels with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Fallback,
}

impl Isa {
    /// The best ISA this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
        }
        Isa::Fallback
    }
}

/// Operations on a vector of 16 f32. Methods are unsafe because the AVX-512 implementation must
/// only run where the CPU supports it (guaranteed by the dispatch), and loads/stores take raw
/// pointers to 16 valid floats.
pub trait Simd: Copy {
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// a * b + c (fused where the hardware has it).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// Each lane rounded to the nearest integer, ties to even (as f32::round_ties_even).
    unsafe fn round_even(a: Self::V) -> Self::V;
    /// Sum of the 16 lanes.
    unsafe fn hsum(a: Self::V) -> f32;
    /// In-place 16x16 transpose: afterwards lane j of r[i] holds what lane i of r[j] held.
    unsafe fn transpose16(r: &mut [Self::V; 16]);
    /// Lanes whose bit is clear in `keep` become zero.
    #[allow(dead_code)]
    unsafe fn keep(v: Self::V, keep: u16) -> Self::V;
    /// Stores only the lanes whose bit is set in `mask`.
    unsafe fn store_mask(p: *mut f32, mask: u16, v: Self::V);
    /// The even lanes of the 32 floats a, b (a stride-2 load).
    unsafe fn even(a: Self::V, b: Self::V) -> Self::V;
    /// Lane i = lane `idx[i] % 32` of the 32 floats a, b (a two-source permute).
    unsafe fn pick2(a: Self::V, b: Self::V, idx: &[u32; 16]) -> Self::V;
    /// Loads the lanes whose bit is set in `mask`, zero elsewhere; masked-off lanes are never
    /// read, so they may lie outside any allocation.
    unsafe fn load_mask(p: *const f32, mask: u16) -> Self::V;
    /// Lane i = p[idx[i]] where bit i of `mask` is set, zero elsewhere.
    unsafe fn gather(p: *const f32, idx: &[i32; 16], mask: u16) -> Self::V;
    /// Hints that the cache line at `p` will be read soon (any address is allowed).
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
}

/// Portable implementation.
#[derive(Clone, Copy, Debug)]
pub struct Fallback;

impl Simd for Fallback {
    type V = [f32; 16];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 16]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 16]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { (p as *const [f32; 16]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { (p as *mut [f32; 16]).write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // a separate multiply and add: a software fused multiply-add is far slower
        let mut r = c;
        for i in 0..16 {
            r[i] += a[i] * b[i];
        }
        r
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for i in 0..16 {
            r[i] += b[i];
        }
        r
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for i in 0..16 {
            r[i] *= b[i];
        }
        r
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for i in 0..16 {
            // like maxps: a NaN in `a` yields `b`
            r[i] = if a[i] > b[i] { a[i] } else { b[i] };
        }
        r
    }
    #[inline(always)]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for i in 0..16 {
            r[i] = if a[i] < b[i] { a[i] } else { b[i] };
        }
        r
    }
    #[inline(always)]
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for i in 0..16 {
            r[i] /= b[i];
        }
        r
    }
    #[inline(always)]
    unsafe fn round_even(a: Self::V) -> Self::V {
        a.map(f32::round_ties_even)
    }
    #[inline(always)]
    unsafe fn hsum(a: Self::V) -> f32 {
        let mut s = 0.0;
        for v in a {
            s += v;
        }
        s
    }
    #[inline(always)]
    unsafe fn keep(v: Self::V, keep: u16) -> Self::V {
        let mut r = v;
        for (i, x) in r.iter_mut().enumerate() {
            if keep & (1 << i) == 0 {
                *x = 0.0;
            }
        }
        r
    }
    #[inline(always)]
    unsafe fn store_mask(p: *mut f32, mask: u16, v: Self::V) {
        for (i, x) in v.iter().enumerate() {
            if mask & (1 << i) != 0 {
                unsafe { *p.add(i) = *x };
            }
        }
    }
    #[inline(always)]
    unsafe fn load_mask(p: *const f32, mask: u16) -> Self::V {
        let mut r = [0.0; 16];
        for (i, x) in r.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *x = unsafe { *p.wrapping_add(i) };
            }
        }
        r
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, idx: &[i32; 16], mask: u16) -> Self::V {
        let mut r = [0.0; 16];
        for (i, x) in r.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *x = unsafe { *p.offset(idx[i] as isize) };
            }
        }
        r
    }
    #[inline(always)]
    unsafe fn even(a: Self::V, b: Self::V) -> Self::V {
        let mut r = [0.0; 16];
        for i in 0..8 {
            r[i] = a[2 * i];
            r[8 + i] = b[2 * i];
        }
        r
    }
    #[inline(always)]
    unsafe fn pick2(a: Self::V, b: Self::V, idx: &[u32; 16]) -> Self::V {
        std::array::from_fn(|i| {
            let j = (idx[i] % 32) as usize;
            if j < 16 { a[j] } else { b[j - 16] }
        })
    }
    #[inline(always)]
    unsafe fn transpose16(r: &mut [Self::V; 16]) {
        for i in 0..16 {
            for j in i + 1..16 {
                let t = r[i][j];
                r[i][j] = r[j][i];
                r[j][i] = t;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::Avx512;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512F implementation; only used after `Isa::detect` found the feature.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512;

    impl Simd for Avx512 {
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn round_even(a: __m512) -> __m512 {
            // imm8 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC, scale 2^0: ties to even
            unsafe { _mm512_roundscale_ps::<0x08>(a) }
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(a: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(a) }
        }
        #[inline(always)]
        unsafe fn keep(v: __m512, keep: u16) -> __m512 {
            unsafe { _mm512_maskz_mov_ps(keep, v) }
        }
        #[inline(always)]
        unsafe fn store_mask(p: *mut f32, mask: u16, v: __m512) {
            unsafe { _mm512_mask_storeu_ps(p, mask, v) }
        }
        #[inline(always)]
        unsafe fn load_mask(p: *const f32, mask: u16) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(mask, p) }
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }
        #[inline(always)]
        unsafe fn gather(p: *const f32, idx: &[i32; 16], mask: u16) -> __m512 {
            unsafe {
                let vi = _mm512_loadu_si512(idx.as_ptr() as *const _);
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, vi, p)
            }
        }
        #[inline(always)]
        unsafe fn even(a: __m512, b: __m512) -> __m512 {
            unsafe {
                let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                _mm512_permutex2var_ps(a, idx, b)
            }
        }
        #[inline(always)]
        unsafe fn pick2(a: __m512, b: __m512, idx: &[u32; 16]) -> __m512 {
            unsafe { _mm512_permutex2var_ps(a, _mm512_loadu_si512(idx.as_ptr() as *const _), b) }
        }
        #[inline(always)]
        unsafe fn transpose16(r: &mut [__m512; 16]) {
            unsafe {
                // 1: interleave 32-bit elements of row pairs within each 128-bit lane
                let mut t = [_mm512_setzero_ps(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                // 2: interleave 64-bit pairs: u[4g + m], 128-bit lane k = column 4k + m, rows 4g..4g+3
                let mut u = [_mm512_setzero_ps(); 16];
                for g in 0..4 {
                    let (a0, a1) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 1]));
                    let (b0, b1) = (_mm512_castps_pd(t[4 * g + 2]), _mm512_castps_pd(t[4 * g + 3]));
                    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
                    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
                    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
                    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
                }
                // 3-4: gather the four row groups' 128-bit lanes of each column
                for m in 0..4 {
                    let v0 = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
                    let v1 = _mm512_shuffle_f32x4::<0xDD>(u[m], u[4 + m]);
                    let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
                    let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + m], u[12 + m]);
                    r[m] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
                    r[8 + m] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
                    r[4 + m] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
                    r[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
                }
            }
        }
    }
}

/// Generates, for a generic `#[inline(always)] unsafe fn $generic<S: Simd>(args)`, a dispatcher
/// `$name(isa, args)` that calls it compiled for the requested ISA.
#[macro_export]
macro_rules! isa_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $generic:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                unsafe { $generic::<$crate::Avx512>($($arg),*) }
            }
            fn fallback($($arg: $ty),*) {
                unsafe { $generic::<$crate::Fallback>($($arg),*) }
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Isa::Avx512 is only produced by `Isa::detect` on a CPU with AVX-512F and FMA.
                $crate::Isa::Avx512 => unsafe { avx512($($arg),*) },
                _ => fallback($($arg),*),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_transpose<S: Simd>() {
        unsafe {
            let mut data = [0f32; 256];
            for (i, v) in data.iter_mut().enumerate() {
                *v = i as f32;
            }
            let mut r = [S::zero(); 16];
            for i in 0..16 {
                r[i] = S::load(data.as_ptr().add(16 * i));
            }
            S::transpose16(&mut r);
            let mut out = [0f32; 256];
            for i in 0..16 {
                S::store(out.as_mut_ptr().add(16 * i), r[i]);
            }
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(out[16 * i + j], data[16 * j + i], "({i},{j})");
                }
            }
            assert_eq!(S::hsum(S::splat(1.5)), 24.0);
            let a = S::load(data.as_ptr());
            let b = S::load(data.as_ptr().add(16));
            S::store(out.as_mut_ptr(), S::even(a, b));
            for i in 0..16 {
                assert_eq!(out[i], (2 * i) as f32);
            }
            let pick: [u32; 16] = std::array::from_fn(|i| (7 * i as u32 + 3) % 32 + 32 * (i as u32 & 1));
            S::store(out.as_mut_ptr(), S::pick2(a, b, &pick));
            for i in 0..16 {
                assert_eq!(out[i], ((7 * i + 3) % 32) as f32, "pick2 lane {i}");
            }
            let idx: [i32; 16] = std::array::from_fn(|i| (255 - 3 * i) as i32);
            S::store(out.as_mut_ptr(), S::gather(data.as_ptr(), &idx, 0x7FFF));
            for i in 0..16 {
                assert_eq!(out[i], if i < 15 { data[255 - 3 * i] } else { 0.0 });
            }
            let m = S::load_mask(data.as_ptr().add(8), 0x8001);
            S::store(out.as_mut_ptr(), m);
            for i in 0..16 {
                assert_eq!(out[i], if i == 0 || i == 15 { data[8 + i] } else { 0.0 });
            }
            out.fill(-1.0);
            S::store(out.as_mut_ptr(), S::keep(b, 0b1010_0000_0000_0011));
            S::store_mask(out.as_mut_ptr().add(16), 0x00F0, a);
            for i in 0..16 {
                let kept = [0, 1, 13, 15].contains(&i);
                assert_eq!(out[i], if kept { data[16 + i] } else { 0.0 });
                let stored = (4..8).contains(&i);
                assert_eq!(out[16 + i], if stored { data[i] } else { -1.0 }, "{i}");
            }
        }
    }

    #[test]
    fn transpose_fallback() {
        check_transpose::<Fallback>();
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose_avx512() {
        if Isa::detect() == Isa::Avx512 {
            #[target_feature(enable = "avx512f")]
            unsafe fn run() {
                check_transpose::<Avx512>();
            }
            unsafe { run() }
        }
    }
}
