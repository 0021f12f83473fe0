package org.sotto;

/**
 * Receives an answer as it is generated, in whole characters, on the thread
 * that called {@link Chat#send}. A functional interface: a Kotlin lambda
 * ({@code chat.send(q) { piece -> print(piece) }}) or a Java one fits. If it
 * throws, generation stops and the exception propagates out of send.
 */
@FunctionalInterface
public interface PieceListener {
    /** One new piece of the answer. */
    void onPiece(String piece);
}
