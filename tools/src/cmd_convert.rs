//! `sotto convert HF_DIR OUT.gguf`: a Hugging Face folder as a GGUF file
//! llama.cpp loads (float weights by default). The writing itself is
//! `sotto_models::convert`, shared with `sotto quantize` and `--quant`.

use crate::error::CliError;
use sotto_kernels::quant::DType;
use sotto_models::convert::{parse_weight_type, GgufConversion};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    pub folder: PathBuf,
    /// The GGUF file to write (replaced atomically when it exists).
    pub out: PathBuf,
    /// Type of the weight matrices: f32, f16, bf16, q8_0, q4_0, q4_k, ...
    /// (vectors stay f32).
    #[arg(long = "type", value_parser = parse_type, default_value = "f16")]
    pub dtype: DType,
}

pub fn run(args: ConvertArgs) -> Result<(), CliError> {
    if !args.folder.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a folder: `sotto convert` reads Hugging Face folders; \
             `sotto quantize IN OUT --type T` rewrites a GGUF file",
            args.folder.display()
        )));
    }
    write_gguf(&args.folder, &args.out, args.dtype)
}

/// A weight type by ggml's name, for `--type` and `--quant`.
pub fn parse_type(name: &str) -> Result<DType, String> {
    parse_weight_type(name).ok_or_else(|| {
        let names: Vec<&str> = DType::ALL
            .iter()
            .filter(|d| d.is_weight_type())
            .map(|d| d.name())
            .collect();
        format!("{name:?} is not a weight type ({})", names.join(", "))
    })
}

/// Writes `source` (GGUF file or folder) as the GGUF file `out` with its
/// weights in `dtype`, and says what it wrote and how long it took.
pub fn write_gguf(source: &Path, out: &Path, dtype: DType) -> Result<(), CliError> {
    let started = Instant::now();
    let plan = GgufConversion::plan(source, dtype).map_err(sotto_engine::Error::from)?;
    plan.write_file(out).map_err(sotto_engine::Error::from)?;
    let types: Vec<String> = plan
        .type_counts()
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "wrote {} ({:.1} MiB; tensors: {}) from {} in {:.2} s",
        out.display(),
        plan.output_size() as f64 / (1024.0 * 1024.0),
        types.join(", "),
        source.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
