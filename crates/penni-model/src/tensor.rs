/// A dense f32 tensor, row-major. Sparse storage is a file-format concern (see `io`), so every
/// consumer of the IR sees the same simple layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor; `None` when the data length does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        let numel = checked_numel(&shape)?;
        (numel == data.len()).then_some(Self { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self { shape, data: vec![0.0; n] }
    }

    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![value; n],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Number of entries that are not exactly zero: what a pruned tensor really stores.
    pub fn nnz(&self) -> usize {
        self.data.iter().filter(|v| **v != 0.0).count()
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

/// Product of dimensions, `None` on overflow (shapes come from files we do not trust).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
