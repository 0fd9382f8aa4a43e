/*
 * chat: a small chat program over the tomoe C API (include/tomoe.h).
 *
 *   chat MODEL.gguf [-p PROMPT] [-s SYSTEM] [-n MAX_TOKENS] [-c N_CTX] [-t THREADS]
 *                   [--temp T] [--seed S]
 *
 * With -p, answers PROMPT once and exits (scripts/test-capi.sh runs it that way under valgrind).
 * Without -p, reads one user message per line from stdin until EOF or "/quit".
 * The reply goes to stdout; model information and speed go to stderr.
 *
 * Each turn renders the whole conversation with the model's chat template and generates from a
 * cleared context: simple and always correct, at the cost of re-reading earlier turns. When the
 * conversation outgrows the context, the oldest turns are dropped.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tomoe.h"

/* A growable string. */
typedef struct {
    char *data;
    size_t len, cap;
} text_buf;

static int text_append(text_buf *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1) cap *= 2;
        char *grown = realloc(t->data, cap);
        if (!grown) return -1;
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
    return 0;
}

/* The conversation: roles are string literals, contents are owned copies. */
typedef struct {
    tomoe_chat_message *msgs;
    size_t n, cap;
} conversation;

static int conv_push(conversation *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        tomoe_chat_message *grown = realloc(c->msgs, cap * sizeof *grown);
        if (!grown) return -1;
        c->msgs = grown;
        c->cap = cap;
    }
    char *copy = strdup(content);
    if (!copy) return -1;
    c->msgs[c->n].role = role;
    c->msgs[c->n].content = copy;
    c->n++;
    return 0;
}

/* Drops the oldest message after the system prompt (if any); returns 0 if nothing is left to drop. */
static int conv_drop_oldest(conversation *c, size_t keep_first) {
    if (c->n <= keep_first + 1) return 0;
    free((char *)c->msgs[keep_first].content);
    memmove(&c->msgs[keep_first], &c->msgs[keep_first + 1], (c->n - keep_first - 1) * sizeof *c->msgs);
    c->n--;
    return 1;
}

static void conv_free(conversation *c) {
    for (size_t i = 0; i < c->n; i++) free((char *)c->msgs[i].content);
    free(c->msgs);
}

static int fail(const char *what, tomoe_status st) {
    fprintf(stderr, "chat: %s: %s: %s\n", what, tomoe_status_name(st), tomoe_last_error());
    return 1;
}

/* Renders the conversation into *prompt (reused across turns). */
static tomoe_status render(const tomoe_model *model, const conversation *c, text_buf *prompt) {
    size_t len = 0;
    tomoe_status st = tomoe_chat_apply(model, c->msgs, c->n, true, prompt->data, prompt->cap, &len);
    if (st == TOMOE_ERR_BUFFER_TOO_SMALL) {
        char *grown = realloc(prompt->data, len + 1);
        if (!grown) return TOMOE_ERR_INTERNAL;
        prompt->data = grown;
        prompt->cap = len + 1;
        st = tomoe_chat_apply(model, c->msgs, c->n, true, prompt->data, prompt->cap, &len);
    }
    prompt->len = st == TOMOE_OK ? len : 0;
    return st;
}

