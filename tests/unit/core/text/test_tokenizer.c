/* Tests for core/text/tokenizer.c, core/text/unicode.c and core/text/chat_template.c: the real
 * SmolLM2 vocabulary (smoke vectors checked against Hugging Face tokenizers), a small synthetic
 * GGUF built in memory (gpt2 pre-tokenizer, longest special match, load errors), streaming decode
 * and chat-template rendering. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/text/tokenizer.h"
#include "core/text/unicode_internal.h"
#include "tests/test.h"

/* --- helpers ------------------------------------------------------------------------------ */

static core_tokenizer *load_model_tok(void)
{
    char err[256] = "";
    core_gguf *g = core_gguf_open(test_model_path(), err, sizeof err);
    if (!g) {
        printf("    gguf: %s\n", err);
        return NULL;
    }
    core_tokenizer *t = core_tokenizer_new(g, err, sizeof err);
    if (!t)
        printf("    tokenizer: %s\n", err);
    core_gguf_close(g);
    return t;
}

static void fmt_ids(char *out, size_t cap, const int32_t *ids, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%d", i ? " " : "", (int)ids[i]);
}

/* Tokenizes s and compares with want; reports both sides on a difference. */
static int ids_match(const core_tokenizer *t, const char *s, size_t len, bool special,
                     const int32_t *want, size_t n_want, const char *file, int line)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = core_tokenize(t, s, len, special, &ids, &n);
    int ok = rc == 0 && n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!ok) {
        char a[1024], b[1024];
        fmt_ids(a, sizeof a, ids, rc == 0 ? n : 0);
        fmt_ids(b, sizeof b, want, n_want);
        test_fail(file, line, "tokenize(\"%.*s\", special=%d) rc %d: [%s] != expected [%s]",
                  (int)len, s, special, rc, a, b);
    }
    free(ids);
    return ok;
}

#define CHECK_IDS(t, s, special, ...)                                                              \
    do {                                                                                           \
        static const int32_t want_[] = {__VA_ARGS__};                                              \
        if (!ids_match(t, s, strlen(s), special, want_, sizeof want_ / sizeof want_[0], __FILE__,  \
                       __LINE__))                                                                  \
            goto out;                                                                              \
    } while (0)

/* Concatenated bytes of ids (malloc'd, NUL-terminated). */
static char *decode_all(const core_tokenizer *t, const int32_t *ids, size_t n, bool show,
                        size_t *len)
{
    size_t cap = 16, k = 0;
    char *s = malloc(cap);
    for (size_t i = 0; s && i < n; i++) {
        int m = core_token_to_bytes(t, ids[i], show, NULL, 0);
        if (m < 0) {
            free(s);
            return NULL;
        }
        while (k + (size_t)m + 1 > cap)
            s = realloc(s, cap *= 2);
        core_token_to_bytes(t, ids[i], show, s + k, (size_t)m);
        k += (size_t)m;
    }
    if (s)
        s[k] = '\0';
    *len = k;
    return s;
}

/* decode(encode(s)) == s, with both the whole-token and the streaming decoder. */
static int roundtrip(const core_tokenizer *t, const char *s, size_t len, bool special,
                     const char *file, int line)
{
    int32_t *ids = NULL;
    size_t n = 0, dn = 0;
    if (core_tokenize(t, s, len, special, &ids, &n) < 0) {
        test_fail(file, line, "tokenize failed");
        return 0;
    }
    char *d = decode_all(t, ids, n, special, &dn);
    int ok = d && dn == len && memcmp(d, s, len) == 0;
    if (!ok)
        test_fail(file, line, "round trip (special=%d): \"%.*s\" -> \"%s\"", special, (int)len, s,
                  d ? d : "(null)");
    free(d);
    /* the streaming decoder gives the same text when s is valid UTF-8 */
    size_t cap = 4 * len + 64, k = 0;
    char *st = malloc(cap);
    core_detok dt;
    core_detok_init(&dt, t, special);
    for (size_t i = 0; ok && i < n; i++) {
        int r = core_detok_push(&dt, ids[i], st + k, cap - k);
        ok = r >= 0;
        k += r >= 0 ? (size_t)r : 0;
    }
    int r = ok ? core_detok_flush(&dt, st + k, cap - k) : -1;
    k += r > 0 ? (size_t)r : 0;
    bool valid = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int l = core_utf8_check((const uint8_t *)s + i, len - i, &cp);
        if (l <= 0) {
            valid = false;
            break;
        }
        i += (size_t)l;
    }
    if (ok && valid && (k != len || memcmp(st, s, len) != 0)) {
        test_fail(file, line, "streaming decode: \"%.*s\" -> \"%.*s\"", (int)len, s, (int)k, st);
        ok = 0;
    }
    free(st);
    free(ids);
    return ok;
}

#define CHECK_RT(t, s, len, special)                                                               \
    do {                                                                                           \
        if (!roundtrip(t, s, len, special, __FILE__, __LINE__))                                    \
            goto out;                                                                              \
    } while (0)

/* --- the real SmolLM2 vocabulary ----------------------------------------------------------- */

