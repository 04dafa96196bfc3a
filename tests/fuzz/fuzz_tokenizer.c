/* libFuzzer target for the tokenizer: the input is text to encode (with and without special
 * tokens), decode whole and stream back (chat templates: fuzz_chat_template.c).
 *
 * Invariants checked (abort() on violation): decoding reproduces the input whenever every byte
 * of it has a byte-level token (both with parse_special off, and on with specials shown); the
 * streaming decoder emits only valid UTF-8, and exactly the input when the input is valid
 * UTF-8. The model comes from $ADAPTREE_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/text/tokenizer.h"
#include "core/text/unicode_internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static core_tokenizer *tok;
static bool byte_missing[256]; /* no byte-level token: such a byte is dropped when encoding */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = getenv("ADAPTREE_MODEL");
    char err[256] = "";
    core_gguf *g =
        core_gguf_open(path ? path : "models/SmolLM2-135M-Instruct.Q4_1.gguf", err, sizeof err);
    if (g)
        tok = core_tokenizer_new(g, err, sizeof err);
    core_gguf_close(g);
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer: cannot load the tokenizer: %s\n", err);
        abort();
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t *ids;
        size_t n;
        if (core_tokenize(tok, &c, 1, false, &ids, &n) != 0)
            abort();
        byte_missing[b] = n == 0;
        free(ids);
    }
    return 0;
}

static bool valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = core_utf8_check(s + i, n - i, &cp);
        if (l <= 0)
            return false;
        i += (size_t)l;
    }
    return true;
}

/* Decodes ids whole; aborts unless the bytes equal the input (when they must). */
static void check_decode(const int32_t *ids, size_t n, bool show, const uint8_t *data, size_t size,
                         bool must_equal)
{
    uint8_t *buf = malloc(size + 64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int m = core_token_to_bytes(tok, ids[i], show, NULL, 0);
        if (m < 0 || k + (size_t)m > size + 64) {
            if (must_equal || m < 0)
                abort();
            break;
        }
        core_token_to_bytes(tok, ids[i], show, (char *)buf + k, (size_t)m);
        k += (size_t)m;
    }
    if (must_equal && (k != size || memcmp(buf, data, size) != 0))
        abort();
    free(buf);
}

/* Streams ids through core_detok; the output must be valid UTF-8, and the input itself when
 * that is valid UTF-8 and nothing was dropped or hidden. */
static void check_stream(const int32_t *ids, size_t n, bool show, const uint8_t *data, size_t size,
                         bool must_equal)
{
    size_t cap = 3 * size + 64, k = 0;
    char *out = malloc(cap);
    core_detok d;
    core_detok_init(&d, tok, show);
    for (size_t i = 0; i < n; i++) {
        int r = core_detok_push(&d, ids[i], out + k, cap - k);
        if (r < 0)
            abort();
        k += (size_t)r;
    }
    int r = core_detok_flush(&d, out + k, cap - k);
    if (r < 0)
        abort();
    k += (size_t)r;
    if (!valid_utf8((const uint8_t *)out, k))
        abort();
    if (must_equal && (k != size || memcmp(out, data, size) != 0))
        abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool all_bytes = true;
    for (size_t i = 0; i < size; i++)
        all_bytes &= !byte_missing[data[i]];
    bool utf8 = valid_utf8(data, size);
    for (int special = 0; special <= 1; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (core_tokenize(tok, (const char *)data, size, special, &ids, &n) != 0)
            abort();
        if (n > size)
            abort();
        check_decode(ids, n, special, data, size, all_bytes);
        check_stream(ids, n, special, data, size, all_bytes && utf8);
        free(ids);
    }
    return 0;
}
