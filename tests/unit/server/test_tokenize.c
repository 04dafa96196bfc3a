/* Tests for server/tokenize.c on the real SmolLM2 tokenizer: the answers of POST /tokenize (a
 * prompt with and without special tokens, chat messages with the template and with or without
 * the generation prompt) and /detokenize (special tokens' text shown, a round trip), and a table
 * of refusals of both, each checked for its HTTP status, exact message and param. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server/tokenize.h"
#include "tests/shared_model.h"
#include "tests/test.h"

#define N_CTX 2048
#define IM_START 1   /* <|im_start|> */
#define IM_END 2     /* <|im_end|> */
#define BANANA 21285 /* " banana" */

/* One answer: status, message, param and body (malloc'd, "" when refused). */
typedef struct ans {
    int status;
    char err[512], param[SRV_PARAM_MAX];
    char *body;
} ans;

/* Calls /tokenize (detok false) or /detokenize with body (real quotes, len bytes) and limits. */
static ans call_len(const core_tokenizer *tok, bool detok, const char *body, size_t len,
                    const srv_request_limits *lim)
{
    ans a = {.status = -1};
    srv_buf b;
    srv_buf_init(&b);
    a.status = detok ? srv_detokenize_answer(tok, body, len, &b, a.err, sizeof a.err, a.param,
                                             sizeof a.param)
                     : srv_tokenize_answer(tok, lim, N_CTX, body, len, &b, a.err, sizeof a.err,
                                           a.param, sizeof a.param);
    a.body = strdup(b.data ? b.data : "");
    srv_buf_deinit(&b);
    return a;
}

/* The same with a body written with ' for " (none of them needs a literal '). */
static ans call(const core_tokenizer *tok, bool detok, const char *qbody)
{
    char *b = strdup(qbody);
    for (char *p = b; *p; p++)
        if (*p == '\'')
            *p = '"';
    ans a = call_len(tok, detok, b, strlen(b), NULL);
    free(b);
    return a;
}

/* The "tokens" of a /tokenize answer into ids (at most cap); their count, or -1 when the answer
 * is not {"tokens": [...], "count": <that many>, "max_model_len": N_CTX}. */
static int answer_ids(const char *body, int32_t *ids, int cap)
{
    cJSON *root = cJSON_Parse(body);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "count");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "max_model_len");
    int n = cJSON_IsArray(t) ? cJSON_GetArraySize(t) : -1;
    if (n > cap || !cJSON_IsNumber(c) || c->valuedouble != n || !cJSON_IsNumber(m) ||
        m->valuedouble != N_CTX)
        n = -1;
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)cJSON_GetArrayItem(t, i)->valuedouble;
    cJSON_Delete(root);
    return n;
}

#define CHECK_ANSWER(a, want_status, want_body)                                                    \
    do {                                                                                           \
        CHECK_MSG((a).status == (want_status), "status %d (want %d): %s [param %s]", (a).status,   \
                  (want_status), (a).err, (a).param);                                              \
        CHECK_EQ_STR((a).body, want_body);                                                         \
    } while (0)

TEST(tokenize_prompt)
{
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    ans a = call(tok, false, "{'prompt': ' banana', 'add_special_tokens': false}");
    CHECK_ANSWER(a, 200, "{\"tokens\":[21285],\"count\":1,\"max_model_len\":2048}");
    free(a.body);
    /* Special tokens' text is recognised, as on /v1/completions. */
    a = call(tok, false,
             "{'prompt': '<|im_start|> banana<|im_end|>', 'add_special_tokens': false}");
    CHECK_ANSWER(a, 200, "{\"tokens\":[1,21285,2],\"count\":3,\"max_model_len\":2048}");
    free(a.body);
    /* add_special_tokens (the default for a prompt) adds BOS only when the model wants it. */
    int32_t ids[8];
    a = call(tok, false, "{'prompt': ' banana'}");
    CHECK_EQ_INT(a.status, 200);
    int n = answer_ids(a.body, ids, 8);
    free(a.body);
    if (core_tokenizer_add_bos(tok)) {
        CHECK_EQ_INT(n, 2);
        CHECK_EQ_INT(ids[0], core_tokenizer_bos(tok));
        CHECK_EQ_INT(ids[1], BANANA);
    } else {
        CHECK_EQ_INT(n, 1);
        CHECK_EQ_INT(ids[0], BANANA);
    }
    /* The OpenAI shape of a one-string prompt array is a prompt too. */
    a = call(tok, false, "{'prompt': [' banana'], 'add_special_tokens': false}");
    CHECK_ANSWER(a, 200, "{\"tokens\":[21285],\"count\":1,\"max_model_len\":2048}");
    free(a.body);
}

