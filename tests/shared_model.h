/* The default model, loaded once for every test that only reads it (never mutate it). */
#ifndef ADAPTREE_TEST_SHARED_MODEL_H
#define ADAPTREE_TEST_SHARED_MODEL_H

#include "core/model/model.h"

/* NULL (after printing why) when the model cannot be loaded. */
core_model *test_shared_model(void);

#endif
