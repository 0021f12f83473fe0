import org.sotto.Chat;
import org.sotto.Model;

/**
 * A streaming chat from Java (on Android the same classes, with libsotto.so
 * from the aarch64-linux-android build in jniLibs/arm64-v8a).
 *
 *   javac -d out tools/ffi/java/org/sotto/*.java tools/ffi/examples/java/ChatExample.java
 *   java -Djava.library.path=target/release -cp out ChatExample MODEL.gguf "What is the capital of France?"
 *
 * Kotlin: Model.open(path).use { m -> m.chat(null).use { c -> c.send(q) { print(it) } } }
 */
public final class ChatExample {
    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: ChatExample MODEL.gguf QUESTION");
            System.exit(2);
        }
        try (Model model = Model.open(args[0]);
                Chat chat = model.chat("{\"system\":\"You are a helpful assistant.\",\"temperature\":0}")) {
            chat.send(args[1], piece -> {
                System.out.print(piece);
                System.out.flush();
            });
            System.out.println();
        }
    }
}
