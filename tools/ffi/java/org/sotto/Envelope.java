package org.sotto;

/** An encrypted Signal message as the transport carries it. */
public final class Envelope {
    /** A message that starts a session (PreKeySignalMessage). */
    public static final int PREKEY = 1;
    /** A message inside a session (SignalMessage). */
    public static final int MESSAGE = 2;

    /** {@link #PREKEY} or {@link #MESSAGE}. */
    public final int kind;
    /** The serialized message. */
    public final byte[] body;

    /** An envelope of {@code kind} ({@link #PREKEY} or {@link #MESSAGE}). */
    public Envelope(int kind, byte[] body) {
        this.kind = kind;
        this.body = body;
    }

    @Override
    public String toString() {
        return (kind == PREKEY ? "prekey" : kind == MESSAGE ? "message" : "kind " + kind) + ", "
                + body.length + " bytes";
    }
}
