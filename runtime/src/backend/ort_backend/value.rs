//! Moving tensors between the host and onnxruntime values (host or device memory).

use ort::memory::AllocationDevice;
use ort::value::{TensorElementType, ValueType};

use super::BACKEND;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorData};

/// Why an onnxruntime value could not be read into a host tensor.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("not a tensor ({0})")]
    NotTensor(String),
    #[error("element type {0}; only float32, float64, int64 and bool are supported")]
    ElementType(String),
    #[error(transparent)]
    Engine(#[from] ort::Error),
}

/// An error about a value that is not tied to one graph run.
fn resident_err(reason: &str, source: impl Into<crate::error::Cause>) -> Error {
    Error::Backend {
        backend: BACKEND.into(),
        graph: "(resident value)".into(),
        reason: reason.into(),
        source: Some(source.into()),
    }
}

/// A host tensor as an owned onnxruntime value in host memory.
pub(super) fn from_host(t: &Tensor) -> ort::Result<ort::value::DynValue> {
    use ort::value::Tensor as OrtTensor;
    let shape = t.shape.clone();
    Ok(match &t.data {
        TensorData::F32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::F64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bool(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

/// The value as a tensor view (every value the graphs produce is one).
fn as_tensor(value: &ort::value::DynValue) -> Result<ort::value::DynTensorRef<'_>> {
    value
        .view()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(|e| resident_err("not a tensor", e))
}

/// Reads an onnxruntime value into a host tensor, copying it off the device first if needed.
pub(crate) fn to_host(value: &ort::value::DynValue) -> Result<Tensor> {
    let tensor = as_tensor(value)?;
    if tensor.memory_info().is_cpu_accessible() {
        return extract_host(value).map_err(|e| resident_err("", e));
    }
    let host = tensor
        .to(AllocationDevice::CPU, 0)
        .map_err(|e| resident_err("copying from the device failed", e))?;
    extract_host(&host.into_dyn()).map_err(|e| resident_err("", e))
}

/// NaN and infinite float32 elements of `value`, counted in place when the host can read
/// its memory, else in a host copy. Values of other element types have none.
pub(crate) fn count_nonfinite(value: &ort::value::DynValue) -> Result<usize> {
    if !as_tensor(value)?.memory_info().is_cpu_accessible() {
        return Ok(to_host(value)?.count_nonfinite());
    }
    match value.try_extract_tensor::<f32>() {
        Ok((_, data)) => Ok(data.iter().filter(|x| !x.is_finite()).count()),
        Err(_) => Ok(0),
    }
}

pub(crate) fn shape(value: &ort::value::DynValue) -> Vec<usize> {
    match value.dtype() {
        ValueType::Tensor { shape, .. } => dims(shape),
        _ => vec![],
    }
}

pub(crate) fn clone(value: &ort::value::DynValue) -> Result<ort::value::DynValue> {
    Ok((*as_tensor(value)?).clone().into_dyn())
}

/// Copies a host-accessible value's elements into a [`Tensor`].
pub(super) fn extract_host(value: &ort::value::DynValue) -> Result<Tensor, ValueError> {
    fn copy<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &ort::value::DynValue,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Result<Tensor, ValueError> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Ok(Tensor {
            shape: dims(shape),
            data: wrap(data.to_vec()),
        })
    }
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(ValueError::NotTensor(value.dtype().to_string()));
    };
    match ty {
        TensorElementType::Float32 => copy(value, TensorData::F32),
        TensorElementType::Float64 => copy(value, TensorData::F64),
        TensorElementType::Int64 => copy(value, TensorData::I64),
        TensorElementType::Bool => copy(value, TensorData::Bool),
        other => Err(ValueError::ElementType(other.to_string())),
    }
}

pub(super) fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
