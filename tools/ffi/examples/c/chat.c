/* A streaming chat on libsotto, the way an app would embed it.
 *
 *   cc -I tools/ffi/include tools/ffi/examples/c/chat.c target/release/libsotto.a \
 *      -lpthread -ldl -lm -o chat
 *   ./chat MODEL.gguf "What is the capital of France?"
 *
 * The answer is printed piece by piece as the model writes it. */
#include "sotto.h"

#include <stdio.h>

static void print_piece(void *user_data, const char *piece, size_t len) {
    (void)user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf QUESTION\n", argv[0]);
        return 2;
    }
    if (sotto_abi_version() != SOTTO_ABI_VERSION) {
        fprintf(stderr, "libsotto ABI %u, this program was built for %u\n", sotto_abi_version(),
                SOTTO_ABI_VERSION);
        return 1;
    }
    SottoModel *model = NULL;
    if (sotto_model_open(argv[1], "{\"backend\":\"cpu\"}", &model) != SOTTO_STATUS_OK) {
        fprintf(stderr, "cannot open %s: %s\n", argv[1], sotto_last_error_message());
        return 1;
    }
    SottoChat *chat = NULL;
    SottoStatus status = sotto_chat_open(
        model, "{\"system\":\"You are a helpful assistant.\",\"temperature\":0}", &chat);
    if (status == SOTTO_STATUS_OK) {
        status = sotto_chat_send(chat, argv[2], print_piece, NULL, NULL);
        printf("\n");
    }
    if (status != SOTTO_STATUS_OK) fprintf(stderr, "error %d: %s\n", status, sotto_last_error_message());
    sotto_chat_free(chat);
    sotto_model_free(model);
    return status == SOTTO_STATUS_OK ? 0 : 1;
}
