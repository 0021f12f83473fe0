//! One graph's ONNX Runtime session on an EP chain, and the report of where
//! its nodes went, written before the first run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::logging::LogLevel;
use ort::session::Session;
use prost::Message;

use super::ep::{Ep, QnnOptions};
use super::runtime::{self, cache_site_packages, locate, OrtConfig};
use super::{Error, Result};
use crate::onnx::manifest::sha256_hex;
use crate::onnx::proto::ModelProto;

/// Where a session's nodes run, from ONNX Runtime's own placement log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Nodes of the graph as given (after QDQ, before ORT's fusions).
    pub graph_nodes: usize,
    /// Nodes per EP after partitioning; a compiling EP (QNN) shows its fused
    /// partitions, each standing for many graph nodes.
    pub per_ep: BTreeMap<String, usize>,
    /// Nodes left to the CPU EP, by op type.
    pub cpu_ops: BTreeMap<String, usize>,
    /// Op types the QNN EP rejected, with its reason.
    pub qnn_rejected: Vec<String>,
    /// The session came from a cached QNN context binary.
    pub from_context_cache: bool,
}

impl Placement {
    /// Nodes that fell back to the CPU EP.
    pub fn cpu_nodes(&self) -> usize {
        self.cpu_ops.values().sum()
    }

    /// Whether no node runs on the CPU EP.
    pub fn fully_offloaded(&self) -> bool {
        self.cpu_nodes() == 0 && !self.per_ep.contains_key("CPUExecutionProvider")
    }

    fn parse(lines: &[String], graph_nodes: usize) -> Placement {
        let mut p = Placement {
            graph_nodes,
            ..Default::default()
        };
        let mut current: Option<String> = None;
        for msg in lines.iter().filter(|m| m.contains("Validation FAILED")) {
            p.qnn_rejected
                .push(msg.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        for line in lines.iter().flat_map(|l| l.lines()) {
            if let Some(rest) = line.split("placed on [").nth(1) {
                let ep = rest.split(']').next().unwrap_or_default().to_string();
                let n = line
                    .rsplit("Number of nodes:")
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                *p.per_ep.entry(ep.clone()).or_default() += n;
                current = Some(ep);
            } else if let (Some(ep), Some(op)) = (&current, line.strip_prefix("  ")) {
                if ep == "CPUExecutionProvider" {
                    let op = op.split_whitespace().next().unwrap_or_default().to_string();
                    *p.cpu_ops.entry(op).or_default() += 1;
                }
            }
        }
        // "All nodes placed on [CPU]" lists no ops; count them as graph nodes.
        if let Some(&n) = p.per_ep.get("CPUExecutionProvider") {
            if p.cpu_ops.is_empty() && n > 0 {
                p.cpu_ops.insert("(all)".into(), n);
            }
        }
        p
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} graph nodes;", self.graph_nodes)?;
        for (ep, n) in &self.per_ep {
            write!(f, " {ep}: {n} node(s)")?;
        }
        if self.from_context_cache {
            write!(f, " (from QNN context cache)")?;
        }
        if !self.cpu_ops.is_empty() {
            write!(f, "; CPU fallback by op: {:?}", self.cpu_ops)?;
        }
        Ok(())
    }
}

/// A session and where its nodes were placed.
#[derive(Debug)]
pub struct GraphSession {
    pub session: Session,
    pub placement: Placement,
}

/// One input value of [`GraphSession::run`].
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    F32(&'a [usize], &'a [f32]),
    F16(&'a [usize], &'a [half::f16]),
    I64(&'a [usize], &'a [i64]),
}

/// A float output: shape and values.
pub type Output = (Vec<i64>, Vec<f32>);

impl GraphSession {
    /// Runs the graph; returns every float output by name (f16 outputs
    /// widened to f32).
    pub fn run(
        &mut self,
        inputs: &[(&str, Input<'_>)],
    ) -> Result<std::collections::HashMap<String, Output>> {
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let v: ort::session::SessionInputValue<'_> = match *input {
                Input::F32(shape, data) => {
                    ort::value::TensorRef::from_array_view((shape.to_vec(), data))?.into()
                }
                Input::F16(shape, data) => {
                    ort::value::TensorRef::from_array_view((shape.to_vec(), data))?.into()
                }
                Input::I64(shape, data) => {
                    ort::value::TensorRef::from_array_view((shape.to_vec(), data))?.into()
                }
            };
            values.push((name.to_string(), v));
        }
        let outputs = self.session.run(values)?;
        let mut out = std::collections::HashMap::new();
        for (name, value) in outputs.iter() {
            if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
                out.insert(
                    name.to_string(),
                    (shape.iter().copied().collect(), data.to_vec()),
                );
            } else if let Ok((shape, data)) = value.try_extract_tensor::<half::f16>() {
                out.insert(
                    name.to_string(),
                    (
                        shape.iter().copied().collect(),
                        data.iter().map(|x| x.to_f32()).collect(),
                    ),
                );
            }
        }
        Ok(out)
    }
}

