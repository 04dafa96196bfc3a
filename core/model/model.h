/* Llama-family (Llama 2/3, Mistral, SmolLM2), Qwen2, Qwen3, Gemma 3 and Phi-3 models:
 * hyperparameters from GGUF metadata, f32 weights in one slab, per-sequence KV caches, and the
 * batched forward pass with an optional LoRA plan (docs/ARCHITECTURE.md §3).
 *
 * Weights keep the GGUF row layout: for Llama, attn_q/attn_k rows are in llama.cpp's permuted
 * order, so RoPE rotates adjacent pairs (2j, 2j+1) (docs/FORMATS.md §2.6); Qwen2's, Qwen3's,
 * Gemma 3's and Phi-3's are not permuted and RoPE rotates (j, j + head_dim/2)
 * (core_config.neox_rope). Adapters trained on Hugging Face weights must have their q/k lora_B
 * rows permuted the same way before they reach core_forward where the rows were permuted
 * (core_qk_perm_heads). Phi-3 stores q, k, v in one tensor (attn_qkv) and gate, up in another
 * (ffn_up): each module's core_weight is a slice of rows of it (core_module_tensor).
 *
 * Nothing here is thread-safe on its own: a core_model is immutable after load and may be shared,
 * but a core_ctx and a core_kv belong to one thread at a time (the engine thread).
 */
#ifndef ADAPTREE_CORE_MODEL_MODEL_H
#define ADAPTREE_CORE_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/gguf.h"

/* The layer recipes core_forward knows. */
typedef enum core_arch {
    CORE_ARCH_LLAMA,  /* "llama": RMSNorm, SwiGLU, one RoPE base, optionally divided per frequency
                         by rope_freqs.weight (Llama 3's rope scaling) */
    CORE_ARCH_GEMMA3, /* "gemma3": embeddings x sqrt(n_embd); RMSNorms before and after attention
                         and the FFN, per-head q/k RMSNorm, GeGLU (tanh), sliding-window layers
                         with their own RoPE base, every swa_pattern-th layer global */
    CORE_ARCH_QWEN2,  /* "qwen2": Llama's layer with q, k and v biases, NeoX RoPE */
    CORE_ARCH_QWEN3,  /* "qwen3": Llama's layer with per-head q/k RMSNorm, NeoX RoPE */
    CORE_ARCH_PHI3,   /* "phi3": Llama's recipe with fused attn_qkv and ffn_up (gate, up) tensors,
                         RoPE on halves, and (Phi-3 mini) a sliding window on every layer */
} core_arch;

typedef struct core_config {
    char arch[32];
    core_arch kind;
    int n_layer;
    int n_embd;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_vocab;
    int n_ctx_train;
    int rope_dim;     /* rotated dims per head (== head_dim for Llama) */
    float rope_theta; /* the RoPE base (Gemma 3: of the global layers) */
    float rms_eps;
    bool tied_output; /* no output.weight: the head is token_embd */
    bool neox_rope;   /* RoPE rotates (j, j + head_dim/2), not (2j, 2j+1) */
    bool qkv_bias;    /* q, k and v have biases (Qwen2): core_layer.bias */
    bool qk_norm;     /* per-head RMSNorm of q and k before RoPE (Gemma 3, Qwen3) */
    bool rope_freqs;  /* rope_freqs.weight divides each rotary frequency (Llama 3) */
    bool permuted_qk; /* attn_q/attn_k rows are in llama.cpp's permuted order (the llama
                         architecture only; see core_qk_perm_heads) */
    /* 0 for Llama (and any config made by hand), which means "none" */
    float embd_scale; /* the embedding rows are multiplied by this (Gemma 3: sqrt(n_embd)) */
    float q_scale;    /* q is multiplied by this before attention's 1/sqrt(head_dim), when
                         query_pre_attn_scalar != head_dim: sqrt(head_dim / that) */
    /* Gemma 3 and Phi-3 (0 for Llama): with sliding_window > 0, layer l is a sliding-window
     * (local) layer unless (l + 1) % swa_pattern == 0 (Gemma 3), or every layer is when
     * swa_pattern is 0 (Phi-3); a local layer's row at position p attends to positions
     * p - sliding_window + 1 .. p and uses RoPE base rope_theta_swa. */
    int sliding_window;
    int swa_pattern;
    float rope_theta_swa;
} core_config;