TEST(tokenize_chat_messages)
{
    /* The messages rendered with the model's template, as /v1/chat/completions does: the same
     * ids as rendering and tokenizing directly, the generation prompt at the end by default. */
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    static int32_t got[512], want[512], tail[16];
    core_chat_msg msgs[] = {{.role = "system", .content = "Be brief."},
                            {.role = "user", .content = "Hi"}};
#define BODY                                                                                       \
    "{'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]"
    const char *bodies[] = {BODY "}", BODY ", 'add_generation_prompt': true}",
                            BODY ", 'add_generation_prompt': false}"};
#undef BODY
    int n_tail = test_tokenize(tok, "<|im_start|>assistant\n", true, tail, 16);
    CHECK(n_tail >= 2 && tail[0] == IM_START);
    int n_with = 0;
    for (int g = 0; g < 3; g++) {
        char *text = NULL, err[256];
        const char *b = bodies[g];
        bool add = g < 2;
        ans a = call(tok, false, b);
        CHECK_MSG(a.status == 200, "%s: %d %s", b, a.status, a.err);
        int n = answer_ids(a.body, got, 512);
        free(a.body);
        CHECK_MSG(core_chat_render(tok, msgs, 2, add, &text, err, sizeof err) == 0, "%s", err);
        int nw = test_tokenize(tok, text, true, want, 512);
        free(text);
        CHECK_MSG(n == nw && n > 0 && !memcmp(got, want, (size_t)n * sizeof *got),
                  "%s: %d ids, %d rendered and tokenized directly", b, n, nw);
        CHECK_EQ_INT(got[0], IM_START); /* the template's own start; no BOS added */
        bool ends_with_tail = n > n_tail && !memcmp(got + n - n_tail, tail, n_tail * sizeof *got);
        CHECK_MSG(ends_with_tail == add, "%s: ends with the generation prompt: %d", b,
                  ends_with_tail);
        if (add)
            n_with = n;
        else
            CHECK_EQ_INT(n, n_with - n_tail);
        CHECK_EQ_INT(got[add ? n - n_tail - 2 : n - 2], IM_END); /* "<|im_end|>\n" */
    }
    /* Content parts and "developer" read as the chat route reads them. */
    ans a = call(tok, false,
                 "{'messages': [{'role': 'developer', 'content': [{'type': 'text', 'text': 'Be "
                 "'}, {'type': 'text', 'text': 'brief.'}]}, {'role': 'user', 'content': 'Hi'}]}");
    CHECK_EQ_INT(a.status, 200);
    CHECK_EQ_INT(answer_ids(a.body, got, 512), n_with);
    free(a.body);
}

TEST(detokenize_ids)
{
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    ans a = call(tok, true, "{'tokens': [21285]}");
    CHECK_ANSWER(a, 200, "{\"prompt\":\" banana\"}");
    free(a.body);
    /* Special tokens' text is shown (vLLM decodes without skipping them), so a round trip holds. */
    a = call(tok, true, "{'tokens': [1, 21285, 2]}");
    CHECK_ANSWER(a, 200, "{\"prompt\":\"<|im_start|> banana<|im_end|>\"}");
    free(a.body);
    a = call(tok, true, "{'tokens': [], 'skip_special_tokens': true}");
    CHECK_ANSWER(a, 200, "{\"prompt\":\"\"}");
    free(a.body);
    a = call(tok, true, "{'tokens': [21285.0, 0]}");
    CHECK_ANSWER(a, 200, "{\"prompt\":\" banana<|endoftext|>\"}");
    free(a.body);
    /* /tokenize's answer fed back gives the text. */
    const char *text = "Héllo, wörld!\\n\\t1 + 1 = 2 <|im_end|>";
    char b[256];
    snprintf(b, sizeof b, "{\"prompt\": \"%s\", \"add_special_tokens\": false}", text);
    a = call_len(tok, false, b, strlen(b), NULL);
    CHECK_EQ_INT(a.status, 200);
    cJSON *root = cJSON_Parse(a.body);
    free(a.body);
    cJSON_DeleteItemFromObject(root, "count");
    cJSON_DeleteItemFromObject(root, "max_model_len");
    char *back = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    CHECK(back);
    a = call_len(tok, true, back, strlen(back), NULL);
    free(back);
    CHECK_ANSWER(a, 200, "{\"prompt\":\"Héllo, wörld!\\n\\t1 + 1 = 2 <|im_end|>\"}");
    free(a.body);
}

/* {"tokens": [n ids]} into b: " banana" each, but the last one last. Its length. */
static size_t ids_body(char *b, int n, int last)
{
    size_t len = (size_t)sprintf(b, "{\"tokens\":[");
    for (int i = 0; i < n; i++)
        len += (size_t)sprintf(b + len, "%s%d", i ? "," : "", i < n - 1 ? BANANA : last);
    return len + (size_t)sprintf(b + len, "]}");
}

