//! ONNX import and export for the penni model IR.
//!
//! * [`import_file`] / [`import_bytes`] read models as PyTorch and Keras (tf2onnx) export CNNs:
//!   Conv, BatchNormalization, Relu, Clip, pools, residual Add, Flatten/Reshape, Gemm/MatMul.
//!   Anything the IR cannot express is reported at once in [`OnnxError::UnsupportedModel`].
//! * [`export_bytes`] / [`export_file`] write any IR model as plain ONNX (opset 13) that
//!   onnxruntime runs; a PENNI layer becomes a basis conv (group = C) plus a 1x1 combination conv,
//!   tagged in the metadata so that importing the file rebuilds the PENNI layer exactly.
//!
//! The protobuf messages are hand-written prost structs ([`proto`]), so no protoc is needed.

pub mod error;
mod export;
mod import;
pub mod npy;
pub mod proto;
pub mod tensor;

pub use error::{Issue, OnnxError};
pub use export::{EXPORT_IR_VERSION, EXPORT_OPSET, export_bytes, export_file, export_proto};
pub use import::{DECOMPOSED_KEY, MAX_OPSET, MIN_IR_VERSION, MIN_OPSET, SUPPORTED_OPS, import_bytes, import_file, import_proto};
