import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Base64;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.sotto.Assistant;
import org.sotto.Chat;
import org.sotto.Envelope;
import org.sotto.Model;
import org.sotto.Reply;
import org.sotto.Sotto;
import org.sotto.SottoException;

/**
 * The Java binding through JNI, on the host-built libsotto loaded with
 * System.loadLibrary (java.library.path set by scripts/test-ffi.sh).
 * SOTTO_MODEL names the default model; the bridge test talks to
 * python-axolotl (SOTTO_PYTHON, SOTTO_AXOLOTL_PEER as for the C tests).
 * Prints "N passed, N failed".
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
            test("bridge_round_trip_with_python_axolotl", () -> bridgeRoundTrip(model));
            test("bridge_example_with_python_axolotl", () -> bridgeExample(modelPath));
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

    /** python-axolotl in its own process, spoken to in JSON lines. */
    static final class Peer implements AutoCloseable {
        private final Process process;
        private final Writer in;
        private final BufferedReader out;

        Peer() throws Exception {
            String python = System.getenv().getOrDefault("SOTTO_PYTHON", "python3");
            String script = System.getenv().getOrDefault("SOTTO_AXOLOTL_PEER", "tests/peer/axolotl_peer.py");
            check(new java.io.File(script).canRead(),
                    script + " missing: set SOTTO_AXOLOTL_PEER to tests/peer/axolotl_peer.py");
            process = new ProcessBuilder(python, script).redirectError(ProcessBuilder.Redirect.INHERIT).start();
            in = new OutputStreamWriter(process.getOutputStream(), StandardCharsets.UTF_8);
            out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
            String bundle = call("{\"op\":\"bundle\"}");
            check(bundle != null && bundle.contains("identity_key"),
                    "python-axolotl 0.2.3 does not answer under " + python + ": run scripts/bridge-peer-deps.sh");
        }

        String call(String request) throws Exception {
            in.write(request + "\n");
            in.flush();
            return out.readLine();
        }

        static String field(String json, String key) {
            Matcher m = Pattern.compile("\"" + key + "\":\\s*\"([^\"]*)\"").matcher(json);
            check(m.find(), "no " + key + " in " + json);
            return m.group(1);
        }

        void processBundle(String bundleJson) throws Exception {
            String reply = call("{\"op\":\"process_bundle\",\"peer\":\"sotto\",\"device\":1,"
                    + bundleJson.substring(1));
            check(reply.contains("\"ok\""), "peer refused the bundle: " + reply);
        }

        Envelope encrypt(String text) throws Exception {
            String reply = call("{\"op\":\"encrypt\",\"peer\":\"sotto\",\"device\":1,\"plaintext\":\""
                    + Base64.getEncoder().encodeToString(text.getBytes(StandardCharsets.UTF_8)) + "\"}");
            int kind = field(reply, "type").equals("prekey") ? Envelope.PREKEY : Envelope.MESSAGE;
            return new Envelope(kind, Base64.getDecoder().decode(field(reply, "body")));
        }

        String decrypt(Envelope e) throws Exception {
            String reply = call("{\"op\":\"decrypt\",\"peer\":\"sotto\",\"device\":1,\"type\":\""
                    + (e.kind == Envelope.PREKEY ? "prekey" : "message") + "\",\"body\":\""
                    + Base64.getEncoder().encodeToString(e.body) + "\"}");
            check(reply.contains("plaintext"), "peer cannot decrypt Sotto's reply: " + reply);
            return new String(Base64.getDecoder().decode(field(reply, "plaintext")), StandardCharsets.UTF_8);
        }

        @Override
        public void close() {
            process.destroy();
        }
    }

    /** examples/java/BridgeExample.java in its own JVM, as a transport drives it. */
    static void bridgeExample(String modelPath) throws Exception {
        String java = ProcessHandle.current().info().command().orElse("java");
        Process ex = new ProcessBuilder(java, "-Djava.library.path=" + System.getProperty("java.library.path"),
                "-cp", System.getProperty("java.class.path"), "BridgeExample", modelPath, "-")
                .redirectError(ProcessBuilder.Redirect.INHERIT).start();
        try (Peer peer = new Peer()) {
            Writer in = new OutputStreamWriter(ex.getOutputStream(), StandardCharsets.UTF_8);
            BufferedReader out = new BufferedReader(new InputStreamReader(ex.getInputStream(), StandardCharsets.UTF_8));
            String bundle = out.readLine();
            check(bundle != null && bundle.startsWith("bundle {"), "first line " + bundle);
            peer.processBundle(bundle.substring("bundle ".length()));
            Envelope q = peer.encrypt("What is the capital of France?");
            byte[] forged = q.body.clone();
            forged[forged.length / 2] ^= 0x10;
            in.write("user 1 prekey " + Base64.getEncoder().encodeToString(forged) + "\n");
            in.flush();
            String refused = out.readLine();
            check(refused != null && refused.startsWith("error " + SottoException.BAD_MESSAGE + " "), refused);
            in.write("user 1 prekey " + Base64.getEncoder().encodeToString(q.body) + "\n");
            in.flush();
            String line = out.readLine();
            check(line != null && line.startsWith("reply user 1 1 "), "reply line " + line);
            String[] f = line.split(" ");
            int kind = f[4].equals("prekey") ? Envelope.PREKEY : Envelope.MESSAGE;
            String answer = peer.decrypt(new Envelope(kind, Base64.getDecoder().decode(f[5])));
            System.out.println("     via BridgeExample, python-axolotl decrypted: " + answer);
            check(answer.equals("The capital of France is Paris."), answer);
            in.close();
            check(ex.waitFor() == 0, "BridgeExample exit " + ex.exitValue());
        } finally {
            ex.destroy();
        }
    }

    /** decrypt -> answer -> encrypt with python-axolotl as the peer. */
    static void bridgeRoundTrip(Model model) throws Exception {
        Path dir = Files.createTempDirectory("sotto-java-state");
        byte[] key = new byte[32];
        new java.security.SecureRandom().nextBytes(key);
        String options = "{\"chat\":{\"temperature\":0,\"max_tokens\":64}}";
        try (Peer peer = new Peer()) {
            try (Assistant assistant = Assistant.open(model, dir.toString(), key, options)) {
                peer.processBundle(assistant.prekeyBundle());
                Envelope question = peer.encrypt("What is the capital of France?");
                check(question.kind == Envelope.PREKEY, "first envelope " + question);
                List<Reply> replies = assistant.handle("user", 1, question);
                check(replies.size() == 1, "replies " + replies);
                Reply reply = replies.get(0);
                check(reply.peer.equals("user") && reply.deviceId == 1 && reply.turn == 1 && reply.refusal == null,
                        reply.toString());
                String answer = peer.decrypt(reply.envelope);
                System.out.println("     python-axolotl decrypted: " + answer);
                check(answer.equals("The capital of France is Paris."), answer);

                Envelope next = peer.encrypt("What is the capital of Italy?");
                byte[] forged = next.body.clone();
                forged[forged.length / 2] ^= 0x10;
                try {
                    assistant.handle("user", 1, new Envelope(next.kind, forged));
                    throw new AssertionError("a forged envelope was accepted");
                } catch (SottoException e) {
                    check(e.code() == SottoException.BAD_MESSAGE, "code " + e.code() + ": " + e.getMessage());
                    System.out.println("     forged envelope: " + e.getMessage());
                }
                // The session survived the forgery; a listener that does not
                // take the reply leaves it in the outbox.
                assistant.handle("user", 1, next, r -> false);
                Reply[] kept = new Reply[1];
                check(assistant.outbox(r -> {
                    kept[0] = r;
                    return true;
                }) == 1, "outbox");
                check(kept[0].turn == 2, kept[0].toString());
                String second = peer.decrypt(kept[0].envelope);
                System.out.println("     python-axolotl decrypted: " + second);
                check(second.contains("Rome"), second);
                String number = assistant.safetyNumber("user", 1);
                check(number.matches("[0-9]{60}"), number);
            }
            // Only its key opens the state directory again.
            try {
                Assistant.open(model, dir.toString(), new byte[32], options).close();
                throw new AssertionError("opened under a wrong key");
            } catch (SottoException e) {
                check(e.code() == SottoException.STATE, "code " + e.code() + ": " + e.getMessage());
            }
            try (Assistant again = Assistant.open(model, dir.toString(), key, options)) {
                List<Reply> replies = again.handle("user", 1, peer.encrypt("Thank you!"));
                check(replies.size() == 1 && replies.get(0).turn == 3, replies.toString());
                check(!peer.decrypt(replies.get(0).envelope).isEmpty(), "empty answer after a restart");
            }
        } finally {
            try (var files = Files.walk(dir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }
}
