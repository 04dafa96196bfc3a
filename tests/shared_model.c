/* One load of the default model, and one of Gemma 3, shared by the tests that read them. */
#include "tests/shared_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test.h"

core_model *test_shared_model(void)
{
    static core_model *m;
    static int tried;
    if (!tried) {
        char err[512];
        tried = 1;
        m = core_model_load(test_model_path(), err, sizeof err);
        if (!m)
            printf("    load failed: %s\n", err);
    }
    return m;
}

core_model *test_gemma_model(void)
{
    static core_model *m;
    static int tried;
    if (!tried) {
        char err[512];
        tried = 1;
        m = core_model_load(TEST_GEMMA_MODEL, err, sizeof err);
        if (!m)
            printf("    load failed: %s\n", err);
    }
    return m;
}

core_tokenizer *test_shared_tokenizer(void)
{
    static core_tokenizer *t;
    core_model *m = test_shared_model();
    if (!t && m) {
        char err[256];
        t = core_tokenizer_new(m->gguf, err, sizeof err);
        if (!t)
            printf("    tokenizer: %s\n", err);
    }
    return t;
}

int test_tokenize(const core_tokenizer *tok, const char *text, bool special, int32_t *ids, int cap)
{
    int32_t *v = NULL;
    size_t n = 0;
    if (core_tokenize(tok, text, strlen(text), special, &v, &n) || n > (size_t)cap) {
        free(v);
        return -1;
    }
    memcpy(ids, v, n * sizeof *ids);
    free(v);
    return (int)n;
}
