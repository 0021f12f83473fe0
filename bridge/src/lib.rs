//! sotto-bridge: Signal-protocol sessions and the decrypt -> infer -> encrypt pipeline.