static SESSION_ID: AtomicUsize = AtomicUsize::new(0);

/// Graph inputs (initializers excluded) with their shapes, `None` for a
/// symbolic axis.
type InputShapes = Vec<(String, Vec<Option<i64>>)>;

/// The graph's inputs and its node count.
fn graph_io(model: &ModelProto) -> (InputShapes, usize) {
    let Some(g) = model.graph.as_ref() else {
        return (Vec::new(), 0);
    };
    let init: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = g
        .input
        .iter()
        .filter(|i| !init.contains(i.name.as_str()))
        .map(|i| {
            (
                i.name.clone(),
                i.dtype_and_shape().map(|(_, s)| s).unwrap_or_default(),
            )
        })
        .collect();
    (inputs, g.node.len())
}

fn qnn_paths(
    config: &OrtConfig,
    q: &QnnOptions,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cache = cache_site_packages().map(|d| d.join("onnxruntime_qnn"));
    let ep_lib = locate(
        "QNN EP library (libonnxruntime_providers_qnn.so)",
        q.ep_library.as_deref(),
        "ORT_QNN_EP_PATH",
        cache
            .as_ref()
            .map(|d| d.join("libonnxruntime_providers_qnn.so")),
    )?;
    let beside = ep_lib.parent().map(|d| d.join("libQnnHtp.so"));
    let backend = locate(
        "QNN HTP backend (libQnnHtp.so)",
        q.backend_path.as_deref(),
        "ORT_QNN_BACKEND_PATH",
        beside,
    )?;
    let _ = config;
    Ok((ep_lib, backend))
}

fn sidecar(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".source-sha256");
    s.into()
}

/// Creates a session for `model_bytes` on the configured EP chain.
pub fn create(config: &OrtConfig, model_bytes: &[u8]) -> Result<GraphSession> {
    create_with(config, model_bytes, None)
}

