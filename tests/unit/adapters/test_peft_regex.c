/* target_modules regexes as PEFT means them: Python's re.fullmatch over module names, here
 * PCRE2 with full-match anchoring and match limits (adapters/peft_config.c, regex). The patterns
 * are the ones PEFT's documentation and real adapter configs use. */
#include <errno.h>
#include <string.h>

#include "adapters/peft_internal.h"
#include "tests/test.h"

/* 1 when adapter__peft_regex_fullmatch(pattern, name) gives want, else prints both sides. */
static int matches(const char *pattern, const char *name, int want)
{
    char err[256] = "";
    int got = adapter__peft_regex_fullmatch(pattern, name, err, sizeof err);
    if (got == want)
        return 1;
    printf("    '%s' on '%s': got %d (%s), want %d\n", pattern, name, got, err, want);
    return 0;
}

TEST(peft_regex_python_syntax)
{
    /* PEFT's docs (T5): "decoder" and the attention block anywhere, ending in q or v. */
    const char *t5 = ".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$";
    CHECK(matches(t5, "decoder.block.0.layer.0.SelfAttention.q", 1));
    CHECK(matches(t5, "decoder.block.3.layer.1.EncDecAttention.v", 1));
    CHECK(matches(t5, "encoder.block.0.layer.0.SelfAttention.q", 0));
    CHECK(matches(t5, "decoder.block.0.layer.0.SelfAttention.k", 0));
    /* \d, which POSIX ERE has not */
    const char *llama = "^model\\.layers\\.\\d+\\.self_attn\\.(q_proj|v_proj)$";
    CHECK(matches(llama, "model.layers.12.self_attn.q_proj", 1));
    CHECK(matches(llama, "model.layers.12.self_attn.v_proj", 1));
    CHECK(matches(llama, "model.layers.x.self_attn.q_proj", 0));
    CHECK(matches(llama, "model.layers.12.self_attn.k_proj", 0));
    /* a non-capturing group */
    CHECK(matches("(?:.*\\.)?(q|k)_proj", "model.layers.0.self_attn.k_proj", 1));
    CHECK(matches("(?:.*\\.)?(q|k)_proj", "k_proj", 1));
    CHECK(matches("(?:.*\\.)?(q|k)_proj", "model.layers.0.self_attn.v_proj", 0));
    /* a negative lookahead: every layer but layer 0 */
    const char *not0 = "model\\.layers\\.(?!0\\.).*\\.q_proj";
    CHECK(matches(not0, "model.layers.1.self_attn.q_proj", 1));
    CHECK(matches(not0, "model.layers.10.self_attn.q_proj", 1));
    CHECK(matches(not0, "model.layers.0.self_attn.q_proj", 0));
    /* inline flags */
    CHECK(matches("(?i).*Q_PROJ", "model.layers.0.self_attn.q_proj", 1));
}

TEST(peft_regex_full_match)
{
    /* re.fullmatch: a pattern that matches only part of the name selects nothing. */
    CHECK(matches("q_proj", "model.layers.0.self_attn.q_proj", 0));
    CHECK(matches("self_attn", "model.layers.0.self_attn.q_proj", 0));
    CHECK(matches(".*q", "model.layers.0.self_attn.q_proj", 0));
    CHECK(matches("q_proj", "q_proj", 1));
    /* an alternative that fits only a prefix is not enough, the other must be found */
    CHECK(matches("(a|ab)", "ab", 1));
    CHECK(matches(".*\\.q_proj|.*", "model.layers.0.self_attn.v_proj", 1));
}

TEST(peft_regex_errors_name_the_reason)
{
    char err[256] = "";
    CHECK_EQ_INT(adapter__peft_regex_fullmatch("(q|v_proj", "q", err, sizeof err), -EINVAL);
    CHECK_EQ_STR(err, "regex \"(q|v_proj\": missing closing parenthesis at offset 9");
    CHECK_EQ_INT(adapter__peft_regex_fullmatch("q_proj\\", "q", err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "\\ at end of pattern at offset 7"), "%s", err);
    /* Python's \Z is not PCRE2's; PCRE2 says so rather than matching something else */
    CHECK_EQ_INT(adapter__peft_regex_fullmatch("(?<=a+)b", "ab", err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "lookbehind"), "%s", err);
    char lng[300];
    memset(lng, 'a', sizeof lng - 1);
    lng[sizeof lng - 1] = 0;
    CHECK_EQ_INT(adapter__peft_regex_fullmatch(lng, "a", err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "longer than 256 bytes"), "%s", err);
}

TEST(peft_regex_backtracking_is_bounded)
{
    /* (a+)+$ against 'aaa...ab' backtracks 2^n ways; the match limit ends it with an error, not
     * a silent miss (a miss would load the adapter without that module). */
    char name[128];
    memset(name, 'a', sizeof name - 2);
    name[sizeof name - 2] = 'b';
    name[sizeof name - 1] = 0;
    char err[256] = "";
    CHECK_EQ_INT(adapter__peft_regex_fullmatch("(a+)+$", name, err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "limit exceeded") && strstr(err, "simplify the pattern"), "%s", err);
    /* the same pattern on a name it fits is fine */
    CHECK(matches("(a+)+$", "aaaa", 1));
}
