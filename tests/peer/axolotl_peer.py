#!/usr/bin/env python3
"""A python-axolotl 0.2.3 peer driven by JSON lines on stdin/stdout.

Used by tests/tests/bridge_axolotl.rs as an independent implementation of
the Signal v3 protocol. python-axolotl is GPL: it is installed at test time
(scripts/bridge-peer-deps.sh) and only ever run as this separate process.

Requests (one JSON object per line) and replies:
  {"op":"bundle"}                               -> bundle fields (base64)
  {"op":"process_bundle","peer":N,"device":D, <bundle fields>} -> {"ok":true}
  {"op":"encrypt","peer":N,"device":D,"plaintext":b64} -> {"type","body"}
  {"op":"decrypt","peer":N,"device":D,"type":"prekey"|"message","body":b64}
                                                -> {"plaintext":b64}
  {"op":"kat", ...hex inputs}                   -> derived values (hex)
  {"op":"xeddsa_sign","private_key":b64,"message":b64,"random":b64}
                                                -> {"signature":b64}
      (python-axolotl-curve25519's C signer, deterministic given the 64
      random bytes: a known answer for the XEdDSA nonce derivation)
Errors: {"error":"<exception class>: <text>"}.
"""
import base64
import binascii
import json
import sys

from axolotl.ecc.curve import Curve
from axolotl.ecc.djbec import DjbECPrivateKey
from axolotl.ecc.eckeypair import ECKeyPair
from axolotl.identitykey import IdentityKey
from axolotl.kdf.hkdf import HKDF
from axolotl.protocol.prekeywhispermessage import PreKeyWhisperMessage
from axolotl.protocol.whispermessage import WhisperMessage
from axolotl.ratchet.chainkey import ChainKey
from axolotl.ratchet.rootkey import RootKey
from axolotl.sessionbuilder import SessionBuilder
from axolotl.sessioncipher import SessionCipher
from axolotl.state.prekeybundle import PreKeyBundle
from axolotl.tests.inmemoryaxolotlstore import InMemoryAxolotlStore
from axolotl.util.keyhelper import KeyHelper

PRE_KEY_ID = 31337
SIGNED_PRE_KEY_ID = 22


def b64(b):
    return base64.b64encode(bytes(b)).decode()


def unb64(s):
    return base64.b64decode(s)


def unhex(s):
    return binascii.unhexlify(s.encode())


def hexs(b):
    return binascii.hexlify(bytes(b)).decode()