/* 1 when layer l of c attends over a sliding window (Gemma 3's local layers). */
static inline bool core_layer_is_swa(const core_config *c, int l)
{
    return c->sliding_window > 0 && (c->swa_pattern == 0 || (l + 1) % c->swa_pattern != 0);
}

/* The seven linear modules of a layer, in the order adapters and plans use. */
typedef enum core_module {
    CORE_MOD_Q,
    CORE_MOD_K,
    CORE_MOD_V,
    CORE_MOD_O,
    CORE_MOD_GATE,
    CORE_MOD_UP,
    CORE_MOD_DOWN,
    CORE_MOD_COUNT
} core_module;

/* How many heads of head_dim rows a Hugging Face lora_B of module mod must have its rows permuted
 * over to match c's weights (docs/FORMATS.md §2.6): n_head for q and n_head_kv for k when the
 * GGUF converter permuted them (Llama), else 0 (Gemma 3 and every other architecture keep
 * Hugging Face's row order). The one place this decision is made. */
static inline int core_qk_perm_heads(const core_config *c, core_module mod)
{
    if (!c->permuted_qk)
        return 0;
    return mod == CORE_MOD_Q ? c->n_head : mod == CORE_MOD_K ? c->n_head_kv : 0;
}

/* One weight matrix of rows x cols (out x in): the form its file stores and the forms made from
 * it. core_forward picks the kernel for each product from what is there (forward.c, products()):
 * the int8 repack when set, else the stored blocks when core's quantized kernels read them at
 * that batch size, else the f32 copy. */
typedef struct core_weight {
    int rows, cols;
    uint32_t type;       /* the ggml type the file stores it in */
    const void *data;    /* the stored rows in the mapping of core_model.gguf; NULL when core's
                            quantized kernels cannot read the type. Whoever changes f32 must set
                            data (and q8) to NULL, or core_forward keeps using the original weights */
    float *f32;          /* (rows, cols) in the model's slab, or NULL while the matrix stays
                            quantized (core_model.slab) */
    struct core_q8w *q8; /* owned, repacked for the int8 kernels by core_model_set_int8, or NULL;
                            when set, core_forward uses it at every batch size */
} core_weight;

typedef struct core_layer {
    float *attn_norm; /* (n_embd) */
    core_weight w[CORE_MOD_COUNT];
    /* w[Q]    (n_head * head_dim, n_embd)
     * w[K],V  (n_head_kv * head_dim, n_embd)
     * w[O]    (n_embd, n_head * head_dim)
     * w[GATE], w[UP] (n_ff, n_embd)
     * w[DOWN] (n_embd, n_ff) */
    float *ffn_norm;             /* (n_embd) */
    float *bias[CORE_MOD_COUNT]; /* (core_module_out) added to the product, or NULL (Qwen2: q, k,
                                    v) */
    /* Gemma 3 only (NULL for the others); the stored norm weights, which llama.cpp's converter
     * made 1 + w of Hugging Face's w, so every RMSNorm multiplies by the stored weight */
    float *post_attn_norm; /* (n_embd) on the attention output, before the residual add */
    float *post_ffn_norm;  /* (n_embd) on the FFN output, before the residual add */
    /* Gemma 3 and Qwen3 (core_config.qk_norm), else NULL */
    float *q_norm; /* (head_dim) on each query head, before RoPE */
    float *k_norm; /* (head_dim) on each key head, before RoPE */
} core_layer;

/* What the slab holds besides the norms: the matrices core_forward may read as f32 (LAZY, after
 * load), every matrix (ALL, after core_model_dequantize), or those minus the ones repacked for the
 * int8 kernels (INT8, after core_model_set_int8). */
typedef enum { CORE_SLAB_LAZY, CORE_SLAB_ALL, CORE_SLAB_INT8 } core_slab_mode;

