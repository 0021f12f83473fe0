//! ONNX graph export (owned by the NPU work).