/// Creates a session for a model file already read: `model_bytes` are the
/// contents of `file` (parsed for the I/O), the session loads from `file`
/// so ONNX Runtime finds external data files (`model.onnx_data`) beside it.
pub(crate) fn create_with(
    config: &OrtConfig,
    model_bytes: &[u8],
    file: Option<&Path>,
) -> Result<GraphSession> {
    let model = ModelProto::decode(model_bytes)
        .map_err(|e| Error::Graph(format!("not an ONNX model: {e}")))?;
    let (inputs, graph_nodes) = graph_io(&model);
    if config.npu_only {
        if let Some((name, shape)) = inputs
            .iter()
            .find(|(_, s)| s.is_empty() || s.iter().any(Option::is_none))
        {
            return Err(Error::DynamicShape {
                input: name.clone(),
                shape: shape.clone(),
            });
        }
    }
    let env = runtime::environment(config)?;
    let log_id = format!(
        "sotto-{}-{}",
        std::process::id(),
        SESSION_ID.fetch_add(1, Ordering::Relaxed)
    );
    // No spinning intra-op threads: between passes they would keep burning
    // the cores the CPU kernels decode on (hybrid), and a phone's battery.
    let mut builder = Session::builder(env)?
        .with_log_id(&log_id)?
        .with_log_level(LogLevel::Verbose)?
        .with_intra_op_spinning(false)?;
    if config.intra_threads > 0 {
        builder = builder.with_intra_threads(config.intra_threads)?;
    }
    let mut cached_context: Option<std::path::PathBuf> = None;
    let source_digest = sha256_hex(model_bytes);
    for ep in &config.eps {
        match ep {
            // Named explicitly: once a plugin EP library (QNN) is
            // registered in the process, a session given no device is
            // offered to it too, and QNN refuses one without a backend
            // path ("Could not determine default backend path").
            Ep::Cpu => {
                let devices: Vec<_> = env
                    .devices()
                    .filter(|d| d.ep().map(|n| n == ep.ort_name()).unwrap_or(false))
                    .collect();
                if !devices.is_empty() {
                    builder = builder.with_devices(devices, None)?;
                }
            }
            Ep::Qnn(q) => {
                let (ep_lib, backend) = qnn_paths(config, q)?;
                runtime::register_ep_library(config, ep.ort_name(), &ep_lib)?;
                let devices: Vec<_> = env
                    .devices()
                    .filter(|d| d.ep().map(|n| n == ep.ort_name()).unwrap_or(false))
                    .collect();
                if devices.is_empty() {
                    return Err(Error::EpUnavailable {
                        ep: ep.ort_name().into(),
                        reason: "the EP library offers no device".into(),
                    });
                }
                let mut options = vec![(
                    format!("{}.backend_path", ep.ort_name()),
                    backend.display().to_string(),
                )];
                if let Some(soc) = q.effective_soc_model() {
                    options.push((format!("{}.soc_model", ep.ort_name()), soc.to_string()));
                }
                if let Some(mode) = &q.htp_performance_mode {
                    options.push((
                        format!("{}.htp_performance_mode", ep.ort_name()),
                        mode.clone(),
                    ));
                }
                builder = builder.with_devices(devices, Some(&options))?;
                if let Some(ctx) = &q.context_cache {
                    let fresh = std::fs::read_to_string(sidecar(ctx))
                        .map(|s| s.trim() == source_digest)
                        .unwrap_or(false);
                    if ctx.is_file() && fresh {
                        cached_context = Some(ctx.clone());
                    } else {
                        let _ = std::fs::remove_file(ctx);
                        builder = builder
                            .with_config_entry("ep.context_enable", "1")?
                            .with_config_entry("ep.context_file_path", ctx.display().to_string())?
                            .with_config_entry("ep.context_embed_mode", "1")?;
                    }
                }
            }
            other => {
                let devices: Vec<_> = env
                    .devices()
                    .filter(|d| d.ep().map(|n| n == other.ort_name()).unwrap_or(false))
                    .collect();
                if devices.is_empty() {
                    return Err(Error::EpUnavailable {
                        ep: other.ort_name().into(),
                        reason: format!("{} is not built into this ONNX Runtime", other.ort_name()),
                    });
                }
                builder = builder.with_devices(devices, None)?;
            }
        }
    }
    if config.npu_only {
        builder = builder.with_config_entry("session.disable_cpu_ep_fallback", "1")?;
    }
    let committed = match &cached_context {
        Some(ctx) => builder.commit_from_file(ctx),
        None => match file {
            Some(path) => builder.commit_from_file(path),
            None => builder.commit_from_memory(model_bytes),
        },
    };
    let lines = runtime::take_log(&log_id);
    let session = committed.map_err(|source| {
        if config.npu_only {
            Error::FallbackRefused {
                rejected: Placement::parse(&lines, graph_nodes).qnn_rejected,
                source,
            }
        } else {
            Error::Ort(source)
        }
    })?;
    if let Some(ctx) = config.eps.iter().find_map(|e| match e {
        Ep::Qnn(q) => q.context_cache.as_ref(),
        _ => None,
    }) {
        if cached_context.is_none() && ctx.is_file() {
            std::fs::write(sidecar(ctx), &source_digest).map_err(|source| Error::Io {
                path: sidecar(ctx),
                source,
            })?;
        }
    }
    let mut placement = Placement::parse(&lines, graph_nodes);
    placement.from_context_cache = cached_context.is_some();
    Ok(GraphSession { session, placement })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_parses_ort_node_placement_lines() {
        let lines = vec![
            "Node placements".to_string(),
            " Node(s) placed on [QNNExecutionProvider]. Number of nodes: 2\n  QNN_1 (QNN_1)\n  QNN_2 (QNN_2)\n".to_string(),
            " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3\n  Gather (g)\n  Cast (c1)\n  Cast (c2)\n".to_string(),
        ];
        let p = Placement::parse(&lines, 40);
        assert_eq!(p.per_ep["QNNExecutionProvider"], 2);
        assert_eq!(p.cpu_ops["Cast"], 2);
        assert_eq!(p.cpu_nodes(), 3);
        assert!(!p.fully_offloaded());
        let all = Placement::parse(
            &[" All nodes placed on [QNNExecutionProvider]. Number of nodes: 1".to_string()],
            40,
        );
        assert!(all.fully_offloaded());
    }
}
