package org.sotto;

/**
 * The native methods of libsotto (tools/ffi/src/jni_api.rs). Handles are
 * pointers held as {@code long}; only {@link Model}, {@link Chat} and
 * {@link Assistant} touch them, under their locks.
 */
final class Native {
    static {
        System.loadLibrary("sotto");
    }

    private Native() {}

    static native String version();

    static native int abiVersion();

    static native long modelOpen(String path, String optionsJson);

    static native String modelDescribe(long model);

    static native void modelFree(long model);

    static native long chatOpen(long model, String optionsJson);

    static native String chatSend(long chat, String message, PieceListener listener);

    static native void chatCancel(long chat);

    static native void chatReset(long chat);

    static native void chatFree(long chat);
}
