//! Helpers shared by the integration tests (model location, reference data).
