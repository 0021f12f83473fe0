/* The bridge round trip on libsotto: encrypted message in, decrypted,
 * answered by the model, encrypted reply out. A transport (here: lines on
 * stdin/stdout) carries envelopes between the peer and the assistant.
 *
 *   cc -I tools/ffi/include -I tools/ffi/examples/c tools/ffi/examples/c/bridge.c \
 *      target/release/libsotto.a -lpthread -ldl -lm -o bridge
 *   SOTTO_BRIDGE_KEY=<64 hex digits> ./bridge MODEL.gguf STATE_DIR   (STATE_DIR "-": in memory)
 *
 * It prints "bundle <JSON>" (publish it: the peer starts its session from
 * it), then reads one envelope per line,
 *     SENDER DEVICE prekey|message BASE64
 * and prints each reply as
 *     reply PEER DEVICE TURN prekey|message BASE64
 * or "error CODE MESSAGE" for an envelope that was refused (forged,
 * replayed...: the session goes on). Replies still unsent after a crash
 * are printed first on the next start. */
#include "sotto.h"
#include "base64.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_name(uint32_t kind) { return kind == SOTTO_ENVELOPE_PREKEY ? "prekey" : "message"; }

/* The transport: print the reply; true tells the assistant it was sent. */
static bool send_reply(void *user_data, const SottoReply *reply) {
    (void)user_data;
    char *body = b64_encode(reply->body, reply->body_len);
    if (!body) return false;
    printf("reply %s %u %llu %s %s\n", reply->peer, reply->device_id, (unsigned long long)reply->turn,
           kind_name(reply->kind), body);
    free(body);
    return fflush(stdout) == 0;
}

static int parse_key(const char *hex, uint8_t key[32]) {
    if (!hex || strlen(hex) != 64) return 0;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 0;
        key[i] = (uint8_t)v;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: SOTTO_BRIDGE_KEY=<64 hex> %s MODEL.gguf STATE_DIR|-\n", argv[0]);
        return 2;
    }
    const char *state_dir = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
    uint8_t key[32];
    if (state_dir && !parse_key(getenv("SOTTO_BRIDGE_KEY"), key)) {
        fprintf(stderr, "a state directory needs SOTTO_BRIDGE_KEY (64 hex digits)\n");
        return 2;
    }
    SottoModel *model = NULL;
    SottoAssistant *assistant = NULL;
    if (sotto_model_open(argv[1], NULL, &model) != SOTTO_STATUS_OK ||
        sotto_assistant_open(model, state_dir, key, sizeof key, "{\"chat\":{\"temperature\":0}}",
                             &assistant) != SOTTO_STATUS_OK) {
        fprintf(stderr, "cannot start: %s\n", sotto_last_error_message());
        sotto_model_free(model);
        return 1;
    }
    sotto_model_free(model); /* the assistant keeps what it needs */

    sotto_assistant_outbox(assistant, send_reply, NULL, NULL);
    char *bundle = NULL;
    if (sotto_assistant_prekey_bundle(assistant, &bundle) != SOTTO_STATUS_OK) {
        fprintf(stderr, "bundle: %s\n", sotto_last_error_message());
        sotto_assistant_free(assistant);
        return 1;
    }
    printf("bundle %s\n", bundle);
    fflush(stdout);
    sotto_string_free(bundle);

    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        char sender[256], kind[16];
        unsigned device;
        int body_at = 0;
        if (sscanf(line, "%255s %u %15s %n", sender, &device, kind, &body_at) != 3 || !body_at) {
            printf("error %d malformed line\n", SOTTO_STATUS_INVALID_ARGUMENT);
            fflush(stdout);
            continue;
        }
        size_t n = strcspn(line + body_at, "\r\n"), len = 0;
        uint8_t *body = b64_decode(line + body_at, n, &len);
        SottoStatus s = body ? sotto_assistant_handle(assistant, sender, device,
                                                      strcmp(kind, "prekey") == 0 ? SOTTO_ENVELOPE_PREKEY
                                                                                  : SOTTO_ENVELOPE_MESSAGE,
                                                      body, len, send_reply, NULL)
                             : SOTTO_STATUS_INVALID_ARGUMENT;
        if (s != SOTTO_STATUS_OK) {
            printf("error %d %s\n", s, body ? sotto_last_error_message() : "body is not base64");
            fflush(stdout);
        }
        free(body);
    }
    sotto_assistant_free(assistant);
    return 0;
}
