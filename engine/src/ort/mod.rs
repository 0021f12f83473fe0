//! ONNX Runtime backend (owned by the NPU work).
