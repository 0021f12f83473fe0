//! The v3 wire format: `version || protobuf || mac(8)` for SignalMessage
//! and `version || protobuf` for PreKeySignalMessage.
//!
//! The version byte is `(message_version << 4) | newest_version_of_sender`.
//! Readers look at the high nibble only: libsignal (protocol.rs) and
//! python-axolotl both do, and libsignal 0.72 writes 0x34 for a v3 session
//! (it speaks v4 too). Sessions here are v3 only, so a high nibble of 3 is
//! accepted whatever the low one says, and anything else is
//! [`Error::UnsupportedVersion`]. We write 0x33, which both read as v3.

use prost::Message as _;
use subtle::ConstantTimeEq;

use crate::error::{malformed, Error, Result};
use crate::kdf::hmac_sha256;
use crate::keys::{IdentityKey, PublicKey};
use crate::proto::{PreKeySignalMessageProto, SignalMessageProto};

/// The message (and session) version this bridge speaks: X3DH without
/// Kyber, the Double Ratchet of libsignal v3.
pub const CIPHERTEXT_VERSION: u8 = 3;
/// The version byte we write: version 3, and 3 as the newest we speak.
pub const VERSION_BYTE: u8 = (CIPHERTEXT_VERSION << 4) | CIPHERTEXT_VERSION;
pub const MAC_LEN: usize = 8;

/// The message version a version byte announces (its high nibble).
fn message_version(byte: u8) -> u8 {
    byte >> 4
}

fn check_version(byte: u8) -> Result<()> {
    // The low nibble (the sender's newest version) does not matter to a
    // reader: a v4-capable libsignal writes 0x34 on a v3 session. In a
    // SignalMessage the byte is MAC-covered; in a PreKeySignalMessage it is
    // not, like the registration id, and changes nothing it decrypts to.
    if message_version(byte) != CIPHERTEXT_VERSION {
        return Err(Error::UnsupportedVersion(byte));
    }
    Ok(())
}

/// A ratchet message. `serialized` is what travelled, so the MAC is
/// checked over the exact bytes received.
#[derive(Clone, PartialEq, Eq)]
pub struct SignalMessage {
    sender_ratchet_key: PublicKey,
    counter: u32,
    previous_counter: u32,
    ciphertext: Vec<u8>,
    serialized: Vec<u8>,
}

impl SignalMessage {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mac_key: &[u8; 32],
        sender_ratchet_key: PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext: Vec<u8>,
        sender_identity: &IdentityKey,
        receiver_identity: &IdentityKey,
    ) -> Self {
        let proto = SignalMessageProto {
            ratchet_key: Some(sender_ratchet_key.serialize().to_vec()),
            counter: Some(counter),
            previous_counter: Some(previous_counter),
            ciphertext: Some(ciphertext.clone()),
        };
        let mut serialized = Vec::with_capacity(1 + proto.encoded_len() + MAC_LEN);
        serialized.push(VERSION_BYTE);
        proto
            .encode(&mut serialized)
            .unwrap_or_else(|_| unreachable!("Vec grows"));
        let mac = compute_mac(mac_key, sender_identity, receiver_identity, &serialized);
        serialized.extend_from_slice(&mac);
        Self {
            sender_ratchet_key,
            counter,
            previous_counter,
            ciphertext,
            serialized,
        }
    }

    /// Parses a serialized SignalMessage (`version || protobuf || mac`).
    /// Errors: [`Error::MessageTooShort`], [`Error::UnsupportedVersion`],
    /// [`Error::Malformed`] (missing field, bad protobuf) or
    /// [`Error::InvalidKey`]. The MAC is not checked here
    /// ([`SignalMessage::verify_mac`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 1 + MAC_LEN {
            return Err(Error::MessageTooShort { len: bytes.len() });
        }
        check_version(bytes[0])?;
        let body = &bytes[1..bytes.len() - MAC_LEN];
        let proto = SignalMessageProto::decode(body)
            .map_err(|e| malformed("SignalMessage", e.to_string()))?;
        let ratchet_key = proto
            .ratchet_key
            .ok_or_else(|| malformed("SignalMessage", "no ratchet key"))?;
        let sender_ratchet_key = PublicKey::deserialize(&ratchet_key)?;
        let counter = proto
            .counter
            .ok_or_else(|| malformed("SignalMessage", "no counter"))?;
        let ciphertext = proto
            .ciphertext
            .ok_or_else(|| malformed("SignalMessage", "no ciphertext"))?;
        Ok(Self {
            sender_ratchet_key,
            counter,
            previous_counter: proto.previous_counter.unwrap_or(0),
            ciphertext,
            serialized: bytes.to_vec(),
        })
    }

    /// Whether the 8-byte MAC matches HMAC-SHA256 under `mac_key` over
    /// both identity keys (sender first) and the message; compared in
    /// constant time.
    pub fn verify_mac(
        &self,
        sender_identity: &IdentityKey,
        receiver_identity: &IdentityKey,
        mac_key: &[u8; 32],
    ) -> bool {
        let split = self.serialized.len() - MAC_LEN;
        let expected = compute_mac(
            mac_key,
            sender_identity,
            receiver_identity,
            &self.serialized[..split],
        );
        bool::from(expected.ct_eq(&self.serialized[split..]))
    }

    /// The sender's current ratchet public key.
    pub fn sender_ratchet_key(&self) -> &PublicKey {
        &self.sender_ratchet_key
    }
    /// The message's index in the sender's current sending chain.
    pub fn counter(&self) -> u32 {
        self.counter
    }
    /// The length of the sender's previous sending chain (0 if absent).
    pub fn previous_counter(&self) -> u32 {
        self.previous_counter
    }
    /// The AES-256-CBC encrypted, padded body.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
    /// The exact bytes received or sent, MAC included.
    pub fn serialized(&self) -> &[u8] {
        &self.serialized
    }
}

