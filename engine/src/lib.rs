//! sotto-engine: running a model.

/// ONNX export of the generic decoder description (static-shape graphs).
pub mod onnx;
/// ONNX Runtime backend with execution-provider chains (QNN HTP, NNAPI, ...).
#[cfg(feature = "ort")]
pub mod ort;
/// candle-transformers' quantized Llama as a reference backend and benchmark
/// baseline, behind the `candle` feature.
#[cfg(feature = "candle")]
pub mod candle_backend;
