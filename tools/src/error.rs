//! The command line's error type: the engine's typed errors kept as they
//! are (so their sources print), plus what only the CLI can get wrong.

/// What a `sotto` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The engine refused (model file, backend, generation).
    #[error(transparent)]
    Engine(#[from] sotto_engine::Error),
    /// Flags that do not go together.
    #[error("{0}")]
    Usage(String),
    /// The default model could not be fetched.
    #[error("{0}")]
    ModelFetch(String),
    /// Terminal or file I/O of the command itself.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
