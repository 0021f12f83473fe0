//! Hand-written protobuf structs (no protoc at build time). The wire
//! messages follow libsignal's `wire.proto` / python-axolotl's
//! `WhisperTextProtocol.proto` field numbers; the storage messages are
//! Sotto's own versioned snapshot layout.

#![allow(clippy::derive_partial_eq_without_eq)]

use zeroize::{Zeroize, ZeroizeOnDrop};

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignalMessageProto {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ratchet_key: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "2")]
    pub counter: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub previous_counter: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub ciphertext: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
// Fields declared in tag order: prost encodes in declaration order, and
// tag order is what python-axolotl and Java protobuf emit (byte-identical
// known answers in tests/data/bridge/axolotl_kat.json).
pub(crate) struct PreKeySignalMessageProto {
    #[prost(uint32, optional, tag = "1")]
    pub pre_key_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub base_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub identity_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub message: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "5")]
    pub registration_id: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub signed_pre_key_id: Option<u32>,
}

// ---- storage (Sotto snapshot v1) ----
//
// These hold keys: they are wiped when dropped, and their Debug (which
// prost::Message requires) prints no field.

macro_rules! redacted_debug {
    ($($name:ident),*) => {$(
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    )*};
}
pub(crate) use redacted_debug;

redacted_debug!(
    ChainProto,
    SkippedKeyProto,
    PendingPreKeyProto,
    SessionStateProto,
    SessionRecordProto
);

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct ChainProto {
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_public: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub ratchet_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub chain_key: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub index: u32,
    /// Skipped message keys as written before `skipped_packed`; read, no
    /// longer written.
    #[prost(message, repeated, tag = "5")]
    pub skipped: Vec<SkippedKeyProto>,
    /// Skipped message keys, oldest first, [`SKIPPED_KEY_LEN`] bytes each:
    /// `counter (u32 LE) || cipher key (32) || mac key (32) || iv (16)`. One
    /// buffer instead of three allocations per key: a record at its limits
    /// holds 410,000 of them and is read for every message.
    #[prost(bytes = "vec", tag = "6")]
    pub skipped_packed: Vec<u8>,
}

pub(crate) const SKIPPED_KEY_LEN: usize = 4 + 32 + 32 + 16;

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct SkippedKeyProto {
    #[prost(uint32, tag = "1")]
    pub counter: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub cipher_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub mac_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub iv: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct PendingPreKeyProto {
    #[prost(uint32, optional, tag = "1")]
    pub pre_key_id: Option<u32>,
    #[prost(uint32, tag = "2")]
    pub signed_pre_key_id: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub base_key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct SessionStateProto {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub local_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub remote_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub root_key: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub previous_counter: u32,
    #[prost(message, optional, tag = "6")]
    pub sender_chain: Option<ChainProto>,
    #[prost(message, repeated, tag = "7")]
    pub receiver_chains: Vec<ChainProto>,
    #[prost(message, optional, tag = "8")]
    pub pending_pre_key: Option<PendingPreKeyProto>,
    #[prost(uint32, tag = "9")]
    pub remote_registration_id: u32,
    #[prost(uint32, tag = "10")]
    pub local_registration_id: u32,
    #[prost(bytes = "vec", tag = "11")]
    pub alice_base_key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct SessionRecordProto {
    #[prost(message, optional, tag = "1")]
    pub current: Option<SessionStateProto>,
    #[prost(message, repeated, tag = "2")]
    pub previous: Vec<SessionStateProto>,
}