TEST(detokenize_the_largest_array)
{
    /* SRV_DETOKENIZE_MAX ids are taken, each checked; one more is refused before any is read. */
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    char *b = malloc(16 + (SRV_DETOKENIZE_MAX + 1) * 7);
    CHECK(b);
    ans a = call_len(tok, true, b, ids_body(b, SRV_DETOKENIZE_MAX, 0), NULL);
    CHECK_MSG(a.status == 200, "%d: %s", a.status, a.err);
    CHECK_EQ_INT(strlen(a.body), strlen("{\"prompt\":\"\"}") +
                                     (SRV_DETOKENIZE_MAX - 1) * strlen(" banana") +
                                     strlen("<|endoftext|>"));
    free(a.body);
    a = call_len(tok, true, b, ids_body(b, SRV_DETOKENIZE_MAX, 99999), NULL);
    CHECK_EQ_INT(a.status, 400);
    CHECK_EQ_STR(a.err, "tokens[65535]: expected a token id in [0, 49152)");
    CHECK_EQ_STR(a.param, "tokens[65535]");
    free(a.body);
    a = call_len(tok, true, b, ids_body(b, SRV_DETOKENIZE_MAX + 1, 0), NULL);
    CHECK_EQ_INT(a.status, 400);
    CHECK_EQ_STR(a.err, "tokens: 65537 ids, more than the limit of 65536");
    CHECK_EQ_STR(a.param, "tokens");
    free(a.body);
    free(b);
}

typedef struct refusal {
    bool detok;
    const char *body; /* ' for " */
    int status;
    const char *param, *msg;
} refusal;

#define TOK false
#define DETOK true
#define MSG1 "{'messages':[{'role':'user','content':'x'}]"

static const refusal refusals[] = {
    /* the body as a whole, on both routes */
    {TOK, "", 400, "", "request body: empty; expected a JSON object"},
    {DETOK, "", 400, "", "request body: empty; expected a JSON object"},
    {TOK, "{", 400, "",
     "request body: invalid JSON: the body ends at byte 1 where a string key was expected"},
    {DETOK, "{'tokens': [1,]}", 400, "", "request body: invalid JSON at byte 14: expected a value"},
    {TOK, "{'prompt': 'x'} x", 400, "",
     "request body: invalid JSON at byte 16: unexpected data after the value"},
    {TOK, "[1]", 400, "", "request body: expected a JSON object"},
    {DETOK, "'tokens'", 400, "", "request body: expected a JSON object"},
    {DETOK, "null", 400, "", "request body: expected a JSON object"},
    /* /tokenize: the prompt or messages, read as the generation routes read them */
    {TOK, "{}", 400, "prompt", "prompt: required"},
    {TOK, "{'text': 'x'}", 400, "prompt", "prompt: required"},
    {TOK, "{'prompt': 5}", 400, "prompt",
     "prompt: expected a string or an array (of one string, or of token ids), got number"},
    {TOK, "{'prompt': ''}", 400, "prompt", "prompt: must not be empty"},
    {TOK, "{'prompt': [1, 2]}", 400, "prompt", "prompt: expected a string"},
    {TOK, "{'prompt': ['a', 'b']}", 400, "prompt",
     "prompt: 2 prompts in one request are not supported; send one request per prompt"},
    {TOK, "{'prompt': 'x', 'prompt': 'y'}", 400, "prompt", "prompt: given twice"},
    {TOK, "{'prompt': 'x', 'add_special_tokens': 'yes'}", 400, "add_special_tokens",
     "add_special_tokens: expected a boolean"},
    {TOK, "{'prompt': 'x', 'add_special_tokens': 1}", 400, "add_special_tokens",
     "add_special_tokens: expected a boolean"},
    {TOK, MSG1 ", 'add_generation_prompt': 'no'}", 400, "add_generation_prompt",
     "add_generation_prompt: expected a boolean"},
    {TOK, "{'messages': null}", 400, "messages", "messages: required"},
    {TOK, "{'messages': 'hi'}", 400, "messages",
     "messages: expected an array of messages, got string"},
    {TOK, "{'messages': []}", 400, "messages", "messages: must not be empty"},
    {TOK, "{'messages': [{'role': 'user'}]}", 400, "messages[0].content",
     "messages[0].content: required"},
    {TOK, "{'messages': [{'role': 'tool', 'content': 'x'}]}", 400, "messages[0].role",
     "messages[0].role: 'tool' messages are not supported (no tool calling)"},
    {TOK, "{'messages': [{'role': 'user', 'content': [{'type': 'image_url'}]}]}", 400,
     "messages[0].content[0]",
     "messages[0].content[0]: image parts are not supported (this server is text-only)"},
    /* /detokenize: an array of ids in the vocabulary */
    {DETOK, "{}", 400, "tokens", "tokens: expected an array of token ids"},
    {DETOK, "{'tokens': null}", 400, "tokens", "tokens: expected an array of token ids"},
    {DETOK, "{'tokens': '1 2'}", 400, "tokens", "tokens: expected an array of token ids"},
    {DETOK, "{'tokens': {'0': 1}}", 400, "tokens", "tokens: expected an array of token ids"},
    {DETOK, "{'prompt': [1]}", 400, "tokens", "tokens: expected an array of token ids"},
    {DETOK, "{'tokens': [1, -1]}", 400, "tokens[1]",
     "tokens[1]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [49152]}", 400, "tokens[0]",
     "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [49151, 1.5]}", 400, "tokens[1]",
     "tokens[1]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': ['1']}", 400, "tokens[0]", "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [true]}", 400, "tokens[0]", "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [null]}", 400, "tokens[0]", "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [[1]]}", 400, "tokens[0]", "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [1e20]}", 400, "tokens[0]", "tokens[0]: expected a token id in [0, 49152)"},
    {DETOK, "{'tokens': [-1e300]}", 400, "tokens[0]",
     "tokens[0]: expected a token id in [0, 49152)"},
};

