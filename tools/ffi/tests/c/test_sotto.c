/* The C ABI's tests, compiled with the system cc against libsotto and run by
 * scripts/test-ffi.sh natively, under AddressSanitizer and (cross-built)
 * under qemu-aarch64.
 *
 *   SOTTO_MODEL               the default model (SmolLM2-135M-Instruct Q4_1;
 *                             `cargo run -p sotto -- fetch` prints its path)
 *   SOTTO_EXPECT_PANIC_PROBE  1 when the library was built with the
 *                             panic-probe feature (test builds)
 *
 * Prints one line per test and "N passed, N failed" last; exits non-zero
 * when any failed. */
#define _POSIX_C_SOURCE 200809L
#include "sotto.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int passed, failed;
static const char *model_path;
static SottoModel *model; /* shared by the tests that generate */

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
            return 0;                                                          \
        }                                                                      \
    } while (0)

static void run(const char *name, int (*test)(void)) {
    fprintf(stderr, "test %s ...\n", name);
    if (test()) {
        passed++;
        printf("ok   %s\n", name);
    } else {
        failed++;
        printf("FAIL %s\n", name);
    }
    fflush(stdout);
}

/* ---- streaming into a buffer ------------------------------------------ */

struct text {
    char buf[8192];
    size_t len;
    int pieces;
    int bad_piece; /* a piece whose len disagrees with its NUL */
    atomic_int first_piece_seen;
};

/* Whole UTF-8 characters only: no piece may end inside a sequence. */
static int utf8_complete(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (k == 0 || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] >> 6) != 2) return 0;
        i += k;
    }
    return 1;
}

static void collect(void *user_data, const char *piece, size_t len) {
    struct text *t = user_data;
    if (strlen(piece) != len || !utf8_complete(piece, len)) t->bad_piece = 1;
    if (t->len + len < sizeof t->buf) {
        memcpy(t->buf + t->len, piece, len);
        t->len += len;
        t->buf[t->len] = 0;
    }
    t->pieces++;
    atomic_store(&t->first_piece_seen, 1);
}

static const char *FRANCE = "What is the capital of France?";
static const char *FRANCE_ANSWER = "The capital of France is Paris.";
static const char *GREEDY = "{\"system\":\"You are a helpful assistant.\",\"temperature\":0,\"max_tokens\":64}";

/* ---- tests --------------------------------------------------------------- */

static int test_version(void) {
    CHECK(sotto_abi_version() == SOTTO_ABI_VERSION, "library ABI %u, header %u",
          sotto_abi_version(), SOTTO_ABI_VERSION);
    const char *v = sotto_version();
    CHECK(v && strchr(v, '.'), "version %s", v ? v : "(null)");
    return 1;
}

static int test_missing_file(void) {
    SottoModel *m = (SottoModel *)1;
    SottoStatus s = sotto_model_open("/nonexistent/dir/model.gguf", NULL, &m);
    CHECK(s == SOTTO_STATUS_NOT_FOUND, "status %d", s);
    CHECK(m == NULL, "out not cleared");
    const char *msg = sotto_last_error_message();
    CHECK(strstr(msg, "/nonexistent/dir/model.gguf"), "message: %s", msg);
    return 1;
}

static int test_bad_model(void) {
    char path[] = "/tmp/sotto-c-bad-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    const char junk[] = "GGUF but not really: a text file pretending to be a model";
    CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk, "write");
    close(fd);
    SottoModel *m = NULL;
    SottoStatus s = sotto_model_open(path, NULL, &m);
    unlink(path);
    CHECK(s == SOTTO_STATUS_BAD_MODEL, "status %d: %s", s, sotto_last_error_message());
    CHECK(m == NULL, "out set");
    CHECK(strlen(sotto_last_error_message()) > 0, "no message");
    return 1;
}

