/* Tests for server/request.c: the bodies the openai Python SDK (openai 3.57, captured from the
 * wire) sends for completions and chat, streaming or not, with stream_options, a system message,
 * content parts and the adaptree extensions; the noise OpenAI clients add (neutral penalties,
 * n = 1, logit_bias {}, nulls, unknown fields); defaults and limits at their boundaries; and a
 * table of refusals, each checked for its return code, its exact message and its param. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/sampler.h"
#include "server/request.h"
#include "tests/test.h"

#define C SRV_REQ_COMPLETION
#define H SRV_REQ_CHAT

static const srv_request_limits LIM = {.max_prompt_bytes = 4096,
                                       .max_tokens_limit = 512,
                                       .default_max_tokens = 256,
                                       .max_messages = 8,
                                       .n_vocab = 49152};

/* Bodies in the tables are written with ' for " (none of them needs a literal '). */
static char *dq(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; *p; p++)
        if (*p == '\'')
            *p = '"';
    return d;
}

static int parse_lim(srv_request_kind kind, const char *body, size_t len,
                     const srv_request_limits *lim, srv_request *r, char *err, char *param)
{
    return srv_request_parse(kind, body, len, lim, r, err, 256, param, SRV_PARAM_MAX);
}

/* Parses a body given with ' for ". */
static int parse_q(srv_request_kind kind, const char *qbody, srv_request *r, char *err, char *param)
{
    char *b = dq(qbody);
    int rc = parse_lim(kind, b, strlen(b), &LIM, r, err, param);
    free(b);
    return rc;
}

static int valid_utf8(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    while (*u) {
        int n = *u < 0x80 ? 0 : (*u & 0xE0) == 0xC0 ? 1 : (*u & 0xF0) == 0xE0 ? 2 : 3;
        if (*u >= 0xF8 || (*u >= 0x80 && *u < 0xC2))
            return 0;
        for (int k = 1; k <= n; k++)
            if ((u[k] & 0xC0) != 0x80)
                return 0;
        u += n + 1;
    }
    return 1;
}

static int is_zeroed(const srv_request *r)
{
    static const srv_request zero;
    return memcmp(r, &zero, sizeof zero) == 0;
}

/* A successful parse whose sampling parameters the sampler itself accepts. */
#define PARSE_OK(kind, qbody, r)                                                                   \
    do {                                                                                           \
        char err_[256], param_[SRV_PARAM_MAX];                                                     \
        int rc_ = parse_q(kind, qbody, r, err_, param_);                                           \
        CHECK_MSG(rc_ == 0, "parse failed (%d): %s [param %s]", rc_, err_, param_);                \
        core_sampler *s_ = core_sampler_new(&(r)->sampling, 49152, err_, sizeof err_);             \
        CHECK_MSG(s_ != NULL, "sampler refused the parsed params: %s", err_);                      \
        core_sampler_free(s_);                                                                     \
    } while (0)

/* ---- the openai SDK's bodies --------------------------------------------------------------- */

TEST(req_sdk_completion_basic)
{
    const char *b = "{\"model\":\"SmolLM2-135M-Instruct\",\"prompt\":\"The capital of France is\","
                    "\"max_tokens\":16}";
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    CHECK_EQ_INT(parse_lim(C, b, strlen(b), &LIM, &r, err, param), 0);
    CHECK_EQ_INT(r.kind, SRV_REQ_COMPLETION);
    CHECK_EQ_STR(r.prompt, "The capital of France is");
    CHECK_EQ_INT(r.prompt_len, strlen("The capital of France is"));
    CHECK(r.prompt_ids == NULL && r.n_prompt_ids == 0);
    CHECK_EQ_STR(r.model, "SmolLM2-135M-Instruct");
    CHECK_EQ_INT(r.max_tokens, 16);
    CHECK(r.max_tokens_set);
    CHECK(!r.stream && !r.stream_include_usage && !r.echo);
    CHECK_EQ_INT(r.logprobs, -1);
    CHECK_EQ_INT(r.n, 1);
    CHECK_EQ_INT(r.n_stop, 0);
    CHECK_EQ_INT(r.n_adapters, 0);
    CHECK(r.user == NULL && r.messages == NULL);
    core_sampler_params d;
    core_sampler_params_default(&d);
    CHECK(memcmp(&r.sampling, &d, sizeof d) == 0);
    CHECK(!r.seed_set);
    srv_request_deinit(&r);
    CHECK(is_zeroed(&r));
}

TEST(req_sdk_completion_stream_usage)
{
    srv_request r;
    PARSE_OK(C,
             "{'model':'fr/legal/alice','stream':true,'prompt':'Le chat est','max_tokens':32,"
             "'stream_options':{'include_usage':true},'temperature':0}",
             &r);
    CHECK(r.stream && r.stream_include_usage);
    CHECK_EQ_STR(r.model, "fr/legal/alice");
    CHECK_EQ_STR(r.prompt, "Le chat est");
    CHECK_EQ_INT(r.max_tokens, 32);
    CHECK(r.sampling.temperature == 0.0f);
    srv_request_deinit(&r);
}

TEST(req_n_choices)
{
    srv_request r;
    PARSE_OK(C, "{'prompt':'x','n':3}", &r);
    CHECK_EQ_INT(r.n, 3);
    srv_request_deinit(&r);
    PARSE_OK(H, "{'messages':[{'role':'user','content':'hi'}],'n':16}", &r);
    CHECK_EQ_INT(r.n, 16);
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','n':null}", &r);
    CHECK_EQ_INT(r.n, 1);
    srv_request_deinit(&r);
}

TEST(req_sdk_completion_every_field)
{
    /* completions.create(prompt=[...], echo, logprobs=2, seed, stop, ..., extra_body=...) */
    srv_request r;
    PARSE_OK(C,
             "{'model':'SmolLM2-135M-Instruct','prompt':['Once upon a time'],'echo':true,"
             "'frequency_penalty':0,'logprobs':2,'max_tokens':64,'n':1,'presence_penalty':0,"
             "'seed':42,'stop':['\\n\\n','END'],'temperature':0.7,'top_p':0.9,"
             "'user':'alice@example.com','top_k':40,'min_p':0.05,'repetition_penalty':1.1,"
             "'adapters':[{'id':'fr','scale':0.5},{'id':'de/medical'}]}",
             &r);
    CHECK_EQ_STR(r.prompt, "Once upon a time");
    CHECK(r.echo);
    CHECK_EQ_INT(r.logprobs, 2);
    CHECK_EQ_INT(r.max_tokens, 64);
    CHECK(r.seed_set);
    CHECK_EQ_INT(r.sampling.seed, 42);
    CHECK_EQ_INT(r.n_stop, 2);
    CHECK_EQ_STR(r.stop[0], "\n\n");
    CHECK_EQ_STR(r.stop[1], "END");
    CHECK(r.sampling.temperature == 0.7f && r.sampling.top_p == 0.9f);
    CHECK(r.sampling.min_p == 0.05f && r.sampling.repeat_penalty == 1.1f);
    CHECK_EQ_INT(r.sampling.top_k, 40);
    CHECK_EQ_STR(r.user, "alice@example.com");
    CHECK_EQ_INT(r.n_adapters, 2);
    CHECK_EQ_STR(r.adapters[0].id, "fr");
    CHECK(r.adapters[0].weight == 0.5f);
    CHECK_EQ_STR(r.adapters[1].id, "de/medical");
    CHECK(r.adapters[1].weight == 1.0f);
    srv_request_deinit(&r);
}

TEST(req_sdk_completion_token_ids)
{
    static const int32_t want[] = {504, 3575, 282, 4649, 314};
    srv_request r;
    PARSE_OK(C,
             "{'model':'SmolLM2-135M-Instruct','prompt':[504,3575,282,4649,314],'max_tokens':8,"
             "'stop':'\\n'}",
             &r);
    CHECK(r.prompt == NULL);
    CHECK_EQ_INT(r.n_prompt_ids, 5);
    CHECK(memcmp(r.prompt_ids, want, sizeof want) == 0);
    CHECK_EQ_INT(r.n_stop, 1);
    CHECK_EQ_STR(r.stop[0], "\n");
    srv_request_deinit(&r);
    /* An array of one array of ids, and a single id. */
    PARSE_OK(C, "{'prompt':[[1,2,49151]]}", &r);
    CHECK_EQ_INT(r.n_prompt_ids, 3);
    CHECK_EQ_INT(r.prompt_ids[2], 49151);
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':[0]}", &r);
    CHECK_EQ_INT(r.n_prompt_ids, 1);
    CHECK_EQ_INT(r.prompt_ids[0], 0);
    srv_request_deinit(&r);
}

TEST(req_sdk_completion_unicode_and_escapes)
{
    /* What the SDK sends (ensure_ascii=False) and what older clients send (\u escapes). */
    const char *raw = "{\"model\":\"SmolLM2-135M-Instruct\",\"prompt\":\"Écris un poème sur 東京 🗼 "
                      "et \\\"les quais\\\"\\n\\t\",\"max_tokens\":20}";
    const char *esc = "{\n  \"prompt\" : \"\\u00c9cris un po\\u00e8me sur \\u6771\\u4eac "
                      "\\ud83d\\uddfc et \\\"les quais\\\"\\n\\t\" ,\r\n  \"max_tokens\": 20\n}\n";
    const char *want = "Écris un poème sur 東京 🗼 et \"les quais\"\n\t";
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    CHECK_EQ_INT(parse_lim(C, raw, strlen(raw), &LIM, &r, err, param), 0);
    CHECK_EQ_STR(r.prompt, want);
    srv_request_deinit(&r);
    CHECK_EQ_INT(parse_lim(C, esc, strlen(esc), &LIM, &r, err, param), 0);
    CHECK_EQ_STR(r.prompt, want);
    CHECK_EQ_INT(r.max_tokens, 20);
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'\\/\\\\\\b\\f\\r\\u0001\\uFFFF'}", &r);
    CHECK_EQ_STR(r.prompt, "/\\\b\f\r\x01\xef\xbf\xbf");
    srv_request_deinit(&r);
}