/* docs/FORMATS.md §4.4's vectors; each one re-derived with HF tokenizers (Digits + ByteLevel, the
 * GGUF's vocab and merges) and identical. */
TEST(tok_smoke_vectors)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    CHECK_IDS(t, "The capital of France is", false, 504, 3575, 282, 4649, 314);
    CHECK_IDS(t, "Hello, we can use", false, 19556, 28, 392, 416, 722);
    CHECK_IDS(t, "\n", false, 198);
    CHECK_IDS(t, "Hello world! 123", false, 19556, 905, 17, 216, 33, 34, 35);
    CHECK_IDS(t, "  multiple   spaces", false, 216, 2701, 256, 5600);
    CHECK_IDS(t, "Café déjà vu.", false, 51, 1939, 2756, 32564, 90, 16739, 386, 101, 30);
    CHECK_IDS(t, "You are a helpful AI assistant named SmolLM, trained by Hugging Face", true, 2683,
              359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182);
    /* more HF-derived vectors: contractions (lowercase only), whitespace runs, CJK, emoji */
    CHECK_IDS(t, "I'm sure they'RE fine, isn't it?", false, 57, 5248, 2090, 502, 23, 3256, 4979, 28,
              3247, 982, 357, 47);
    CHECK_IDS(t, "x \n y\n\n\tz  ", false, 104, 3717, 329, 1116, 197, 106, 256);
    CHECK_IDS(t, "日本語のテキスト 😀👍🏽", false, 23274, 115, 40993, 179, 120, 248,
              26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 40303, 218, 10813, 235, 231,
              10813, 233, 138);
    CHECK_IDS(t, "", true, );
out:
    core_tokenizer_free(t);
}

TEST(tok_metadata)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    CHECK_EQ_INT(core_tokenizer_n_vocab(t), 49152);
    CHECK_EQ_INT(core_tokenizer_bos(t), 1);
    CHECK_EQ_INT(core_tokenizer_eos(t), 2);
    CHECK(!core_tokenizer_add_bos(t));
    CHECK(core_tokenizer_is_eog(t, 2));
    CHECK(core_tokenizer_is_eog(t, 0)); /* <|endoftext|> */
    CHECK(!core_tokenizer_is_eog(t, 1));
    CHECK(!core_tokenizer_is_eog(t, 198));
    CHECK_EQ_STR(core_tokenizer_token_str(t, 2), "<|im_end|>");
    CHECK_EQ_STR(core_tokenizer_token_str(t, 198), "Ċ");
    CHECK(core_tokenizer_token_str(t, -1) == NULL);
    CHECK(core_tokenizer_token_str(t, 49152) == NULL);
    CHECK_EQ_INT(core_tokenizer_token_type(t, 2), CORE_TOKEN_CONTROL);
    CHECK_EQ_INT(core_tokenizer_token_type(t, 198), CORE_TOKEN_NORMAL);
    CHECK_EQ_INT(core_tokenizer_token_type(t, 49152), -EINVAL);
    core_tokenizer_free(t);
}

TEST(tok_special_tokens)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    CHECK_IDS(t, "<|im_start|>user\nHi<|im_end|>\n", true, 1, 4093, 198, 26843, 2, 198);
    CHECK_IDS(t, "<|im_start|>user\nHi<|im_end|>\n", false, 44, 108, 306, 79, 3738, 108, 46, 4093,
              198, 26843, 44, 108, 306, 79, 486, 108, 46, 198);
    CHECK_IDS(t, "a<|im_end|>b<reponame>c<|endoftext|>", true, 81, 2, 82, 4, 83, 0);
    CHECK_IDS(t, "<|im_start<|im_end|>|>", true, 44, 108, 306, 79, 3738, 2, 108, 46);
    const char *s = "x<|im_end|><file_sep><|endoftext|>y";
    CHECK_RT(t, s, strlen(s), false);
    CHECK_RT(t, s, strlen(s), true); /* shown specials decode to their text */
out:
    core_tokenizer_free(t);
}

TEST(tok_roundtrip)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    static const char *const cases[] = {
        "Hello, world!",
        "  leading and trailing  ",
        "\t\ttabs\n\nand\r\nnewlines\n",
        "numbers 1234567890 ١٢٣ ½ Ⅻ ①",
        "中文字符和日本語のテキスト、한국어 텍스트",
        "emoji 😀👍🏽👨‍👩‍👧🇫🇷 and ZWJ",
        "mixed: naïve café Ωmega жизнь עברית العربية हिन्दी",
        "contractions: I'll we've you're he's she'd it'd they'RE",
        "code: int main(void) { return 0; } // <tag> &amp;",
        "\xc3\x28 invalid \x80\xbf lone continuation \xe2\x82 truncated \xed\xa0\x80 surrogate",
        "overlong \xe0\x80\xaf and 4-byte \xf0\x9f\x98 cut",
        "\x01\x02\x03 controls \x1b[0m \x7f",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_RT(t, cases[i], strlen(cases[i]), false);
        CHECK_RT(t, cases[i], strlen(cases[i]), true);
    }
    /* every byte that has a byte-level token survives on its own and between letters */
    for (int b = 1; b < 256; b++) {
        char one[2] = {(char)b, 0}, three[4] = {'a', (char)b, 'b', 0};
        int32_t *ids;
        size_t n;
        CHECK(core_tokenize(t, one, 1, false, &ids, &n) == 0);
        free(ids);
        if (n == 0)
            continue; /* one of the 21 bytes the vocabulary lacks */
        CHECK_RT(t, one, 1, false);
        CHECK_RT(t, three, 3, false);
    }
