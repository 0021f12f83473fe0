//! The QNN HTP emulator suites live in `tests/`; this library is empty.
//! They share the fixtures and helpers of `sotto-tests`.
