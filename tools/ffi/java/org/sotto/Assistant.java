package org.sotto;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * The assistant's side of end-to-end encrypted conversations: a device
 * (identity, prekeys, sessions, conversations) kept in a state directory
 * sealed under a 32-byte key, answered by a {@link Model}. Envelopes go
 * in, reply envelopes come out. One call at a time (a concurrent one
 * throws BUSY), from any thread; {@link #close} waits for a running call.
 * It keeps its model alive, so the model may be closed first.
 */
public final class Assistant implements AutoCloseable {
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;

    private Assistant(long handle) {
        this.handle = handle;
    }

    /**
     * Opens the device kept in {@code stateDir} under {@code key} (32 bytes;
     * a new identity when the directory holds none), or one in memory when
     * {@code stateDir} is null. {@code optionsJson} (may be null), e.g.
     * {@code {"name":"sotto","chat":{"temperature":0}}}; see include/sotto.h,
     * sotto_assistant_open.
     *
     * @throws SottoException STATE (wrong key, corrupt or locked), IO, INVALID_ARGUMENT
     */
    public static Assistant open(Model model, String stateDir, byte[] key, String optionsJson) {
        model.lock().readLock().lock();
        try {
            return new Assistant(Native.assistantOpen(model.handleForAssistant(), stateDir, key, optionsJson));
        } finally {
            model.lock().readLock().unlock();
        }
    }

    /**
     * A prekey bundle for one new peer, as JSON (ids as numbers, keys in
     * base64): publish it where the peer fetches it.
     */
    public String prekeyBundle() {
        lock.readLock().lock();
        try {
            return Native.assistantPrekeyBundle(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Decrypts {@code envelope} from {@code sender}, answers it and passes
     * each encrypted reply to {@code listener} before returning.
     *
     * @throws SottoException BAD_MESSAGE (forged, replayed, malformed: nothing
     *     changed), UNTRUSTED_IDENTITY, LIMIT, BUSY, STATE
     */
    public void handle(String sender, int deviceId, Envelope envelope, ReplyListener listener) {
        lock.readLock().lock();
        try {
            Native.assistantHandle(handle, sender, deviceId, envelope.kind, envelope.body, listener);
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * {@link #handle(String, int, Envelope, ReplyListener)} for a transport
     * that sends what it is given: returns the replies, all taken out of
     * the outbox.
     */
    public List<Reply> handle(String sender, int deviceId, Envelope envelope) {
        List<Reply> replies = new ArrayList<>();
        handle(sender, deviceId, envelope, r -> replies.add(r));
        return replies;
    }

    /**
     * Passes every reply still in the outbox to {@code listener}; returns how
     * many it accepted.
     */
    public int outbox(ReplyListener listener) {
        lock.readLock().lock();
        try {
            return Native.assistantOutbox(handle, listener);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** The 60-digit safety number of the session with {@code peer}. */
    public String safetyNumber(String peer, int deviceId) {
        lock.readLock().lock();
        try {
            return Native.assistantSafetyNumber(handle, peer, deviceId);
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Trusts the new identity {@code peer} presented in an envelope refused
     * with UNTRUSTED_IDENTITY (after the users compared safety numbers).
     */
    public void acceptIdentity(String peer, int deviceId) {
        lock.readLock().lock();
        try {
            Native.assistantAcceptIdentity(handle, peer, deviceId);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** Replaces the signed prekey now; returns its id. */
    public int rotateSignedPrekey() {
        lock.readLock().lock();
        try {
            return Native.assistantRotateSignedPrekey(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (handle != 0) {
                Native.assistantFree(handle);
                handle = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }
}
