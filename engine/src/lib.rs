//! sotto-engine: running a model.
