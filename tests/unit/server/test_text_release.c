/* Tests for server/text_release.c on the real SmolLM2 tokenizer: released text never holds a
 * stop string nor a prefix of one that may still complete, a stop string that spans tokens ends
 * the text exactly before it, a character split over byte tokens is held whole, and tokens are
 * handed over once their bytes are released, with their text_end. */
#include <stdlib.h>
#include <string.h>

#include "server/text_release.h"
#include "tests/shared_model.h"
#include "tests/test.h"

/* Feeds the tokens of text one by one, releasing what is ready after each; returns what was
 * released (malloc'd) and whether a stop string ended it; *n_done gets the tokens handed over. */
static char *run(srv_text *t, const core_tokenizer *tok, const char *text, bool *stopped,
                 int *n_done)
{
    int32_t ids[256];
    int n = test_tokenize(tok, text, false, ids, 256);
    char *out = calloc(1, 4096);
    size_t len = 0;
    *stopped = false;
    *n_done = 0;
    for (int i = 0; i < n && !*stopped; i++) {
        srv_job_token rec = {.id = ids[i]};
        int rc = srv_text_push(t, &rec);
        if (rc < 0)
            break;
        *stopped = rc == SRV_TEXT_STOP;
        size_t k = srv_text_ready(t, *stopped);
        memcpy(out + len, srv_text_held(t), k);
        len += k;
        srv_text_consume(t, k);
        int d = srv_text_tokens_done(t, len, *stopped);
        srv_text_drop_tokens(t, d);
        *n_done += d;
    }
    if (!*stopped) {
        *stopped = srv_text_end(t) == SRV_TEXT_STOP;
        size_t k = srv_text_ready(t, true);
        memcpy(out + len, srv_text_held(t), k);
        srv_text_consume(t, k);
        int d = srv_text_tokens_done(t, len + k, true);
        srv_text_drop_tokens(t, d);
        *n_done += d;
    }
    return out;
}

TEST(text_release_stops_and_holds_back)
{
    TEST_NEED_MODEL();
    core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    const char *stop[] = {"STOP", "\n\n"};
    size_t stop_len[] = {4, 2};
    srv_text t;
    CHECK_EQ_INT(srv_text_init(&t, tok, stop, stop_len, 2, srv_text_scratch_cap(tok)), 0);
    bool stopped;
    int done;
    char *out = run(&t, tok, "one two ST OP three STOP four", &stopped, &done);
    CHECK_EQ_STR(out, "one two ST OP three ");
    CHECK(stopped);
    free(out);
    /* A prefix of a stop string is held while it may complete: after "one ST" only "one " is
     * out; it is released once the text ends without completing it. */
    srv_text_reset(&t, tok, stop, stop_len, 2);
    int32_t ids[16];
    int n = test_tokenize(tok, "one ST", false, ids, 16);
    size_t got = 0;
    for (int i = 0; i < n; i++) {
        srv_job_token rec = {.id = ids[i]};
        CHECK_EQ_INT(srv_text_push(&t, &rec), SRV_TEXT_MORE);
        got = srv_text_ready(&t, false);
    }
    CHECK_EQ_INT(got, 4); /* "one " */
    CHECK_EQ_INT(srv_text_end(&t), SRV_TEXT_MORE);
    CHECK_EQ_INT(srv_text_ready(&t, true), 6);
    /* Without stop strings everything goes, and every token is handed over at the end. */
    srv_text_reset(&t, tok, NULL, NULL, 0);
    out = run(&t, tok, "Bonjour, ça va? 漢字 🙂", &stopped, &done);
    CHECK_EQ_STR(out, "Bonjour, ça va? 漢字 🙂");
    CHECK(!stopped);
    n = test_tokenize(tok, "Bonjour, ça va? 漢字 🙂", false, ids, 16);
    CHECK_EQ_INT(done, n);
    free(out);
    srv_text_deinit(&t);
}

TEST(text_release_holds_a_split_character_whole)
{
    TEST_NEED_MODEL();
    core_tokenizer *tok = test_shared_tokenizer();
    CHECK(tok);
    srv_text t;
    CHECK_EQ_INT(srv_text_init(&t, tok, NULL, NULL, 0, srv_text_scratch_cap(tok)), 0);
    /* 🙂 is four byte tokens: nothing is ready until the fourth, and the four tokens end at
     * the character's end. */
    int32_t ids[16];
    int n = test_tokenize(tok, "🙂", false, ids, 16);
    CHECK_MSG(n >= 2, "the emoji is %d token(s); pick a character that is split", n);
    for (int i = 0; i < n; i++) {
        srv_job_token rec = {.id = ids[i]};
        CHECK_EQ_INT(srv_text_push(&t, &rec), SRV_TEXT_MORE);
        size_t k = srv_text_ready(&t, false);
        CHECK_EQ_INT(k, i == n - 1 ? 4 : 0);
    }
    CHECK_EQ_INT(srv_text_tokens_done(&t, 4, false), n);
    for (int i = 0; i < n; i++)
        CHECK_EQ_INT(t.tok[i].text_end, 4);
    srv_text_deinit(&t);
}
