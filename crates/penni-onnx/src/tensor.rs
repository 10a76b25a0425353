//! TensorProto <-> values. Every size a file declares is checked against the bytes it really
//! holds before anything is allocated, so a hostile header cannot make penni reserve gigabytes.

use crate::proto::{DATA_LOCATION_EXTERNAL, TensorProto, data_type as dt};

/// A decoded constant: floats (all float types become f32) or integers (all integer types and
/// bool become i64; shapes, axes and the like).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    pub fn numel(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// The values as f32 (integers converted), e.g. a weight stored as int or a clip bound.
    pub fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|x| *x as f32).collect(),
        }
    }

    pub fn i64s(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self.data, Data::F32(_))
    }

    /// Permutes the axes (ONNX Transpose); `perm` must be a permutation of 0..rank.
    pub fn transpose(&self, perm: &[usize]) -> Const {
        let rank = self.dims.len();
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims[p]).collect();
        if self.numel() == 0 {
            return Const {
                dims,
                data: self.data.clone(),
            };
        }
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * self.dims[i + 1];
        }
        let n = self.numel();
        let mut src = Vec::with_capacity(n);
        let mut idx = vec![0usize; rank];
        for _ in 0..n {
            src.push(perm.iter().zip(&idx).map(|(&p, &i)| i * in_strides[p]).sum::<usize>());
            for ax in (0..rank).rev() {
                idx[ax] += 1;
                if idx[ax] < dims[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        let data = match &self.data {
            Data::F32(v) => Data::F32(src.iter().map(|&s| v[s]).collect()),
            Data::I64(v) => Data::I64(src.iter().map(|&s| v[s]).collect()),
        };
        Const { dims, data }
    }
}

/// IEEE half precision to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: renormalise
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn elem_size(t: i32) -> Option<usize> {
    Some(match t {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::DOUBLE | dt::INT64 | dt::UINT64 => 8,
        dt::FLOAT16 | dt::BFLOAT16 | dt::INT16 | dt::UINT16 => 2,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        _ => return None,
    })
}

/// Checked conversion of declared dimensions: negative or overflowing shapes are errors.
pub fn dims_of(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let mut out = Vec::with_capacity(dims.len().min(64));
    if dims.len() > 64 {
        return Err(format!("has {} dimensions", dims.len()));
    }
    // The product of the non-zero dimensions must fit too: later code multiplies any subset.
    let mut nonzero = 1usize;
    for &d in dims {
        if d < 0 {
            return Err(format!("has a negative dimension {d} in {dims:?}"));
        }
        let d = usize::try_from(d).map_err(|_| format!("dimension {d} is too large"))?;
        nonzero = nonzero.checked_mul(d.max(1)).ok_or_else(|| format!("shape {dims:?} overflows"))?;
        out.push(d);
    }
    let numel = if out.contains(&0) { 0 } else { nonzero };
    Ok((out, numel))
}

/// Decodes a TensorProto held inside the file. Errors are plain messages; the caller adds the
/// file and tensor name.
pub fn decode(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == DATA_LOCATION_EXTERNAL || !t.external_data.is_empty() {
        return Err("its data is stored in an external file, which penni does not read; save the model with all weights inside the .onnx file (onnx.save(model, path, save_as_external_data=False))".into());
    }
    let (dims, numel) = dims_of(&t.dims)?;
    let ty = t.data_type;
    let Some(size) = elem_size(ty) else {
        return Err(format!("has element type {}, which penni does not read", dt::name(ty)));
    };
    if !t.raw_data.is_empty() || numel == 0 {
        let want = numel.checked_mul(size).ok_or_else(|| format!("shape {:?} overflows", t.dims))?;
        if t.raw_data.len() != want {
            return Err(format!(
                "declares shape {:?} ({numel} values, {want} bytes of {}) but holds {} bytes of raw data",
                t.dims,
                dt::name(ty),
                t.raw_data.len()
            ));
        }
        let b = &t.raw_data;
        let data = match ty {
            dt::FLOAT => Data::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
            dt::DOUBLE => Data::F32(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            ),
            dt::FLOAT16 => Data::F32(b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()),
            dt::BFLOAT16 => Data::F32(
                b.chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
            ),
            dt::INT64 => Data::I64(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            dt::UINT64 => Data::I64(
                b.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()).min(i64::MAX as u64) as i64)
                    .collect(),
            ),
            dt::INT32 => Data::I64(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            dt::UINT32 => Data::I64(
                b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            dt::INT16 => Data::I64(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect()),
            dt::UINT16 => Data::I64(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect()),
            dt::INT8 => Data::I64(b.iter().map(|&x| x as i8 as i64).collect()),
            _ => Data::I64(b.iter().map(|&x| x as i64).collect()), // UINT8, BOOL
        };
        return Ok(Const { dims, data });
    }
    let (field, len) = match ty {
        dt::FLOAT => ("float_data", t.float_data.len()),
        dt::DOUBLE => ("double_data", t.double_data.len()),
        dt::INT64 => ("int64_data", t.int64_data.len()),
        dt::UINT32 | dt::UINT64 => ("uint64_data", t.uint64_data.len()),
        _ => ("int32_data", t.int32_data.len()),
    };
    if len != numel {
        return Err(format!(
            "declares shape {:?} ({numel} values of {}) but {field} holds {len}",
            t.dims,
            dt::name(ty)
        ));
    }
    let data = match ty {
        dt::FLOAT => Data::F32(t.float_data.clone()),
        dt::DOUBLE => Data::F32(t.double_data.iter().map(|v| *v as f32).collect()),
        // float16/bfloat16 values travel as their bit patterns in int32_data
        dt::FLOAT16 => Data::F32(t.int32_data.iter().map(|v| f16_to_f32(*v as u16)).collect()),
        dt::BFLOAT16 => Data::F32(t.int32_data.iter().map(|v| f32::from_bits((*v as u16 as u32) << 16)).collect()),
        dt::INT64 => Data::I64(t.int64_data.clone()),
        dt::UINT32 | dt::UINT64 => Data::I64(t.uint64_data.iter().map(|v| (*v).min(i64::MAX as u64) as i64).collect()),
        _ => Data::I64(t.int32_data.iter().map(|v| *v as i64).collect()),
    };
    Ok(Const { dims, data })
}

/// An f32 tensor with little-endian raw_data, as every modern exporter writes weights.
pub fn encode_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt::FLOAT,
        raw_data: raw,
        ..Default::default()
    }
}

