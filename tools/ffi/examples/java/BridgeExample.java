import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import org.sotto.Assistant;
import org.sotto.Envelope;
import org.sotto.Model;
import org.sotto.SottoException;

/**
 * The bridge round trip from Java: encrypted message in, decrypted,
 * answered by the model, encrypted reply out (on Android the same classes;
 * keep the key in the Android Keystore, the state directory in the app's
 * files dir). A transport of text lines on stdin/stdout, as in
 * examples/c/bridge.c:
 *
 *   javac -d out tools/ffi/java/org/sotto/*.java tools/ffi/examples/java/BridgeExample.java
 *   SOTTO_BRIDGE_KEY=<64 hex> java -Djava.library.path=target/release -cp out BridgeExample MODEL.gguf STATE_DIR
 *
 * Prints "bundle JSON", then reads "SENDER DEVICE prekey|message BASE64"
 * lines and prints "reply PEER DEVICE TURN prekey|message BASE64" (or
 * "error CODE MESSAGE" for a refused envelope).
 *
 * Kotlin: assistant.handle(sender, 1, envelope) { r -> transport.send(r); true }
 */
public final class BridgeExample {
    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: SOTTO_BRIDGE_KEY=<64 hex> BridgeExample MODEL.gguf STATE_DIR|-");
            System.exit(2);
        }
        String stateDir = args[1].equals("-") ? null : args[1];
        byte[] key = stateDir == null ? null : hex(System.getenv("SOTTO_BRIDGE_KEY"));
        try (Model model = Model.open(args[0]);
                Assistant assistant = Assistant.open(model, stateDir, key, "{\"chat\":{\"temperature\":0}}")) {
            assistant.outbox(BridgeExample::send);
            System.out.println("bundle " + assistant.prekeyBundle());
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String line; (line = in.readLine()) != null; ) {
                String[] f = line.trim().split(" ");
                try {
                    if (f.length != 4) {
                        throw new SottoException(SottoException.INVALID_ARGUMENT, "malformed line");
                    }
                    int kind = f[2].equals("prekey") ? Envelope.PREKEY : Envelope.MESSAGE;
                    Envelope envelope = new Envelope(kind, Base64.getDecoder().decode(f[3]));
                    assistant.handle(f[0], Integer.parseInt(f[1]), envelope, BridgeExample::send);
                } catch (SottoException e) {
                    System.out.println("error " + e.code() + " " + e.getMessage());
                } catch (IllegalArgumentException e) {
                    System.out.println("error " + SottoException.INVALID_ARGUMENT + " " + e.getMessage());
                }
                System.out.flush();
            }
        }
    }

    /** The transport: print the reply; true tells the assistant it was sent. */
    private static boolean send(org.sotto.Reply r) {
        System.out.println("reply " + r.peer + " " + r.deviceId + " " + r.turn + " "
                + (r.envelope.kind == Envelope.PREKEY ? "prekey" : "message") + " "
                + Base64.getEncoder().encodeToString(r.envelope.body));
        System.out.flush();
        return !System.out.checkError();
    }

    private static byte[] hex(String s) {
        if (s == null || s.length() != 64) {
            System.err.println("a state directory needs SOTTO_BRIDGE_KEY (64 hex digits)");
            System.exit(2);
        }
        byte[] key = new byte[32];
        for (int i = 0; i < 32; i++) {
            key[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        }
        return key;
    }
}
