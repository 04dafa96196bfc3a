/* libFuzzer target: OpenAI request bodies (server/request.c), each input parsed as a completion
 * and as a chat request, with tight limits and with none. Aborts when a refusal has no message,
 * a message or param is not valid UTF-8, a code is not one of the documented ones (-ENOMEM
 * cannot happen here, so it would mean the strict scan and cJSON disagree), a failed parse leaves
 * anything behind, or an accepted request breaks its contract: strings valid UTF-8 without NUL,
 * the body valid UTF-8, counts within limits, sampling parameters the sampler accepts, adapter
 * ids that pass adapter_id_check, logit_bias and stop_token_ids in the vocabulary with biases
 * in [-100, 100] and no id biased twice, min_tokens within max_tokens (given or the default),
 * metadata within OpenAI's limits. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "adapters/registry.h"
#include "core/model/sampler.h"
#include "server/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An independent UTF-8 check (decode, then refuse overlongs, surrogates, > U+10FFFF). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned b = s[i], need, cp;
        if (b < 0x80) {
            i++;
            continue;
        }
        if ((b & 0xE0) == 0xC0)
            need = 1, cp = b & 0x1F;
        else if ((b & 0xF0) == 0xE0)
            need = 2, cp = b & 0x0F;
        else if ((b & 0xF8) == 0xF0)
            need = 3, cp = b & 0x07;
        else
            return 0;
        if (n - i <= need)
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const unsigned min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

static void check_str(const char *s, size_t max)
{
    if (!s)
        abort();
    size_t n = strlen(s);
    if (!utf8_ok((const unsigned char *)s, n) || (max && n > max))
        abort();
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* An accepted body's "metadata", read again with cJSON alone: absent, null, or an object of at
 * most SRV_METADATA_MAX string values with keys and values within their character limits. */
static void check_metadata(const uint8_t *data, size_t size)
{
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (m && !cJSON_IsNull(m)) {
        if (!cJSON_IsObject(m) || cJSON_GetArraySize(m) > SRV_METADATA_MAX)
            abort();
        for (const cJSON *it = m->child; it; it = it->next)
            if (!it->string || utf8_chars(it->string) > SRV_METADATA_KEY_MAX ||
                !cJSON_IsString(it) || utf8_chars(it->valuestring) > SRV_METADATA_VALUE_MAX)
                abort();
    }
    cJSON_Delete(root);
}

