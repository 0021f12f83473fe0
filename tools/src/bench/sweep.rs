//! The sweep: every combination of the command-line axes, grouped into
//! instances (one loaded backend each) that run a list of tests.
//!
//! Test semantics follow llama-bench: `pp<p>` is the prefill of p random
//! tokens after `depth` untimed ones; `tg<n>` is n single-token decodes after
//! depth + 1 untimed tokens. A 0 in `-p` or `-n` means "no such test".

use super::backends;
use serde::{Deserialize, Serialize};
use sotto_engine::KvTypes;

/// The ISA names `--isa` takes: `auto` (what dispatch picks) or a forced
/// path, as SOTTO_ISA spells it (the kernels' own registry, so a new tier
/// needs no change here).
pub fn isa_choices() -> Vec<&'static str> {
    std::iter::once("auto")
        .chain(sotto_kernels::dispatch::Isa::ALL.iter().map(|i| i.name()))
        .collect()
}

/// Label of the ISA axis for backends that do not run sotto's kernels.
pub const ISA_NOT_APPLICABLE: &str = "-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestKind {
    /// Prompt processing (prefill).
    Pp,
    /// Text generation (single-token decode).
    Tg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestSpec {
    pub kind: TestKind,
    /// Prompt tokens (pp) or generated tokens (tg).
    pub tokens: usize,
    /// Positions already in the KV cache before the timed part.
    pub depth: usize,
}

impl TestSpec {
    /// Cache positions the test needs: depth + p, or depth + 1 + n.
    pub fn positions(&self) -> usize {
        match self.kind {
            TestKind::Pp => self.depth + self.tokens,
            TestKind::Tg => self.depth + 1 + self.tokens,
        }
    }
}

/// "pp512", "tg128", "pp512 @ d1024" (llama-bench's names).
pub fn test_label(kind: TestKind, tokens: usize, depth: usize) -> String {
    let k = match kind {
        TestKind::Pp => "pp",
        TestKind::Tg => "tg",
    };
    if depth > 0 {
        format!("{k}{tokens} @ d{depth}")
    } else {
        format!("{k}{tokens}")
    }
}

/// One backend loaded once (backend × ISA × threads) and the tests it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub backend: String,
    /// An [`isa_choices`] name, or [`ISA_NOT_APPLICABLE`].
    pub isa: String,
    pub threads: usize,
    /// The KV cache's element types (f16 for backends outside sotto's
    /// kernels).
    pub kv: KvTypes,
    pub tests: Vec<TestSpec>,
}

#[derive(Clone, Debug, Default)]
pub struct SweepAxes {
    pub backends: Vec<String>,
    pub isas: Vec<String>,
    pub threads: Vec<usize>,
    pub depths: Vec<usize>,
    pub n_prompt: Vec<usize>,
    pub n_gen: Vec<usize>,
    /// `--kv-type` (empty: f16 only).
    pub kv_types: Vec<KvTypes>,
}

/// Expands the axes in a fixed order (ISA, backend, KV type, threads;
/// inside an instance: depth, then pp tests, then tg tests). Backends that
/// do not run sotto's kernels ignore the ISA and KV type axes and appear
/// once.
pub fn expand(axes: &SweepAxes) -> Vec<Instance> {
    let mut tests = Vec::new();
    for &depth in &axes.depths {
        tests.extend(axes.n_prompt.iter().filter(|&&p| p > 0).map(|&p| TestSpec {
            kind: TestKind::Pp,
            tokens: p,
            depth,
        }));
        tests.extend(axes.n_gen.iter().filter(|&&n| n > 0).map(|&n| TestSpec {
            kind: TestKind::Tg,
            tokens: n,
            depth,
        }));
    }
    let mut out: Vec<Instance> = Vec::new();
    for isa in &axes.isas {
        for backend in &axes.backends {
            let isa = if backends::uses_sotto_kernels(backend) {
                isa.clone()
            } else {
                ISA_NOT_APPLICABLE.to_string()
            };
            let f16 = [KvTypes::default()];
            let kv_types = if axes.kv_types.is_empty() || !backends::uses_sotto_kernels(backend) {
                &f16[..]
            } else {
                &axes.kv_types[..]
            };
            for &kv in kv_types {
                for &threads in &axes.threads {
                    let inst = Instance {
                        backend: backend.clone(),
                        isa: isa.clone(),
                        threads,
                        kv,
                        tests: tests.clone(),
                    };
                    if !out.contains(&inst) {
                        out.push(inst);
                    }
                }
            }
        }
    }
    out
}

