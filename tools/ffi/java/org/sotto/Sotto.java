package org.sotto;

/** Library information. */
public final class Sotto {
    /** The ABI version these classes were written for. */
    public static final int ABI_VERSION = 1;

    private Sotto() {}

    /** libsotto's version, "MAJOR.MINOR.PATCH". */
    public static String version() {
        return Native.version();
    }

    /** The ABI version of the loaded library; compare with {@link #ABI_VERSION}. */
    public static int abiVersion() {
        return Native.abiVersion();
    }
}
