//! The one sparse-matrix type of the engine: CSR rows whose columns are offsets of pixel rows
//! in a buffer (so a kernel adds `val * buffer[col + pixel]` without an index table).

/// CSR rows; `cols` are offsets (floats) of the column's pixel row in its buffer.
pub(crate) struct Csr {
    pub ptr: Vec<usize>,
    pub cols: Vec<usize>,
    pub vals: Vec<f32>,
}

impl Csr {
    pub fn new() -> Csr {
        Csr {
            ptr: vec![0],
            cols: vec![],
            vals: vec![],
        }
    }

    /// Appends a term to the row being built.
    pub fn push(&mut self, col: usize, val: f32) {
        self.cols.push(col);
        self.vals.push(val);
    }

    /// Ends the row being built.
    pub fn end_row(&mut self) {
        self.ptr.push(self.cols.len());
    }

    /// Terms so far (of all rows, and of the row being built).
    pub fn terms(&self) -> usize {
        self.cols.len()
    }

    /// Storage in floats (indices count as two), for `Plan::weight_bytes`.
    pub fn floats(&self) -> usize {
        self.ptr.len() * 2 + self.cols.len() * 2 + self.vals.len()
    }
}