class Peer:
    def __init__(self):
        self.store = InMemoryAxolotlStore()
        pre_key = KeyHelper.generatePreKeys(PRE_KEY_ID, 1)[0]
        self.store.storePreKey(pre_key.getId(), pre_key)
        signed = KeyHelper.generateSignedPreKey(self.store.getIdentityKeyPair(), SIGNED_PRE_KEY_ID)
        self.store.storeSignedPreKey(SIGNED_PRE_KEY_ID, signed)
        self.pre_key = pre_key
        self.signed = signed

    def cipher(self, req):
        return SessionCipher(self.store, self.store, self.store, self.store, req["peer"], int(req["device"]))

    def bundle(self, _req):
        return {
            "registration_id": self.store.getLocalRegistrationId(),
            "device_id": 1,
            "pre_key_id": self.pre_key.getId(),
            "pre_key": b64(self.pre_key.getKeyPair().getPublicKey().serialize()),
            "signed_pre_key_id": SIGNED_PRE_KEY_ID,
            "signed_pre_key": b64(self.signed.getKeyPair().getPublicKey().serialize()),
            "signed_pre_key_signature": b64(self.signed.getSignature()),
            "identity_key": b64(self.store.getIdentityKeyPair().getPublicKey().serialize()),
        }

    def process_bundle(self, req):
        pre_key = Curve.decodePoint(bytearray(unb64(req["pre_key"])), 0) if req.get("pre_key") else None
        bundle = PreKeyBundle(
            int(req["registration_id"]), int(req["device_id"]), req.get("pre_key_id"), pre_key,
            int(req["signed_pre_key_id"]), Curve.decodePoint(bytearray(unb64(req["signed_pre_key"])), 0),
            unb64(req["signed_pre_key_signature"]),
            IdentityKey(bytearray(unb64(req["identity_key"])), 0))
        SessionBuilder(self.store, self.store, self.store, self.store, req["peer"], int(req["device"])) \
            .processPreKeyBundle(bundle)
        return {"ok": True}

    def encrypt(self, req):
        msg = self.cipher(req).encrypt(unb64(req["plaintext"]))
        kind = "prekey" if isinstance(msg, PreKeyWhisperMessage) else "message"
        return {"type": kind, "body": b64(msg.serialize())}

    def decrypt(self, req):
        body = unb64(req["body"])
        if req["type"] == "prekey":
            plaintext = self.cipher(req).decryptPkmsg(PreKeyWhisperMessage(serialized=body))
        else:
            plaintext = self.cipher(req).decryptMsg(WhisperMessage(serialized=body))
        return {"plaintext": b64(plaintext)}

    def kat(self, req):
        """Known answers computed by python-axolotl from fixed inputs."""
        kdf = HKDF.createFor(3)
        out = {}
        chain = ChainKey(kdf, unhex(req["chain_key"]), 0)
        mk = chain.getMessageKeys()
        out["message_cipher_key"] = hexs(mk.getCipherKey())
        out["message_mac_key"] = hexs(mk.getMacKey())
        out["message_iv"] = hexs(mk.getIv())
        out["next_chain_key"] = hexs(chain.getNextChainKey().getKey())
        out["next_next_chain_key"] = hexs(chain.getNextChainKey().getNextChainKey().getKey())
        derived = kdf.deriveSecrets(unhex(req["master_secret"]), b"WhisperText", 64)
        out["whisper_text_64"] = hexs(derived)
        import axolotl_curve25519 as axolotl_curve
        from axolotl.ecc.djbec import DjbECPublicKey
        raw = axolotl_curve.generatePrivateKey(unhex(req["our_ratchet_private"]))  # clamps
        our_priv = DjbECPrivateKey(raw)
        our_pair = ECKeyPair(DjbECPublicKey(Curve.generatePublicKey(raw)), our_priv)
        out["our_ratchet_private_clamped"] = hexs(raw)
        their_pub = Curve.decodePoint(bytearray(unhex(req["their_ratchet_public"])), 0)
        new_root, new_chain = RootKey(kdf, unhex(req["root_key"])).createChain(their_pub, our_pair)
        out["our_ratchet_public"] = hexs(our_pair.getPublicKey().serialize())
        out["ratchet_root_key"] = hexs(new_root.getKeyBytes())
        out["ratchet_chain_key"] = hexs(new_chain.getKey())
        sender_identity = IdentityKey(bytearray(unhex(req["sender_identity"])), 0)
        receiver_identity = IdentityKey(bytearray(unhex(req["receiver_identity"])), 0)
        msg = WhisperMessage(3, unhex(req["mac_key"]), their_pub, int(req["counter"]),
                             int(req["previous_counter"]), unhex(req["ciphertext"]),
                             sender_identity, receiver_identity)
        out["signal_message"] = hexs(msg.serialize())
        pk = PreKeyWhisperMessage(3, int(req["registration_id"]), int(req["pre_key_id"]),
                                  int(req["signed_pre_key_id"]), their_pub, sender_identity, msg)
        out["prekey_signal_message"] = hexs(pk.serialize())
        return out

    def xeddsa_sign(self, req):
        import axolotl_curve25519 as axolotl_curve
        random = unb64(req["random"])
        if len(random) != 64:
            raise ValueError("random must be 64 bytes")
        signature = axolotl_curve.calculateSignature(
            random, unb64(req["private_key"]), unb64(req["message"]))
        return {"signature": b64(signature)}


def main():
    peer = Peer()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            reply = getattr(peer, req["op"])(req)
        except Exception as e:  # reported to the driver, which decides
            reply = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
