//! Moving tensors between the host and OpenVINO tensors (always host memory on the CPU
//! plugin; each run copies its inputs in and its outputs out).

use openvino::{ElementType, Shape, Tensor as OvTensor};

use crate::tensor::{Tensor, TensorData};

/// Why a value could not cross between the host and OpenVINO.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("element type {0}; only float32, float64, int64 and bool are supported")]
    ElementType(String),
    #[error("shape {0:?} does not fit the OpenVINO tensor (int64 dimensions, same size and type)")]
    Shape(Vec<usize>),
    #[error(transparent)]
    Engine(#[from] openvino::InferenceError),
}

/// The OpenVINO element type of a host tensor.
pub fn element_type(t: &Tensor) -> ElementType {
    match t.data {
        TensorData::F32(_) => ElementType::F32,
        TensorData::F64(_) => ElementType::F64,
        TensorData::I64(_) => ElementType::I64,
        TensorData::Bool(_) => ElementType::Boolean,
    }
}

/// A host tensor of rank 1 or more copied into a new OpenVINO tensor. (OpenVINO's C API
/// makes no rank-0 shape: a scalar input is written into the request's own tensor with
/// [`fill`].)
pub fn from_host(t: &Tensor) -> Result<OvTensor, ValueError> {
    let dims = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| ValueError::Shape(t.shape.clone()))?;
    let mut ov = OvTensor::new(element_type(t), &Shape::new(&dims)?)?;
    fill(&mut ov, t)?;
    Ok(ov)
}

/// Copies `t`'s values into `ov`, which has its element type and size.
pub fn fill(ov: &mut OvTensor, t: &Tensor) -> Result<(), ValueError> {
    // An empty tensor (the first scale's KV cache) has no buffer to write.
    if t.is_empty() {
        return Ok(());
    }
    if ov.get_size()? != t.len() || ov.get_element_type()? != element_type(t) {
        return Err(ValueError::Shape(t.shape.clone()));
    }
    let raw = ov.get_raw_data_mut()?;
    match &t.data {
        TensorData::F32(v) => copy_le(raw, v, |x| x.to_le_bytes()),
        TensorData::F64(v) => copy_le(raw, v, |x| x.to_le_bytes()),
        TensorData::I64(v) => copy_le(raw, v, |x| x.to_le_bytes()),
        TensorData::Bool(v) => copy_le(raw, v, |x| [u8::from(*x)]),
    }
    Ok(())
}

fn copy_le<T, const N: usize>(raw: &mut [u8], values: &[T], bytes: impl Fn(&T) -> [u8; N]) {
    for (chunk, v) in raw.chunks_exact_mut(N).zip(values) {
        chunk.copy_from_slice(&bytes(v));
    }
}

/// An OpenVINO tensor copied into a host tensor.
pub fn to_host(ov: &OvTensor) -> Result<Tensor, ValueError> {
    let shape: Vec<usize> = ov
        .get_shape()?
        .get_dimensions()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let n: usize = shape.iter().product();
    let ty = ov.get_element_type()?;
    // No buffer behind an empty tensor: read nothing.
    let raw: &[u8] = if n == 0 { &[] } else { ov.get_raw_data()? };
    fn read<T, const N: usize>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact")))
            .collect()
    }
    let data = match ty {
        ElementType::F32 => TensorData::F32(read(raw, f32::from_le_bytes)),
        ElementType::F64 => TensorData::F64(read(raw, f64::from_le_bytes)),
        ElementType::I64 => TensorData::I64(read(raw, i64::from_le_bytes)),
        ElementType::Boolean => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        other => return Err(ValueError::ElementType(other.to_string())),
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trips through OpenVINO tensors (scalars go through a request's own tensor and
    /// are covered by the sessions' tests).
    #[test]
    fn host_tensors_round_trip() {
        if let Err(why) = super::super::library::load(&Default::default()) {
            assert!(
                !crate::test_support::required("FLOWAR_REQUIRE_OPENVINO"),
                "OpenVINO is required: {why}"
            );
            crate::test_support::note_skip(
                "OpenVINO host tensor round trip",
                &format!("OpenVINO is not installed here: {why}"),
            );
            return;
        }
        for t in [
            Tensor::f32(vec![2, 3], vec![1.0, -2.5, 3.25, f32::MAX, 0.0, -0.0]),
            Tensor::f64(vec![3], vec![1e-300, -2.0, 0.1]),
            Tensor::i64(vec![2], vec![i64::MIN, 7]),
            Tensor {
                shape: vec![3],
                data: TensorData::Bool(vec![true, false, true]),
            },
            Tensor::f32(vec![2, 4, 0, 8], vec![]),
        ] {
            let ov = from_host(&t).unwrap_or_else(|e| panic!("from_host {t:?}: {e:?}"));
            assert_eq!(
                to_host(&ov).unwrap_or_else(|e| panic!("to_host {t:?}: {e:?}")),
                t
            );
        }
    }
}
