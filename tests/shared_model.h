/* The default model, loaded once for every test that only reads it (never mutate it). */
#ifndef ADAPTREE_TEST_SHARED_MODEL_H
#define ADAPTREE_TEST_SHARED_MODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "core/model/model.h"
#include "core/text/tokenizer.h"

/* NULL (after printing why) when the model cannot be loaded. */
core_model *test_shared_model(void);

/* The default model's tokenizer, made once; NULL when the model cannot be loaded. */
core_tokenizer *test_shared_tokenizer(void);

/* The token ids of text (special: special-token text is matched) into ids, at most cap; their
 * count, or -1 when it fails or needs more than cap. */
int test_tokenize(const core_tokenizer *tok, const char *text, bool special, int32_t *ids, int cap);

/* Gemma 3 270M (`make gemma`), loaded once for the Gemma golden tests; NULL (after printing why)
 * when it cannot be loaded. A test that changes it (core_model_set_int8) restores it. */
#define TEST_GEMMA_MODEL "models/gemma-3-270m-q4_k_m.gguf"
core_model *test_gemma_model(void);

/* Skips the calling test when the Gemma model file is absent. */
#define TEST_NEED_GEMMA()                                                                          \
    do {                                                                                           \
        if (access(TEST_GEMMA_MODEL, R_OK) != 0)                                                   \
            TEST_SKIP("%s missing (run make gemma)", TEST_GEMMA_MODEL);                            \
    } while (0)

#endif
