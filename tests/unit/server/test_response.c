/* Tests for server/response.c: the exact OpenAI bodies (whole and streamed) built from a job's
 * output with a made-up vocabulary, SSE framing with awkward text, and error objects. Every body
 * is also checked to be valid JSON with cJSON. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/response.h"
#include "tests/test.h"

/* Vocabulary: 0 " Paris", 1 ".", 2 "\n", 3 half of "é" (0xC3), 4 the other half (0xA9),
 * 5 "<|im_end|>", 6 " Lyon". */
static int fake_piece(void *ud, int32_t id, char *buf, size_t cap)
{
    (void)ud;
    static const char *const v[] = {" Paris", ".", "\n", "\xc3", "\xa9", "<|im_end|>", " Lyon"};
    if (id < 0 || id > 6)
        return -22;
    size_t n = strlen(v[id]);
    memcpy(buf, v[id], n < cap ? n : cap);
    return (int)n;
}

static srv_resp resp(srv_request_kind kind, int logprobs)
{
    srv_resp r = {.kind = kind,
                  .id = kind == SRV_REQ_CHAT ? "chatcmpl-1" : "cmpl-1",
                  .created = 1700000000,
                  .model = "base",
                  .logprobs = logprobs,
                  .piece = fake_piece};
    return r;
}

static srv_job_token tok(int32_t id, float lp, size_t end, int32_t alt, float alt_lp)
{
    srv_job_token t = {.id = id, .logprob = lp, .n_top = 2, .text_end = end};
    t.top_ids[0] = id;
    t.top_logprobs[0] = lp;
    t.top_ids[1] = alt;
    t.top_logprobs[1] = alt_lp;
    return t;
}

static int valid_json(const char *s, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(s, n);
    cJSON_Delete(j);
    return j != NULL;
}

TEST(response_error_object)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp_error(&b, "temperature: must be in [0, 2], got 3", "invalid_request_error", NULL,
                   "temperature");
    CHECK_EQ_STR(b.data, "{\"error\":{\"message\":\"temperature: must be in [0, 2], got 3\","
                         "\"type\":\"invalid_request_error\",\"param\":\"temperature\","
                         "\"code\":null}}");
    srv_buf_reset(&b);
    srv_resp_error(&b, "say \"hi\"\n", "rate_limit_error", "queue_full", "");
    CHECK_EQ_STR(b.data, "{\"error\":{\"message\":\"say \\\"hi\\\"\\n\",\"type\":"
                         "\"rate_limit_error\",\"param\":null,\"code\":\"queue_full\"}}");
    srv_buf_deinit(&b);
}

TEST(response_completion_full)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, -1);
    srv_resp_usage u = {5, 2, 0};
    srv_resp_full(&b, &r, NULL, 0, " Paris.", 7, NULL, 0, "length", &u);
    CHECK_EQ_STR(b.data, "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                         "\"model\":\"base\",\"choices\":[{\"index\":0,\"text\":\" Paris.\","
                         "\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":"
                         "{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_"
                         "tokens_details\":{\"cached_tokens\":0}}}");
    /* Behind a router: the replica that answered, as system_fingerprint after "model". */
    srv_buf_reset(&b);
    r.fingerprint = "replica-2";
    srv_resp_full(&b, &r, NULL, 0, " Paris.", 7, NULL, 0, "length", &u);
    CHECK_MSG(strstr(b.data, "\"model\":\"base\",\"system_fingerprint\":\"replica-2\",") != NULL,
              "%s", b.data);
    srv_buf_reset(&b);
    srv_resp_chunk(&b, &r, true, "", 0, NULL, 0, 0, 0, NULL);
    CHECK_MSG(strstr(b.data, "\"system_fingerprint\":\"replica-2\"") != NULL, "%s", b.data);
    srv_buf_deinit(&b);
}

/* n choices: one element each, index 0 .. n - 1, each its own finish (and echo for
 * completions); usage as given (the prompt once); a chunk names its choice. */
