/* What peft.c and peft_config.c share (adapters/ only): the parts of adapter_config.json that
 * matter at inference, and the plan of a load, which the config starts (which (layer, module)
 * pairs, their rank and alpha) and the weights file completes (the A and B of each pair).
 */
#ifndef ADAPTREE_ADAPTERS_PEFT_INTERNAL_H
#define ADAPTREE_ADAPTERS_PEFT_INTERNAL_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/format/safetensors.h"
#include "core/model/model.h"

/* The parsed parts of adapter_config.json that matter at inference; the pointers borrow the
 * parsed document, which must outlive it. */
typedef struct adapter__peft_cfg {
    int r;
    double alpha;
    bool rslora;
    const cJSON *targets;  /* NULL, array of strings, or string */
    const cJSON *excludes; /* NULL, array of strings, or string */
    const cJSON *layers;   /* NULL, number or array of numbers */
    const cJSON *rank_pattern;
    const cJSON *alpha_pattern;
} adapter__peft_cfg;

/* One (layer, module) of a planned load. A fused Linear (Phi-3's qkv_proj, gate_up_proj) is
 * planned at its first module (core_module_span); the entries of the others stay zero. */
typedef struct adapter__peft_plan {
    const core_st_tensor *ab[2]; /* A, B: matched from the weights file (peft.c) */
    int rank;                    /* from the config (r, rank_pattern) */
    double alpha;                /* from the config (lora_alpha, alpha_pattern) */
    bool targeted;
} adapter__peft_plan;

/* The Hugging Face name of the Linear that holds a core_module in cfg's models ("q_proj"; Phi-3:
 * "qkv_proj" for q, k and v, "gate_up_proj" for gate and up) and of the block holding it
 * ("self_attn" or "mlp"), as module names and safetensors keys spell them. */
const char *adapter__peft_module_name(const core_config *cfg, int mod);
const char *adapter__peft_module_block(int mod);
/* cfg's Linears as a message lists them: "q_proj, k_proj, ..." or Phi-3's four. */
const char *adapter__peft_linears(const core_config *cfg);

/* Python's re.fullmatch(pattern, name) as a target_modules string matches module names (PCRE2,
 * UTF, under the match limits): 1 when it matches, 0 when not, -EINVAL with PCRE2's message (and
 * the offset, for a pattern that does not compile; "match limit exceeded" and the like for one
 * that backtracks too much) in err. */
int adapter__peft_regex_fullmatch(const char *pattern, const char *name, char *err, size_t errlen);

/* Reads the parsed adapter_config.json j into *c (borrowing j) and refuses what adaptree does not
 * implement, naming the field: 0, or -EINVAL with a message. */
int adapter__peft_config_parse(const cJSON *j, adapter__peft_cfg *c, char *err, size_t errlen);

/* Decides from c which (layer, module) pairs are targeted and their rank and alpha:
 * plan[layer * CORE_MOD_COUNT + module] for every layer of cfg (ab is left alone). 0, or -EINVAL
 * with a message (a regex that cannot be compiled, a rank out of range, a target_modules entry
 * naming a Linear of another architecture's layout, a Phi-3 config that targets nothing). */
int adapter__peft_plan_targets(const adapter__peft_cfg *c, const core_config *cfg,
                               adapter__peft_plan *plan, char *err, size_t errlen);

#endif
