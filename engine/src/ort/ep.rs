//! The execution-provider chain as configuration. Order is priority: ONNX
//! Runtime offers each node to the first EP that takes it, and the CPU EP
//! takes the rest unless CPU fallback is refused.

use std::path::PathBuf;
use std::str::FromStr;

use super::Error;

/// Options of Qualcomm's QNN EP (a plugin EP library since onnxruntime-qnn 2.x).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QnnOptions {
    /// `libQnnHtp.so` (the HTP backend; on x86-64 its emulator). Default:
    /// `ORT_QNN_BACKEND_PATH`, else beside the EP library.
    pub backend_path: Option<PathBuf>,
    /// `libonnxruntime_providers_qnn.so`. Default: `ORT_QNN_EP_PATH`, else the
    /// scripts/ort-deps.sh cache.
    pub ep_library: Option<PathBuf>,
    /// `burst`, `balanced`, `high_performance`, `power_saver`, …
    pub htp_performance_mode: Option<String>,
    /// QNN's SoC model id (e.g. 57 = SM8650, Snapdragon 8 Gen 3). On a
    /// device QNN detects it; the x86-64 HTP emulator has no SoC to detect
    /// and without one fails to finalize a whole decoder graph
    /// (QNN_COMMON_ERROR_MEM_ALLOC), so there [`EMULATOR_SOC_MODEL`] is the
    /// default.
    pub soc_model: Option<u32>,
    /// Where the compiled QNN context (an EPContext ONNX model) is kept, so a
    /// second start skips graph preparation.
    pub context_cache: Option<PathBuf>,
}

/// The SoC the x86-64 HTP emulator emulates unless told otherwise:
/// SM8650 (Snapdragon 8 Gen 3, HTP v75).
pub const EMULATOR_SOC_MODEL: u32 = 57;

impl QnnOptions {
    /// The SoC model to pass to QNN, if any (see [`QnnOptions::soc_model`]).
    pub fn effective_soc_model(&self) -> Option<u32> {
        self.soc_model
            .or(cfg!(target_arch = "x86_64").then_some(EMULATOR_SOC_MODEL))
    }
}

/// One execution provider of a chain; parsed from `qnn`, `nnapi`,
/// `coreml`, `xnnpack`, `openvino`, `cpu` (options after a colon for QNN:
/// `qnn:soc_model=57`). Providers other than QNN and the CPU must be built
/// into the loaded ONNX Runtime, or session creation fails with
/// [`Error::EpUnavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ep {
    /// Qualcomm's QNN EP on the HTP (Hexagon NPU), loaded as a plugin
    /// library.
    Qnn(QnnOptions),
    /// Android's NNAPI.
    Nnapi,
    /// Apple's Core ML.
    CoreMl,
    /// XNNPACK's optimized CPU kernels.
    Xnnpack,
    /// Intel's OpenVINO.
    OpenVino,
    /// ONNX Runtime's own CPU kernels.
    Cpu,
}

impl Ep {
    /// ONNX Runtime's name of the provider.
    pub fn ort_name(&self) -> &'static str {
        match self {
            Ep::Qnn(_) => "QNNExecutionProvider",
            Ep::Nnapi => "NnapiExecutionProvider",
            Ep::CoreMl => "CoreMLExecutionProvider",
            Ep::Xnnpack => "XnnpackExecutionProvider",
            Ep::OpenVino => "OpenVINOExecutionProvider",
            Ep::Cpu => "CPUExecutionProvider",
        }
    }

    /// Parses a chain like `"qnn,cpu"`. QNN takes typed options after its
    /// name, `:`-separated: `qnn:soc_model=69:htp_performance_mode=burst`,
    /// also `backend_path=…`, `ep_library=…`, `context_cache=…`.
    pub fn parse_chain(s: &str) -> Result<Vec<Ep>, Error> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Ep::from_str)
            .collect()
    }
}

/// QNN's options from `key=value` pairs.
fn qnn_options<'a>(pairs: impl Iterator<Item = &'a str>) -> Result<QnnOptions, Error> {
    let mut o = QnnOptions::default();
    for pair in pairs {
        let bad = |reason: &str| Error::BadEpOption {
            ep: "qnn".into(),
            option: pair.to_string(),
            reason: reason.to_string(),
        };
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("empty value"));
        }
        match key.trim().to_ascii_lowercase().as_str() {
            "soc_model" => {
                o.soc_model = Some(value.parse().map_err(|_| bad("not a SoC model number"))?)
            }
            "htp_performance_mode" | "perf" => {
                const MODES: [&str; 9] = [
                    "burst",
                    "balanced",
                    "default",
                    "high_performance",
                    "high_power_saver",
                    "low_balanced",
                    "low_power_saver",
                    "power_saver",
                    "sustained_high_performance",
                ];
                if !MODES.contains(&value) {
                    return Err(bad("unknown HTP performance mode"));
                }
                o.htp_performance_mode = Some(value.to_string());
            }
            "backend_path" => o.backend_path = Some(value.into()),
            "ep_library" => o.ep_library = Some(value.into()),
            "context_cache" => o.context_cache = Some(value.into()),
            _ => {
                return Err(bad(
                    "unknown option (soc_model, htp_performance_mode, backend_path, ep_library, context_cache)",
                ))
            }
        }
    }
    Ok(o)
}

impl FromStr for Ep {
    type Err = Error;
    fn from_str(s: &str) -> Result<Ep, Error> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if matches!(name.as_str(), "qnn" | "htp") {
            return Ok(Ep::Qnn(qnn_options(parts)?));
        }
        if let Some(extra) = parts.next() {
            return Err(Error::BadEpOption {
                ep: name,
                option: extra.to_string(),
                reason: "this provider takes no options".into(),
            });
        }
        Ok(match name.as_str() {
            "nnapi" => Ep::Nnapi,
            "coreml" => Ep::CoreMl,
            "xnnpack" => Ep::Xnnpack,
            "openvino" => Ep::OpenVino,
            "cpu" => Ep::Cpu,
            _ => return Err(Error::UnknownEp(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_parse_in_order_and_unknown_names_are_typed_errors() {
        let chain = Ep::parse_chain("qnn, CPU").unwrap();
        assert_eq!(chain, vec![Ep::Qnn(QnnOptions::default()), Ep::Cpu]);
        assert_eq!(chain[0].ort_name(), "QNNExecutionProvider");
        assert!(matches!(Ep::parse_chain("qnn,tpu"), Err(Error::UnknownEp(n)) if n == "tpu"));
    }

    #[test]
    fn qnn_takes_typed_options_in_the_chain() {
        let chain =
            Ep::parse_chain("qnn:soc_model=69:htp_performance_mode=burst:context_cache=/tmp/c,cpu")
                .unwrap();
        let Ep::Qnn(o) = &chain[0] else {
            panic!("{chain:?}")
        };
        assert_eq!(o.soc_model, Some(69));
        assert_eq!(o.effective_soc_model(), Some(69));
        assert_eq!(o.htp_performance_mode.as_deref(), Some("burst"));
        assert_eq!(
            o.context_cache.as_deref(),
            Some(std::path::Path::new("/tmp/c"))
        );
        assert_eq!(chain[1], Ep::Cpu);
        for bad in [
            "qnn:soc_model=sm8650",
            "qnn:perf=turbo",
            "qnn:soc_model",
            "qnn:color=blue",
            "qnn:backend_path=",
            "cpu:threads=2",
        ] {
            assert!(
                matches!(Ep::parse_chain(bad), Err(Error::BadEpOption { .. })),
                "{bad}"
            );
        }
    }
}
