//! 8-bit dot products into 16 i32 lanes, for the integer kernels of quantized layers: AVX-512
//! VNNI (`vpdpbusd`: four u8 x i8 products summed into each 32-bit lane per instruction) and a
//! portable fallback. Integer sums are exact, so every implementation gives the same integers;
//! the f32 side (conversion, the epilogue) is the [`Simd`] of the same type.

use crate::{Isa, Simd};

/// The instruction set an integer kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntIsa {
    /// AVX-512 with VNNI and VBMI (byte permutes).
    Vnni,
    Fallback,
}

impl IntIsa {
    /// VNNI (with VBMI) where the CPU has it and the f32 kernels run AVX-512; the portable kernels otherwise
    /// (a plan forced onto the portable f32 kernels gets the portable integer ones too).
    pub fn for_isa(isa: Isa) -> IntIsa {
        #[cfg(target_arch = "x86_64")]
        {
            if isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vbmi")
            {
                return IntIsa::Vnni;
            }
        }
        let _ = isa;
        IntIsa::Fallback
    }
}

/// 16 lanes of i32 accumulators beside the f32 vector of [`Simd`].
pub trait Dot8: Simd {
    type I: Copy;
    unsafe fn izero() -> Self::I;
    /// 64 signed bytes (16 lanes of 4) from `p`.
    unsafe fn iload(p: *const i8) -> Self::I;
    /// Lane i of `acc` plus sum over k < 4 of a[k] * w[i][k]: `a` is four unsigned bytes (the
    /// same for every lane), `w` 16 lanes of four signed bytes (from [`Dot8::iload`]).
    unsafe fn dot4(acc: Self::I, a: *const u8, w: Self::I) -> Self::I;
    /// Lane-wise sum with 16 i32 at `p`.
    unsafe fn iadd_load(acc: Self::I, p: *const i32) -> Self::I;
    /// Each lane as f32 (rounded to nearest even beyond 2^24, as `i32 as f32`).
    unsafe fn to_f32(acc: Self::I) -> Self::V;
    /// Stores the 16 lanes of `v`, integers in 0..=255, as bytes.
    unsafe fn store_u8(p: *mut u8, v: Self::V);
    /// Lane i of `acc` plus sum over k < 4 of a[i][k] * w[k]: `a` 16 lanes of four unsigned
    /// bytes, `w` four signed bytes (little-endian in an i32), the same for every lane.
    unsafe fn dot4_lanes(acc: Self::I, a: Self::I, w: i32) -> Self::I;
    /// Byte b of the result = window[idx byte b] for the 128 bytes from `window` (indices
    /// below 128).
    unsafe fn permute_bytes(window: *const u8, idx: Self::I) -> Self::I;
    unsafe fn isplat(x: i32) -> Self::I;
    unsafe fn iadd(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn imin(a: Self::I, b: Self::I) -> Self::I;
    /// Each lane of `v` (within +-2^31) rounded to the nearest integer, ties to even.
    unsafe fn round_to_i32(v: Self::V) -> Self::I;
    /// Lane i of the result holds the four bytes (a[i], b[i], c[i], d[i]), each lane clamped
    /// to 0..=255 first.
    unsafe fn pack_quads(a: Self::I, b: Self::I, c: Self::I, d: Self::I) -> Self::I;
    /// Stores the 64 bytes of `v`.
    unsafe fn istore(p: *mut u8, v: Self::I);
}

impl Dot8 for crate::Fallback {
    type I = [i32; 16];
    #[inline(always)]
    unsafe fn izero() -> [i32; 16] {
        [0; 16]
    }
    #[inline(always)]
    unsafe fn iload(p: *const i8) -> [i32; 16] {
        // the four bytes of each lane, packed as VNNI reads them
        unsafe { (p as *const [i32; 16]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn dot4(acc: [i32; 16], a: *const u8, w: [i32; 16]) -> [i32; 16] {
        unsafe {
            let a = (a as *const [u8; 4]).read_unaligned();
            let mut r = acc;
            for (r, w) in r.iter_mut().zip(w) {
                let w = w.to_ne_bytes();
                for k in 0..4 {
                    *r = r.wrapping_add(a[k] as i32 * w[k] as i8 as i32);
                }
            }
            r
        }
    }
    #[inline(always)]
    unsafe fn iadd_load(acc: [i32; 16], p: *const i32) -> [i32; 16] {
        unsafe {
            let b = (p as *const [i32; 16]).read_unaligned();
            let mut r = acc;
            for i in 0..16 {
                r[i] = r[i].wrapping_add(b[i]);
            }
            r
        }
    }
    #[inline(always)]
    unsafe fn to_f32(acc: [i32; 16]) -> [f32; 16] {
        acc.map(|x| x as f32)
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, v: [f32; 16]) {
        unsafe { (p as *mut [u8; 16]).write_unaligned(v.map(|x| x as u8)) }
    }
    #[inline(always)]
    unsafe fn dot4_lanes(acc: [i32; 16], a: [i32; 16], w: i32) -> [i32; 16] {
        let w = w.to_le_bytes();
        let mut r = acc;
        for (r, a) in r.iter_mut().zip(a) {
            let a = a.to_le_bytes();
            for k in 0..4 {
                *r = r.wrapping_add(a[k] as i32 * w[k] as i8 as i32);
            }
        }
        r
    }
    #[inline(always)]
    unsafe fn permute_bytes(window: *const u8, idx: [i32; 16]) -> [i32; 16] {
        idx.map(|i| {
            let b = i.to_le_bytes().map(|k| unsafe { *window.add(k as usize & 127) });
            i32::from_le_bytes(b)
        })
    }
    #[inline(always)]
    unsafe fn isplat(x: i32) -> [i32; 16] {
        [x; 16]
    }
    #[inline(always)]
    unsafe fn iadd(a: [i32; 16], b: [i32; 16]) -> [i32; 16] {
        std::array::from_fn(|i| a[i].wrapping_add(b[i]))
    }
    #[inline(always)]
    unsafe fn imin(a: [i32; 16], b: [i32; 16]) -> [i32; 16] {
        std::array::from_fn(|i| a[i].min(b[i]))
    }
    #[inline(always)]
    unsafe fn round_to_i32(v: [f32; 16]) -> [i32; 16] {
        v.map(|x| x.round_ties_even() as i32)
    }
    #[inline(always)]
    unsafe fn pack_quads(a: [i32; 16], b: [i32; 16], c: [i32; 16], d: [i32; 16]) -> [i32; 16] {
        let u = |x: i32| x.clamp(0, 255) as u8;
        std::array::from_fn(|i| i32::from_le_bytes([u(a[i]), u(b[i]), u(c[i]), u(d[i])]))
    }
    #[inline(always)]
    unsafe fn istore(p: *mut u8, v: [i32; 16]) {
        unsafe { (p as *mut [i32; 16]).write_unaligned(v) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Dot8;
    use crate::Avx512;
    use std::arch::x86_64::*;

    /// Used only where `IntIsa::for_isa` found VNNI (the dispatch of `dot8_dispatch!`).
    impl Dot8 for Avx512 {
        type I = __m512i;
        #[inline(always)]
        unsafe fn izero() -> __m512i {
            unsafe { _mm512_setzero_si512() }
        }
        #[inline(always)]
        unsafe fn iload(p: *const i8) -> __m512i {
            unsafe { _mm512_loadu_si512(p as *const _) }
        }
        #[inline(always)]
        unsafe fn dot4(acc: __m512i, a: *const u8, w: __m512i) -> __m512i {
            unsafe { _mm512_dpbusd_epi32(acc, _mm512_set1_epi32((a as *const i32).read_unaligned()), w) }
        }
        #[inline(always)]
        unsafe fn iadd_load(acc: __m512i, p: *const i32) -> __m512i {
            unsafe { _mm512_add_epi32(acc, _mm512_loadu_si512(p as *const _)) }
        }
        #[inline(always)]
        unsafe fn to_f32(acc: __m512i) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(acc) }
        }
        #[inline(always)]
        unsafe fn store_u8(p: *mut u8, v: __m512) {
            unsafe { _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v))) }
        }
        #[inline(always)]
        unsafe fn dot4_lanes(acc: __m512i, a: __m512i, w: i32) -> __m512i {
            unsafe { _mm512_dpbusd_epi32(acc, a, _mm512_set1_epi32(w)) }
        }
        #[inline(always)]
        unsafe fn permute_bytes(window: *const u8, idx: __m512i) -> __m512i {
            unsafe {
                let lo = _mm512_loadu_si512(window as *const _);
                let hi = _mm512_loadu_si512(window.add(64) as *const _);
                _mm512_permutex2var_epi8(lo, idx, hi)
            }
        }
        #[inline(always)]
        unsafe fn isplat(x: i32) -> __m512i {
            unsafe { _mm512_set1_epi32(x) }
        }
        #[inline(always)]
        unsafe fn iadd(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_add_epi32(a, b) }
        }
        #[inline(always)]
        unsafe fn imin(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_min_epi32(a, b) }
        }
        #[inline(always)]
        unsafe fn round_to_i32(v: __m512) -> __m512i {
            // the default rounding mode (MXCSR): to nearest, ties to even
            unsafe { _mm512_cvtps_epi32(v) }
        }
        #[inline(always)]
        unsafe fn pack_quads(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m512i {
            unsafe {
                // per 128-bit lane (pixels 4k..4k+3): a0..a3 b0..b3 c0..c3 d0..d3, saturated,
                // then each pixel's four bytes together
                let bytes = _mm512_packus_epi16(_mm512_packus_epi32(a, b), _mm512_packus_epi32(c, d));
                let order = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
                _mm512_shuffle_epi8(bytes, order)
            }
        }
        #[inline(always)]
        unsafe fn istore(p: *mut u8, v: __m512i) {
            unsafe { _mm512_storeu_si512(p as *mut _, v) }
        }
    }
}