static void check_ok(const srv_request *r, srv_request_kind kind, const srv_request_limits *l,
                     const uint8_t *data, size_t size)
{
    if (r->kind != kind || r->n < 1 || r->n > SRV_N_MAX || !utf8_ok(data, size))
        abort();
    if (kind == SRV_REQ_COMPLETION) {
        if (!r->prompt == !r->prompt_ids || r->messages)
            abort();
        if (r->prompt) {
            check_str(r->prompt, l->max_prompt_bytes);
            if (r->prompt_len != strlen(r->prompt) || r->prompt_len == 0)
                abort();
        }
        for (size_t i = 0; r->prompt_ids && i < r->n_prompt_ids; i++)
            if (r->prompt_ids[i] < 0 || (l->n_vocab > 0 && r->prompt_ids[i] >= l->n_vocab))
                abort();
    } else {
        if (r->prompt || r->prompt_ids || !r->messages || r->n_messages == 0 || r->echo)
            abort();
        if (l->max_messages > 0 && r->n_messages > (size_t)l->max_messages)
            abort();
        for (size_t i = 0; i < r->n_messages; i++) {
            const char *role = r->messages[i].role;
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
                abort();
            check_str(r->messages[i].content, l->max_prompt_bytes);
        }
    }
    if (r->model)
        check_str(r->model, SRV_MODEL_BYTES_MAX);
    if (r->user)
        check_str(r->user, SRV_USER_BYTES_MAX);
    if (r->n_stop < 0 || r->n_stop > SRV_STOP_MAX)
        abort();
    for (int i = 0; i < r->n_stop; i++) {
        check_str(r->stop[i], SRV_STOP_BYTES_MAX);
        if (!r->stop[i][0])
            abort();
    }
    if (r->n_adapters < 0 || r->n_adapters > ADAPTER_SEL_MAX)
        abort();
    for (int i = 0; i < r->n_adapters; i++)
        if (adapter_id_check(r->adapters[i].id, NULL, 0) || !(r->adapters[i].weight >= -1000.0f) ||
            !(r->adapters[i].weight <= 1000.0f))
            abort();
    int max = l->max_tokens_limit > 0 ? l->max_tokens_limit : 0x7fffffff;
    if (r->max_tokens < (kind == SRV_REQ_CHAT ? 1 : 0) || r->max_tokens > max)
        abort();
    if (r->logprobs < -1 || r->logprobs > SRV_TOP_LOGPROBS_MAX ||
        (kind == SRV_REQ_COMPLETION && r->logprobs > SRV_LOGPROBS_MAX))
        abort();
    if (r->stream_include_usage && !r->stream)
        abort();
    int32_t vocab = l->n_vocab > 0 ? l->n_vocab : 49152;
    if (r->n_bias < 0 || r->n_bias > SRV_BIAS_MAX || r->n_stop_ids < 0 ||
        r->n_stop_ids > SRV_STOP_IDS_MAX || r->min_tokens < 0 || r->min_tokens > r->max_tokens)
        abort();
    for (int i = 0; i < r->n_bias; i++) {
        if (r->bias_ids[i] < 0 || (l->n_vocab > 0 && r->bias_ids[i] >= l->n_vocab) ||
            !(r->bias[i] >= -100.0f && r->bias[i] <= 100.0f))
            abort();
        for (int k = 0; k < i; k++)
            if (r->bias_ids[k] == r->bias_ids[i])
                abort();
    }
    for (int i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] < 0 || (l->n_vocab > 0 && r->stop_ids[i] >= l->n_vocab))
            abort();
    char err[256];
    core_sampler *s = core_sampler_new(&r->sampling, vocab, err, sizeof err);
    if (!s)
        abort();
    /* The sampler takes what the parser let through (ids within its vocabulary). */
    if (l->n_vocab > 0 && core_sampler_set_bias(s, r->bias_ids, r->bias, r->n_bias) != 0)
        abort();
    core_sampler_free(s);
    check_metadata(data, size);
}

static void run(srv_request_kind kind, const uint8_t *data, size_t size,
                const srv_request_limits *l, size_t errlen)
{
    static const srv_request zero;
    srv_request r;
    char err[512], param[SRV_PARAM_MAX];
    int rc =
        srv_request_parse(kind, (const char *)data, size, l, &r, err, errlen, param, sizeof param);
    if (rc == 0) {
        check_ok(&r, kind, l, data, size);
        srv_request_deinit(&r);
        return;
    }
    if ((rc != -EINVAL && rc != -E2BIG) || err[0] == 0 || memcmp(&r, &zero, sizeof r) != 0)
        abort();
    if (!utf8_ok((const unsigned char *)err, strlen(err)) ||
        !utf8_ok((const unsigned char *)param, strlen(param)))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const srv_request_limits tight = {.max_prompt_bytes = 64,
                                             .max_tokens_limit = 100,
                                             .default_max_tokens = 50,
                                             .max_messages = 4,
                                             .n_vocab = 49152};
    static const srv_request_limits none = {0};
    /* The message buffer size varies with the input so cut messages are exercised too. */
    size_t errlen = size ? 8 + data[size - 1] % 248 : 256;
    run(SRV_REQ_COMPLETION, data, size, &tight, errlen);
    run(SRV_REQ_CHAT, data, size, &tight, 256);
    run(SRV_REQ_COMPLETION, data, size, &none, 512);
    run(SRV_REQ_CHAT, data, size, &none, errlen);
    return 0;
}
