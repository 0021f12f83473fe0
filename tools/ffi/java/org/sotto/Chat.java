package org.sotto;

import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * One conversation. {@link #send} and {@link #reset} take one call at a time
 * (a concurrent one throws with code BUSY); {@link #cancel} may come from any
 * thread while a send runs. {@link #close} waits for a running send.
 */
public final class Chat implements AutoCloseable {
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;

    Chat(long handle) {
        this.handle = handle;
    }

    /**
     * Sends the user's message; {@code listener} (may be null) gets the
     * answer piece by piece on this thread. Returns the whole answer. A
     * failed or cancelled send leaves the conversation as it was.
     *
     * @throws SottoException CONTEXT_OVERFLOW, CANCELLED, BUSY, BACKEND
     */
    public String send(String message, PieceListener listener) {
        lock.readLock().lock();
        try {
            return Native.chatSend(handle, message, listener);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** {@link #send(String, PieceListener)} without streaming. */
    public String send(String message) {
        return send(message, null);
    }

    /** Stops the send running on another thread (it throws CANCELLED). */
    public void cancel() {
        lock.readLock().lock();
        try {
            Native.chatCancel(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** Forgets the conversation's turns (the system message stays). */
    public void reset() {
        lock.readLock().lock();
        try {
            Native.chatReset(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (handle != 0) {
                Native.chatFree(handle);
                handle = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }
}