out:
    core_tokenizer_free(t);
}

/* SmolLM2's vocabulary lacks 21 byte-level tokens (0x04, 0xC0, 0xF5..0xFF, ...). Like HF, such
 * a byte is dropped before merging, so its neighbours can merge. */
TEST(tok_missing_bytes_dropped)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    CHECK_IDS(t, "!\x04!", false, 10095); /* "!!" */
    CHECK_IDS(t, "!!", false, 10095);
    CHECK_IDS(t,
              "a\x04"
              "b",
              false, 81, 82);
    int32_t *ids;
    size_t n;
    CHECK(core_tokenize(t, "\x04\xff\xc0", 3, false, &ids, &n) == 0);
    free(ids);
    CHECK_EQ_INT(n, 0);
out:
    core_tokenizer_free(t);
}

TEST(tok_token_to_bytes)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    char buf[32];
    CHECK_EQ_INT(core_token_to_bytes(t, 198, false, buf, sizeof buf), 1);
    CHECK(buf[0] == '\n');
    CHECK_EQ_INT(core_token_to_bytes(t, 2, false, buf, sizeof buf), 0);
    CHECK_EQ_INT(core_token_to_bytes(t, 2, true, buf, sizeof buf), 10);
    CHECK(memcmp(buf, "<|im_end|>", 10) == 0);
    CHECK_EQ_INT(core_token_to_bytes(t, 2, true, buf, 3), 10); /* full length, 3 written */
    CHECK_EQ_INT(core_token_to_bytes(t, 905, false, buf, sizeof buf), 6);
    CHECK(memcmp(buf, " world", 6) == 0);
    CHECK_EQ_INT(core_token_to_bytes(t, -1, false, buf, sizeof buf), -EINVAL);
    CHECK_EQ_INT(core_token_to_bytes(t, 49152, false, buf, sizeof buf), -EINVAL);
    core_tokenizer_free(t);
}

TEST(tok_detok_streaming)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    char out[64];
    core_detok d;
    /* "😀" is [10813, 242, 218]: F0 9F | 98 | 80, complete only after the third */
    core_detok_init(&d, t, false);
    CHECK_EQ_INT(core_detok_push(&d, 10813, out, sizeof out), 0);
    CHECK_EQ_STR(out, "");
    CHECK_EQ_INT(core_detok_push(&d, 242, out, sizeof out), 0);
    CHECK_EQ_INT(core_detok_push(&d, 218, out, sizeof out), 4);
    CHECK_EQ_STR(out, "😀");
    CHECK_EQ_INT(core_detok_flush(&d, out, sizeof out), 0);

    /* no room: an error, and the decoder state is unchanged */
    CHECK_EQ_INT(core_detok_push(&d, 10813, out, sizeof out), 0);
    CHECK_EQ_INT(core_detok_push(&d, 242, out, sizeof out), 0);
    CHECK_EQ_INT(core_detok_push(&d, 218, out, 4), -ENOSPC); /* 4 bytes + NUL */
    CHECK_EQ_INT(core_detok_push(&d, 218, out, 5), 4);
    CHECK_EQ_STR(out, "😀");

    /* a lead byte then ASCII: U+FFFD for the cut sequence, then the ASCII */
    CHECK_EQ_INT(core_detok_push(&d, 10813, out, sizeof out), 0);
    CHECK_EQ_INT(core_detok_push(&d, 104, out, sizeof out), 4); /* "x" */
    CHECK_EQ_STR(out, "\xEF\xBF\xBDx");
    /* a lone continuation byte (0x80 is token 218) */
    CHECK_EQ_INT(core_detok_push(&d, 218, out, sizeof out), 3);
    CHECK_EQ_STR(out, "\xEF\xBF\xBD");
    /* held bytes at the end of the stream */
    CHECK_EQ_INT(core_detok_push(&d, 10813, out, sizeof out), 0);
    CHECK_EQ_INT(core_detok_flush(&d, out, 3), -ENOSPC);
    CHECK_EQ_INT(core_detok_flush(&d, out, sizeof out), 3);
    CHECK_EQ_STR(out, "\xEF\xBF\xBD");
    CHECK_EQ_INT(core_detok_flush(&d, out, sizeof out), 0);

    /* control tokens: hidden, or their text with show_special; held bytes wait past hidden */
    CHECK_EQ_INT(core_detok_push(&d, 2, out, sizeof out), 0);
    core_detok_init(&d, t, true);
    CHECK_EQ_INT(core_detok_push(&d, 2, out, sizeof out), 10);
    CHECK_EQ_STR(out, "<|im_end|>");
    CHECK_EQ_INT(core_detok_push(&d, -1, out, sizeof out), -EINVAL);
    core_tokenizer_free(t);
}