impl std::fmt::Debug for SignalMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalMessage")
            .field("sender_ratchet_key", &self.sender_ratchet_key)
            .field("counter", &self.counter)
            .field("previous_counter", &self.previous_counter)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

pub(crate) fn compute_mac(
    mac_key: &[u8; 32],
    sender_identity: &IdentityKey,
    receiver_identity: &IdentityKey,
    versioned_body: &[u8],
) -> [u8; MAC_LEN] {
    let full = hmac_sha256(
        mac_key,
        &[
            &sender_identity.serialize(),
            &receiver_identity.serialize(),
            versioned_body,
        ],
    );
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&full[..MAC_LEN]);
    mac
}

/// The first messages of a session, carrying what the receiver needs to
/// run X3DH.
#[derive(Clone, PartialEq, Eq)]
pub struct PreKeySignalMessage {
    registration_id: u32,
    pre_key_id: Option<u32>,
    signed_pre_key_id: u32,
    base_key: PublicKey,
    identity_key: IdentityKey,
    message: SignalMessage,
    serialized: Vec<u8>,
}

impl PreKeySignalMessage {
    pub(crate) fn new(
        registration_id: u32,
        pre_key_id: Option<u32>,
        signed_pre_key_id: u32,
        base_key: PublicKey,
        identity_key: IdentityKey,
        message: SignalMessage,
    ) -> Self {
        let proto = PreKeySignalMessageProto {
            registration_id: Some(registration_id),
            pre_key_id,
            signed_pre_key_id: Some(signed_pre_key_id),
            base_key: Some(base_key.serialize().to_vec()),
            identity_key: Some(identity_key.serialize().to_vec()),
            message: Some(message.serialized.clone()),
        };
        let mut serialized = Vec::with_capacity(1 + proto.encoded_len());
        serialized.push(VERSION_BYTE);
        proto
            .encode(&mut serialized)
            .unwrap_or_else(|_| unreachable!("Vec grows"));
        Self {
            registration_id,
            pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            serialized,
        }
    }

    /// Parses a serialized PreKeySignalMessage (`version || protobuf`),
    /// including the SignalMessage inside it. Errors as for
    /// [`SignalMessage::decode`]; nothing is verified here.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(Error::MessageTooShort { len: 0 });
        };
        check_version(version)?;
        let proto = PreKeySignalMessageProto::decode(body)
            .map_err(|e| malformed("PreKeySignalMessage", e.to_string()))?;
        let need = |v: Option<Vec<u8>>, what: &'static str| {
            v.ok_or_else(|| malformed("PreKeySignalMessage", what))
        };
        let base_key = PublicKey::deserialize(&need(proto.base_key, "no base key")?)?;
        let identity_key = IdentityKey::deserialize(&need(proto.identity_key, "no identity key")?)?;
        let message = SignalMessage::decode(&need(proto.message, "no message")?)?;
        let signed_pre_key_id = proto
            .signed_pre_key_id
            .ok_or_else(|| malformed("PreKeySignalMessage", "no signed prekey id"))?;
        Ok(Self {
            registration_id: proto.registration_id.unwrap_or(0),
            pre_key_id: proto.pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            serialized: bytes.to_vec(),
        })
    }

    /// The sender's registration id (0 if absent); not authenticated.
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }
    /// The one-time prekey of ours the sender used, if any.
    pub fn pre_key_id(&self) -> Option<u32> {
        self.pre_key_id
    }
    /// The signed prekey of ours the sender used.
    pub fn signed_pre_key_id(&self) -> u32 {
        self.signed_pre_key_id
    }
    /// The sender's X3DH ephemeral (base) key.
    pub fn base_key(&self) -> &PublicKey {
        &self.base_key
    }
    /// The sender's identity key, as claimed (checked against the trust
    /// store when decrypting).
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }
    /// The first ratchet message, carried inside.
    pub fn message(&self) -> &SignalMessage {
        &self.message
    }
    /// The exact bytes received or sent.
    pub fn serialized(&self) -> &[u8] {
        &self.serialized
    }
}