/* Streams each piece to stdout and keeps the reply. */
static bool on_token(void *user_data, uint32_t token, const char *piece, size_t piece_len) {
    (void)token;
    text_buf *reply = user_data;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    return text_append(reply, piece, piece_len) == 0;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One assistant turn for the conversation so far; appends the reply to it. */
static int turn(const tomoe_model *model, tomoe_context *ctx, conversation *conv, size_t keep_first,
                uint32_t max_tokens, text_buf *prompt) {
    tomoe_status st;
    tomoe_generate_result res = {0};
    text_buf reply = {0};
    double start = now_seconds();
    for (;;) {
        if ((st = render(model, conv, prompt)) != TOMOE_OK) return fail("chat template", st);
        if ((st = tomoe_context_clear(ctx)) != TOMOE_OK) return fail("clear", st);
        st = tomoe_generate(ctx, prompt->data, max_tokens, on_token, &reply, &res);
        if (st != TOMOE_ERR_CONTEXT_FULL || !conv_drop_oldest(conv, keep_first)) break;
    }
    printf("\n");
    if (st != TOMOE_OK) {
        free(reply.data);
        return fail("generate", st);
    }
    double secs = now_seconds() - start;
    fprintf(stderr, "[%u prompt + %u generated tokens in %.2f s, %.1f tokens/s; stop: %d]\n",
            res.n_prompt_tokens, res.n_generated, secs,
            secs > 0 ? (res.n_prompt_tokens + res.n_generated) / secs : 0.0, (int)res.stop_reason);
    int err = conv_push(conv, "assistant", reply.data ? reply.data : "");
    free(reply.data);
    return err ? fail("out of memory", TOMOE_ERR_INTERNAL) : 0;
}

static void usage(void) {
    fprintf(stderr, "usage: chat MODEL.gguf [-p PROMPT] [-s SYSTEM] [-n MAX_TOKENS] [-c N_CTX] "
                    "[-t THREADS] [--temp T] [--seed S]\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *model_path = argv[1], *prompt_arg = NULL, *system_arg = NULL;
    uint32_t max_tokens = 256;
    tomoe_context_params cparams = tomoe_context_default_params();
    tomoe_sampling_params sparams = tomoe_sampling_default_params();
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            usage();
            return 2;
        }
        if (!strcmp(opt, "-p")) prompt_arg = val;
        else if (!strcmp(opt, "-s")) system_arg = val;
        else if (!strcmp(opt, "-n")) max_tokens = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(opt, "-c")) cparams.n_ctx = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(opt, "-t")) cparams.n_threads = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(opt, "--temp")) sparams.temperature = strtof(val, NULL);
        else if (!strcmp(opt, "--seed")) cparams.seed = strtoull(val, NULL, 10);
        else {
            usage();
            return 2;
        }
        i++;
    }

    tomoe_model *model = NULL;
    tomoe_context *ctx = NULL;
    conversation conv = {0};
    text_buf prompt = {0};
    int rc = 1;
    tomoe_status st;

    if ((st = tomoe_model_load(model_path, &model)) != TOMOE_OK) {
        rc = fail("loading the model", st);
        goto done;
    }
    tomoe_model_info info;
    if ((st = tomoe_model_get_info(model, &info)) != TOMOE_OK) {
        rc = fail("model info", st);
        goto done;
    }
    fprintf(stderr, "tomoe %s, kernels %s: %s, %u layers, %llu parameters (%llu active), %u experts\n",
            tomoe_version(), tomoe_kernel_name(), info.architecture, info.n_layer,
            (unsigned long long)info.n_params, (unsigned long long)info.n_active_params,
            info.n_expert);
    fprintf(stderr, "memory: %.1f MiB file, %.1f MiB decoding copies\n",
            (double)info.file_bytes / (1 << 20), (double)info.copies_bytes / (1 << 20));
    if ((st = tomoe_context_new(model, &cparams, &ctx)) != TOMOE_OK) {
        rc = fail("creating the context", st);
        goto done;
    }
    if ((st = tomoe_context_set_sampling(ctx, &sparams)) != TOMOE_OK) {
        rc = fail("sampling parameters", st);
        goto done;
    }
    size_t keep_first = 0;
    if (system_arg) {
        if (conv_push(&conv, "system", system_arg)) goto done;
        keep_first = 1;
    }

    if (prompt_arg) {
        if (conv_push(&conv, "user", prompt_arg)) goto done;
        rc = turn(model, ctx, &conv, keep_first, max_tokens, &prompt);
        goto done;
    }
    char *line = NULL;
    size_t line_cap = 0;
    rc = 0;
    for (;;) {
        fprintf(stderr, "> ");
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (!strcmp(line, "/quit")) break;
        if (n == 0) continue;
        if (conv_push(&conv, "user", line) || (rc = turn(model, ctx, &conv, keep_first, max_tokens, &prompt))) {
            rc = 1;
            break;
        }
    }
    free(line);

done:
    free(prompt.data);
    conv_free(&conv);
    tomoe_context_free(ctx);
    tomoe_model_free(model);
    return rc;
}