/* --- the pre-tokenizer --------------------------------------------------------------------- */

/* Splits s and compares with the pieces in want ("|"-separated). */
static int pieces_match(const char *s, enum core__pretok pre, const char *want, const char *file,
                        int line)
{
    char got[512];
    size_t k = 0, len = strlen(s), pos = 0;
    while (pos < len && k + 2 < sizeof got) {
        size_t end = core__pretok_next(s, len, pos, pre);
        if (end <= pos || end > len) {
            test_fail(file, line, "pretok(\"%s\"): piece [%zu, %zu)", s, pos, end);
            return 0;
        }
        if (pos)
            got[k++] = '|';
        for (size_t i = pos; i < end && k + 2 < sizeof got; i++)
            got[k++] = s[i];
        pos = end;
    }
    got[k] = '\0';
    if (strcmp(got, want) != 0) {
        test_fail(file, line, "pretok(\"%s\", %s): \"%s\" != expected \"%s\"", s,
                  pre == CORE__PRETOK_SMOLLM ? "smollm" : "gpt2", got, want);
        return 0;
    }
    return 1;
}

#define CHECK_PIECES(s, pre, want) CHECK(pieces_match(s, pre, want, __FILE__, __LINE__))

TEST(tok_pretokenizer)
{
    const enum core__pretok S = CORE__PRETOK_SMOLLM, G = CORE__PRETOK_GPT2;
    CHECK_PIECES("Hello world! 123", S, "Hello| world|!| |1|2|3");
    CHECK_PIECES("Hello world! 123", G, "Hello| world|!| 123");
    CHECK_PIECES("  multiple   spaces", S, " | multiple|  | spaces");
    CHECK_PIECES("a\n\nb", S, "a|\n|\n|b");
    CHECK_PIECES("a \n b", S, "a| \n| b");
    CHECK_PIECES("a  \n", S, "a|  \n");
    CHECK_PIECES("x\t y", G, "x|\t| y");
    CHECK_PIECES("I'm they'RE it's 'll", S, "I|'m| they|'|RE| it|'s| '|ll");
    CHECK_PIECES("'", S, "'");
    CHECK_PIECES("a1b", S, "a|1|b");
    CHECK_PIECES("a 1", S, "a| |1");
    CHECK_PIECES("a 12", G, "a| 12");
    CHECK_PIECES("x ..!? y", S, "x| ..!?| y");
    CHECK_PIECES("日本語 テキスト", S, "日本語| テキスト");
    CHECK_PIECES("a\xc2\xa0\xc2\xa0z", S, "a|\xc2\xa0|\xc2\xa0|z"); /* NBSP is no ' ?' */
    CHECK_PIECES("abc\xff\xfe!x", S, "abc|\xff\xfe!|x");
    CHECK_PIECES("\xe2\x82", S, "\xe2\x82");
    CHECK_PIECES("٣x", S, "٣|x"); /* U+0663 ARABIC-INDIC DIGIT THREE */
    CHECK_PIECES("x٣٤", G, "x|٣٤");
}

/* Collects the pieces of core__pretok_split as "a|b|c". */
typedef struct split_buf {
    const char *s;
    char got[512];
    size_t k;
} split_buf;

static int collect_piece(void *ctx, size_t start, size_t end)
{
    split_buf *b = ctx;
    if (b->k && b->k + 1 < sizeof b->got)
        b->got[b->k++] = '|';
    for (size_t i = start; i < end && b->k + 1 < sizeof b->got; i++)
        b->got[b->k++] = b->s[i];
    b->got[b->k] = '\0';
    return 0;
}

#define CHECK_SPLIT(str, pre, want)                                                                \
    do {                                                                                           \
        split_buf sb_ = {.s = (str)};                                                              \
        CHECK_EQ_INT(core__pretok_split(str, strlen(str), pre, collect_piece, &sb_), 0);           \
        CHECK_EQ_STR(sb_.got, want);                                                               \
    } while (0)