static int test_bad_arguments(void) {
    SottoModel *m = NULL;
    SottoStatus s;
    CHECK(sotto_model_open(NULL, NULL, &m) == SOTTO_STATUS_INVALID_ARGUMENT, "NULL path");
    CHECK(strstr(sotto_last_error_message(), "path"), "%s", sotto_last_error_message());
    CHECK(sotto_model_open(model_path, "{\"threads\":", &m) == SOTTO_STATUS_INVALID_ARGUMENT,
          "broken JSON");
    CHECK(sotto_model_open(model_path, "{\"backend\":\"tpu\"}", &m) == SOTTO_STATUS_INVALID_ARGUMENT,
          "unknown backend");
    CHECK(strstr(sotto_last_error_message(), "tpu"), "%s", sotto_last_error_message());
    /* This build has no ONNX Runtime backend: a typed refusal, not a crash. */
    s = sotto_model_open(model_path, "{\"backend\":\"ort\",\"graphs\":\"/nonexistent\"}", &m);
    CHECK(s == SOTTO_STATUS_BACKEND_UNAVAILABLE || s == SOTTO_STATUS_NOT_FOUND, "ort: %d %s", s,
          sotto_last_error_message());
    CHECK(sotto_chat_open(NULL, NULL, NULL) == SOTTO_STATUS_INVALID_ARGUMENT, "NULL out");
    SottoChat *c = NULL;
    CHECK(sotto_chat_open(model, "{\"temperature\":-1}", &c) == SOTTO_STATUS_INVALID_ARGUMENT,
          "negative temperature: %s", sotto_last_error_message());
    CHECK(sotto_chat_send(NULL, "hi", NULL, NULL, NULL) == SOTTO_STATUS_INVALID_ARGUMENT, "NULL chat");
    /* Success clears the thread's message. */
    CHECK(sotto_chat_cancel(NULL) == SOTTO_STATUS_INVALID_ARGUMENT, "cancel NULL");
    sotto_chat_free(NULL);
    sotto_model_free(NULL);
    sotto_string_free(NULL);
    return 1;
}

static int test_france_streamed(void) {
    SottoChat *chat = NULL;
    CHECK(sotto_chat_open(model, GREEDY, &chat) == SOTTO_STATUS_OK, "%s", sotto_last_error_message());
    struct text t = {0};
    char *reply = NULL;
    SottoStatus s = sotto_chat_send(chat, FRANCE, collect, &t, &reply);
    CHECK(s == SOTTO_STATUS_OK, "status %d: %s", s, sotto_last_error_message());
    CHECK(strlen(sotto_last_error_message()) == 0, "message after success");
    printf("     streamed in %d pieces: %s\n", t.pieces, t.buf);
    CHECK(!t.bad_piece, "a piece was not whole UTF-8 or had a wrong length");
    CHECK(t.pieces > 1, "streamed in %d pieces", t.pieces);
    CHECK(strcmp(t.buf, FRANCE_ANSWER) == 0, "streamed %s", t.buf);
    CHECK(reply && strcmp(reply, t.buf) == 0, "reply %s", reply ? reply : "(null)");
    sotto_string_free(reply);
    /* Reset forgets the turn; the same question gives the same answer. */
    CHECK(sotto_chat_reset(chat) == SOTTO_STATUS_OK, "reset");
    struct text again = {0};
    CHECK(sotto_chat_send(chat, FRANCE, collect, &again, NULL) == SOTTO_STATUS_OK, "second send");
    CHECK(strcmp(again.buf, FRANCE_ANSWER) == 0, "after reset %s", again.buf);
    sotto_chat_free(chat);
    return 1;
}

struct canceller {
    SottoChat *chat;
    struct text *text;
    SottoStatus status;
};

static void *cancel_after_first_piece(void *arg) {
    struct canceller *c = arg;
    while (!atomic_load(&c->text->first_piece_seen)) usleep(1000);
    c->status = sotto_chat_cancel(c->chat);
    return NULL;
}

