#!/usr/bin/env python3
"""Captures known answers from python-axolotl 0.2.3 for fixed inputs and
writes tests/data/bridge/axolotl_kat.json (checked by bridge_kat.rs).
Run: python3 tests/peer/capture_kat.py"""
import hashlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "bridge", "axolotl_kat.json")


def det(label, n):
    return hashlib.sha512(label.encode()).hexdigest()[: 2 * n]


def pub_of(label):
    # A valid public key: python-axolotl derives it from a private scalar.
    from axolotl.ecc.curve import Curve
    from axolotl.ecc.djbec import DjbECPrivateKey
    import binascii
    from axolotl.ecc.djbec import DjbECPublicKey
    import axolotl_curve25519 as _curve
    raw = _curve.generatePrivateKey(binascii.unhexlify(det(label, 32)))
    return binascii.hexlify(bytes(DjbECPublicKey(Curve.generatePublicKey(raw)).serialize())).decode()


def main():
    inputs = {
        "op": "kat",
        "chain_key": det("chain", 32),
        "master_secret": "ff" * 32 + det("dh", 96),
        "root_key": det("root", 32),
        "our_ratchet_private": det("our-ratchet", 32),
        "their_ratchet_public": pub_of("their-ratchet"),
        "sender_identity": pub_of("sender-identity"),
        "receiver_identity": pub_of("receiver-identity"),
        "mac_key": det("mac", 32),
        "counter": 300,
        "previous_counter": 70000,
        "ciphertext": det("ct", 48),
        "registration_id": 12345,
        "pre_key_id": 16777216,
        "signed_pre_key_id": 22,
    }
    peer = subprocess.run([sys.executable, os.path.join(HERE, "axolotl_peer.py")],
                          input=json.dumps(inputs) + "\n", capture_output=True, text=True, check=True)
    answers = json.loads(peer.stdout.splitlines()[0])
    if "error" in answers:
        sys.exit("peer: %s" % answers["error"])
    with open(OUT, "w") as f:
        json.dump({"source": "python-axolotl 0.2.3", "inputs": inputs, "answers": answers}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