typedef struct core_model {
    core_config cfg;
    core_gguf *gguf; /* owned; kept open for the tokenizer, inspect and merge */
    /* The f32 weights, one allocation: the norms always, and every matrix that core_forward may
     * need in f32. A matrix that core__qmatmul reads at every batch size (the AVX-512 kernels and
     * a type they take) stays in the mapping only: its w[mod] / tok_embd / output is NULL until
     * core_model_dequantize. That saves 540 MB for the default model. With int8 on, the matrices
     * repacked for it are left out as well, whatever the CPU (CORE_SLAB_INT8). */
    float *slab; /* the modules of a fused tensor (core_module_span) follow each other in it,
                    so with all_f32 w[first].f32 is the whole tensor, (its rows, cols) */
    size_t slab_floats;
    core_slab_mode slab_mode;
    bool all_f32;         /* every matrix is in the slab */
    core_weight tok_embd; /* (n_vocab, n_embd); rows are dequantized one at a time from data
                             when f32 is NULL. Its q8 is never set */
    core_weight output;   /* (n_vocab, n_embd): the head; when tied, tok_embd's stored and f32
                             forms (output.f32 == tok_embd.f32), with its own q8 */
    float *output_norm;   /* (n_embd) */
    float *rope_freqs;    /* (head_dim / 2) llama.cpp's rope frequency factors: frequency j is
                             divided by rope_freqs[j] (Llama 3), or NULL */
    core_layer *layers;   /* (n_layer) */
} core_model;

/* Loads a GGUF of an architecture in core_arch: reads and checks the hyperparameters (refusing,
 * with a message that names it, any option core_forward does not do: rope scaling, mixture of
 * experts, a sliding window outside Gemma 3 and Phi-3, a tensor it would not read), every tensor
 * shape and every weight (dequantized and checked finite), and keeps as f32 those that core_forward
 * needs in f32 (see core_model.slab). Returns a new model (free with core_model_free) or NULL with
 * a message in err naming what is wrong. */
core_model *core_model_load(const char *path, char *err, size_t errlen);

/* Makes every weight available as f32 (w[mod], tok_embd, output non-NULL), for code that reads or
 * changes them (merge, tests). 0, or -ENOMEM with a message (the model is unchanged then). Not
 * while a core_forward runs on the model. */
int core_model_dequantize(core_model *m, char *err, size_t errlen);
void core_model_free(core_model *m);

/* on: repacks every Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K linear weight (and the output
 * head) for the int8-activation kernels (qmatmul_q8.h), which core_forward then uses: llama.cpp's
 * CPU numerics, about 3.5x faster matmuls on AVX-512 VNNI and 3x on AVX2 (Zen 3), logits up to ~2
 * away from the f32 reference (golden test). off: frees them, back to f32 activations. Returns the
 * number of weights repacked (0 when the model has none of those types), -ENOTSUP on a CPU with
 * neither AVX2 (with FMA and F16C) nor AVX-512 VNNI, or -ENOMEM, with a message. Not while a
 * core_forward runs on the model. */
int core_model_set_int8(core_model *m, int on, char *err, size_t errlen);

/* The int8 kernels this CPU runs ("AVX-512 VNNI" or "AVX2"), for logs; NULL when it has none. */
const char *core_int8_kernels(void);

/* Reads the hyperparameters of a GGUF without loading weights (used by inspect and adapter
 * validation). Returns 0 or -EINVAL with a message. */
int core_config_from_gguf(const core_gguf *g, core_config *cfg, char *err, size_t errlen);

/* Input and output width of a module's weight. */
int core_module_in(const core_config *c, core_module mod);
int core_module_out(const core_config *c, core_module mod);
/* "q", "k", "v", "o", "gate", "up", "down" and the GGUF tensor suffix ("attn_q", ...) of
 * Llama and Gemma 3. */
const char *core_module_name(core_module mod);
const char *core_module_gguf_name(core_module mod);
/* Where c's models store module mod of a layer: returns the tensor's suffix (blk.L.<it>.weight),
 * and *row0 the first of its rows that the module takes, 0 unless the tensor is fused: Phi-3's
 * attn_qkv holds q, k then v (rows 0, n_head * head_dim, + n_head_kv * head_dim), its ffn_up
 * gate then up (rows 0, n_ff), as Hugging Face's qkv_proj and gate_up_proj. */
const char *core_module_tensor(const core_config *c, core_module mod, int *row0);
/* How many modules, mod first, share mod's tensor when mod is its first: 1 for an unfused
 * module, 3 for Phi-3's q (q, k, v), 2 for its gate (gate, up); 0 when mod is stored in the
 * tensor of an earlier module (Phi-3's k, v, up). The modules of a tensor follow each other in
 * core_module order. */