TEST(tokenize_refusals)
{
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        const refusal *t = &refusals[i];
        ans a = call(tok, t->detok, t->body);
        if (a.status != t->status || strcmp(a.err, t->msg) != 0 || strcmp(a.param, t->param) != 0 ||
            a.body[0])
            test_fail(__FILE__, __LINE__,
                      "%s body %s\n      status %d (want %d)\n      msg   \"%s\"\n      want  "
                      "\"%s\"\n      param \"%s\" (want \"%s\")%s",
                      t->detok ? "/detokenize" : "/tokenize", t->body, a.status, t->status, a.err,
                      t->msg, a.param, t->param, a.body[0] ? "; a body was written" : "");
        free(a.body);
    }
}

TEST(tokenize_limits_and_template_errors)
{
    TEST_NEED_MODEL();
    const core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    /* The generation routes' limits hold here too. */
    srv_request_limits lim;
    srv_request_limits_default(&lim);
    lim.max_prompt_bytes = 8;
    lim.max_messages = 1;
    const char *b = "{\"prompt\": \"123456789\"}";
    ans a = call_len(tok, false, b, strlen(b), &lim);
    CHECK_EQ_INT(a.status, 400);
    CHECK_EQ_STR(a.err, "prompt: 9 bytes, more than the limit of 8 bytes");
    CHECK_EQ_STR(a.param, "prompt");
    free(a.body);
    b = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", "
        "\"content\": "
        "\"b\"}]}";
    a = call_len(tok, false, b, strlen(b), &lim);
    CHECK_EQ_INT(a.status, 400);
    CHECK_EQ_STR(a.err, "messages: 2 messages, more than the limit of 1");
    CHECK_EQ_STR(a.param, "messages");
    free(a.body);
    /* A template that refuses the conversation: 400 naming messages, with its message. */
    core_model *m = test_shared_model();
    char err[256];
    core_tokenizer *own = core_tokenizer_new(m->gguf, err, sizeof err);
    CHECK_MSG(own, "%s", err);
    int rc = core_tokenizer_set_chat_template(
        own,
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message first') }}"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    a = call(own, false, "{'messages': [{'role': 'user', 'content': 'x'}]}");
    int st = a.status;
    char got[sizeof a.err + sizeof a.param + 2];
    snprintf(got, sizeof got, "%s|%s", a.err, a.param);
    free(a.body);
    a = call(
        own, false,
        "{'messages': [{'role': 'system', 'content': 'x'}, {'role': 'user', 'content': 'y'}]}");
    core_tokenizer_free(own);
    CHECK_EQ_INT(st, 400);
    CHECK_EQ_STR(got, "cannot render the chat template: a system message first|messages");
    CHECK_MSG(a.status == 200, "%d: %s", a.status, a.err);
    free(a.body);
    /* A message buffer too small is cut, NUL-terminated, within its bytes. */
    char small[12], param[4];
    srv_buf out;
    srv_buf_init(&out);
    b = "{\"tokens\": [99999]}";
    CHECK_EQ_INT(
        srv_detokenize_answer(tok, b, strlen(b), &out, small, sizeof small, param, sizeof param),
        400);
    CHECK_EQ_STR(small, "tokens[0]: ");
    CHECK_EQ_STR(param, "tok");
    CHECK(out.len == 0);
    srv_buf_deinit(&out);
}
