package org.sotto;

/**
 * A failed call into libsotto. {@link #code()} is the C ABI's
 * {@code SottoStatus} value (see include/sotto.h); unchecked, so Kotlin
 * callers need no {@code throws}.
 */
public class SottoException extends RuntimeException {
    /** {@code SOTTO_STATUS_INVALID_ARGUMENT}. */
    public static final int INVALID_ARGUMENT = 1;
    /** {@code SOTTO_STATUS_NOT_FOUND}. */
    public static final int NOT_FOUND = 2;
    /** {@code SOTTO_STATUS_BAD_MODEL}. */
    public static final int BAD_MODEL = 3;
    /** {@code SOTTO_STATUS_CONTEXT_OVERFLOW}. */
    public static final int CONTEXT_OVERFLOW = 4;
    /** {@code SOTTO_STATUS_CANCELLED}. */
    public static final int CANCELLED = 5;
    /** {@code SOTTO_STATUS_BACKEND_UNAVAILABLE}. */
    public static final int BACKEND_UNAVAILABLE = 6;
    /** {@code SOTTO_STATUS_BACKEND}. */
    public static final int BACKEND = 7;
    /** {@code SOTTO_STATUS_BUSY}. */
    public static final int BUSY = 8;
    /** {@code SOTTO_STATUS_BAD_MESSAGE}. */
    public static final int BAD_MESSAGE = 9;
    /** {@code SOTTO_STATUS_STATE}. */
    public static final int STATE = 10;
    /** {@code SOTTO_STATUS_PANIC}. */
    public static final int PANIC = 11;
    /** {@code SOTTO_STATUS_POISONED}. */
    public static final int POISONED = 12;
    /** {@code SOTTO_STATUS_IO}. */
    public static final int IO = 13;
    /** {@code SOTTO_STATUS_INTERNAL}. */
    public static final int INTERNAL = 14;

    private static final long serialVersionUID = 1L;

    private final int code;

    /** Called from native code. */
    public SottoException(int code, String message) {
        super(message);
        this.code = code;
    }

    /** The status code. */
    public int code() {
        return code;
    }
}