TEST(response_n_choices)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, -1);
    srv_resp_usage u = {3, 3, 0};
    srv_resp_choice ch[2] = {{" Paris.", 7, NULL, 0, "stop"}, {" Lyon", 5, NULL, 0, "length"}};
    srv_resp_full_n(&b, &r, "Q:", 2, ch, 2, &u);
    CHECK_EQ_STR(b.data, "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                         "\"model\":\"base\",\"choices\":[{\"index\":0,\"text\":\"Q: Paris.\","
                         "\"logprobs\":null,\"finish_reason\":\"stop\"},{\"index\":1,\"text\":"
                         "\"Q: Lyon\",\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":"
                         "{\"prompt_tokens\":3,\"completion_tokens\":3,\"total_tokens\":6,\"prompt_"
                         "tokens_details\":{\"cached_tokens\":0}}}");
    CHECK(valid_json(b.data, b.len));
    srv_buf_reset(&b);
    r = resp(SRV_REQ_CHAT, -1);
    srv_resp_full_n(&b, &r, NULL, 0, ch, 2, &u);
    CHECK_MSG(strstr(b.data, "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
                             "\" Paris.\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":"
                             "\"stop\"},{\"index\":1,\"message\":{\"role\":\"assistant\","
                             "\"content\":\" Lyon\",") != NULL,
              "%s", b.data);
    CHECK(valid_json(b.data, b.len));
    srv_buf_reset(&b);
    r.index = 3;
    srv_resp_chunk(&b, &r, false, " Lyon", 5, NULL, 0, 0, 0, "length");
    CHECK_EQ_STR(b.data, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                         "\"created\":1700000000,\"model\":\"base\",\"choices\":[{\"index\":3,"
                         "\"delta\":{\"content\":\" Lyon\"},\"logprobs\":null,\"finish_reason\":"
                         "\"length\"}]}\n\n");
    srv_buf_deinit(&b);
}

TEST(response_completion_echo_logprobs)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, 1);
    /* " Paris" then ".", then the end token, whose text_end is the final length. */
    srv_job_token t[3] = {tok(0, -0.25f, 6, 6, -2.0f), tok(1, -0.5f, 7, 2, -1.5f),
                          tok(5, -0.125f, 7, 5, -0.125f)};
    t[2].n_top = 1;
    srv_resp_usage u = {3, 3, 2};
    srv_resp_full(&b, &r, "The capital is", 14, " Paris.", 7, t, 3, "stop", &u);
    CHECK_EQ_STR(b.data,
                 "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                 "\"model\":\"base\",\"choices\":[{\"index\":0,\"text\":\"The capital is Paris.\","
                 "\"logprobs\":{\"tokens\":[\" Paris\",\".\",\"<|im_end|>\"],"
                 "\"token_logprobs\":[-0.25,-0.5,-0.125],\"top_logprobs\":[{\" Paris\":-0.25,"
                 "\" Lyon\":-2},{\".\":-0.5,\"\\n\":-1.5},{\"<|im_end|>\":-0.125}],"
                 "\"text_offset\":[14,20,21]},\"finish_reason\":\"stop\"}],\"usage\":"
                 "{\"prompt_tokens\":3,\"completion_tokens\":3,\"total_tokens\":6,\"prompt_tokens_"
                 "details\":{\"cached_tokens\":2}}}");
    CHECK(valid_json(b.data, b.len));
    srv_buf_deinit(&b);
}

/* echo with the prompt's own logprobs: the prompt tokens first (the first with null), their
 * offsets within the echo, then the generated ones after it; the same in a stream's echo chunk. */
TEST(response_completion_prompt_logprobs)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, 1);
    /* prompt " Lyon" "." (6 bytes), then " Paris" */
    srv_job_token p[2] = {{.id = 6, .logprob = NAN, .text_end = 5}, tok(1, -3.0f, 6, 2, -0.5f)};
    srv_job_token t[1] = {tok(0, -0.25f, 6, 6, -2.0f)};
    r.prompt_toks = p;
    r.n_prompt_toks = 2;
    srv_resp_usage u = {2, 1, 0};
    srv_resp_full(&b, &r, " Lyon.", 6, " Paris", 6, t, 1, "length", &u);
    CHECK_EQ_STR(b.data, "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                         "\"model\":\"base\",\"choices\":[{\"index\":0,\"text\":\" Lyon. Paris\","
                         "\"logprobs\":{\"tokens\":[\" Lyon\",\".\",\" Paris\"],"
                         "\"token_logprobs\":[null,-3,-0.25],\"top_logprobs\":[null,{\".\":-3,"
                         "\"\\n\":-0.5},{\" Paris\":-0.25,\" Lyon\":-2}],"
                         "\"text_offset\":[0,5,6]},\"finish_reason\":\"length\"}],\"usage\":"
                         "{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3,\"prompt_"
                         "tokens_details\":{\"cached_tokens\":0}}}");
    CHECK(valid_json(b.data, b.len));
    srv_buf_reset(&b);
    srv_resp_chunk(&b, &r, false, " Lyon.", 6, NULL, 0, 0, 0, NULL);
    CHECK(
        strstr(b.data, "\"logprobs\":{\"tokens\":[\" Lyon\",\".\"],\"token_logprobs\":[null,-3]") !=
        NULL);
    CHECK(strstr(b.data, "\"text_offset\":[0,5]") != NULL);
    srv_buf_deinit(&b);
}

