// A peer on Signal's own libsignal (npm @signalapp/libsignal-client 0.72.1,
// the last release that still accepts version-3 sessions), driven by JSON
// lines on stdin/stdout like tests/peer/axolotl_peer.py, so the same Rust
// scenarios (tests/src/bridge_peer.rs) run against both.
//
// libsignal is installed at test time into a cache directory by
// scripts/bridge-peer-deps.sh and found through SOTTO_LIBSIGNAL_DIR (the
// directory holding node_modules); it is never vendored.
//
// Requests (one JSON object per line) and replies:
//   {"op":"bundle"}                                   -> bundle fields (base64)
//   {"op":"process_bundle","peer":N,"device":D, <bundle fields>} -> {"ok":true}
//   {"op":"encrypt","peer":N,"device":D,"plaintext":b64} -> {"type","body"}
//   {"op":"decrypt","peer":N,"device":D,"type":"prekey"|"message","body":b64}
//                                                     -> {"plaintext":b64}
//   {"op":"sign","message":b64}                       -> {"public_key","signature"}
//       (XEdDSA by libsignal's PrivateKey.sign with this peer's identity key)
//   {"op":"verify","public_key":b64,"message":b64,"signature":b64} -> {"valid":bool}
//   {"op":"fingerprint","local_id":s,"local_key":b64,"remote_id":s,"remote_key":b64}
//                                                     -> {"displayable":digits}
//   {"op":"version"}                                  -> {"libsignal":semver}
// Errors: {"error":"<error name>: <text>"}.
import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';

const dir = process.env.SOTTO_LIBSIGNAL_DIR;
if (!dir) {
  process.stderr.write('SOTTO_LIBSIGNAL_DIR is not set: run scripts/bridge-peer-deps.sh\n');
  process.exit(2);
}
const require = createRequire(path.join(dir, 'package.json'));
const SignalClient = require('@signalapp/libsignal-client');
const libsignalVersion = require('@signalapp/libsignal-client/package.json').version;

const PRE_KEY_ID = 31337;
const SIGNED_PRE_KEY_ID = 22;

const b64 = (buf) => Buffer.from(buf).toString('base64');
const unb64 = (s) => Buffer.from(s, 'base64');
const addressKey = (a) => `${a.name()}.${a.deviceId()}`;

class Sessions extends SignalClient.SessionStore {
  constructor() {
    super();
    this.records = new Map();
  }
  async saveSession(address, record) {
    this.records.set(addressKey(address), record.serialize());
  }
  async getSession(address) {
    const bytes = this.records.get(addressKey(address));
    return bytes ? SignalClient.SessionRecord.deserialize(bytes) : null;
  }
  async getExistingSessions(addresses) {
    return Promise.all(addresses.map((a) => this.getSession(a)));
  }
}

// Trust on first use, as the Rust side and python-axolotl's test store do.
class Identities extends SignalClient.IdentityKeyStore {
  constructor(identity, registrationId) {
    super();
    this.identity = identity;
    this.registrationId = registrationId;
    this.known = new Map();
  }
  async getIdentityKey() {
    return this.identity.privateKey;
  }
  async getLocalRegistrationId() {
    return this.registrationId;
  }
  async saveIdentity(address, key) {
    const old = this.known.get(addressKey(address));
    this.known.set(addressKey(address), key);
    return old && old.compare(key) !== 0
      ? SignalClient.IdentityChange.ReplacedExisting
      : SignalClient.IdentityChange.NewOrUnchanged;
  }
  async isTrustedIdentity(address, key, _direction) {
    const old = this.known.get(addressKey(address));
    return !old || old.compare(key) === 0;
  }
  async getIdentity(address) {
    return this.known.get(addressKey(address)) ?? null;
  }
}

class PreKeys extends SignalClient.PreKeyStore {
  constructor() {
    super();
    this.keys = new Map();
  }
  async savePreKey(id, record) {
    this.keys.set(id, record);
  }
  async getPreKey(id) {
    const record = this.keys.get(id);
    if (!record) throw new Error(`no prekey ${id}`);
    return record;
  }
  async removePreKey(id) {
    this.keys.delete(id);
  }
}

class SignedPreKeys extends SignalClient.SignedPreKeyStore {
  constructor() {
    super();
    this.keys = new Map();
  }
  async saveSignedPreKey(id, record) {
    this.keys.set(id, record);
  }
  async getSignedPreKey(id) {
    const record = this.keys.get(id);
    if (!record) throw new Error(`no signed prekey ${id}`);
    return record;
  }
}

// Version-3 sessions carry no Kyber prekey; a lookup is a protocol error.
class NoKyberPreKeys extends SignalClient.KyberPreKeyStore {
  async saveKyberPreKey() {
    throw new Error('no Kyber prekeys in v3 sessions');
  }
  async getKyberPreKey(id) {
    throw new Error(`no Kyber prekey ${id}`);
  }
  async markKyberPreKeyUsed() {}
}