static int test_cancel_from_another_thread(void) {
    SottoChat *chat = NULL;
    CHECK(sotto_chat_open(model,
                          "{\"system\":\"You are a helpful assistant.\",\"temperature\":0,\"max_tokens\":400}",
                          &chat) == SOTTO_STATUS_OK,
          "%s", sotto_last_error_message());
    /* Nothing running: cancel is a no-op. */
    CHECK(sotto_chat_cancel(chat) == SOTTO_STATUS_OK, "idle cancel");
    struct text t = {0};
    struct canceller c = {chat, &t, -1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, cancel_after_first_piece, &c) == 0, "pthread_create");
    char *reply = (char *)1;
    SottoStatus s = sotto_chat_send(chat, "Write a long story about a dragon who learns to bake bread.",
                                    collect, &t, &reply);
    pthread_join(th, NULL);
    CHECK(c.status == SOTTO_STATUS_OK, "cancel returned %d", c.status);
    CHECK(s == SOTTO_STATUS_CANCELLED, "send returned %d after %d pieces", s, t.pieces);
    CHECK(reply == NULL, "reply set on cancel");
    CHECK(strstr(sotto_last_error_message(), "cancel"), "%s", sotto_last_error_message());
    printf("     cancelled after %d pieces\n", t.pieces);
    /* The cancelled turn left no trace: the next answer is the usual one. */
    struct text next = {0};
    CHECK(sotto_chat_send(chat, FRANCE, collect, &next, NULL) == SOTTO_STATUS_OK, "%s",
          sotto_last_error_message());
    CHECK(strcmp(next.buf, FRANCE_ANSWER) == 0, "after cancel %s", next.buf);
    sotto_chat_free(chat);
    return 1;
}

struct turn {
    const char *question;
    struct text text;
    SottoStatus status;
};

static void *ask(void *arg) {
    struct turn *t = arg;
    SottoChat *chat = NULL;
    t->status = sotto_chat_open(model, GREEDY, &chat);
    if (t->status == SOTTO_STATUS_OK) t->status = sotto_chat_send(chat, t->question, collect, &t->text, NULL);
    sotto_chat_free(chat);
    return NULL;
}

static int test_two_sessions_on_two_threads(void) {
    const char *q2 = "What is the capital of Italy?";
    /* Each question alone first, then both at once. */
    struct turn solo1 = {FRANCE}, solo2 = {q2};
    ask(&solo1);
    ask(&solo2);
    CHECK(solo1.status == SOTTO_STATUS_OK && solo2.status == SOTTO_STATUS_OK, "solo runs");
    CHECK(strcmp(solo1.text.buf, solo2.text.buf) != 0, "the two answers differ: %s", solo1.text.buf);
    struct turn t1 = {FRANCE}, t2 = {q2};
    pthread_t a, b;
    CHECK(pthread_create(&a, NULL, ask, &t1) == 0 && pthread_create(&b, NULL, ask, &t2) == 0, "threads");
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    CHECK(t1.status == SOTTO_STATUS_OK && t2.status == SOTTO_STATUS_OK, "statuses %d %d", t1.status,
          t2.status);
    printf("     thread 1: %s\n     thread 2: %s\n", t1.text.buf, t2.text.buf);
    CHECK(strcmp(t1.text.buf, solo1.text.buf) == 0, "thread 1 got %s, alone %s", t1.text.buf,
          solo1.text.buf);
    CHECK(strcmp(t2.text.buf, solo2.text.buf) == 0, "thread 2 got %s, alone %s", t2.text.buf,
          solo2.text.buf);
    return 1;
}

static int test_context_overflow(void) {
    SottoChat *chat = NULL;
    CHECK(sotto_chat_open(model, "{\"context\":24,\"temperature\":0}", &chat) == SOTTO_STATUS_OK, "%s",
          sotto_last_error_message());
    struct text t = {0};
    SottoStatus s = sotto_chat_send(
        chat, "Please tell me, in great detail, everything you know about the history of the city of Paris.",
        collect, &t, NULL);
    CHECK(s == SOTTO_STATUS_CONTEXT_OVERFLOW, "status %d", s);
    CHECK(strstr(sotto_last_error_message(), "context"), "%s", sotto_last_error_message());
    CHECK(t.pieces == 0, "streamed %d pieces", t.pieces);
    sotto_chat_free(chat);
    return 1;
}