/* The other pre-tokenizers (llama.cpp's suite checks them on real vocabularies too). */
TEST(tok_pretokenizer_families)
{
    CHECK_SPLIT("Hello\n\n  world  12345 it's IT'S \t\tx", CORE__PRETOK_LLAMA3,
                "Hello|\n\n| | world| | |123|45| it|'s| IT|'S| \t|\tx");
    CHECK_SPLIT("a 12345!!\n\nb", CORE__PRETOK_QWEN2, "a| |1|2|3|4|5|!!\n\n|b");
    CHECK_SPLIT("re\xcc\x81sume\xcc\x81 ok", CORE__PRETOK_QWEN2, "re|\xcc\x81sume|\xcc\x81| ok");
    CHECK_SPLIT("re\xcc\x81sume\xcc\x81 ok", CORE__PRETOK_QWEN35, "re\xcc\x81sume\xcc\x81| ok");
    CHECK_SPLIT("a+b=1234;", CORE__PRETOK_FALCON, "a|+|b|=|123|4|;");
    CHECK_SPLIT("Hi, \xe4\xb8\x96\xe7\x95\x8c"
                "42\n",
                CORE__PRETOK_DEEPSEEK_CODER, "Hi|,| |\xe4\xb8\x96\xe7\x95\x8c|4|2|\n");
    CHECK_SPLIT("Hello \xe4\xb8\x96\xe7\x95\x8c  ", CORE__PRETOK_DEEPSEEK_LLM,
                "Hello| |\xe4\xb8\x96\xe7\x95\x8c|  ");
    CHECK_SPLIT("a b\n\nc", CORE__PRETOK_NEWLINES, "a b|\n\n|c");
    CHECK_SPLIT("Hello world! 123", CORE__PRETOK_SMOLLM, "Hello| world|!| |1|2|3");
}

TEST(tok_unicode_classes)
{
    CHECK_EQ_INT(core__unicode_class('a'), CORE__UCAT_LETTER);
    CHECK_EQ_INT(core__unicode_class('7'), CORE__UCAT_NUMBER);
    CHECK_EQ_INT(core__unicode_class(' '), CORE__UCAT_SPACE);
    CHECK_EQ_INT(core__unicode_class('!'), CORE__UCAT_OTHER);
    CHECK_EQ_INT(core__unicode_class(0x00A0), CORE__UCAT_SPACE);
    CHECK_EQ_INT(core__unicode_class(0x3000), CORE__UCAT_SPACE);
    CHECK_EQ_INT(core__unicode_class(0x200B), CORE__UCAT_OTHER);  /* ZWSP is not White_Space */
    CHECK_EQ_INT(core__unicode_class(0x4E2D), CORE__UCAT_LETTER); /* CJK range */
    CHECK_EQ_INT(core__unicode_class(0xAC00), CORE__UCAT_LETTER); /* Hangul range */
    CHECK_EQ_INT(core__unicode_class(0x2160), CORE__UCAT_NUMBER); /* Nl */
    CHECK_EQ_INT(core__unicode_class(0x00BD), CORE__UCAT_NUMBER); /* No */
    CHECK_EQ_INT(core__unicode_class(0x0301), CORE__UCAT_OTHER);  /* Mn */
    CHECK_EQ_INT(core__unicode_class(0x1F600), CORE__UCAT_OTHER);
    CHECK_EQ_INT(core__unicode_class(0x14279), CORE__UCAT_LETTER); /* Unicode 16.0 */
    CHECK_EQ_INT(core__unicode_class(0x110000), CORE__UCAT_OTHER);
    uint32_t cp = 0;
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xf0\x9f\x98\x80", 4, &cp), 4);
    CHECK_EQ_INT(cp, 0x1F600);
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xf0\x9f", 2, &cp), 0);
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xf0\x9f\x41", 3, &cp), -2);
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xed\xa0\x80", 3, &cp), -1);
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xc0\x80", 2, &cp), -1);
    CHECK_EQ_INT(core_utf8_check((const uint8_t *)"\xf4\x90\x80\x80", 4, &cp), -1);
}

