//! The op families, one module each, with their layouts and kernels inside. Each family's
//! steps implement [`StepOp`](crate::step::StepOp); the planner (`crate::plan`) builds them and
//! never looks inside.
//!
//! - `conv`: dense convolution (blocked implicit GEMM, planar register tiles);
//! - `decomposed`: PENNI convolution (analysis, cost model and strategy, CSR, both backends);
//! - `pool`: max / average / global average pooling;
//! - `elementwise`: unfused add / batchnorm / activation, element-wise activations and products;
//! - `linear`, `concat`, `softmax`;
//! - `convert`: layout conversions (input, flatten, output).

pub(crate) mod concat;
pub(crate) mod conv;
pub(crate) mod convert;
pub(crate) mod decomposed;
pub(crate) mod elementwise;
pub(crate) mod linear;
pub(crate) mod pool;
pub(crate) mod softmax;
