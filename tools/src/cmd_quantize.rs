//! `sotto quantize IN OUT --type T`: a GGUF file or Hugging Face folder
//! rewritten as a GGUF file whose weight matrices are `T` (llama.cpp's
//! `--pure` choice: one type, its fallback where rows are not whole blocks).

use crate::cmd_convert::{parse_type, write_gguf};
use crate::error::CliError;
use sotto_kernels::quant::DType;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// GGUF file or Hugging Face folder.
    pub input: PathBuf,
    /// The GGUF file to write (replaced atomically when it exists).
    pub out: PathBuf,
    /// Type of the weight matrices: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k ..
    /// q6_k, iq4_nl, iq4_xs, f16, bf16, f32.
    #[arg(long = "type", value_parser = parse_type)]
    pub dtype: DType,
}

pub fn run(args: QuantizeArgs) -> Result<(), CliError> {
    if args.input == args.out {
        return Err(CliError::Usage(
            "IN and OUT are the same file: the source is read while the output is written".into(),
        ));
    }
    write_gguf(&args.input, &args.out, args.dtype)
}