/// Like [`isa_dispatch!`](crate::isa_dispatch), for a generic `$generic<S: Dot8>`: the
/// dispatcher `$name(int_isa, args)` runs it compiled for VNNI or portably.
#[macro_export]
macro_rules! dot8_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $generic:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::IntIsa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,avx2,fma")]
            unsafe fn vnni($($arg: $ty),*) {
                unsafe { $generic::<$crate::Avx512>($($arg),*) }
            }
            fn fallback($($arg: $ty),*) {
                unsafe { $generic::<$crate::Fallback>($($arg),*) }
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: IntIsa::Vnni is only produced by `IntIsa::for_isa` on a CPU with
                // AVX-512F, FMA, VNNI and VBMI.
                $crate::IntIsa::Vnni => unsafe { vnni($($arg),*) },
                _ => fallback($($arg),*),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot<S: Dot8>(a: &[u8; 4], w: &[i8; 64], init: &[i32; 16]) -> [i32; 16] {
        unsafe {
            let acc = S::iadd_load(S::izero(), init.as_ptr());
            let r = S::dot4(acc, a.as_ptr(), S::iload(w.as_ptr()));
            let f = S::to_f32(r);
            let mut out = [0f32; 16];
            S::store(out.as_mut_ptr(), f);
            out.map(|x| x as i32)
        }
    }

    #[test]
    fn dot4_matches_the_scalar_sum() {
        let a = [255u8, 0, 7, 128];
        let w: [i8; 64] = std::array::from_fn(|i| (i as i32 * 37 % 256 - 128) as i8);
        let init: [i32; 16] = std::array::from_fn(|i| i as i32 * 1000 - 7000);
        let want: [i32; 16] = std::array::from_fn(|i| init[i] + (0..4).map(|k| a[k] as i32 * w[4 * i + k] as i32).sum::<i32>());
        assert_eq!(dot::<crate::Fallback>(&a, &w, &init), want);
        #[cfg(target_arch = "x86_64")]
        if IntIsa::for_isa(Isa::detect()) == IntIsa::Vnni {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            unsafe fn vnni(a: &[u8; 4], w: &[i8; 64], init: &[i32; 16]) -> [i32; 16] {
                dot::<crate::Avx512>(a, w, init)
            }
            assert_eq!(unsafe { vnni(&a, &w, &init) }, want);
        }
    }

    #[test]
    fn store_u8_writes_the_integers() {
        let v: [f32; 16] = std::array::from_fn(|i| (i * 17) as f32);
        let mut out = [0u8; 16];
        unsafe { <crate::Fallback as Dot8>::store_u8(out.as_mut_ptr(), v) };
        assert_eq!(out, std::array::from_fn(|i| (i * 17) as u8));
        #[cfg(target_arch = "x86_64")]
        if IntIsa::for_isa(Isa::detect()) == IntIsa::Vnni {
            let mut out2 = [0u8; 16];
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            unsafe fn st(p: *mut u8, v: [f32; 16]) {
                unsafe { <crate::Avx512 as Dot8>::store_u8(p, crate::Avx512::load(v.as_ptr())) }
            }
            unsafe { st(out2.as_mut_ptr(), v) };
            assert_eq!(out, out2);
        }
    }
}