static void *reset_then_cancel(void *arg) {
    struct canceller *c = arg;
    while (!atomic_load(&c->text->first_piece_seen)) usleep(1000);
    c->status = sotto_chat_reset(c->chat); /* concurrent with the send: BUSY */
    sotto_chat_cancel(c->chat);
    return NULL;
}

static int test_busy_while_sending(void) {
    /* A chat takes one call at a time: a reset from another thread while a
     * send runs is refused, not interleaved. */
    SottoChat *chat = NULL;
    CHECK(sotto_chat_open(model, "{\"temperature\":0,\"max_tokens\":300}", &chat) == SOTTO_STATUS_OK,
          "open");
    struct text t = {0};
    struct canceller c = {chat, &t, -1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, reset_then_cancel, &c) == 0, "thread");
    SottoStatus s = sotto_chat_send(chat, "Count from one to one hundred in words.", collect, &t, NULL);
    pthread_join(th, NULL);
    CHECK(c.status == SOTTO_STATUS_BUSY, "reset during send returned %d", c.status);
    CHECK(s == SOTTO_STATUS_CANCELLED, "send %d", s);
    sotto_chat_free(chat);
    return 1;
}

static int test_panic_becomes_a_code(void) {
    const char *probe = getenv("SOTTO_EXPECT_PANIC_PROBE");
    SottoModel *m = NULL;
    SottoStatus s = sotto_model_open(model_path, "{\"panic_probe\":true}", &m);
    if (!probe || strcmp(probe, "1") != 0) {
        /* A release build refuses the probe. */
        CHECK(s == SOTTO_STATUS_INVALID_ARGUMENT, "status %d", s);
        return 1;
    }
    CHECK(s == SOTTO_STATUS_OK, "open with the probe: %s", sotto_last_error_message());
    SottoChat *chat = NULL;
    CHECK(sotto_chat_open(m, GREEDY, &chat) == SOTTO_STATUS_OK, "%s", sotto_last_error_message());
    struct text t = {0};
    s = sotto_chat_send(chat, FRANCE, collect, &t, NULL);
    CHECK(s == SOTTO_STATUS_PANIC, "status %d", s);
    CHECK(strstr(sotto_last_error_message(), "panic probe"), "%s", sotto_last_error_message());
    s = sotto_chat_send(chat, FRANCE, collect, &t, NULL);
    CHECK(s == SOTTO_STATUS_POISONED, "after the panic: %d", s);
    sotto_chat_free(chat);
    /* The model is fine: other chats on it work. */
    sotto_model_free(m);
    return 1;
}

int main(void) {
    model_path = getenv("SOTTO_MODEL");
    if (!model_path || access(model_path, R_OK) != 0) {
        fprintf(stderr,
                "SOTTO_MODEL must name the default model: run `cargo run -p sotto -- fetch` "
                "(scripts/test-ffi.sh does)\n");
        return 2;
    }
    run("version", test_version);
    run("missing_file", test_missing_file);
    run("bad_model", test_bad_model);
    SottoStatus s = sotto_model_open(model_path, "{\"threads\":2}", &model);
    if (s != SOTTO_STATUS_OK) {
        fprintf(stderr, "cannot open %s: %s\n", model_path, sotto_last_error_message());
        return 1;
    }
    run("bad_arguments", test_bad_arguments);
    run("france_streamed", test_france_streamed);
    run("cancel_from_another_thread", test_cancel_from_another_thread);
    run("two_sessions_on_two_threads", test_two_sessions_on_two_threads);
    run("context_overflow", test_context_overflow);
    run("busy_while_sending", test_busy_while_sending);
    run("panic_becomes_a_code", test_panic_becomes_a_code);
    sotto_model_free(model);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