/// An integer tensor of element type `ty` (INT8, UINT8 or INT32: quantized weights, zero
/// points, biases) with little-endian raw_data.
pub fn encode_int(name: &str, dims: &[usize], ty: i32, data: &[i64]) -> TensorProto {
    let raw_data = match ty {
        dt::INT8 | dt::UINT8 => data.iter().map(|&v| v as u8).collect(),
        dt::INT32 => data.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        _ => unreachable!("encode_int writes 8- and 32-bit integers"),
    };
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: ty,
        raw_data,
        ..Default::default()
    }
}

/// An int64 tensor (shapes, pads) with little-endian raw_data.
pub fn encode_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt::INT64,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn transpose_2d_and_3d() {
        let c = Const {
            dims: vec![2, 3],
            data: Data::F32(vec![0., 1., 2., 3., 4., 5.]),
        };
        let t = c.transpose(&[1, 0]);
        assert_eq!(t.dims, vec![3, 2]);
        assert_eq!(t.data, Data::F32(vec![0., 3., 1., 4., 2., 5.]));
        let c = Const {
            dims: vec![2, 1, 3],
            data: Data::I64((0..6).collect()),
        };
        let t = c.transpose(&[2, 0, 1]);
        assert_eq!(t.dims, vec![3, 2, 1]);
        assert_eq!(t.data, Data::I64(vec![0, 3, 1, 4, 2, 5]));
    }

    #[test]
    fn sizes_are_checked_before_allocation() {
        let t = TensorProto {
            dims: vec![1 << 40, 1 << 20],
            data_type: dt::FLOAT,
            raw_data: vec![0; 8],
            ..Default::default()
        };
        assert!(decode(&t).unwrap_err().contains("values"));
        let t = TensorProto {
            dims: vec![i64::MAX, i64::MAX],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        assert!(decode(&t).unwrap_err().contains("overflows"));
        let t = TensorProto {
            dims: vec![-1],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        assert!(decode(&t).unwrap_err().contains("negative"));
    }

    #[test]
    fn zero_sized_tensors_cannot_hide_overflowing_dims() {
        let t = TensorProto {
            dims: vec![0, 1 << 40, 1 << 40],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        assert!(decode(&t).unwrap_err().contains("overflows"));
        let t = TensorProto {
            dims: vec![0, 5],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        assert_eq!(
            decode(&t).unwrap(),
            Const {
                dims: vec![0, 5],
                data: Data::F32(vec![])
            }
        );
    }

    #[test]
    fn every_weight_encoding_decodes_to_f32() {
        let want = Data::F32(vec![1.0, -2.0, 0.5]);
        let f16_bits = [0x3c00u16, 0xc000, 0x3800];
        let cases = [
            TensorProto {
                dims: vec![3],
                data_type: dt::FLOAT,
                float_data: vec![1.0, -2.0, 0.5],
                ..Default::default()
            },
            TensorProto {
                dims: vec![3],
                data_type: dt::DOUBLE,
                double_data: vec![1.0, -2.0, 0.5],
                ..Default::default()
            },
            TensorProto {
                dims: vec![3],
                data_type: dt::DOUBLE,
                raw_data: [1.0f64, -2.0, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
            TensorProto {
                dims: vec![3],
                data_type: dt::FLOAT16,
                int32_data: f16_bits.iter().map(|b| *b as i32).collect(),
                ..Default::default()
            },
            TensorProto {
                dims: vec![3],
                data_type: dt::FLOAT16,
                raw_data: f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                ..Default::default()
            },
            TensorProto {
                dims: vec![3],
                data_type: dt::BFLOAT16,
                int32_data: vec![0x3f80, 0xc000, 0x3f00],
                ..Default::default()
            },
        ];
        for t in cases {
            assert_eq!(decode(&t).unwrap().data, want, "{}", dt::name(t.data_type));
        }
        let shape = TensorProto {
            dims: vec![2],
            data_type: dt::INT32,
            int32_data: vec![0, -1],
            ..Default::default()
        };
        assert_eq!(decode(&shape).unwrap().data, Data::I64(vec![0, -1]));
        let t = encode_f32("w", &[3], &[1.0, -2.0, 0.5]);
        assert_eq!(decode(&t).unwrap(), Const { dims: vec![3], data: want });
    }
}
