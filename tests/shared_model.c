/* One load of the default model, and one of Gemma 3, shared by the tests that read them. */
#include "tests/shared_model.h"

#include <stdio.h>

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
