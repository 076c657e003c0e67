//! A plain host tensor: the currency between the runtime and every backend.

/// Element data of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    /// The solver state only (kept in float64, as the reference does).
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::F64(data),
        }
    }
    pub fn f32_scalar(v: f32) -> Tensor {
        Tensor::f32(vec![], vec![v])
    }
    pub fn f64_scalar(v: f64) -> Tensor {
        Tensor::f64(vec![], vec![v])
    }
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::I64(data),
        }
    }
    pub fn bool_scalar(v: bool) -> Tensor {
        Tensor {
            shape: vec![],
            data: TensorData::Bool(vec![v]),
        }
    }
    /// NaN and infinite elements (float tensors; integer and bool ones have none).
    pub fn count_nonfinite(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
            TensorData::F64(v) => v.iter().filter(|x| !x.is_finite()).count(),
            _ => 0,
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The f32 elements, or `None` for other element types.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn into_f64(self) -> Option<Vec<f64>> {
        match self.data {
            TensorData::F64(v) => Some(v),
            _ => None,
        }
    }
    /// Number of stored values (may disagree with the shape in a malformed tensor).
    pub fn stored_len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            TensorData::F32(_) => "float32",
            TensorData::F64(_) => "float64",
            TensorData::I64(_) => "int64",
            TensorData::Bool(_) => "bool",
        }
    }
}