/* --- a synthetic vocabulary in an in-memory GGUF ------------------------------------------- */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void gb_put(gbuf *b, const void *d, size_t n)
{
    while (b->n + n > b->cap) {
        b->cap = b->cap ? b->cap * 2 : 4096;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void gb_u32(gbuf *b, uint32_t v)
{
    gb_put(b, &v, 4);
}

static void gb_str(gbuf *b, const char *s)
{
    uint64_t l = strlen(s);
    gb_put(b, &l, 8);
    gb_put(b, s, l);
}

static void kv_head(gbuf *b, const char *key, uint32_t type)
{
    gb_str(b, key);
    gb_u32(b, type);
    b->n_kv++;
}

static void kv_string(gbuf *b, const char *key, const char *v)
{
    kv_head(b, key, CORE_GGUF_STRING);
    gb_str(b, v);
}

static void kv_strs(gbuf *b, const char *key, const char *const *v, size_t n)
{
    uint64_t n64 = n;
    kv_head(b, key, CORE_GGUF_ARRAY);
    gb_u32(b, CORE_GGUF_STRING);
    gb_put(b, &n64, 8);
    for (size_t i = 0; i < n; i++)
        gb_str(b, v[i]);
}

/* A GGUF image (malloc'd) of header + the key/values in b; frees b. */
static uint8_t *gb_finish(gbuf *b, size_t *len)
{
    gbuf h = {0};
    uint32_t version = 3;
    uint64_t n_tensors = 0;
    gb_put(&h, "GGUF", 4);
    gb_put(&h, &version, 4);
    gb_put(&h, &n_tensors, 8);
    gb_put(&h, &b->n_kv, 8);
    gb_put(&h, b->p, b->n);
    free(b->p);
    *len = h.n;
    return h.p;
}

/* GPT-2 bytes_to_unicode, written independently of the tokenizer's. */
static void byte_symbol(int b, char out[3])
{
    int cp = b, k = 0;
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    if (!printable) {
        for (int x = 0; x < b; x++)
            k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

enum { SYN_SPECIAL = 256, SYN_SPECIAL_LONG, SYN_AB, SYN_ABC, SYN_GA, SYN_12, SYN_EOT, SYN_N };

typedef struct synth_opts {
    const char *model, *pre, *bad_merge, *tmpl;
    size_t n_types; /* 0: one per token */
    bool no_bos;
} synth_opts;

/* Token i < 256 is byte i's symbol; then "<x>" (CONTROL), "<x>y" (USER_DEFINED), "ab", "abc",
 * "Ġa", "12", "<|endoftext|>" (CONTROL). Merges "a b", "ab c", "Ġ a", "1 2". bos is stored as
 * a uint8 (5), eos is absent, add_bos is true. */
static core_tokenizer *synth_tok(const synth_opts *o, char *err, size_t errlen)
{
    static char bytes[256][3];
    const char *toks[SYN_N];
    int32_t types[SYN_N];
    for (int b = 0; b < 256; b++) {
        byte_symbol(b, bytes[b]);
        toks[b] = bytes[b];
        types[b] = CORE_TOKEN_NORMAL;
    }
    const char *extra[] = {"<x>", "<x>y", "ab", "abc", "Ġa", "12", "<|endoftext|>"};
    const int32_t etypes[] = {CORE_TOKEN_CONTROL, CORE_TOKEN_USER_DEFINED, 1, 1, 1, 1,
                              CORE_TOKEN_CONTROL};
    for (int i = 0; i < SYN_N - 256; i++) {
        toks[256 + i] = extra[i];
        types[256 + i] = etypes[i];
    }
    const char *merges[] = {"a b", "ab c", "Ġ a", "1 2", o->bad_merge};
    gbuf b = {0};
    kv_string(&b, "tokenizer.ggml.model", o->model ? o->model : "gpt2");
    kv_string(&b, "tokenizer.ggml.pre", o->pre ? o->pre : "gpt2");
    kv_strs(&b, "tokenizer.ggml.tokens", toks, SYN_N);
    size_t nt = o->n_types ? o->n_types : SYN_N;
    uint64_t nt64 = nt;
    kv_head(&b, "tokenizer.ggml.token_type", CORE_GGUF_ARRAY);
    gb_u32(&b, CORE_GGUF_INT32);
    gb_put(&b, &nt64, 8);
    gb_put(&b, types, nt * 4);
    kv_strs(&b, "tokenizer.ggml.merges", merges, o->bad_merge ? 5 : 4);
    if (!o->no_bos) {
        uint8_t bos = 5;
        kv_head(&b, "tokenizer.ggml.bos_token_id", CORE_GGUF_UINT8);
        gb_put(&b, &bos, 1);
    }
    kv_head(&b, "tokenizer.ggml.add_bos_token", CORE_GGUF_BOOL);
    gb_put(&b, "\x01", 1);
    if (o->tmpl)
        kv_string(&b, "tokenizer.chat_template", o->tmpl);
    size_t len;
    uint8_t *img = gb_finish(&b, &len);
    core_gguf *g = core_gguf_open_memory(img, len, err, errlen);
    core_tokenizer *t = g ? core_tokenizer_new(g, err, errlen) : NULL;
    core_gguf_close(g);
    free(img);
    return t;
}

TEST(tok_synthetic_vocab)
{
    char err[256] = "";
    synth_opts o = {0};
    core_tokenizer *t = synth_tok(&o, err, sizeof err), *s = NULL;
    CHECK_MSG(t, "synthetic tokenizer: %s", err);
    CHECK_EQ_INT(core_tokenizer_n_vocab(t), SYN_N);
    CHECK_EQ_INT(core_tokenizer_bos(t), 5);
    CHECK_EQ_INT(core_tokenizer_eos(t), -1);
    CHECK(core_tokenizer_add_bos(t));
    CHECK(core_tokenizer_is_eog(t, SYN_EOT));
    CHECK(!core_tokenizer_is_eog(t, SYN_SPECIAL));
    /* gpt2: digits stay together, " 123" is one piece and "1 2" merges */
    CHECK_IDS(t, " 123", false, ' ', SYN_12, '3');
    /* "a b" (rank 0) beats "Ġ a" (rank 2); then "ab c" */
    CHECK_IDS(t, "abc ab a", false, SYN_ABC, ' ', SYN_AB, SYN_GA);
    /* the longest special wins; USER_DEFINED counts with parse_special */
    CHECK_IDS(t, "<x>y<x>z", true, SYN_SPECIAL_LONG, SYN_SPECIAL, 'z');
    CHECK_IDS(t, "<x>", false, '<', 'x', '>');
    char msg[16];
    CHECK_EQ_INT(core_token_to_bytes(t, SYN_SPECIAL_LONG, false, msg, sizeof msg), 4);
    /* smollm: every digit alone */
    o.pre = "smollm";
    s = synth_tok(&o, err, sizeof err);
    CHECK_MSG(s, "synthetic tokenizer: %s", err);
    CHECK_IDS(s, " 123", false, ' ', '1', '2', '3');
    /* no template */
    char *out = NULL;
    core_chat_msg m = {"user", "hi"};
    CHECK_EQ_INT(core_chat_render(t, &m, 1, true, &out, err, sizeof err), -ENOTSUP);
    CHECK(strstr(err, "no tokenizer.chat_template"));
out:
    core_tokenizer_free(t);
    core_tokenizer_free(s);
}

TEST(tok_load_errors)
{
    char err[256];
    struct {
        synth_opts o;
        const char *want;
    } cases[] = {
        {{.model = "bert"}, "tokenizer.ggml.model \"bert\" is not supported"},
        {{.model = "llama"}, "tokenizer.ggml.scores is absent"},
        {{.pre = "chatglm-bpe"}, "tokenizer.ggml.pre \"chatglm-bpe\" is not supported"},
        {{.bad_merge = "a zz"}, "tokenizer.ggml.merges[4] \"a zz\" names a token"},
        {{.bad_merge = "abc"}, "tokenizer.ggml.merges[4] \"abc\" is not \"LEFT RIGHT\""},
        {{.n_types = 10}, "tokenizer.ggml.token_type"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        core_tokenizer *t = synth_tok(&cases[i].o, err, sizeof err);
        core_tokenizer_free(t);
        CHECK_MSG(!t && strstr(err, cases[i].want), "case %zu: got \"%s\", want \"%s\"", i, err,
                  cases[i].want);
    }
}

/* --- chat templates ------------------------------------------------------------------------ */

static const char smollm2_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

#define SMOL_SYS                                                                                   \
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "         \
    "Face<|im_end|>\n"

static int render_is(const char *tmpl, const core_chat_msg *m, size_t n, bool gen, const char *want,
                     const char *file, int line)
{
    char err[256] = "", *out = NULL;
    int rc = core_chat_render_template(tmpl, m, n, gen, &out, err, sizeof err);
    int ok = rc == 0 && !strcmp(out, want);
    if (!ok)
        test_fail(file, line, "render rc %d (%s): \"%s\" != \"%s\"", rc, err, out ? out : "", want);
    free(out);
    return ok;
}

#define CHECK_RENDER(tmpl, m, n, gen, want)                                                        \
    CHECK(render_is(tmpl, m, n, gen, want, __FILE__, __LINE__))

static int render_fails(const char *tmpl, int want_rc, const char *want_err, const char *file,
                        int line)
{
    char err[256] = "", *out = NULL;
    core_chat_msg m = {"user", "hi"};
    int rc = core_chat_render_template(tmpl, &m, 1, true, &out, err, sizeof err);
    int ok = rc == want_rc && strstr(err, want_err) != NULL;
    if (!ok)
        test_fail(file, line, "render rc %d \"%s\", want %d \"%s\"", rc, err, want_rc, want_err);
    if (rc == 0)
        free(out);
    return ok;
}

#define CHECK_RENDER_FAILS(tmpl, rc, msg) CHECK(render_fails(tmpl, rc, msg, __FILE__, __LINE__))

TEST(tok_chat_real_template)
{
    TEST_NEED_MODEL();
    core_tokenizer *t = load_model_tok();
    CHECK(t);
    const core_chat_msg conv[] = {
        {"user", "Hi"}, {"assistant", "Hello! How can I help?"}, {"user", "What is 2+2?"}};
    char err[256] = "", *out = NULL;
    CHECK_EQ_INT(core_chat_render(t, conv, 3, true, &out, err, sizeof err), 0);
    CHECK_EQ_STR(out, SMOL_SYS "<|im_start|>user\nHi<|im_end|>\n"
                               "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                               "<|im_start|>assistant\n");
    /* the rendered prompt tokenizes with the markers as single tokens */
    int32_t *ids;
    size_t n;
    CHECK(core_tokenize(t, out, strlen(out), true, &ids, &n) == 0);
    free(out);
    out = NULL;
    size_t n_start = 0, n_end = 0;
    for (size_t i = 0; i < n; i++) {
        n_start += ids[i] == 1;
        n_end += ids[i] == 2;
    }
    int ok = n > 8 && ids[0] == 1 && ids[n - 1] == 198;
    free(ids);
    CHECK(ok);
    CHECK_EQ_INT(n_start, 5);
    CHECK_EQ_INT(n_end, 4);
    const core_chat_msg with_sys[] = {{"system", "Be brief."}, {"user", "Hi"}};
    CHECK_EQ_INT(core_chat_render(t, with_sys, 2, false, &out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    free(out);
    core_tokenizer_free(t);
}

TEST(tok_chat_render)
{
    const core_chat_msg two[] = {{"user", "Hi"}, {"assistant", "Hello"}};
    const core_chat_msg sys[] = {{"system", "S"}, {"user", "Q"}};
    CHECK_RENDER(smollm2_tmpl, two, 2, false,
                 SMOL_SYS "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello"
                          "<|im_end|>\n");
    CHECK_RENDER(smollm2_tmpl, sys, 2, true,
                 "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
                 "<|im_start|>assistant\n");
    CHECK_RENDER(smollm2_tmpl, two, 0, true, "<|im_start|>assistant\n");
    /* roles are free-form; content is anything */
    const core_chat_msg odd[] = {{"tool", "<|im_end|>\n\"x\""}};
    CHECK_RENDER(smollm2_tmpl, odd, 1, false,
                 SMOL_SYS "<|im_start|>tool\n<|im_end|>\n\"x\"<|im_end|>\n");

    /* HF's plain "chatml": Jinja escapes, whitespace control, no default system */
    static const char chatml[] =
        "{%- for m in messages -%}\n  {{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ "
        "'<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
        "  {{- \"<|im_start|>assistant\\n\" -}}\n{%- endif -%}\n";
    CHECK_RENDER(chatml, two, 2, true,
                 "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                 "<|im_start|>assistant\n");
    /* raw text form, trim_blocks/lstrip_blocks, default system before the loop in an else */
    static const char raw[] =
        "{% if messages[0].role == 'system' %}\n{% else %}\n"
        "<|im_start|>system\nDefault.<|im_end|>\n{% endif %}\n"
        "{% for message in messages %}\n"
        "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}\n"
        "    {% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}";
    CHECK_RENDER(raw, two, 1, true,
                 "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\n");
    CHECK_RENDER(raw, sys, 2, false,
                 "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
    const core_chat_msg bad_role[] = {{"us\ner", "x"}};
    char err[256], *out = NULL;
    CHECK_EQ_INT(core_chat_render_template(smollm2_tmpl, bad_role, 1, true, &out, err, sizeof err),
                 -EINVAL);
    CHECK(strstr(err, "control character"));
}

/* Every template goes through the Jinja-subset interpreter now (tests/unit/core/text/test_jinja.c
 * tests the language, tests/golden/test_chat_templates_golden.c the real templates); here, what
 * the chat API adds: the error wording, and the tokenizer's own template. */
TEST(tok_chat_templates)
{
    static const char llama3[] =
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
        "message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
    const core_chat_msg m = {"user", "  hi "};
    CHECK_RENDER(llama3, &m, 1, true, "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
    CHECK_RENDER_FAILS(NULL, -ENOTSUP, "no tokenizer.chat_template");
    CHECK_RENDER_FAILS("{% call x() %}<|im_start|><|im_end|>{% endcall %}", -ENOTSUP,
                       "chat template not supported: line 1: unsupported statement {% call %}");
    CHECK_RENDER_FAILS("<|im_start|><|im_end|>{{ 'abc }}", -ENOTSUP, "unterminated string");
    CHECK_RENDER_FAILS("{% for message in messages %}\n{{ message.content }}", -ENOTSUP,
                       "line 2: missing {% endfor %}");
    CHECK_RENDER_FAILS("{{ raise_exception('No ' + messages[0].role + ' please') }}", -EINVAL,
                       "No user please");
}

TEST(tok_chat_tokenizer_template)
{
    char err[256] = "", *out = NULL;
    synth_opts o = {.tmpl = "{% call m() %}{% endcall %}"};
    core_tokenizer *t = synth_tok(&o, err, sizeof err);
    CHECK_MSG(t, "synthetic tokenizer: %s", err);
    /* a template outside the subset leaves the tokenizer usable; chat says why */
    CHECK_EQ_INT(core_tokenizer_chat_template_status(t, err, sizeof err), -ENOTSUP);
    CHECK(strstr(err, "unsupported statement {% call %}"));
    core_chat_msg m = {"user", "hi"};
    CHECK_EQ_INT(core_chat_render(t, &m, 1, true, &out, err, sizeof err), -ENOTSUP);
    CHECK(strstr(err, "line 1: unsupported statement {% call %}"));
    /* an override; a bad one keeps what was there. bos_token is the BOS token's text (byte 5
     * here); the synthetic vocabulary has no EOS */
    CHECK_EQ_INT(
        core_tokenizer_set_chat_template(
            t, "{{ bos_token | length }}|{{ eos_token is defined }}|{{ messages[0].content }}", err,
            sizeof err),
        0);
    CHECK_EQ_INT(core_tokenizer_set_chat_template(t, "{{ x | nope }}", err, sizeof err), -ENOTSUP);
    CHECK(strstr(err, "unsupported filter '|nope'"));
    CHECK_EQ_INT(core_tokenizer_chat_template_status(t, err, sizeof err), 0);
    CHECK_EQ_INT(core_chat_render(t, &m, 1, true, &out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "1|False|hi");
    free(out);
    /* add_bos is set: BOS goes first, unless a rendered template already put it there */
    const int32_t with_bos[] = {5, 'h'}, without[] = {'h'};
    CHECK(core_tokenizer_prepend_bos(t, with_bos, 2, false));
    CHECK(!core_tokenizer_prepend_bos(t, with_bos, 2, true));
    CHECK(core_tokenizer_prepend_bos(t, without, 1, true));
    core_tokenizer_free(t);
}
