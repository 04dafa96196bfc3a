/* Merge-export of an adapter set into a standalone GGUF (docs/ARCHITECTURE.md §1: adapters/ owns
 * it). */
#ifndef ADAPTREE_ADAPTERS_MERGE_H
#define ADAPTREE_ADAPTERS_MERGE_H

#include <stdint.h>

#include "adapters/compose.h"
#include "core/model/model.h"

enum adapter_merge_type { ADAPTER_MERGE_F32 = 0, ADAPTER_MERGE_F16 = 1 };

typedef struct adapter_merge_report {
    int n_tensors;     /* tensors written */
    int n_merged;      /* of which merged weights */
    uint64_t bytes;    /* file size */
    char modules[128]; /* merged weights per module, "q 30, v 30" */
} adapter_merge_report;

/* Adds every adapter of set (W += weight·scale·B·A) into m's f32 weights IN PLACE, then writes
 * out: the base's metadata (general.file_type set to 0 or 1, plus adaptree.merged.adapters =
 * "names[i]:weight" and adaptree.merged.outtype), merged weights as outtype, every other tensor
 * copied as stored. m must come from core_model_load and no longer serves as the base afterwards.
 * The file is written to out.tmp and renamed, so a failure never leaves a partial out. Returns 0
 * or a negative errno with a message in err. */
int adapter_merge_export(core_model *m, const adapter_set *set, const char *const *names,
                         const char *out, int outtype, adapter_merge_report *rep, char *err,
                         size_t errlen);

#endif
