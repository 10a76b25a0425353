//! CPU training kernels on plain f32 slices (NCHW), free of burn: the forward and backward
//! passes that [`crate::ops`] plugs into burn's flex backend.

pub mod batchnorm;
pub mod conv;
pub mod gemm;
