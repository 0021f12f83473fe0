// A small Swift wrapper over libsotto's C ABI (include/sotto.h).
// It cannot be compiled on the Linux machines this project builds on (no
// Swift toolchain with the iOS SDK there); see README.md in this folder.

import CSotto
import Foundation

/// A failed call: the C ABI's status code and the library's message.
public struct SottoError: Error, CustomStringConvertible {
    public let status: SottoStatus
    public let message: String
    public var description: String { "sotto error \(status.rawValue): \(message)" }
}

/// Turns a status into a thrown error carrying the thread's last message.
private func check(_ status: SottoStatus) throws {
    guard status == SOTTO_STATUS_OK else {
        throw SottoError(status: status, message: String(cString: sotto_last_error_message()))
    }
}

/// A loaded model. Thread-safe; chats keep what they need, so it may be
/// released while they are open.
public final class SottoModel {
    fileprivate let handle: OpaquePointer

    /// Opens the GGUF at `path`; `options` is the JSON of sotto_model_open.
    public init(path: String, options: String? = nil) throws {
        var out: OpaquePointer?
        try check(sotto_model_open(path, options, &out))
        handle = out!
    }

    deinit { sotto_model_free(handle) }

    /// A new conversation; `options` is the JSON of sotto_chat_open.
    public func chat(options: String? = nil) throws -> SottoChat {
        var out: OpaquePointer?
        try check(sotto_chat_open(handle, options, &out))
        return SottoChat(handle: out!)
    }

    /// libsotto's version and ABI version.
    public static var version: String { String(cString: sotto_version()) }
    public static var abiVersion: UInt32 { sotto_abi_version() }
}

/// One conversation: one `send` at a time; `cancel()` from any thread.
public final class SottoChat {
    private let handle: OpaquePointer

    fileprivate init(handle: OpaquePointer) { self.handle = handle }

    deinit { sotto_chat_free(handle) }

    /// Sends `message`; `onPiece` gets the answer as it is written, on this
    /// thread. Returns the whole answer.
    @discardableResult
    public func send(_ message: String, onPiece: ((String) -> Void)? = nil) throws -> String {
        final class Box { let f: ((String) -> Void)?; init(_ f: ((String) -> Void)?) { self.f = f } }
        let box = Unmanaged.passRetained(Box(onPiece))
        defer { box.release() }
        var reply: UnsafeMutablePointer<CChar>?
        let status = sotto_chat_send(handle, message, { userData, piece, len in
            guard let userData = userData, let piece = piece else { return }
            let box = Unmanaged<Box>.fromOpaque(userData).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: piece, count: len)
            box.f?(String(decoding: bytes, as: UTF8.self))
        }, box.toOpaque(), &reply)
        try check(status)
        defer { sotto_string_free(reply) }
        return reply.map { String(cString: $0) } ?? ""
    }

    /// Stops the `send` running on another thread (it throws CANCELLED).
    public func cancel() { _ = sotto_chat_cancel(handle) }

    /// Forgets the conversation (the system message stays).
    public func reset() throws { try check(sotto_chat_reset(handle)) }
}

/// A reply envelope for the transport.
public struct SottoReplyEnvelope {
    /// The peer it goes to, and its device id.
    public let peer: String
    public let deviceId: UInt32
    /// The number of the peer's message it answers (1, 2, ...).
    public let turn: UInt64
    /// SOTTO_ENVELOPE_PREKEY or SOTTO_ENVELOPE_MESSAGE, and the bytes.
    public let kind: UInt32
    public let body: Data
    /// nil for an answer; the kind of a refusal sent instead.
    public let refusal: String?
}

/// The assistant's side of end-to-end encrypted conversations: a device
/// kept in `stateDirectory` sealed under a 32-byte key (keep it in the
/// Keychain), answered by a model. One call at a time, from any thread.
public final class SottoAssistant {
    private let handle: OpaquePointer

    /// Opens (or creates) the device in `stateDirectory`, or one in memory
    /// when it is nil; `options` is the JSON of sotto_assistant_open.
    public init(model: SottoModel, stateDirectory: String?, key: Data, options: String? = nil) throws {
        var out: OpaquePointer?
        let status = key.withUnsafeBytes { raw in
            sotto_assistant_open(model.handle, stateDirectory,
                                 raw.bindMemory(to: UInt8.self).baseAddress, key.count, options, &out)
        }
        try check(status)
        handle = out!
    }

    deinit { sotto_assistant_free(handle) }

    /// A prekey bundle for one new peer, as JSON: publish it.
    public func prekeyBundle() throws -> String {
        var out: UnsafeMutablePointer<CChar>?
        try check(sotto_assistant_prekey_bundle(handle, &out))
        defer { sotto_string_free(out) }
        return String(cString: out!)
    }

    /// Decrypts `body` from `sender`, answers it and passes each encrypted
    /// reply to `deliver`, which returns true once the transport has it
    /// (false keeps it for `outbox`).
    public func handle(sender: String, deviceId: UInt32, kind: UInt32, body: Data,
                       deliver: @escaping (SottoReplyEnvelope) -> Bool) throws {
        let box = Unmanaged.passRetained(DeliverBox(deliver))
        defer { box.release() }
        let status = body.withUnsafeBytes { raw in
            sotto_assistant_handle(handle, sender, deviceId, kind,
                                   raw.bindMemory(to: UInt8.self).baseAddress, body.count,
                                   deliverReply, box.toOpaque())
        }
        try check(status)
    }

    /// Passes every reply still in the outbox to `deliver`; returns how
    /// many it took.
    @discardableResult
    public func outbox(deliver: @escaping (SottoReplyEnvelope) -> Bool) throws -> Int {
        let box = Unmanaged.passRetained(DeliverBox(deliver))
        defer { box.release() }
        var delivered = 0
        try check(sotto_assistant_outbox(handle, deliverReply, box.toOpaque(), &delivered))
        return delivered
    }

    /// The 60-digit safety number of the session with `peer`.
    public func safetyNumber(peer: String, deviceId: UInt32) throws -> String {
        var out: UnsafeMutablePointer<CChar>?
        try check(sotto_assistant_safety_number(handle, peer, deviceId, &out))
        defer { sotto_string_free(out) }
        return String(cString: out!)
    }

    /// Trusts the new identity `peer` presented (after comparing safety numbers).
    public func acceptIdentity(peer: String, deviceId: UInt32) throws {
        try check(sotto_assistant_accept_identity(handle, peer, deviceId))
    }
}

private final class DeliverBox {
    let f: (SottoReplyEnvelope) -> Bool
    init(_ f: @escaping (SottoReplyEnvelope) -> Bool) { self.f = f }
}

/// The C callback: copies the reply out of the call and asks the closure.
private let deliverReply: SottoReplyFn = { userData, reply in
    guard let userData = userData, let r = reply?.pointee else { return false }
    let box = Unmanaged<DeliverBox>.fromOpaque(userData).takeUnretainedValue()
    let envelope = SottoReplyEnvelope(
        peer: String(cString: r.peer), deviceId: r.device_id, turn: r.turn, kind: r.kind,
        body: Data(bytes: r.body, count: r.body_len),
        refusal: r.refusal.map { String(cString: $0) })
    return box.f(envelope)
}
