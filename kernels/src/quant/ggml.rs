//! Every tensor type a GGUF file can name: ggml's type ids with their names,
//! block sizes and bytes per block (ggml's `type_traits`: `ggml.h`,
//! `ggml.c`), whether or not Sotto has kernels for them. The GGUF reader
//! checks tensor sizes with these facts, so a file whose tensors Sotto cannot
//! run still parses (and `sotto inspect` can say which tensors those are);
//! [`DType`] is the subset Sotto runs, reached through `DType::try_from`.

use super::DType;
use crate::{Error, Result};

/// A ggml tensor type (discriminant = ggml's type id). Ids ggml removed
/// (4, 5, 31–33, 36–38) and ids past `GGML_TYPE_COUNT` have no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
// Each variant is ggml's `GGML_TYPE_<NAME>` under its own name; a line per
// variant would repeat the name.
#[allow(missing_docs)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

/// One past the largest ggml type id (`GGML_TYPE_COUNT`).
pub const GGML_TYPE_COUNT: u32 = 43;

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The type with ggml id `id`, or [`Error::UnknownGgmlType`] for a
    /// removed or unknown id.
    pub fn from_id(id: u32) -> Result<GgmlType> {
        Self::ALL
            .into_iter()
            .find(|t| *t as u32 == id)
            .ok_or(Error::UnknownGgmlType { id })
    }

    /// ggml's numeric id for this type, as stored in a GGUF tensor header
    /// (the inverse of [`GgmlType::from_id`]).
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// ggml's facts: (name, elements per block, bytes per block).
    const fn facts(self) -> (&'static str, usize, usize) {
        use GgmlType::*;
        match self {
            F32 => ("f32", 1, 4),
            F16 => ("f16", 1, 2),
            Q4_0 => ("q4_0", 32, 18),
            Q4_1 => ("q4_1", 32, 20),
            Q5_0 => ("q5_0", 32, 22),
            Q5_1 => ("q5_1", 32, 24),
            Q8_0 => ("q8_0", 32, 34),
            Q8_1 => ("q8_1", 32, 36),
            Q2_K => ("q2_K", 256, 84),
            Q3_K => ("q3_K", 256, 110),
            Q4_K => ("q4_K", 256, 144),
            Q5_K => ("q5_K", 256, 176),
            Q6_K => ("q6_K", 256, 210),
            Q8_K => ("q8_K", 256, 292),
            IQ2_XXS => ("iq2_xxs", 256, 66),
            IQ2_XS => ("iq2_xs", 256, 74),
            IQ3_XXS => ("iq3_xxs", 256, 98),
            IQ1_S => ("iq1_s", 256, 50),
            IQ4_NL => ("iq4_nl", 32, 18),
            IQ3_S => ("iq3_s", 256, 110),
            IQ2_S => ("iq2_s", 256, 82),
            IQ4_XS => ("iq4_xs", 256, 136),
            I8 => ("i8", 1, 1),
            I16 => ("i16", 1, 2),
            I32 => ("i32", 1, 4),
            I64 => ("i64", 1, 8),
            F64 => ("f64", 1, 8),
            IQ1_M => ("iq1_m", 256, 56),
            BF16 => ("bf16", 1, 2),
            TQ1_0 => ("tq1_0", 256, 54),
            TQ2_0 => ("tq2_0", 256, 66),
            MXFP4 => ("mxfp4", 32, 17),
            NVFP4 => ("nvfp4", 64, 36),
            Q1_0 => ("q1_0", 128, 18),
            Q2_0 => ("q2_0", 64, 18),
        }
    }

    /// ggml's type name (`"q4_K"`, `"iq2_xxs"`, …).
    pub const fn name(self) -> &'static str {
        self.facts().0
    }

    /// Elements per block (1 for the plain number types).
    pub const fn block_size(self) -> usize {
        self.facts().1
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.facts().2
    }

    /// Bytes of one row of `cols` elements; `None` when `cols` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let bs = self.block_size();
        if !cols.is_multiple_of(bs) {
            return None;
        }
        (cols / bs).checked_mul(self.type_size())
    }

    /// The Sotto type of this ggml type, when Sotto has kernels for it.
    pub fn dtype(self) -> Result<DType> {
        DType::try_from(self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = Error;
    fn try_from(id: u32) -> Result<GgmlType> {
        GgmlType::from_id(id)
    }
}

impl TryFrom<GgmlType> for DType {
    type Error = Error;
    /// [`Error::UnsupportedGgmlType`] for a type Sotto has no kernels for.
    fn try_from(ty: GgmlType) -> Result<DType> {
        DType::ALL
            .iter()
            .copied()
            .find(|d| d.ggml_type() == ty)
            .ok_or(Error::UnsupportedGgmlType { ty })
    }
}

impl From<DType> for GgmlType {
    fn from(d: DType) -> GgmlType {
        d.ggml_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ggmls_and_removed_ids_are_errors() {
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(GgmlType::from_id(t.id()), Ok(*t));
            if i > 0 {
                assert!(GgmlType::ALL[i - 1].id() < t.id(), "id order");
            }
            assert!(t.id() < GGML_TYPE_COUNT);
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, GGML_TYPE_COUNT, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), Err(Error::UnknownGgmlType { id }));
        }
        assert_eq!(
            GgmlType::ALL.len() + 8,
            GGML_TYPE_COUNT as usize,
            "every id is a type or one of the 8 removed ones"
        );
    }

    #[test]
    fn every_dtype_is_its_ggml_type_and_the_rest_are_typed_errors() {
        for &d in DType::ALL {
            let g = d.ggml_type();
            assert_eq!(DType::try_from(g), Ok(d));
            assert_eq!(g.id(), d as u32);
            assert_eq!(g.name(), d.name());
        }
        let err = DType::try_from(GgmlType::IQ2_XXS).unwrap_err();
        assert_eq!(
            err,
            Error::UnsupportedGgmlType {
                ty: GgmlType::IQ2_XXS
            }
        );
        assert_eq!(
            err.to_string(),
            "ggml type iq2_xxs (id 16) has no kernels in sotto"
        );
    }
}