TEST(req_sdk_chat_basic)
{
    srv_request r;
    PARSE_OK(H,
             "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'user',"
             "'content':'What is the capital of France?'}]}",
             &r);
    CHECK_EQ_INT(r.kind, SRV_REQ_CHAT);
    CHECK_EQ_INT(r.n_messages, 1);
    CHECK_EQ_STR(r.messages[0].role, "user");
    CHECK_EQ_STR(r.messages[0].content, "What is the capital of France?");
    CHECK(r.prompt == NULL && r.prompt_ids == NULL);
    CHECK_EQ_INT(r.max_tokens, 256); /* LIM.default_max_tokens */
    CHECK(!r.max_tokens_set);
    CHECK_EQ_INT(r.logprobs, -1);
    srv_request_deinit(&r);
}

TEST(req_sdk_chat_system_stream)
{
    srv_request r;
    PARSE_OK(H,
             "{'model':'fr/legal','stream':true,'messages':[{'role':'system','content':'You are "
             "a helpful assistant.'},{'role':'user','content':'Bonjour'}],"
             "'max_completion_tokens':128,'stream_options':{'include_usage':true},"
             "'temperature':0.2}",
             &r);
    CHECK_EQ_INT(r.n_messages, 2);
    CHECK_EQ_STR(r.messages[0].role, "system");
    CHECK_EQ_STR(r.messages[0].content, "You are a helpful assistant.");
    CHECK_EQ_STR(r.messages[1].role, "user");
    CHECK_EQ_STR(r.messages[1].content, "Bonjour");
    CHECK(r.stream && r.stream_include_usage);
    CHECK_EQ_INT(r.max_tokens, 128);
    CHECK(r.max_tokens_set);
    CHECK(r.sampling.temperature == 0.2f);
    srv_request_deinit(&r);
}

TEST(req_sdk_chat_content_parts)
{
    srv_request r;
    PARSE_OK(H,
             "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'user','content':[{'type':"
             "'text','text':'Describe '},{'type':'text','text':'Paris.'}]}],'max_tokens':50}",
             &r);
    CHECK_EQ_STR(r.messages[0].content, "Describe Paris.");
    CHECK_EQ_INT(r.max_tokens, 50);
    srv_request_deinit(&r);
    /* Parts in a system message, an empty text part, and plain strings mixed in the list. */
    PARSE_OK(H,
             "{'messages':[{'role':'system','content':[{'type':'text','text':''}]},{'role':"
             "'user','content':[{'type':'text','text':'a','cache_control':{}},{'text':'b',"
             "'type':'text'}]}]}",
             &r);
    CHECK_EQ_STR(r.messages[0].content, "");
    CHECK_EQ_STR(r.messages[1].content, "ab");
    srv_request_deinit(&r);
}

TEST(req_sdk_chat_multi_turn_logprobs)
{
    srv_request r;
    PARSE_OK(H,
             "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'system','content':'Be "
             "brief.'},{'role':'user','content':'Hi'},{'role':'assistant','content':'Hello! How "
             "can I help?'},{'role':'user','content':'Name a color.'}],'logprobs':true,'n':1,"
             "'response_format':{'type':'text'},'seed':7,'stop':['.'],'top_logprobs':3,"
             "'top_p':0.95,'adapters':[{'id':'en/colors','scale':1.5}]}",
             &r);
    CHECK_EQ_INT(r.n_messages, 4);
    CHECK_EQ_STR(r.messages[2].role, "assistant");
    CHECK_EQ_STR(r.messages[2].content, "Hello! How can I help?");
    CHECK_EQ_INT(r.logprobs, 3);
    CHECK_EQ_INT(r.sampling.seed, 7);
    CHECK(r.sampling.top_p == 0.95f);
    CHECK_EQ_INT(r.n_stop, 1);
    CHECK_EQ_STR(r.stop[0], ".");
    CHECK_EQ_INT(r.n_adapters, 1);
    CHECK_EQ_STR(r.adapters[0].id, "en/colors");
    CHECK(r.adapters[0].weight == 1.5f);
    srv_request_deinit(&r);
    /* logprobs true alone: the chosen token only. */
    PARSE_OK(H, "{'messages':[{'role':'user','content':'x'}],'logprobs':true}", &r);
    CHECK_EQ_INT(r.logprobs, 0);
    srv_request_deinit(&r);
    PARSE_OK(H, "{'messages':[{'role':'user','content':'x'}],'logprobs':false,'top_logprobs':null}",
             &r);
    CHECK_EQ_INT(r.logprobs, -1);
    srv_request_deinit(&r);
}

TEST(req_response_format_compiles_a_grammar)
{
    srv_request r;
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'json_schema',"
             "'json_schema':{'name':'p','strict':true,'schema':{'type':'object','properties':"
             "{'n':{'type':'integer'}},'required':['n'],'additionalProperties':false}}}}",
             &r);
    CHECK(r.grammar != NULL);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "{\"n\": 3}", 8));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "{\"m\": 3}", 8));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','response_format':{'type':'json_object'}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "{}", 2));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','guided_json':{'type':'boolean'}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "true", 4));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','response_format':{'type':'text'}}", &r);
    CHECK(r.grammar == NULL);
    srv_request_deinit(&r);
    /* vLLM's guided_regex (the whole text) and guided_choice */
    PARSE_OK(C, "{'prompt':'x','guided_regex':'\\\\d{2}-[a-z]+'}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "42-ab", 5));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "42-ab!", 6));
    srv_request_deinit(&r);
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'guided_choice':['yes','no'],"
             "'response_format':{'type':'text'}}",
             &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "no", 2));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "yesno", 5));
    srv_request_deinit(&r);
    /* GBNF: llama.cpp's grammar and vLLM's guided_grammar; llama.cpp's json_schema */
    PARSE_OK(C, "{'prompt':'x','grammar':'root ::= [0-9]+ unit\\nunit ::= \\'kg\\' | \\'g\\''}",
             &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "12kg", 4));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "12", 2));
    srv_request_deinit(&r);
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'guided_grammar':'root ::= (\\'a\\' | "
             "\\'b\\'){2}'}",
             &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "ab", 2));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "a", 1));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','json_schema':{'type':'integer','maximum':9}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "7", 1));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "10", 2));
    srv_request_deinit(&r);
    /* vLLM's structured_outputs (v0.10.2 on; the guided_* fields were removed in v0.12) */
    PARSE_OK(C,
             "{'prompt':'x','structured_outputs':{'choice':['yes','no'],'disable_fallback':true}}",
             &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "yes", 3));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "y", 1));
    srv_request_deinit(&r);
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'structured_outputs':{'regex':'[a-c]{2}',"
             "'json_object':false,'whitespace_pattern':null}}",
             &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "ab", 2));
    CHECK(r.grammar && !core_grammar_matches(r.grammar, "abc", 3));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','structured_outputs':{'json':{'type':'boolean'}}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "false", 5));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','structured_outputs':{'json':'{\\'enum\\':[1,2]}'}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "2", 1));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','structured_outputs':{'json_object':true}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "{}", 2));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','structured_outputs':{'grammar':'root ::= \\'ok\\''}}", &r);
    CHECK(r.grammar && core_grammar_matches(r.grammar, "ok", 2));
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','structured_outputs':{}}", &r);
    CHECK(r.grammar == NULL);
    srv_request_deinit(&r);
}

TEST(req_token_controls)
{
    /* logit_bias keys arrive as strings (OpenAI's wire format), values as numbers. */
    srv_request r;
    PARSE_OK(C,
             "{'prompt':'x','logit_bias':{'0':100,'49151':-100,'7':0.5},'presence_penalty':-2,"
             "'frequency_penalty':1.5,'min_tokens':3,'max_tokens':3,'ignore_eos':true,"
             "'stop_token_ids':[2,49151],'metadata':{'run':'a'},'user':'u1'}",
             &r);
    CHECK_EQ_INT(r.n_bias, 3);
    CHECK(r.bias_ids[0] == 0 && r.bias[0] == 100.0f);
    CHECK(r.bias_ids[1] == 49151 && r.bias[1] == -100.0f);
    CHECK(r.bias_ids[2] == 7 && r.bias[2] == 0.5f);
    CHECK(r.sampling.presence_penalty == -2.0f && r.sampling.frequency_penalty == 1.5f);
    CHECK_EQ_INT(r.min_tokens, 3);
    CHECK(r.ignore_eos);
    CHECK_EQ_INT(r.n_stop_ids, 2);
    CHECK(r.stop_ids[0] == 2 && r.stop_ids[1] == 49151);
    CHECK_EQ_STR(r.user, "u1");
    srv_request_deinit(&r);
    /* Absent, null and empty mean off; min_tokens up to the default max_tokens (LIM: 256 for
     * chat) is taken. */
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'logit_bias':{},'stop_token_ids':[],"
             "'min_tokens':256,'ignore_eos':null,'metadata':null}",
             &r);
    CHECK(r.n_bias == 0 && r.n_stop_ids == 0 && !r.ignore_eos);
    CHECK_EQ_INT(r.min_tokens, 256);
    CHECK(!r.max_tokens_set);
    CHECK(r.sampling.presence_penalty == 0 && r.sampling.frequency_penalty == 0);
    srv_request_deinit(&r);
    /* 1024 entries are allowed, 1025 are not. */
    char *b = malloc(20 * 1100 + 64);
    CHECK(b);
    for (int n = 1024; b && n <= 1025; n++) {
        size_t len = (size_t)sprintf(b, "{\"prompt\":\"x\",\"logit_bias\":{");
        for (int i = 0; i < n; i++)
            len += (size_t)sprintf(b + len, "%s\"%d\":1", i ? "," : "", i);
        len += (size_t)sprintf(b + len, "}}");
        char err[256], param[SRV_PARAM_MAX];
        int rc = parse_lim(C, b, len, &LIM, &r, err, param);
        if (n == 1024) {
            CHECK_MSG(rc == 0 && r.n_bias == 1024, "rc %d: %s", rc, err);
            srv_request_deinit(&r);
        } else {
            CHECK_EQ_INT(rc, -E2BIG);
            CHECK_EQ_STR(err, "logit_bias: 1025 entries, more than the limit of 1024");
        }
    }
    free(b);
}

/* A completion body {"prompt":"x",<members>} with real quotes, parsed with LIM. */
static int parse_members(const char *members, srv_request *r, char *err, char *param)
{
    size_t n = strlen(members) + 32;
    char *b = malloc(n);
    if (!b)
        return -ENOMEM;
    int len = snprintf(b, n, "{\"prompt\":\"x\",%s}", members);
    int rc = parse_lim(C, b, (size_t)len, &LIM, r, err, param);
    free(b);
    return rc;
}