/// Checks names against the registries before anything runs.
pub fn validate(axes: &SweepAxes) -> Result<(), String> {
    for isa in &axes.isas {
        let choices = isa_choices();
        if !choices.contains(&isa.as_str()) {
            return Err(format!(
                "unknown --isa {isa:?}; one of {}",
                choices.join(", ")
            ));
        }
    }
    for b in &axes.backends {
        if backends::info(b).is_none() {
            let known: Vec<String> = backends::BACKENDS
                .iter()
                .map(|b| format!("{} ({})", b.name, b.about))
                .collect();
            return Err(format!(
                "unknown --backend {b:?}; one of: {}",
                known.join("; ")
            ));
        }
    }
    if axes.n_prompt.iter().chain(&axes.n_gen).all(|&x| x == 0) {
        return Err("nothing to run: every -p and -n is 0".into());
    }
    let empty = [
        ("-t", axes.threads.is_empty()),
        ("-d", axes.depths.is_empty()),
        ("--backend", axes.backends.is_empty()),
        ("--isa", axes.isas.is_empty()),
    ];
    if let Some((name, _)) = empty.iter().find(|(_, e)| *e) {
        return Err(format!("{name} needs at least one value"));
    }
    Ok(())
}

/// The instances grouped for child processes, in order: the ISA to force
/// (`auto` for backends outside sotto's kernels, so a forced path never
/// reaches them) and the backends to run under it.
pub fn child_groups(instances: &[Instance]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for inst in instances {
        let isa = if inst.isa == ISA_NOT_APPLICABLE {
            "auto"
        } else {
            inst.isa.as_str()
        };
        match groups.iter_mut().find(|(i, _)| i == isa) {
            Some((_, bs)) if bs.contains(&inst.backend) => {}
            Some((_, bs)) => bs.push(inst.backend.clone()),
            None => groups.push((isa.to_string(), vec![inst.backend.clone()])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes() -> SweepAxes {
        SweepAxes {
            backends: vec!["cpu".into(), "candle".into()],
            isas: vec!["auto".into(), "scalar".into()],
            threads: vec![1, 2],
            depths: vec![0, 256],
            n_prompt: vec![128, 0],
            n_gen: vec![64],
            kv_types: Vec::new(),
        }
    }

    #[test]
    fn expansion_crosses_axes_and_collapses_isa_for_other_backends() {
        let inst = expand(&axes());
        // cpu: 2 ISAs × 2 thread counts; candle: 2 thread counts, once.
        assert_eq!(inst.len(), 6);
        let cpu: Vec<_> = inst
            .iter()
            .filter(|i| i.backend == "cpu")
            .map(|i| (i.isa.as_str(), i.threads))
            .collect();
        assert_eq!(
            cpu,
            [("auto", 1), ("auto", 2), ("scalar", 1), ("scalar", 2)]
        );
        assert!(inst
            .iter()
            .filter(|i| i.backend == "candle")
            .all(|i| i.isa == ISA_NOT_APPLICABLE));
        // -p 0 is skipped; per depth: pp then tg.
        let t = &inst[0].tests;
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            TestSpec {
                kind: TestKind::Pp,
                tokens: 128,
                depth: 0
            }
        );
        assert_eq!(
            t[1],
            TestSpec {
                kind: TestKind::Tg,
                tokens: 64,
                depth: 0
            }
        );
        assert_eq!(
            t[3],
            TestSpec {
                kind: TestKind::Tg,
                tokens: 64,
                depth: 256
            }
        );
        assert_eq!(t[2].positions(), 384);
        assert_eq!(t[3].positions(), 321);
    }

    #[test]
    fn labels_match_llama_bench() {
        assert_eq!(test_label(TestKind::Pp, 512, 0), "pp512");
        assert_eq!(test_label(TestKind::Tg, 128, 4096), "tg128 @ d4096");
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut a = axes();
        assert!(validate(&a).is_ok());
        a.isas.push("sse9".into());
        assert!(validate(&a).unwrap_err().contains("sse9"));
        let mut a = axes();
        a.backends = vec!["gpu".into()];
        assert!(validate(&a).unwrap_err().contains("gpu"));
        let mut a = axes();
        a.n_prompt = vec![0];
        a.n_gen = vec![0];
        assert!(validate(&a).is_err());
    }

    #[test]
    fn children_group_by_isa_and_other_backends_run_under_auto() {
        let groups = child_groups(&expand(&axes()));
        assert_eq!(
            groups,
            [
                (
                    "auto".to_string(),
                    vec!["cpu".to_string(), "candle".to_string()]
                ),
                ("scalar".to_string(), vec!["cpu".to_string()]),
            ]
        );
        // A forced ISA never reaches the backends outside sotto's kernels.
        let mut a = axes();
        a.isas = vec!["avx2".into()];
        assert_eq!(
            child_groups(&expand(&a)),
            [
                ("avx2".to_string(), vec!["cpu".to_string()]),
                ("auto".to_string(), vec!["candle".to_string()])
            ]
        );
    }
}