int core_module_span(const core_config *c, core_module mod);

/* ---- KV cache ------------------------------------------------------------------------------ */

/* Paged KV. Every sequence (slot) holds a table of blocks of CORE_KV_BLOCK positions taken from
 * one pool; attention reads through the table, so memory follows the positions in use, not
 * n_slots × n_ctx. A block can be shared by several slots and held by others (the server's
 * prefix cache): writing into a shared block first copies it (copy on write), so a holder never
 * sees its block change. The pool is mapped, not committed: a block's memory is touched the
 * first time it is handed out, and freed blocks are reused most recent first. */
#define CORE_KV_BLOCK_SHIFT 4
#define CORE_KV_BLOCK (1 << CORE_KV_BLOCK_SHIFT)
typedef struct core_kv core_kv;
/* Called when a block is needed and none is free: releases what it can (core_kv_block_release)
 * and returns how many blocks it freed, 0 when it has nothing left to give. */
typedef int (*core_kv_reclaim_fn)(void *arg, core_kv *kv);

/* n_slots sequences of up to n_ctx positions, with a pool big enough for all of them full. */
core_kv *core_kv_new(const core_config *cfg, int n_slots, int n_ctx, char *err, size_t errlen);
/* The same with a pool of pool_bytes (at least one block; f16 fits twice as many blocks). */
core_kv *core_kv_new_pool(const core_config *cfg, int n_slots, int n_ctx, size_t pool_bytes,
                          char *err, size_t errlen);
void core_kv_free(core_kv *kv);
int core_kv_n_slots(const core_kv *kv);
int core_kv_n_ctx(const core_kv *kv);
/* Forgets the slot's contents (positions restart at 0) and releases its blocks. */
void core_kv_clear(core_kv *kv, int slot);
/* Bytes of the blocks in use (held by slots or holders). */
size_t core_kv_bytes(const core_kv *kv);
/* Bytes of one block (K and V of every layer, CORE_KV_BLOCK positions). */
size_t core_kv_block_bytes(const core_kv *kv);
/* The same for a model's config, f32 or (f16 != 0) f16 K and V. */
size_t core_kv_block_size(const core_config *cfg, int f16);
/* Blocks in the pool, and free ones. */
int core_kv_blocks_total(const core_kv *kv);
int core_kv_blocks_free(const core_kv *kv);
/* Blocks ever handed out: the pool's memory that is resident. */
int core_kv_blocks_touched(const core_kv *kv);
/* Positions the slot holds. */
int core_kv_slot_len(const core_kv *kv, int slot);
/* The slot's block table: *ids gets its blocks in order, the count is returned. */
int core_kv_slot_blocks(const core_kv *kv, int slot, const int32_t **ids);
/* Free blocks the slot must take to hold n positions: new blocks and copies of shared ones. */
int core_kv_blocks_needed(const core_kv *kv, int slot, int n);
/* Makes the slot able to hold n positions, taking blocks (asking the reclaim callback when the
 * pool is empty) and copying shared blocks it will write into. 0; -ERANGE past n_ctx; -ENOSPC
 * when the pool has too few blocks (the slot keeps what it got); -EINVAL for a bad slot. */
int core_kv_reserve(core_kv *kv, int slot, int n);
/* An empty slot starts with the n_ids blocks ids (one reference each) holding its first n
 * positions (n <= n_ids * CORE_KV_BLOCK): a cached prefix. 0, -EINVAL, -EBUSY if not empty. */
int core_kv_share(core_kv *kv, int slot, const int32_t *ids, int n_ids, int n);
/* References on a block outside the slot tables; a block whose last reference goes is free. */
void core_kv_block_hold(core_kv *kv, int32_t id);
void core_kv_block_release(core_kv *kv, int32_t id);
int core_kv_block_refs(const core_kv *kv, int32_t id);
/* The reclaim callback (NULL: none). */
void core_kv_set_reclaim(core_kv *kv, core_kv_reclaim_fn fn, void *arg);
/* on: K and V are stored as f16 from now on (half the memory and half the bytes attention reads
 * per position, twice the blocks in the same pool; logits move by up to ~0.02 against f32, see
 * the golden test). Only while no block is in use: 0, or -EBUSY. */