class Peer {
  constructor() {
    this.identity = SignalClient.IdentityKeyPair.generate();
    this.registrationId = 1 + Math.floor(Math.random() * 16379);
    this.sessions = new Sessions();
    this.identities = new Identities(this.identity, this.registrationId);
    this.preKeys = new PreKeys();
    this.signedPreKeys = new SignedPreKeys();
    this.kyber = new NoKyberPreKeys();
    const preKey = SignalClient.PrivateKey.generate();
    this.preKeys.savePreKey(
      PRE_KEY_ID,
      SignalClient.PreKeyRecord.new(PRE_KEY_ID, preKey.getPublicKey(), preKey),
    );
    const signed = SignalClient.PrivateKey.generate();
    const signature = this.identity.privateKey.sign(signed.getPublicKey().serialize());
    this.signedPreKeys.saveSignedPreKey(
      SIGNED_PRE_KEY_ID,
      SignalClient.SignedPreKeyRecord.new(
        SIGNED_PRE_KEY_ID, Date.now(), signed.getPublicKey(), signed, signature,
      ),
    );
    this.preKey = preKey;
    this.signed = signed;
    this.signature = signature;
  }

  address(req) {
    return SignalClient.ProtocolAddress.new(String(req.peer), Number(req.device));
  }

  async bundle() {
    return {
      registration_id: this.registrationId,
      device_id: 1,
      pre_key_id: PRE_KEY_ID,
      pre_key: b64(this.preKey.getPublicKey().serialize()),
      signed_pre_key_id: SIGNED_PRE_KEY_ID,
      signed_pre_key: b64(this.signed.getPublicKey().serialize()),
      signed_pre_key_signature: b64(this.signature),
      identity_key: b64(this.identity.publicKey.serialize()),
    };
  }

  async process_bundle(req) {
    const key = (field) => SignalClient.PublicKey.deserialize(unb64(req[field]));
    const hasPreKey = req.pre_key_id !== undefined && req.pre_key_id !== null;
    const bundle = SignalClient.PreKeyBundle.new(
      Number(req.registration_id),
      Number(req.device_id),
      hasPreKey ? Number(req.pre_key_id) : null,
      hasPreKey ? key('pre_key') : null,
      Number(req.signed_pre_key_id),
      key('signed_pre_key'),
      unb64(req.signed_pre_key_signature),
      key('identity_key'),
    );
    await SignalClient.processPreKeyBundle(bundle, this.address(req), this.sessions, this.identities);
    return { ok: true };
  }

  async encrypt(req) {
    const message = await SignalClient.signalEncrypt(
      unb64(req.plaintext), this.address(req), this.sessions, this.identities,
    );
    const type = message.type() === SignalClient.CiphertextMessageType.PreKey ? 'prekey' : 'message';
    return { type, body: b64(message.serialize()) };
  }

  async decrypt(req) {
    const body = unb64(req.body);
    let plaintext;
    if (req.type === 'prekey') {
      plaintext = await SignalClient.signalDecryptPreKey(
        SignalClient.PreKeySignalMessage.deserialize(body), this.address(req),
        this.sessions, this.identities, this.preKeys, this.signedPreKeys, this.kyber,
      );
    } else if (req.type === 'message') {
      plaintext = await SignalClient.signalDecrypt(
        SignalClient.SignalMessage.deserialize(body), this.address(req),
        this.sessions, this.identities,
      );
    } else {
      throw new Error(`unknown message type ${req.type}`);
    }
    return { plaintext: b64(plaintext) };
  }

  async sign(req) {
    return {
      public_key: b64(this.identity.publicKey.serialize()),
      signature: b64(this.identity.privateKey.sign(unb64(req.message))),
    };
  }

  async verify(req) {
    const key = SignalClient.PublicKey.deserialize(unb64(req.public_key));
    return { valid: key.verify(unb64(req.message), unb64(req.signature)) };
  }

  async fingerprint(req) {
    const fingerprint = SignalClient.Fingerprint.new(
      5200, 2,
      Buffer.from(req.local_id, 'utf8'), SignalClient.PublicKey.deserialize(unb64(req.local_key)),
      Buffer.from(req.remote_id, 'utf8'), SignalClient.PublicKey.deserialize(unb64(req.remote_key)),
    );
    return { displayable: fingerprint.displayableFingerprint().toString() };
  }

  async version() {
    return { libsignal: libsignalVersion };
  }
}

const OPS = new Set([
  'bundle', 'process_bundle', 'encrypt', 'decrypt', 'sign', 'verify', 'fingerprint', 'version',
]);

async function main() {
  const peer = new Peer();
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let reply;
    try {
      const req = JSON.parse(line);
      if (!OPS.has(req.op)) throw new Error(`unknown op ${JSON.stringify(req.op)}`);
      reply = await peer[req.op](req);
    } catch (e) {
      // Reported to the driver, which decides.
      reply = { error: `${e.name ?? 'Error'}: ${e.message ?? e}` };
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
  }
}

main().catch((e) => {
  process.stderr.write(`libsignal peer: ${e.stack ?? e}\n`);
  process.exit(1);
});