/* n copies of the UTF-8 character ch, NUL-terminated, in buf (large enough). */
static char *repeat(char *buf, const char *ch, int n)
{
    size_t k = strlen(ch);
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * k, ch, k);
    buf[(size_t)n * k] = 0;
    return buf;
}

TEST(req_metadata_limits)
{
    /* OpenAI's rules: at most 16 pairs, keys up to 64 characters, values up to 512, strings. */
    srv_request r;
    char err[256], param[SRV_PARAM_MAX], key[65 * 2 + 1], val[513 * 3 + 1];
    char *m = malloc(16 * 700 + 64);
    CHECK(m);
    for (int pairs = 16; pairs <= 17; pairs++) {
        size_t len = (size_t)sprintf(m, "\"metadata\":{");
        for (int i = 0; i < pairs; i++)
            len += (size_t)sprintf(m + len, "%s\"k%d\":\"v\"", i ? "," : "", i);
        sprintf(m + len, "}");
        int rc = parse_members(m, &r, err, param);
        if (pairs == 16) {
            CHECK_MSG(rc == 0, "16 pairs: rc %d: %s", rc, err);
            srv_request_deinit(&r);
        } else {
            CHECK_EQ_INT(rc, -E2BIG);
            CHECK_EQ_STR(err, "metadata: 17 pairs, more than the limit of 16");
            CHECK_EQ_STR(param, "metadata");
        }
    }
    /* Characters, not bytes: 64 two-byte keys and 512 three-byte values are within. */
    sprintf(m, "\"metadata\":{\"%s\":\"%s\",\"\":\"\"}", repeat(key, "\xc3\xa9", 64),
            repeat(val, "\xe2\x82\xac", 512));
    int rc = parse_members(m, &r, err, param);
    CHECK_MSG(rc == 0, "64-character key, 512-character value: rc %d: %s", rc, err);
    srv_request_deinit(&r);
    sprintf(m, "\"metadata\":{\"%s\":\"v\"}", repeat(key, "a", 65));
    CHECK_EQ_INT(parse_members(m, &r, err, param), -E2BIG);
    CHECK_EQ_STR(err, "metadata: the key 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' is 65 characters, "
                      "more than the limit of 64");
    CHECK_EQ_STR(param, "metadata");
    sprintf(m, "\"metadata\":{\"run\":\"%s\"}", repeat(val, "\xe2\x82\xac", 513));
    CHECK_EQ_INT(parse_members(m, &r, err, param), -E2BIG);
    CHECK_EQ_STR(err, "metadata: the value of 'run' is 513 characters, more than the limit of 512");
    CHECK_EQ_STR(param, "metadata");
    /* A key or value with \u0000 or invalid UTF-8 is refused without being quoted. */
    CHECK_EQ_INT(parse_members("\"metadata\":{\"a\\u0000\":\"v\"}", &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "metadata: a key is not valid UTF-8 (or holds a NUL)");
    CHECK_EQ_INT(parse_members("\"metadata\":{\"\xff\":\"v\"}", &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "metadata: a key is not valid UTF-8 (or holds a NUL)");
    CHECK_EQ_INT(parse_members("\"metadata\":{\"k\":\"\\u0000\"}", &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "metadata: the value of 'k' is not valid UTF-8 (or holds a NUL)");
    CHECK_EQ_STR(param, "metadata");
    free(m);
}

TEST(req_min_tokens_against_the_max_in_force)
{
    /* min_tokens is checked against max_tokens given, else the default (as vLLM): 16 for
     * completions, the server's default for chat (LIM: 256), or the limit when that is lower. */
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    PARSE_OK(C, "{'prompt':'x','min_tokens':16}", &r);
    CHECK(r.min_tokens == 16 && r.max_tokens == 16 && !r.max_tokens_set);
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','min_tokens':40,'max_tokens':40}", &r);
    CHECK(r.min_tokens == 40 && r.max_tokens == 40);
    srv_request_deinit(&r);
    srv_request_limits lim = LIM;
    lim.max_tokens_limit = 8;
    const char *b = "{\"prompt\":\"x\",\"min_tokens\":9}";
    CHECK_EQ_INT(parse_lim(C, b, strlen(b), &lim, &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "min_tokens: 9 is more than max_tokens 8 (the default; give max_tokens too)");
    CHECK_EQ_STR(param, "min_tokens");
    /* No chat default and no limit: "until the context ends", so any min_tokens is within. */
    lim = LIM;
    lim.default_max_tokens = 0;
    lim.max_tokens_limit = 0;
    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_tokens\":100000}";
    CHECK_EQ_INT(parse_lim(H, b, strlen(b), &lim, &r, err, param), 0);
    CHECK_EQ_INT(r.min_tokens, 100000);
    srv_request_deinit(&r);
}

TEST(req_speculative)
{
    /* absent or null: the server's setting; false: off; true: on with 8 drafts and the
       server's n-gram; an object: each field optional, k 0 = off. */
    static const struct {
        const char *body;
        int k, ngram;
    } ok[] = {
        {"{'prompt':'x'}", 0, 0},
        {"{'prompt':'x','speculative':null}", 0, 0},
        {"{'prompt':'x','speculative':false}", -1, 0},
        {"{'prompt':'x','speculative':true}", 8, 0},
        {"{'prompt':'x','speculative':{}}", 8, 0},
        {"{'prompt':'x','speculative':{'k':16,'ngram':8}}", 16, 8},
        {"{'prompt':'x','speculative':{'k':0}}", -1, 0},
        {"{'prompt':'x','speculative':{'ngram':1}}", 8, 1},
    };
    srv_request r;
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        PARSE_OK(C, ok[i].body, &r);
        CHECK_MSG(r.spec_k == ok[i].k && r.spec_ngram == ok[i].ngram, "%s: k %d ngram %d",
                  ok[i].body, r.spec_k, r.spec_ngram);
        srv_request_deinit(&r);
    }
    static const struct {
        const char *body, *param, *msg;
    } bad[] = {
        {"{'prompt':'x','speculative':3}", "speculative",
         "speculative: expected an object {\"k\": K, \"ngram\": N} or a boolean, got number"},
        {"{'prompt':'x','speculative':{'k':17}}", "speculative.k",
         "speculative.k: must be an integer in [0, 16], got 17"},
        {"{'prompt':'x','speculative':{'ngram':0}}", "speculative.ngram",
         "speculative.ngram: must be an integer in [1, 8], got 0"},
        {"{'prompt':'x','speculative':{'k':2.5}}", "speculative.k",
         "speculative.k: expected an integer, got 2.5"},
        {"{'prompt':'x','speculative':{'draft':4}}", "speculative.draft",
         "speculative.draft: unknown field (expected k and ngram)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256], param[SRV_PARAM_MAX];
        CHECK_EQ_INT(parse_q(C, bad[i].body, &r, err, param), -EINVAL);
        CHECK_EQ_STR(param, bad[i].param);
        CHECK_EQ_STR(err, bad[i].msg);
    }
    /* A key that is not UTF-8 (found by fuzz_request): param and message stay valid UTF-8. */
    const char *b = "{\"prompt\":\"x\",\"speculative\":{\"k\xff\":1}}";
    char err[256], param[SRV_PARAM_MAX];
    CHECK_EQ_INT(parse_lim(C, b, strlen(b), &LIM, &r, err, param), -EINVAL);
    CHECK_EQ_STR(param, "speculative.k?");
    CHECK_EQ_STR(err, "speculative.k?: unknown field (expected k and ngram)");
}

TEST(req_user_limit)
{
    /* "user" (the scheduler's fairness key): a string of at most SRV_USER_BYTES_MAX bytes. */
    srv_request r;
    char err[256], param[SRV_PARAM_MAX], u[SRV_USER_BYTES_MAX + 2], m[SRV_USER_BYTES_MAX + 32];
    memset(u, 'u', SRV_USER_BYTES_MAX);
    u[SRV_USER_BYTES_MAX] = 0;
    sprintf(m, "\"user\":\"%s\"", u);
    CHECK_EQ_INT(parse_members(m, &r, err, param), 0);
    CHECK_EQ_INT(strlen(r.user), SRV_USER_BYTES_MAX);
    CHECK_EQ_STR(r.user, u);
    srv_request_deinit(&r);
    strcat(u, "u");
    sprintf(m, "\"user\":\"%s\"", u);
    CHECK_EQ_INT(parse_members(m, &r, err, param), -E2BIG);
    CHECK_EQ_STR(err, "user: 257 bytes, more than the limit of 256 bytes");
    CHECK_EQ_STR(param, "user");
    PARSE_OK(C, "{'prompt':'x','user':''}", &r);
    CHECK_EQ_STR(r.user, "");
    srv_request_deinit(&r);
}

TEST(req_client_noise_is_accepted)
{
    /* Neutral values of unsupported features, nulls and fields this server does not know. */
    srv_request r;
    PARSE_OK(C,
             "{'prompt':'x','frequency_penalty':0,'presence_penalty':0.0,'logit_bias':{},'n':1,"
             "'best_of':1,'suffix':null,'echo':false,'stream':false,'stream_options':{"
             "'include_usage':true},'logprobs':null,'user':null,'model':null,'seed':null,"
             "'stop':null,'temperature':null,'top_p':null,'max_tokens':null,'adapters':null,"
             "'metadata':{},'tools':[{'x':1}],'store':false}",
             &r);
    CHECK(r.model == NULL && r.user == NULL);
    CHECK(!r.stream_include_usage); /* only meaningful when streaming */
    CHECK_EQ_INT(r.max_tokens, 16);
    CHECK(!r.max_tokens_set && !r.seed_set);
    srv_request_deinit(&r);
    PARSE_OK(H,
             "{'messages':[{'role':'developer','content':'Rules.','name':'x'},{'role':'user',"
             "'content':'x','name':'bob'},{'role':'assistant','content':'y','tool_calls':[],"
             "'refusal':null}],'tools':[],'tool_choice':'none','functions':null,"
             "'function_call':'none','parallel_tool_calls':true,'response_format':null,"
             "'modalities':['text'],'audio':null,'store':false,'service_tier':'auto',"
             "'reasoning_effort':'low','prediction':null,'echo':3,'n':1.0,'max_tokens':16.0,'logit_"
             "bias':[]}",
             &r);
    CHECK_EQ_STR(r.messages[0].role, "system"); /* developer is the newer name of system */
    CHECK_EQ_STR(r.messages[2].content, "y");
    CHECK_EQ_INT(r.max_tokens, 16);
    srv_request_deinit(&r);
}

TEST(req_defaults_and_limits)
{
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    const char *cmpl = "{\"prompt\":\"x\"}";
    /* No limits given: chat runs until the context ends, completions get OpenAI's 16. */
    CHECK_EQ_INT(
        srv_request_parse(H, chat, strlen(chat), NULL, &r, err, sizeof err, param, sizeof param),
        0);
    CHECK_EQ_INT(r.max_tokens, INT_MAX);
    srv_request_deinit(&r);
    CHECK_EQ_INT(parse_lim(C, cmpl, strlen(cmpl), NULL, &r, err, param), 0);
    CHECK_EQ_INT(r.max_tokens, 16);
    srv_request_deinit(&r);
    /* A limit below 16 caps the completion default; no chat default means the limit. */
    srv_request_limits l = {.max_tokens_limit = 8};
    CHECK_EQ_INT(parse_lim(C, cmpl, strlen(cmpl), &l, &r, err, param), 0);
    CHECK_EQ_INT(r.max_tokens, 8);
    srv_request_deinit(&r);
    CHECK_EQ_INT(parse_lim(H, chat, strlen(chat), &l, &r, err, param), 0);
    CHECK_EQ_INT(r.max_tokens, 8);
    srv_request_deinit(&r);
    l.default_max_tokens = 100; /* larger than the limit: capped */
    CHECK_EQ_INT(parse_lim(H, chat, strlen(chat), &l, &r, err, param), 0);
    CHECK_EQ_INT(r.max_tokens, 8);
    srv_request_deinit(&r);
    /* max_tokens at the limit, 0 for a completion (prompt scoring with echo). */
    PARSE_OK(C, "{'prompt':'x','max_tokens':512}", &r);
    CHECK_EQ_INT(r.max_tokens, 512);
    srv_request_deinit(&r);
    PARSE_OK(C, "{'prompt':'x','max_tokens':0,'echo':true,'logprobs':0}", &r);
    CHECK(r.max_tokens == 0 && r.max_tokens_set && r.echo && r.logprobs == 0);
    srv_request_deinit(&r);
    PARSE_OK(H,
             "{'messages':[{'role':'user','content':'x'}],'max_tokens':7,"
             "'max_completion_tokens':7}",
             &r);
    CHECK_EQ_INT(r.max_tokens, 7);
    srv_request_deinit(&r);
    srv_request_limits def;
    srv_request_limits_default(&def);
    CHECK_EQ_INT(def.max_prompt_bytes, 1 << 20);
    CHECK_EQ_INT(def.max_messages, 1024);
    CHECK_EQ_INT(def.max_tokens_limit, 0);
}

/* A body whose prompt is n bytes of 'a' (kind C) or n token ids. */
static char *prompt_body(size_t n, int ids)
{
    char *b = malloc(n * 2 + 64), *p = b;
    p += sprintf(p, ids ? "{\"prompt\":[" : "{\"prompt\":\"");
    for (size_t i = 0; i < n; i++) {
        if (ids)
            p += sprintf(p, i ? ",7" : "7");
        else
            *p++ = 'a';
    }
    strcpy(p, ids ? "]}" : "\"}");
    return b;
}

TEST(req_prompt_limits_at_the_boundary)
{
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    struct {
        size_t n;
        int ids, rc;
        const char *msg;
    } cases[] = {
        {4096, 0, 0, ""},
        {4097, 0, -E2BIG, "prompt: 4097 bytes, more than the limit of 4096 bytes"},
        {1024, 1, 0, ""},
        {1025, 1, -E2BIG,
         "prompt: 1025 token ids (4 bytes each), more than the limit of 4096 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *b = prompt_body(cases[i].n, cases[i].ids);
        int rc = parse_lim(C, b, strlen(b), &LIM, &r, err, param);
        free(b);
        CHECK_EQ_INT(rc, cases[i].rc);
        if (rc == 0) {
            CHECK_EQ_INT(cases[i].ids ? r.n_prompt_ids : r.prompt_len, cases[i].n);
            srv_request_deinit(&r);
        } else {
            CHECK_EQ_STR(err, cases[i].msg);
            CHECK_EQ_STR(param, "prompt");
            CHECK(is_zeroed(&r));
        }
    }
    /* The chat limit counts the contents together. */
    char *big = malloc(5000);
    snprintf(big, 5000,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"%02000d\"},{\"role\":\"user\","
             "\"content\":\"%02096d\"}]}",
             0, 0);
    CHECK_EQ_INT(parse_lim(H, big, strlen(big), &LIM, &r, err, param), 0);
    srv_request_deinit(&r);
    snprintf(big, 5000,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"%02000d\"},{\"role\":\"user\","
             "\"content\":\"%02097d\"}]}",
             0, 0);
    int rc = parse_lim(H, big, strlen(big), &LIM, &r, err, param);
    free(big);
    CHECK_EQ_INT(rc, -E2BIG);
    CHECK_EQ_STR(err, "messages: the contents add up to more than the limit of 4096 bytes (at "
                      "message 1)");
    CHECK_EQ_STR(param, "messages");
}

TEST(req_nesting_limit)
{
    /* {"prompt": "x", "a": [[...]]}: the object is level 1, so 63 arrays reach 64. */
    srv_request r;
    char err[256], param[SRV_PARAM_MAX], b[512];
    for (int k = 63; k <= 64; k++) {
        int n = sprintf(b, "{\"prompt\":\"x\",\"a\":");
        for (int i = 0; i < k; i++)
            b[n++] = '[';
        for (int i = 0; i < k; i++)
            b[n++] = ']';
        b[n++] = '}';
        int rc = parse_lim(C, b, (size_t)n, &LIM, &r, err, param);
        if (k == 63) {
            CHECK_EQ_INT(rc, 0);
            srv_request_deinit(&r);
        } else {
            CHECK_EQ_INT(rc, -E2BIG);
            CHECK_EQ_STR(err, "request body: nested deeper than 64 levels at byte 81");
            CHECK_EQ_STR(param, "");
        }
    }
}

TEST(req_seed_values)
{
    struct {
        const char *body;
        uint64_t seed;
    } ok[] = {
        {"{'prompt':'x','seed':0}", 0},
        {"{'prompt':'x','seed':-1}", UINT64_MAX},
        {"{'prompt':'x','seed':-9223372036854775808}", (uint64_t)1 << 63},
        {"{'prompt':'x','seed':18446744073709549568}", 18446744073709549568u},
        {"{'prompt':'x','seed':1e3}", 1000},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        srv_request r;
        PARSE_OK(C, ok[i].body, &r);
        CHECK(r.seed_set);
        CHECK_MSG(r.sampling.seed == ok[i].seed, "%s: seed %llu", ok[i].body,
                  (unsigned long long)r.sampling.seed);
        srv_request_deinit(&r);
    }
}

TEST(req_utf8_and_nul_in_strings)
{
    struct {
        srv_request_kind kind;
        const char *body; /* real " here: these bodies hold raw bytes */
        const char *msg, *param;
    } cases[] = {
        {C, "{\"prompt\":\"ab\\u0000c\"}", "prompt: contains a NUL character (\\u0000) at byte 2",
         "prompt"},
        {C,
         "{\"prompt\":\"\xc3\xa9\xff"
         "x\"}",
         "prompt: invalid UTF-8 at byte 2", "prompt"},
        {C, "{\"prompt\":\"\xfe\"}", "prompt: invalid UTF-8 at byte 0", "prompt"},
        {C, "{\"prompt\":[\"ok\xc0\x80\"]}", "prompt[0]: invalid UTF-8 at byte 2", "prompt[0]"},
        {C, "{\"prompt\":\"\xed\xa0\x80\"}", "prompt: invalid UTF-8 at byte 0", "prompt"},
        {C, "{\"prompt\":\"\xf4\x90\x80\x80\"}", "prompt: invalid UTF-8 at byte 0", "prompt"},
        {C, "{\"prompt\":\"abc\xe2\x82\"}", "prompt: invalid UTF-8 at byte 3", "prompt"},
        {C, "{\"prompt\":\"x\",\"stop\":[\"a\",\"\\u0000\"]}",
         "stop[1]: contains a NUL character (\\u0000) at byte 0", "stop[1]"},
        {C, "{\"prompt\":\"x\",\"model\":\"m\x80\"}", "model: invalid UTF-8 at byte 1", "model"},
        {C, "{\"prompt\":\"x\",\"user\":\"\\u0000\"}",
         "user: contains a NUL character (\\u0000) at byte 0", "user"},
        {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\\u0000\"}]}",
         "messages[0].content: contains a NUL character (\\u0000) at byte 2",
         "messages[0].content"},
        {H, "{\"messages\":[{\"role\":\"us\xffr\",\"content\":\"x\"}]}",
         "messages[0].role: invalid UTF-8 at byte 2", "messages[0].role"},
        {H,
         "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{"
         "\"type\":\"text\",\"text\":\"\xe0\x80\x80\"}]}]}",
         "messages[0].content[1].text: invalid UTF-8 at byte 0", "messages[0].content[1].text"},
        {C, "{\"prompt\":\"x\",\"adapters\":[{\"id\":\"fr\\u0000\"}]}",
         "adapters[0].id: contains a NUL character (\\u0000) at byte 2", "adapters[0].id"},
        /* Strings this server ignores, and keys, are checked on the raw body at the end. */
        {C, "{\"prompt\":\"x\",\"service_tier\":\"ok\xc3(\"}",
         "request body: invalid UTF-8 at byte 32", ""},
        {C, "{\"prompt\":\"x\",\"k\xff\":1}", "request body: invalid UTF-8 at byte 16", ""},
        {C, "{\"prompt\":\"x\",\"logit_bias\":{\"1\xff\":1}}",
         "logit_bias: a key is not a token id (nor valid UTF-8)", "logit_bias"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_request r;
        char err[256], param[SRV_PARAM_MAX];
        int rc =
            parse_lim(cases[i].kind, cases[i].body, strlen(cases[i].body), &LIM, &r, err, param);
        CHECK_MSG(rc == -EINVAL, "case %zu: rc %d", i, rc);
        CHECK_MSG(!strcmp(err, cases[i].msg), "case %zu: \"%s\" != \"%s\"", i, err, cases[i].msg);
        CHECK_MSG(!strcmp(param, cases[i].param), "case %zu: param \"%s\" != \"%s\"", i, param,
                  cases[i].param);
        CHECK(is_zeroed(&r));
    }
    /* Escaped code points are fine, including U+FFFD, noncharacters and the last one. */
    srv_request r;
    PARSE_OK(C, "{'prompt':'\\ufffd\\ufdd0\\udbff\\udfff\\u00e9'}", &r);
    CHECK_EQ_STR(r.prompt, "\xef\xbf\xbd\xef\xb7\x90\xf4\x8f\xbf\xbf\xc3\xa9");
    srv_request_deinit(&r);
}

/* ---- refusals ------------------------------------------------------------------------------ */

typedef struct refusal {
    srv_request_kind kind;
    const char *body; /* ' for " */
    int rc;
    const char *param, *msg;
} refusal;

#define MSG1 "{'messages':[{'role':'user','content':'x'}]"
#define E -EINVAL
#define B -E2BIG

static const refusal refusals[] = {
    /* the body as a whole */
    {C, "[1]", E, "", "request body: expected a JSON object, got array"},
    {C, "'x'", E, "", "request body: expected a JSON object, got string"},
    {C, "{'prompt': 'a',}", E, "", "request body: invalid JSON at byte 15: expected a string key"},
    {C, "{'max_tokens': 016, 'prompt': 'a'}", E, "",
     "request body: invalid JSON at byte 15: number with a leading zero"},
    {C, "{'temperature': 1., 'prompt': 'a'}", E, "",
     "request body: invalid JSON at byte 16: invalid number"},
    {C, "{'temperature': -.5, 'prompt': 'a'}", E, "",
     "request body: invalid JSON at byte 16: invalid number"},
    {C, "{'temperature': +1, 'prompt': 'a'}", E, "",
     "request body: invalid JSON at byte 16: expected a value"},
    {C, "{'temperature': NaN}", E, "", "request body: invalid JSON at byte 16: expected a value"},
    {C, "{'prompt': 'a\nb'}", E, "",
     "request body: invalid JSON at byte 13: control character 0x0a must be escaped in a string"},
    {C, "{'prompt': '\\ud800x'}", E, "",
     "request body: invalid JSON at byte 12: unpaired UTF-16 surrogate \\ud800"},
    {C, "{'prompt': '\\udc00'}", E, "",
     "request body: invalid JSON at byte 12: unpaired UTF-16 surrogate \\udc00"},
    {C, "{'prompt': '\\ud800\\u0041'}", E, "",
     "request body: invalid JSON at byte 12: unpaired UTF-16 surrogate \\ud800"},
    {C, "{'prompt': '\\x'}", E, "",
     "request body: invalid JSON at byte 12: invalid escape sequence"},
    {C, "{'prompt': '\\u12g4'}", E, "",
     "request body: invalid JSON at byte 12: invalid escape sequence"},
    {C, "{'prompt': 'a'} x", E, "",
     "request body: invalid JSON at byte 16: unexpected data after the value"},
    {C, "{'prompt': 'a'}{}", E, "",
     "request body: invalid JSON at byte 15: unexpected data after the value"},
    {C, "{'prompt': 'a'", E, "",
     "request body: invalid JSON: the body ends at byte 14 where ',' or '}' was expected"},
    {C, "{'prompt': 'ab", E, "",
     "request body: invalid JSON: the body ends inside a string at byte 14"},
    {C, "{'prompt': tru}", E, "", "request body: invalid JSON at byte 11: expected a value"},
    {C, "{'prompt' 'a'}", E, "", "request body: invalid JSON at byte 10: expected ':'"},
    {C, "{'prompt': ['a' 'b']}", E, "",
     "request body: invalid JSON at byte 16: expected ',' or ']'"},
    {C, "{'prompt': 'a' 'b'}", E, "", "request body: invalid JSON at byte 15: expected ',' or '}'"},
    {C, "{prompt: 'a'}", E, "", "request body: invalid JSON at byte 1: expected a string key"},
    {C, "\xef\xbb\xbf{'prompt': 'a'}", E, "",
     "request body: invalid JSON at byte 0: expected a value"},
    {C, "   ", E, "",
     "request body: invalid JSON: the body ends at byte 3 where a value was expected"},
    {C, "{'prompt': 'a', 'prompt': 'b'}", E, "prompt", "prompt: given twice"},
    {C, "{'prompt': 'a', 'temperature': null, 'temperature': 1}", E, "temperature",
     "temperature: given twice"},
    /* completions: prompt */
    {C, "{}", E, "prompt", "prompt: required"},
    {C, "{'prompt': null}", E, "prompt", "prompt: required"},
    {C, "{'prompt': ''}", E, "prompt", "prompt: must not be empty"},
    {C, "{'prompt': []}", E, "prompt", "prompt: must not be empty"},
    {C, "{'prompt': ['']}", E, "prompt[0]", "prompt[0]: must not be empty"},
    {C, "{'prompt': [[]]}", E, "prompt[0]", "prompt[0]: must not be empty"},
    {C, "{'prompt': ['a', 'b']}", E, "prompt",
     "prompt: 2 prompts in one request are not supported; send one request per prompt"},
    {C, "{'prompt': [[1], [2], [3]]}", E, "prompt",
     "prompt: 3 prompts in one request are not supported; send one request per prompt"},
    {C, "{'prompt': 5}", E, "prompt",
     "prompt: expected a string or an array (of one string, or of token ids), got number"},
    {C, "{'prompt': {'text': 'a'}}", E, "prompt",
     "prompt: expected a string or an array (of one string, or of token ids), got object"},
    {C, "{'prompt': [{}]}", E, "prompt[0]",
     "prompt[0]: expected a string, a token id or an array of token ids, got object"},
    {C, "{'prompt': [null]}", E, "prompt[0]",
     "prompt[0]: expected a string, a token id or an array of token ids, got null"},
    {C, "{'prompt': [1, 2.5]}", E, "prompt[1]",
     "prompt[1]: expected a token id (an integer in [0, 49151]), got 2.5"},
    {C, "{'prompt': [1, 49152]}", E, "prompt[1]",
     "prompt[1]: expected a token id (an integer in [0, 49151]), got 49152"},
    {C, "{'prompt': [-1]}", E, "prompt[0]",
     "prompt[0]: expected a token id (an integer in [0, 49151]), got -1"},
    {C, "{'prompt': [1, 'a']}", E, "prompt[1]",
     "prompt[1]: expected a token id (an integer in [0, 49151]), got string"},
    {C, "{'prompt': [[1, true]]}", E, "prompt[0][1]",
     "prompt[0][1]: expected a token id (an integer in [0, 49151]), got boolean"},
    /* chat: messages */
    {H, "{}", E, "messages", "messages: required"},
    {H, "{'messages': {}}", E, "messages", "messages: expected an array of messages, got object"},
    {H, "{'messages': []}", E, "messages", "messages: must not be empty"},
    {H, "{'messages': ['hi']}", E, "messages[0]",
     "messages[0]: expected an object with \"role\" and \"content\", got string"},
    {H, "{'messages': [{'content': 'x'}]}", E, "messages[0].role", "messages[0].role: required"},
    {H, "{'messages': [{'role': null, 'content': 'x'}]}", E, "messages[0].role",
     "messages[0].role: expected a string, got null"},
    {H, "{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'tool', 'content': 'x'}]}", E,
     "messages[1].role", "messages[1].role: 'tool' messages are not supported (no tool calling)"},
    {H, "{'messages': [{'role': 'function', 'content': 'x'}]}", E, "messages[0].role",
     "messages[0].role: 'function' messages are not supported (no tool calling)"},
    {H, "{'messages': [{'role': 'robot', 'content': 'x'}]}", E, "messages[0].role",
     "messages[0].role: must be one of system, user, assistant, got 'robot'"},
    {H, "{'messages': [{'role': 'User', 'content': 'x'}]}", E, "messages[0].role",
     "messages[0].role: must be one of system, user, assistant, got 'User'"},
    {H, "{'messages': [{'role': '0123456789abcdefghijklmnopqrstuvwxyz', 'content': 'x'}]}", E,
     "messages[0].role",
     "messages[0].role: must be one of system, user, assistant, got "
     "'0123456789abcdefghijklmnopqrstuv...'"},
    {H,
     "{'messages': [{'role': 'a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
     "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9', 'content': 'x'}]}",
     E, "messages[0].role",
     "messages[0].role: must be one of system, user, assistant, got 'a\xc3\xa9\xc3\xa9\xc3\xa9"
     "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
     "\xc3\xa9...'"},
    {H, "{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant'}]}", E,
     "messages[1].content", "messages[1].content: required"},
    {H, "{'messages': [{'role': 'user', 'content': null}]}", E, "messages[0].content",
     "messages[0].content: expected a string or an array of content parts, got null"},
    {H, "{'messages': [{'role': 'user', 'content': 5}]}", E, "messages[0].content",
     "messages[0].content: expected a string or an array of content parts, got number"},
    {H, "{'messages': [{'role': 'user', 'content': []}]}", E, "messages[0].content",
     "messages[0].content: must not be an empty array"},
    {H, "{'messages': [{'role': 'user', 'content': ['x']}]}", E, "messages[0].content[0]",
     "messages[0].content[0]: expected a content part object, got string"},
    {H, "{'messages': [{'role': 'user', 'content': [{'text': 'x'}]}]}", E,
     "messages[0].content[0].type", "messages[0].content[0].type: required"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 1}]}]}", E,
     "messages[0].content[0].type", "messages[0].content[0].type: expected a string, got number"},
    {H,
     "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'user','content':[{'type':'text',"
     "'text':'What is this?'},{'type':'image_url','image_url':{'url':'https://example.com/"
     "a.png'}}]}]}",
     E, "messages[0].content[1]",
     "messages[0].content[1]: image parts are not supported (this server is text-only)"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'input_audio'}]}]}", E,
     "messages[0].content[0]",
     "messages[0].content[0]: audio parts are not supported (this server is text-only)"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'file'}]}]}", E,
     "messages[0].content[0]",
     "messages[0].content[0]: file parts are not supported (this server is text-only)"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'video'}]}]}", E,
     "messages[0].content[0].type",
     "messages[0].content[0].type: unknown content part type 'video' (only 'text' is supported)"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'text'}]}]}", E,
     "messages[0].content[0].text", "messages[0].content[0].text: required"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 3}]}]}", E,
     "messages[0].content[0].text", "messages[0].content[0].text: expected a string, got number"},
    {H, "{'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 'a', 'text': 'b'}]}]}",
     E, "messages[0].content[0].text", "messages[0].content[0].text: given twice"},
    {H, "{'messages': [{'role': 'user', 'content': 'a', 'content': 'b'}]}", E,
     "messages[0].content", "messages[0].content: given twice"},
    {H,
     "{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'content': null, "
     "'tool_calls': [{'id': 'c1', 'type': 'function'}]}]}",
     E, "messages[1].tool_calls", "messages[1].tool_calls: tool calls are not supported"},
    {H, "{'messages': [{'role': 'assistant', 'content': '', 'function_call': {'name': 'f'}}]}", E,
     "messages[0].function_call", "messages[0].function_call: tool calls are not supported"},
    {H,
     "{'messages': [{'role':'user','content':'1'},{'role':'user','content':'2'},{'role':'user',"
     "'content':'3'},{'role':'user','content':'4'},{'role':'user','content':'5'},{'role':'user',"
     "'content':'6'},{'role':'user','content':'7'},{'role':'user','content':'8'},{'role':'user',"
     "'content':'9'}]}",
     B, "messages", "messages: 9 messages, more than the limit of 8"},
    /* strings of both kinds */
    {C, "{'prompt': 'x', 'model': 5}", E, "model", "model: expected a string, got number"},
    {C,
     "{'prompt': 'x', 'model': '"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'}",
     B, "model", "model: 256 bytes, more than the limit of 255 bytes"},
    {H, MSG1 ", 'user': ['a']}", E, "user", "user: expected a string, got array"},
    /* max_tokens */
    {C, "{'prompt': 'x', 'max_tokens': -1}", E, "max_tokens",
     "max_tokens: must be an integer in [0, 512], got -1"},
    {H, MSG1 ", 'max_tokens': 0}", E, "max_tokens",
     "max_tokens: must be an integer in [1, 512], got 0"},
    {C, "{'prompt': 'x', 'max_tokens': 16.5}", E, "max_tokens",
     "max_tokens: expected an integer, got 16.5"},
    {C, "{'prompt': 'x', 'max_tokens': '16'}", E, "max_tokens",
     "max_tokens: expected an integer, got string"},
    {C, "{'prompt': 'x', 'max_tokens': 1e999}", B, "max_tokens",
     "max_tokens: inf is more than this server's limit of 512"},
    {C, "{'prompt': 'x', 'top_k': 3e9}", E, "top_k",
     "top_k: must be an integer in [0, 2147483647], got 3000000000"},
    {C, "{'prompt': 'x', 'max_tokens': 513}", B, "max_tokens",
     "max_tokens: 513 is more than this server's limit of 512"},
    {H, MSG1 ", 'max_completion_tokens': 600}", B, "max_completion_tokens",
     "max_completion_tokens: 600 is more than this server's limit of 512"},
    {H, MSG1 ", 'max_tokens': 10, 'max_completion_tokens': 20}", E, "max_tokens",
     "max_tokens: 10 conflicts with max_completion_tokens 20 (give one of them)"},
    /* sampling */
    {C, "{'prompt': 'x', 'temperature': 'hot'}", E, "temperature",
     "temperature: expected a number, got string"},
    {C, "{'prompt': 'x', 'temperature': 3}", E, "temperature",
     "temperature: must be in [0, 2], got 3"},
    {H, MSG1 ", 'temperature': -0.5}", E, "temperature",
     "temperature: must be in [0, 2], got -0.5"},
    {C, "{'prompt': 'x', 'temperature': true}", E, "temperature",
     "temperature: expected a number, got boolean"},
    {C, "{'prompt': 'x', 'top_p': 0}", E, "top_p", "top_p: must be in (0, 1], got 0"},
    {C, "{'prompt': 'x', 'top_p': 1e-60}", E, "top_p", "top_p: must be in (0, 1], got 1e-60"},
    {C, "{'prompt': 'x', 'top_p': 1.5}", E, "top_p", "top_p: must be in (0, 1], got 1.5"},
    {C, "{'prompt': 'x', 'min_p': -0.1}", E, "min_p", "min_p: must be in [0, 1], got -0.1"},
    {C, "{'prompt': 'x', 'repetition_penalty': 0}", E, "repetition_penalty",
     "repetition_penalty: must be a finite number > 0, got 0"},
    {C, "{'prompt': 'x', 'repetition_penalty': 1e300}", E, "repetition_penalty",
     "repetition_penalty: must be a finite number > 0, got 1e+300"},
    {C, "{'prompt': 'x', 'top_k': -1}", E, "top_k", "top_k: must be an integer >= 0, got -1"},
    {C, "{'prompt': 'x', 'top_k': 2.5}", E, "top_k", "top_k: expected an integer, got 2.5"},
    {C, "{'prompt': 'x', 'top_k': '5'}", E, "top_k", "top_k: expected an integer, got string"},
    {C, "{'prompt': 'x', 'seed': 1.5}", E, "seed", "seed: expected an integer, got 1.5"},
    {C, "{'prompt': 'x', 'seed': 'x'}", E, "seed", "seed: expected an integer, got string"},
    {C, "{'prompt': 'x', 'seed': 1e20}", E, "seed",
     "seed: must be an integer in [-2^63, 2^64), got 1e+20"},
    {C, "{'prompt': 'x', 'seed': -1e19}", E, "seed",
     "seed: must be an integer in [-2^63, 2^64), got -1e+19"},
    /* stop */
    {C, "{'prompt': 'x', 'stop': ''}", E, "stop", "stop: must not be empty"},
    {C, "{'prompt': 'x', 'stop': ['a', '']}", E, "stop[1]", "stop[1]: must not be empty"},
    {C, "{'prompt': 'x', 'stop': 5}", E, "stop",
     "stop: expected a string or an array of strings, got number"},
    {H, MSG1 ", 'stop': [1]}", E, "stop[0]", "stop[0]: expected a string, got number"},
    {C, "{'prompt': 'x', 'stop': ['a', 'b', 'c', 'd', 'e']}", B, "stop",
     "stop: 5 sequences, more than the limit of 4"},
    {C,
     "{'prompt': 'x', 'stop': '"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefX'}",
     B, "stop", "stop: 257 bytes, more than the limit of 256 bytes"},
    /* stream, logprobs */
    {C, "{'prompt': 'x', 'stream': 'yes'}", E, "stream", "stream: expected a boolean, got string"},
    {C, "{'prompt': 'x', 'stream': 1}", E, "stream", "stream: expected a boolean, got number"},
    {H, MSG1 ", 'stream': true, 'stream_options': 1}", E, "stream_options",
     "stream_options: expected an object, got number"},
    {H, MSG1 ", 'stream': true, 'stream_options': {'include_usage': 1}}", E,
     "stream_options.include_usage",
     "stream_options.include_usage: expected a boolean, got number"},
    {C, "{'prompt': 'x', 'logprobs': 6}", E, "logprobs",
     "logprobs: must be an integer in [0, 5], got 6"},
    {C, "{'prompt': 'x', 'logprobs': true}", E, "logprobs",
     "logprobs: expected an integer, got boolean"},
    {H, MSG1 ", 'logprobs': 1}", E, "logprobs", "logprobs: expected a boolean, got number"},
    {H, MSG1 ", 'logprobs': true, 'top_logprobs': 21}", E, "top_logprobs",
     "top_logprobs: must be an integer in [0, 20], got 21"},
    {H, MSG1 ", 'top_logprobs': 2}", E, "top_logprobs",
     "top_logprobs: requires \"logprobs\": true"},
    {C, "{'prompt': 'x', 'echo': 1}", E, "echo", "echo: expected a boolean, got number"},
    /* features that would change the result */
    {C, "{'prompt': 'x', 'n': 17}", E, "n", "n: must be an integer in [1, 16], got 17"},
    {H, MSG1 ", 'n': 0}", E, "n", "n: must be an integer in [1, 16], got 0"},
    {C, "{'prompt': 'x', 'n': '1'}", E, "n", "n: expected an integer, got string"},
    {C, "{'prompt': 'x', 'n': 2.5}", E, "n", "n: expected an integer, got 2.5"},
    {C, "{'prompt': 'x', 'best_of': 3}", E, "best_of",
     "best_of: only 1 is supported, got 3 (one candidate per request)"},
    /* penalties, logit_bias, min_tokens, ignore_eos, stop_token_ids, metadata */
    {C, "{'prompt': 'x', 'frequency_penalty': 2.5}", E, "frequency_penalty",
     "frequency_penalty: must be in [-2, 2], got 2.5"},
    {H, MSG1 ", 'frequency_penalty': 0, 'presence_penalty': -2.01}", E, "presence_penalty",
     "presence_penalty: must be in [-2, 2], got -2.01"},
    {C, "{'prompt': 'x', 'frequency_penalty': 'x'}", E, "frequency_penalty",
     "frequency_penalty: expected a number, got string"},
    {H, MSG1 ", 'logit_bias': 5}", E, "logit_bias",
     "logit_bias: expected an object of token id -> bias, got number"},
    {C, "{'prompt': 'x', 'logit_bias': {'49152': 1}}", E, "logit_bias.49152",
     "logit_bias.49152: token id 49152 is outside the vocabulary (49152 tokens)"},
    {C, "{'prompt': 'x', 'logit_bias': {'-1': 1}}", E, "logit_bias",
     "logit_bias: the key '-1' is not a token id (a non-negative integer)"},
    {C, "{'prompt': 'x', 'logit_bias': {'abc': 1}}", E, "logit_bias",
     "logit_bias: the key 'abc' is not a token id (a non-negative integer)"},
    {C, "{'prompt': 'x', 'logit_bias': {'': 1}}", E, "logit_bias",
     "logit_bias: the key '' is not a token id (a non-negative integer)"},
    {C, "{'prompt': 'x', 'logit_bias': {'99999999999': 1}}", E, "logit_bias",
     "logit_bias: the key '99999999999' is not a token id (a non-negative integer)"},
    {C, "{'prompt': 'x', 'logit_bias': {'4294967295': 1}}", E, "logit_bias.4294967295",
     "logit_bias.4294967295: token id 4294967295 is outside the vocabulary (49152 tokens)"},
    {C, "{'prompt': 'x', 'logit_bias': {'12': 100.5}}", E, "logit_bias.12",
     "logit_bias.12: must be in [-100, 100], got 100.5"},
    {C, "{'prompt': 'x', 'logit_bias': {'12': '1'}}", E, "logit_bias.12",
     "logit_bias.12: expected a number, got string"},
    {C, "{'prompt': 'x', 'logit_bias': {'12': 1, '012': 2}}", E, "logit_bias.012",
     "logit_bias.012: token id 12 is given twice"},
    {C, "{'prompt': 'x', 'min_tokens': -1}", E, "min_tokens",
     "min_tokens: must be an integer >= 0, got -1"},
    {C, "{'prompt': 'x', 'min_tokens': 1.5}", E, "min_tokens",
     "min_tokens: expected an integer, got 1.5"},
    {C, "{'prompt': 'x', 'max_tokens': 4, 'min_tokens': 5}", E, "min_tokens",
     "min_tokens: 5 is more than max_tokens 4"},
    {H, MSG1 ", 'ignore_eos': 1}", E, "ignore_eos", "ignore_eos: expected a boolean, got number"},
    {C, "{'prompt': 'x', 'stop_token_ids': 2}", E, "stop_token_ids",
     "stop_token_ids: expected an array of token ids, got number"},
    {C, "{'prompt': 'x', 'stop_token_ids': [1, 49152]}", E, "stop_token_ids[1]",
     "stop_token_ids[1]: must be an integer in [0, 49151], got 49152"},
    {C, "{'prompt': 'x', 'stop_token_ids': ['1']}", E, "stop_token_ids[0]",
     "stop_token_ids[0]: expected an integer, got string"},
    {H, MSG1 ", 'metadata': 'tag'}", E, "metadata", "metadata: expected an object, got string"},
    {C, "{'prompt': 'x', 'max_tokens': 0, 'min_tokens': 1}", E, "min_tokens",
     "min_tokens: 1 is more than max_tokens 0"},
    {C, "{'prompt': 'x', 'min_tokens': 17}", E, "min_tokens",
     "min_tokens: 17 is more than max_tokens 16 (the default; give max_tokens too)"},
    {H, MSG1 ", 'min_tokens': 257}", E, "min_tokens",
     "min_tokens: 257 is more than max_tokens 256 (the default; give max_tokens too)"},
    {H, MSG1 ", 'max_completion_tokens': 8, 'min_tokens': 9}", E, "min_tokens",
     "min_tokens: 9 is more than max_tokens 8"},
    {C, "{'prompt': 'x', 'metadata': {'a': [1, {'b': null}]}}", E, "metadata",
     "metadata: the value of 'a' must be a string, got array"},
    {C, "{'prompt': 'x', 'metadata': {'run': 'a', 'n': 3}}", E, "metadata",
     "metadata: the value of 'n' must be a string, got number"},
    {H, MSG1 ", 'metadata': {'k': null}}", E, "metadata",
     "metadata: the value of 'k' must be a string, got null"},
    {C, "{'prompt': 'x', 'metadata': {'k': 'a', 'k': 'b'}}", E, "metadata",
     "metadata: the key 'k' is given twice"},
    {C, "{'prompt': 'x', 'metadata': []}", E, "metadata",
     "metadata: expected an object, got array"},
    {C, "{'prompt': 'x', 'guided_json': {'type': 'object', 'not': {}}}", E, "guided_json",
     "guided_json: unsupported keyword 'not' at #"},
    {C, "{'prompt': 'x', 'guided_json': '{nope'}", E, "guided_json",
     "guided_json: the string is not a JSON schema"},
    {C, "{'prompt': 'x', 'guided_json': {}, 'response_format': {'type': 'json_object'}}", E,
     "response_format", "response_format: give guided_json or response_format, not both"},
    {C, "{'prompt': 'x', 'guided_regex': '(a'}", E, "guided_regex",
     "guided_regex: regex: a group without ')' at offset 2"},
    {C, "{'prompt': 'x', 'guided_regex': 3}", E, "guided_regex",
     "guided_regex: expected a string, got number"},
    {C, "{'prompt': 'x', 'guided_choice': []}", E, "guided_choice",
     "guided_choice: expected an array of 1 to 1024 strings"},
    {C, "{'prompt': 'x', 'guided_choice': 'yes'}", E, "guided_choice",
     "guided_choice: expected an array of 1 to 1024 strings"},
    {H, MSG1 ", 'guided_choice': ['a', 2]}", E, "guided_choice[1]",
     "guided_choice[1]: expected a string, got number"},
    {C, "{'prompt': 'x', 'guided_choice': ['a'], 'guided_regex': 'a'}", E, "guided_choice",
     "guided_choice: give one of guided_regex and guided_choice, not both"},
    {C, "{'prompt': 'x', 'guided_choice': ['a'], 'guided_json': {}}", E, "guided_json",
     "guided_json: give one of guided_choice and guided_json, not both"},
    {C, "{'prompt': 'x', 'guided_regex': 'a', 'response_format': {'type': 'json_object'}}", E,
     "response_format", "response_format: give guided_regex or response_format, not both"},
    {H, MSG1 ", 'grammar': 'root ::= x'}", E, "grammar",
     "grammar: line 1, column 10: rule 'x' is used but not defined"},
    {C, "{'prompt': 'x', 'guided_grammar': 'root ::= root [a] | [b]'}", E, "guided_grammar",
     "guided_grammar: line 1, column 1: rule 'root' is left-recursive: it can reach itself before "
     "reading a character (directly, through rules that may match nothing, or by repeating "
     "something that may, as (\"a\"?)*)"},
    {C, "{'prompt': 'x', 'grammar': ['root ::= [a]']}", E, "grammar",
     "grammar: expected a string, got array"},
    {C, "{'prompt': 'x', 'grammar': 'root ::= [a]', 'guided_regex': 'a'}", E, "grammar",
     "grammar: give one of guided_regex and grammar, not both"},
    {C, "{'prompt': 'x', 'grammar': 'root ::= [a]', 'guided_json': {}}", E, "guided_json",
     "guided_json: give one of grammar and guided_json, not both"},
    {C, "{'prompt': 'x', 'json_schema': 'object'}", E, "json_schema",
     "json_schema: the string is not a JSON schema"},
    {C, "{'prompt': 'x', 'json_schema': 3}", E, "json_schema",
     "json_schema: expected a JSON schema, got number"},
    {C, "{'prompt': 'x', 'structured_outputs': {'regex': 'a', 'choice': ['a']}}", E,
     "structured_outputs.choice",
     "structured_outputs.choice: give one of structured_outputs.regex and "
     "structured_outputs.choice, not both"},
    {C, "{'prompt': 'x', 'guided_regex': 'a', 'structured_outputs': {'grammar': 'root ::= [a]'}}",
     E, "structured_outputs.grammar",
     "structured_outputs.grammar: give one of guided_regex and structured_outputs.grammar, not "
     "both"},
    {C, "{'prompt': 'x', 'structured_outputs': {'grammar': 'root ::= b'}}", E,
     "structured_outputs.grammar",
     "structured_outputs.grammar: line 1, column 10: rule 'b' is used but not defined"},
    {C, "{'prompt': 'x', 'structured_outputs': {'choice': ['a', 1]}}", E,
     "structured_outputs.choice[1]", "structured_outputs.choice[1]: expected a string, got number"},
    {C, "{'prompt': 'x', 'structured_outputs': {'json_object': 1}}", E,
     "structured_outputs.json_object", "structured_outputs.json_object: expected true, got number"},
    {C, "{'prompt': 'x', 'structured_outputs': {'structural_tag': {'a': 1}}}", E,
     "structured_outputs.structural_tag",
     "structured_outputs.structural_tag: not supported (only null)"},
    {C, "{'prompt': 'x', 'structured_outputs': {'disable_any_whitespace': true}}", E,
     "structured_outputs.disable_any_whitespace",
     "structured_outputs.disable_any_whitespace: not supported (only null or false)"},
    {C, "{'prompt': 'x', 'structured_outputs': {'jsn': {}}}", E, "structured_outputs.jsn",
     "structured_outputs.jsn: unknown field (json, regex, choice, grammar and json_object are "
     "supported)"},
    {C, "{'prompt': 'x', 'structured_outputs': ['regex']}", E, "structured_outputs",
     "structured_outputs: expected an object, got array"},
    {C,
     "{'prompt': 'x', 'structured_outputs': {'json': {}}, 'response_format': {'type': "
     "'json_object'}}",
     E, "response_format",
     "response_format: give structured_outputs.json or response_format, not both"},
    {C, "{'prompt': 'x', 'json_schema': {'not': {}}}", E, "json_schema",
     "json_schema: unsupported keyword 'not' at #"},
    {C, "{'prompt': 'x', 'suffix': 'end'}", E, "suffix",
     "suffix: not supported (no insertion; only \"\" or null)"},
    {C, "{'prompt': 'x', 'suffix': 1}", E, "suffix",
     "suffix: not supported (no insertion; only \"\" or null)"},
    {H,
     "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'user','content':'Weather in "
     "Paris?'}],'tool_choice':'auto','tools':[{'type':'function','function':{'name':"
     "'get_weather','parameters':{'type':'object','properties':{'city':{'type':'string'}}}}}]}",
     E, "tools", "tools: tool calling is not supported"},
    {H, MSG1 ", 'tool_choice': 'auto'}", E, "tool_choice",
     "tool_choice: tool calling is not supported (only \"none\")"},
    {H, MSG1 ", 'functions': [{'name': 'f'}]}", E, "functions",
     "functions: tool calling is not supported"},
    {H, MSG1 ", 'function_call': 'auto'}", E, "function_call",
     "function_call: tool calling is not supported (only \"none\")"},
    {H,
     "{'model':'SmolLM2-135M-Instruct','messages':[{'role':'user','content':'JSON please'}],"
     "'response_format':{'type':'json_objet'}}",
     E, "response_format.type",
     "response_format.type: must be \"text\", \"json_object\" or \"json_schema\", got "
     "'json_objet'"},
    {H, MSG1 ", 'response_format': {'type': 'json_schema'}}", E, "response_format.json_schema",
     "response_format.json_schema: expected an object, got null"},
    {H, MSG1 ", 'response_format': {'type': 'json_schema', 'json_schema': {'name': 'x'}}}", E,
     "response_format.json_schema.schema", "response_format.json_schema.schema: required"},
    {C,
     "{'prompt': 'x', 'response_format': {'type': 'json_schema', 'json_schema': {'name': 'x', "
     "'schema': {'type': 'object', 'properties': {'a': {'type': 'string', 'format': 'ipv6'}}}}}}",
     E, "response_format.json_schema.schema",
     "response_format.json_schema.schema: unsupported keyword value 'format': 'ipv6' at "
     "#/properties/a (supported: date, time, date-time, uuid, email)"},
    {H,
     MSG1 ", 'response_format': {'type': 'json_schema', 'json_schema': {'schema': {'type': "
          "'integer', 'minimum': 3, 'maximum': 1}}}}",
     E, "response_format.json_schema.schema",
     "response_format.json_schema.schema: no integer at # is within its minimum and maximum"},
    {H, MSG1 ", 'response_format': {}}", E, "response_format.type",
     "response_format.type: required"},
    {H, MSG1 ", 'response_format': 'text'}", E, "response_format",
     "response_format: expected an object, got string"},
    {H, MSG1 ", 'modalities': ['text', 'audio']}", E, "modalities",
     "modalities: only [\"text\"] is supported"},
    {H, MSG1 ", 'audio': {'voice': 'alloy'}}", E, "audio", "audio: audio output is not supported"},
    /* adapters */
    {C, "{'prompt': 'x', 'adapters': {}}", E, "adapters",
     "adapters: expected an array of {\"id\": ..., \"scale\": ...} objects, got object"},
    {C, "{'prompt': 'x', 'adapters': ['fr']}", E, "adapters[0]",
     "adapters[0]: expected an object like {\"id\": \"fr\", \"scale\": 0.5}, got string"},
    {C, "{'prompt': 'x', 'adapters': [{'id': 'fr'}, {}]}", E, "adapters[1].id",
     "adapters[1].id: required"},
    {H, MSG1 ", 'adapters': [{'id': 5}]}", E, "adapters[0].id",
     "adapters[0].id: expected a string, got number"},
    {C, "{'prompt': 'x', 'adapters': [{'id': '../etc'}]}", E, "adapters[0].id",
     "adapters[0].id: adapter id '../etc': empty, '.', '..' or over-long (>64) segments are not "
     "allowed"},
    {C, "{'prompt': 'x', 'adapters': [{'id': 'fr legal'}]}", E, "adapters[0].id",
     "adapters[0].id: adapter id 'fr legal': character 0x20 is not allowed (use A-Z a-z 0-9 . _ - "
     "and / between segments)"},
    {C, "{'prompt': 'x', 'adapters': [{'id': ''}]}", E, "adapters[0].id",
     "adapters[0].id: adapter id must be 1..255 bytes"},
    {C, "{'prompt': 'x', 'adapters': [{'id': 'fr', 'scale': 2000}]}", E, "adapters[0].scale",
     "adapters[0].scale: must be in [-1000, 1000], got 2000"},
    {C, "{'prompt': 'x', 'adapters': [{'id': 'fr', 'scale': '1'}]}", E, "adapters[0].scale",
     "adapters[0].scale: expected a number, got string"},
    {C, "{'prompt': 'x', 'adapters': [{'id': 'fr', 'id': 'de'}]}", E, "adapters[0].id",
     "adapters[0].id: given twice"},
    {C,
     "{'prompt': 'x', 'adapters': [{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':"
     "'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':'a'},{'id':"
     "'a'},{'id':'a'},{'id':'a'},{'id':'a'}]}",
     B, "adapters", "adapters: 17 adapters, more than the limit of 16"},
};