int core_kv_set_f16(core_kv *kv, int on);
int core_kv_is_f16(const core_kv *kv);
/* Fills positions 0..n-1 of a slot with pseudo-random K and V (values in [-1, 1), V half of K;
 * the same seed gives the same cache), as if a prompt of n tokens had run: for benchmarks of long
 * contexts, which then need not prefill. 0, -EINVAL, -ERANGE past the context, -ENOSPC. */
int core_kv_fill_random(core_kv *kv, int slot, int n, uint32_t seed);

/* ---- LoRA plan (docs/ARCHITECTURE.md §3) ----------------------------------------------------- */

/* One adapter's low-rank update for one (layer, module), applied to some rows of the batch:
 * Y[rows[i]] += scales[i] * B · (A · X[rows[i]]), with B given transposed (Bt = Bᵀ, so both
 * weights are read row by row). A and Bt are borrowed for the call. */
typedef struct core_lora_group {
    int layer;
    int module;     /* core_module */
    uint32_t dtype; /* CORE_TYPE_F32, CORE_TYPE_F16 or CORE_TYPE_BF16 (A and Bt alike) */
    const void *A;  /* (rank, in) */
    const void *Bt; /* (rank, out): B transposed */
    int rank;
    int n_rows;
    const int32_t *rows; /* (n_rows) batch row indices */
    const float *scales; /* (n_rows) */
} core_lora_group;

/* All groups of one step, in any order. */
typedef struct core_lora_plan {
    int n_groups;
    const core_lora_group *groups;
} core_lora_plan;

/* ---- forward -------------------------------------------------------------------------------- */

/* One step's rows. Rows of one sequence appear in increasing position order; position p of a
 * slot may be computed only once positions 0..p-1 are in its cache (from earlier steps or earlier
 * rows of this batch). */
typedef struct core_batch {
    int n_rows;
    const int32_t *tokens;      /* (n_rows) */
    const int32_t *pos;         /* (n_rows) */
    const int32_t *slot;        /* (n_rows) KV slot */
    const uint8_t *want_logits; /* (n_rows) 1 = produce logits for this row; NULL = every row */
} core_batch;

/* With the portable kernels (forced, for tests), steps of at most this many rows read the weights
 * in their stored (quantized) type; larger ones use OpenBLAS sgemm on f32 copies. The AVX-512
 * and AVX2 kernels read the stored blocks at every step size (core__qmatmul_max_rows), so a
 * row's logits do not depend on the other rows, to the bit, and no f32 copies are kept. AVX2
 * used to stop here too: measured on one core of a Zen 4 EPYC (CPU time per decode step,
 * qmatmul vs sgemm) 76 vs 115 ms at 16 rows, 134 vs 158 at 32, equal at 48, sgemm ahead by 6%
 * at 64; on an Intel Xeon (family 6 model 167) held to AVX2 with OpenBLAS's Haswell kernels
 * (2 threads, 2026-12-07) quantized at every size against sgemm above 48 rows: prefill of 128
 * tokens 576 vs 635 tok/s (0.91x), a 64-row decode step 439 vs 422 tok/s (1.04x), for
 * bit-exact batches and 538 MB less memory. ADAPTREE_QMATMUL_ROWS=48 brings the old split back
 * for comparison. */
#define CORE_QMATMUL_ROWS 48

/* The kernels the linear layers run on, for logs, written to buf (e.g. "AVX-512 quantized matmul
 * at any batch size", "AVX2 quantized matmul up to 48 rows, OpenBLAS sgemm above"); returns buf. */
const char *core_matmul_kernels(char *buf, size_t len);

/* Scratch for the forward pass; grows to the largest batch seen. */
typedef struct core_ctx core_ctx;

core_ctx *core_ctx_new(const core_model *m);
void core_ctx_free(core_ctx *c);

/* Runs the batch through the model, writing each row's K and V into its slot, and stores the
 * logits of the rows that want them, in row order, into logits (n_out, n_vocab). plan may be
 * NULL. Returns 0, or a negative errno with a message (bad token id, position past the slot's
 * capacity, a malformed plan). */
int core_forward(core_ctx *c, core_kv *kv, const core_batch *b, const core_lora_plan *plan,
                 float *logits, char *err, size_t errlen);

#endif
