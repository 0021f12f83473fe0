package org.sotto;

/**
 * Receives reply envelopes on the thread that called {@link Assistant#handle}
 * or {@link Assistant#outbox}. Return true once the transport has the reply
 * (it leaves the outbox); false keeps it for {@link Assistant#outbox}. A
 * Kotlin lambda fits: {@code assistant.handle(from, 1, env) { r -> send(r); true }}.
 * If it throws, the reply stays in the outbox and the exception propagates.
 */
@FunctionalInterface
public interface ReplyListener {
    /** One reply; true when the transport has it. */
    boolean onReply(Reply reply);
}
