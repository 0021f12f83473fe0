/* Proves the AddressSanitizer run of the C tests is live: a C caller that
 * frees a string the library handed out twice must be stopped by ASan
 * (the library's allocations go through the sanitizer's malloc/free).
 * scripts/test-ffi.sh expects this program to abort with an ASan report
 * (heap-use-after-free: the second sotto_string_free reads the freed
 * string's length before freeing it); a clean exit fails the step.
 *
 * Needs SOTTO_MODEL (an assistant needs a model). */
#include "sotto.h"

#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *path = getenv("SOTTO_MODEL");
    SottoModel *model = NULL;
    if (!path || sotto_model_open(path, NULL, &model) != SOTTO_STATUS_OK) {
        fprintf(stderr, "cannot open the model (SOTTO_MODEL): %s\n", sotto_last_error_message());
        return 2;
    }
    SottoAssistant *assistant = NULL;
    char *bundle = NULL;
    if (sotto_assistant_open(model, NULL, NULL, 0, NULL, &assistant) != SOTTO_STATUS_OK ||
        sotto_assistant_prekey_bundle(assistant, &bundle) != SOTTO_STATUS_OK) {
        fprintf(stderr, "%s\n", sotto_last_error_message());
        return 2;
    }
    sotto_string_free(bundle);
    sotto_string_free(bundle); /* the bug ASan must catch */
    sotto_assistant_free(assistant);
    sotto_model_free(model);
    printf("the double free went unnoticed\n");
    return 0;
}
