package org.sotto;

/**
 * A reply envelope for the transport: what to send, to whom, and which of
 * the peer's messages it answers.
 */
public final class Reply {
    /** The peer it goes to. */
    public final String peer;
    /** The peer's device id. */
    public final int deviceId;
    /** The number of the peer's message it answers (1, 2, ...). */
    public final long turn;
    /** The encrypted reply. */
    public final Envelope envelope;
    /** Null for an answer; for a refusal sent instead, its kind. */
    public final String refusal;

    /** Called from native code. */
    Reply(String peer, int deviceId, long turn, int kind, byte[] body, String refusal) {
        this.peer = peer;
        this.deviceId = deviceId;
        this.turn = turn;
        this.envelope = new Envelope(kind, body);
        this.refusal = refusal;
    }

    @Override
    public String toString() {
        return "Reply(" + peer + "." + deviceId + " #" + turn + ", " + envelope
                + (refusal == null ? "" : ", refused: " + refusal) + ")";
    }
}