impl std::fmt::Debug for PreKeySignalMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreKeySignalMessage")
            .field("registration_id", &self.registration_id)
            .field("pre_key_id", &self.pre_key_id)
            .field("signed_pre_key_id", &self.signed_pre_key_id)
            .field("base_key", &self.base_key)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// Either kind of message, as an envelope carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CiphertextMessage {
    /// The first messages of a session, until the sender has heard back:
    /// they carry the X3DH material.
    PreKey(PreKeySignalMessage),
    /// An ordinary ratchet message on an established session.
    Signal(SignalMessage),
}

impl CiphertextMessage {
    /// The exact bytes received or sent.
    pub fn serialized(&self) -> &[u8] {
        match self {
            Self::PreKey(m) => m.serialized(),
            Self::Signal(m) => m.serialized(),
        }
    }
    /// Which kind it is, as an envelope labels it.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::PreKey(_) => MessageKind::PreKey,
            Self::Signal(_) => MessageKind::Message,
        }
    }
}

/// The envelope's label for the message kind (Signal's `PREKEY_BUNDLE`
/// and `CIPHERTEXT` envelope types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A [`PreKeySignalMessage`].
    PreKey,
    /// A [`SignalMessage`].
    Message,
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn sample() -> (PreKeySignalMessage, [u8; 32], IdentityKey, IdentityKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(34);
        let (a, b) = (
            IdentityKey(KeyPair::generate(&mut rng).public_key),
            IdentityKey(KeyPair::generate(&mut rng).public_key),
        );
        let mac_key = [7u8; 32];
        let inner = SignalMessage::new(
            &mac_key,
            KeyPair::generate(&mut rng).public_key,
            5,
            2,
            vec![1; 16],
            &a,
            &b,
        );
        let base = KeyPair::generate(&mut rng).public_key;
        (
            PreKeySignalMessage::new(9, Some(1), 2, base, a, inner),
            mac_key,
            a,
            b,
        )
    }

    /// Every version byte, read as libsignal reads it: the high nibble
    /// decides, the low nibble (the sender's newest version) does not.
    #[test]
    fn version_bytes_are_read_by_their_high_nibble() {
        let (prekey, mac_key, a, b) = sample();
        let signal = prekey.message().serialized().to_vec();
        let outer = prekey.serialized().to_vec();
        for byte in 0..=u8::MAX {
            let mut s = signal.clone();
            s[0] = byte;
            let mut p = outer.clone();
            p[0] = byte;
            let (decoded_signal, decoded_prekey) =
                (SignalMessage::decode(&s), PreKeySignalMessage::decode(&p));
            if byte >> 4 == 3 {
                let m = decoded_signal.unwrap_or_else(|e| panic!("{byte:#04x}: {e}"));
                // The byte is MAC-covered in a SignalMessage.
                assert_eq!(m.verify_mac(&a, &b, &mac_key), byte == VERSION_BYTE);
                let p = decoded_prekey.unwrap_or_else(|e| panic!("{byte:#04x}: {e}"));
                assert_eq!(p.message(), prekey.message());
                assert_eq!(p.base_key(), prekey.base_key());
            } else {
                for err in [decoded_signal.err(), decoded_prekey.err()] {
                    assert!(
                        matches!(err, Some(Error::UnsupportedVersion(b)) if b == byte),
                        "{byte:#04x}: {err:?}"
                    );
                }
            }
        }
        assert!(Error::UnsupportedVersion(0x44)
            .to_string()
            .starts_with("unsupported message version 4 (version byte 0x44)"));
    }

    /// What libsignal 0.72 writes for a v3 session.
    #[test]
    fn libsignal_version_byte_0x34_is_version_3() {
        let (prekey, ..) = sample();
        let mut p = prekey.serialized().to_vec();
        p[0] = 0x34;
        let decoded = PreKeySignalMessage::decode(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded.serialized(), &p[..]);
        assert_eq!(VERSION_BYTE, 0x33);
    }
}
