/* Test helper: a tiny Phi-3 GGUF with pseudo-random weights (fused attn_qkv and ffn_up, as
 * llama.cpp's converter writes them), and its twin in the Llama layout (separate attn_q, attn_k,
 * attn_v, ffn_gate, ffn_up holding the same rows), for the tests of the fused loading, the
 * adapters on fused modules and the merge. */
#ifndef ADAPTREE_TESTS_TINY_PHI3_H
#define ADAPTREE_TESTS_TINY_PHI3_H

#include <stdbool.h>
#include <stdint.h>

#include "core/model/model.h"

#define TP_LAYERS 2
#define TP_EMBD 64
#define TP_HEADS 4
#define TP_HEADS_KV 2
#define TP_HEAD_DIM 16
#define TP_FF 96
#define TP_VOCAB 48
#define TP_Q (TP_HEADS * TP_HEAD_DIM)     /* 64 rows of attn_qkv */
#define TP_KV (TP_HEADS_KV * TP_HEAD_DIM) /* 32 rows each for k and v */

typedef struct tp_opts {
    uint32_t type;      /* of the linear weights and the head: CORE_TYPE_F32 or CORE_TYPE_Q8_0 */
    int sliding_window; /* phi3.attention.sliding_window (0: the key says none) */
    bool llama_twin;    /* write the Llama layout (general.architecture "llama") instead */
    bool longrope;      /* add rope_factors_long/short, as the 128k models have */
    const char *skip;   /* a tensor name left out, or NULL */
} tp_opts;

/* Writes the model to path; the weights depend only on the layer and module, never on opts, so
 * both layouts and both types hold the same values (up to Q8_0's rounding, the same in both).
 * 0, or -1 with a message on stdout. */
int tp_write(const char *path, const tp_opts *o);

/* The config tp_write's phi3 file loads to (no weights needed: adapter validation). */
core_config tp_config(void);

#endif
