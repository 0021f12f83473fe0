import org.sotto.Chat;
import org.sotto.Model;
import org.sotto.Sotto;
import org.sotto.SottoException;

/**
 * The Java binding through JNI, on the host-built libsotto loaded with
 * System.loadLibrary (java.library.path set by scripts/test-ffi.sh).
 * SOTTO_MODEL names the default model. Prints "N passed, N failed".
 */
public final class SottoTest {
    private static int passed;
    private static int failed;

    interface Body {
        void run() throws Exception;
    }

    private static void test(String name, Body body) {
        try {
            body.run();
            passed++;
            System.out.println("ok   " + name);
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL " + name + ": " + t);
            t.printStackTrace();
        }
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) {
        String modelPath = System.getenv("SOTTO_MODEL");
        if (modelPath == null || !new java.io.File(modelPath).canRead()) {
            System.err.println("SOTTO_MODEL must name the default model: run `cargo run -p sotto -- fetch`");
            System.exit(2);
        }
        test("version", () -> {
            check(Sotto.abiVersion() == Sotto.ABI_VERSION, "ABI " + Sotto.abiVersion());
            check(Sotto.version().contains("."), Sotto.version());
        });
        test("missing_file_throws_not_found", () -> {
            try {
                Model.open("/nonexistent/model.gguf");
                throw new AssertionError("opened a missing file");
            } catch (SottoException e) {
                check(e.code() == SottoException.NOT_FOUND, "code " + e.code());
                check(e.getMessage().contains("/nonexistent/model.gguf"), e.getMessage());
            }
        });
        try (Model model = Model.open(modelPath, "{\"threads\":2}")) {
            test("france_streamed", () -> {
                try (Chat chat = model.chat(
                        "{\"system\":\"You are a helpful assistant.\",\"temperature\":0,\"max_tokens\":64}")) {
                    StringBuilder streamed = new StringBuilder();
                    int[] pieces = {0};
                    String reply = chat.send("What is the capital of France?", piece -> {
                        streamed.append(piece);
                        pieces[0]++;
                    });
                    System.out.println("     " + reply + " (" + pieces[0] + " pieces)");
                    check(reply.equals("The capital of France is Paris."), reply);
                    check(streamed.toString().equals(reply), streamed.toString());
                    check(pieces[0] > 1, "pieces " + pieces[0]);
                }
            });
            test("listener_exception_stops_generation_and_propagates", () -> {
                try (Chat chat = model.chat("{\"temperature\":0,\"max_tokens\":200}")) {
                    try {
                        chat.send("Count from one to fifty.", piece -> {
                            throw new IllegalStateException("stop here");
                        });
                        throw new AssertionError("send returned");
                    } catch (IllegalStateException e) {
                        check(e.getMessage().equals("stop here"), e.getMessage());
                    }
                    String reply = chat.send("What is the capital of France?");
                    check(!reply.isEmpty(), "chat usable after the listener threw");
                }
            });
            test("context_overflow_throws", () -> {
                try (Chat chat = model.chat("{\"context\":16}")) {
                    chat.send("Please tell me everything you know about the long history of Paris.");
                    throw new AssertionError("no overflow");
                } catch (SottoException e) {
                    check(e.code() == SottoException.CONTEXT_OVERFLOW, "code " + e.code());
                }
            });
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }

    static void run(String name, Body body) {
        test(name, body);
    }
}