TEST(req_refusals)
{
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        const refusal *t = &refusals[i];
        srv_request r;
        char err[256] = "?", param[SRV_PARAM_MAX] = "?";
        int rc = parse_q(t->kind, t->body, &r, err, param);
        if (rc != t->rc || strcmp(err, t->msg) != 0 || strcmp(param, t->param) != 0 ||
            !is_zeroed(&r))
            test_fail(__FILE__, __LINE__,
                      "%s body %s\n      rc %d (want %d)\n      msg   \"%s\"\n      want  \"%s\"\n"
                      "      param \"%s\" (want \"%s\")%s",
                      srv_request_kind_name(t->kind), t->body, rc, t->rc, err, t->msg, param,
                      t->param, is_zeroed(&r) ? "" : "; request not zeroed");
        if (rc == 0)
            srv_request_deinit(&r);
    }
}

TEST(req_refusal_edge_cases)
{
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    /* Empty and NULL bodies. */
    CHECK_EQ_INT(parse_lim(C, "", 0, &LIM, &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "request body: empty; expected a JSON object");
    CHECK_EQ_STR(param, "");
    CHECK_EQ_INT(parse_lim(H, NULL, 10, &LIM, &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "request body: empty; expected a JSON object");
    /* A raw NUL byte inside the body (the length says where it ends, not the NUL). */
    static const char nul[] = "{\"prompt\":\"a\0b\"}";
    CHECK_EQ_INT(parse_lim(C, nul, sizeof nul - 1, &LIM, &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "request body: invalid JSON at byte 12: control character 0x00 must be "
                      "escaped in a string");
    static const char tail[] = "{\"prompt\":\"a\"}\0";
    CHECK_EQ_INT(parse_lim(C, tail, sizeof tail - 1, &LIM, &r, err, param), -EINVAL);
    CHECK_EQ_STR(err, "request body: invalid JSON at byte 14: unexpected data after the value");
    /* Only the given length is read. */
    const char *longer = "{\"prompt\":\"a\"}garbage";
    CHECK_EQ_INT(parse_lim(C, longer, 14, &LIM, &r, err, param), 0);
    srv_request_deinit(&r);
    /* An unknown kind is refused like bad input. */
    CHECK_EQ_INT(srv_request_parse((srv_request_kind)7, "{}", 2, &LIM, &r, err, sizeof err, param,
                                   sizeof param),
                 -EINVAL);
    CHECK_EQ_STR(err, "request body: unknown request kind 7");
}

TEST(req_error_buffers)
{
    srv_request r;
    char err[16], param[4];
    const char *b = "{\"prompt\":\"x\",\"messages\":1,\"temperature\":\"\xc3\xa9\"}";
    /* Too small buffers: cut, still NUL-terminated valid UTF-8; a cut "é" becomes '?'. */
    CHECK_EQ_INT(srv_request_parse(C, b, strlen(b), &LIM, &r, err, sizeof err, param, sizeof param),
                 -EINVAL);
    CHECK_EQ_STR(err, "temperature: ex");
    CHECK_EQ_STR(param, "tem");
    const char *role = "{\"messages\":[{\"role\":\"\xc3\xa9\xc3\xa9\",\"content\":\"x\"}]}";
    char e2[67]; /* room for the first byte of the second "é" */
    CHECK_EQ_INT(srv_request_parse(H, role, strlen(role), &LIM, &r, e2, sizeof e2, NULL, 0),
                 -EINVAL);
    CHECK_EQ_STR(e2, "messages[0].role: must be one of system, user, assistant, got '\xc3\xa9?");
    CHECK(valid_utf8(e2));
    /* No buffers at all. */
    CHECK_EQ_INT(srv_request_parse(C, b, strlen(b), &LIM, &r, NULL, 0, NULL, 0), -EINVAL);
    CHECK(is_zeroed(&r));
}

TEST(req_deinit_and_names)
{
    srv_request r;
    srv_request_deinit(NULL);
    PARSE_OK(H, "{'messages':[{'role':'user','content':'x'}],'model':'m','user':'u'}", &r);
    srv_request_deinit(&r);
    CHECK(is_zeroed(&r));
    srv_request_deinit(&r); /* twice is fine */
    CHECK_EQ_STR(srv_request_kind_name(SRV_REQ_COMPLETION), "completion");
    CHECK_EQ_STR(srv_request_kind_name(SRV_REQ_CHAT), "chat");
    CHECK_EQ_STR(srv_request_kind_name((srv_request_kind)0), "unknown");
}

TEST(req_many_strings_share_the_arena)
{
    /* Enough messages and parts to need several arena blocks, plus one large content. */
    size_t cap = 200000, n = 0;
    char *b = malloc(cap);
    n += (size_t)sprintf(b + n, "{\"messages\":[");
    for (int i = 0; i < 500; i++)
        n += (size_t)sprintf(b + n,
                             "%s{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                             "\"m%d \"},{\"type\":\"text\",\"text\":\"part\"}]}",
                             i ? "," : "", i);
    n += (size_t)sprintf(b + n, ",{\"role\":\"assistant\",\"content\":\"");
    for (int i = 0; i < 10000; i++)
        b[n++] = 'z';
    n += (size_t)sprintf(b + n, "\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\"]}");
    srv_request_limits l = {.max_messages = 1000};
    srv_request r;
    char err[256], param[SRV_PARAM_MAX];
    int rc = parse_lim(H, b, n, &l, &r, err, param);
    free(b);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK_EQ_INT(r.n_messages, 501);
    CHECK_EQ_STR(r.messages[0].content, "m0 part");
    CHECK_EQ_STR(r.messages[499].content, "m499 part");
    CHECK_EQ_INT(strlen(r.messages[500].content), 10000);
    CHECK_EQ_STR(r.stop[3], "d");
    CHECK((uintptr_t)r.messages % _Alignof(core_chat_msg) == 0);
    for (size_t i = 0; i < 500; i++)
        CHECK_EQ_STR(r.messages[i].role, "user");
    CHECK_EQ_STR(r.messages[500].role, "assistant");
    srv_request_deinit(&r);
}