TEST(response_chat_full_logprobs_bytes)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_CHAT, 0);
    /* "é" split over two byte tokens: the first shows as bytes:, both give their bytes. */
    srv_job_token t[2] = {tok(3, -1.0f, 0, 0, 0), tok(4, -0.5f, 2, 0, 0)};
    t[0].n_top = t[1].n_top = 0;
    srv_resp_usage u = {4, 2, 0};
    srv_resp_full(&b, &r, "ignored", 7, "\xc3\xa9", 2, t, 2, "stop", &u);
    CHECK_EQ_STR(b.data,
                 "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,"
                 "\"model\":\"base\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                 "\"content\":\"\xc3\xa9\",\"refusal\":null},\"logprobs\":{\"content\":["
                 "{\"token\":\"bytes:\\\\xc3\",\"logprob\":-1,\"bytes\":[195],\"top_logprobs\":[]},"
                 "{\"token\":\"bytes:\\\\xa9\",\"logprob\":-0.5,\"bytes\":[169],"
                 "\"top_logprobs\":[]}],\"refusal\":null},\"finish_reason\":\"stop\"}],"
                 "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6,"
                 "\"prompt_tokens_details\":{\"cached_tokens\":0}}}");
    CHECK(valid_json(b.data, b.len));
    srv_buf_deinit(&b);
}

TEST(response_chat_stream_chunks)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_CHAT, -1);
    r.include_usage = true;
    srv_resp_chunk(&b, &r, true, "", 0, NULL, 0, 0, 0, NULL);
    srv_resp_chunk(&b, &r, false, "a\n\nb", 4, NULL, 0, 0, 0, NULL);
    srv_resp_chunk(&b, &r, false, "", 0, NULL, 0, 0, 0, "stop");
    srv_resp_usage u = {3, 2, 0};
    srv_resp_usage_chunk(&b, &r, &u);
    srv_resp_done(&b);
    const char *head = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                       "\"created\":1700000000,\"model\":\"base\",";
    char want[2048];
    snprintf(
        want, sizeof want,
        "data: %s\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        "data: %s\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\n\\nb\"},"
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        "data: %s\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
        "\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
        "data: %s\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,"
        "\"total_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"
        "data: [DONE]\n\n",
        head, head, head, head);
    CHECK_EQ_STR(b.data, want);
    srv_buf_deinit(&b);
}

/* Every event is one "data: " line followed by a blank line, whatever bytes the text holds, and
 * each payload is valid JSON. */
TEST(response_sse_framing)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, 1);
    const char text[] = "line\r\nnext\n\ndata: fake\n\n\x01\xe2\x80\xa8 end";
    srv_job_token t = tok(2, -0.5f, sizeof text - 1, 1, -1.0f);
    srv_resp_chunk(&b, &r, false, text, sizeof text - 1, &t, 1, 3, 1, NULL);
    srv_resp_error_event(&b, "engine\nfailed", "server_error", NULL);
    srv_resp_done(&b);
    int events = 0;
    for (char *p = b.data; *p;) {
        CHECK_MSG(!strncmp(p, "data: ", 6), "event %d does not start with data: (%.20s)", events,
                  p);
        char *end = strstr(p, "\n\n");
        CHECK(end != NULL);
        CHECK_MSG(memchr(p, '\n', (size_t)(end - p)) == NULL, "event %d has a raw newline", events);
        CHECK_MSG(memchr(p, '\r', (size_t)(end - p)) == NULL, "event %d has a raw CR", events);
        if (strncmp(p + 6, "[DONE]", 6) != 0)
            CHECK_MSG(valid_json(p + 6, (size_t)(end - p - 6)), "event %d: %.*s", events,
                      (int)(end - p), p);
        events++;
        p = end + 2;
    }
    CHECK_EQ_INT(events, 3);
    /* text_offset: after the 3-byte echo, the token starts at the previous token's end (1). */
    CHECK_MSG(strstr(b.data, "\"text_offset\":[4]") != NULL, "%s", b.data);
    CHECK_MSG(strstr(b.data, "\\u2028") != NULL, "%s", b.data);
    srv_buf_deinit(&b);
}

TEST(response_completion_stream_chunk)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp r = resp(SRV_REQ_COMPLETION, -1);
    srv_resp_chunk(&b, &r, false, " Paris", 6, NULL, 0, 0, 0, NULL);
    CHECK_EQ_STR(b.data, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":"
                         "1700000000,\"model\":\"base\",\"choices\":[{\"index\":0,\"text\":"
                         "\" Paris\",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    srv_buf_deinit(&b);
}

TEST(response_token_text)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_resp_token_text(&b, "ok", 2);
    srv_resp_token_text(&b, "|", 1);
    srv_resp_token_text(&b, "\xe2\x82", 2);
    CHECK_EQ_STR(b.data, "ok|bytes:\\xe2\\x82");
    srv_buf_deinit(&b);
}
