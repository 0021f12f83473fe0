//! sotto-models: what a model is (weights, hyper-parameters, tokenizer, chat template).
