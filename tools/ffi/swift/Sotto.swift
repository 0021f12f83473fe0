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
