package org.sotto;

import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A loaded model and its backend. Thread-safe: chats may be opened from any
 * thread. Chats keep what they need, so the model may be closed while they
 * are open. Use with try-with-resources (Kotlin: {@code use { }}).
 */
public final class Model implements AutoCloseable {
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;

    private Model(long handle) {
        this.handle = handle;
    }

    /**
     * Opens the GGUF model at {@code path}. {@code optionsJson} (may be null)
     * picks the backend, e.g. {@code {"backend":"cpu","threads":4}}; see
     * include/sotto.h, sotto_model_open.
     *
     * @throws SottoException NOT_FOUND, BAD_MODEL, INVALID_ARGUMENT, BACKEND_UNAVAILABLE
     */
    public static Model open(String path, String optionsJson) {
        return new Model(Native.modelOpen(path, optionsJson));
    }

    /** {@link #open(String, String)} with every default (CPU, all cores). */
    public static Model open(String path) {
        return open(path, null);
    }

    /** What the backend runs on (ISA and threads, EP chain...). */
    public String describe() {
        lock.readLock().lock();
        try {
            return Native.modelDescribe(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * A new conversation. {@code optionsJson} (may be null), e.g.
     * {@code {"system":"You are a helpful assistant.","temperature":0}}.
     */
    public Chat chat(String optionsJson) {
        lock.readLock().lock();
        try {
            return new Chat(Native.chatOpen(handle, optionsJson));
        } finally {
            lock.readLock().unlock();
        }
    }

    long handleForAssistant() {
        return handle;
    }

    ReentrantReadWriteLock lock() {
        return lock;
    }

    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (handle != 0) {
                Native.modelFree(handle);
                handle = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }
}
