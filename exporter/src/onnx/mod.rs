//! ONNX protobuf messages and a small graph builder on top of them.
pub mod builder;
pub mod proto;

pub use builder::{Dim, Elem, Graph, Val};

/// The opset every exported graph uses. Opset 17 keeps `ReduceMean` axes as attributes
/// (tract needs constant axes) and predates the GroupNormalization semantics change.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
