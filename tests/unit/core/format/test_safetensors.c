/* Tests for core/format/safetensors.c: files written by the reference implementation
 * (tests/reference/make_st_fixtures.py) parse to the names, dtypes, shapes, bytes, values and
 * metadata the script recorded, and the bad files it made (each rejected by the reference) are
 * rejected here too; hand-built headers exercise the JSON parser (escapes, whitespace, every
 * kind of malformed input) and every layout rule; truncations and byte flips never crash.
 * Inputs are opened from exact-size heap copies, so ASan catches any read past the end. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/format/safetensors.h"
#include "core/format/types.h"
#include "tests/test.h"

#define FIXDIR "tests/golden/fixtures/st/"

/* --- helpers ------------------------------------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = buf ? (size_t)n : 0;
    return buf;
}

/* A file image: 8-byte little-endian header length, the header, then body_len bytes of a
 * pattern. n_override replaces the length field when not UINT64_MAX. Exact size, caller frees. */
static uint8_t *mk_file(const char *header, size_t hlen, size_t body_len, uint64_t n_override,
                        size_t *len)
{
    uint64_t n = n_override != UINT64_MAX ? n_override : hlen;
    *len = 8 + hlen + body_len;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < body_len; i++)
        b[8 + hlen + i] = (uint8_t)(i * 7 + 1);
    return b;
}

/* Opens a file built from a JSON header; *buf receives the image (caller frees it after
 * closing the result). */
static core_st *open_json(const char *json, size_t body_len, uint8_t **buf, char *err,
                          size_t errlen)
{
    size_t len;
    *buf = mk_file(json, strlen(json), body_len, UINT64_MAX, &len);
    return core_st_open_memory(*buf, len, err, errlen);
}

/* Opens an exact-size copy of buf[0..len) and expects failure with an error containing want.
 * On mismatch fills why and returns 0. */
static int expect_fail(const uint8_t *buf, size_t len, const char *want, char *why, size_t cap)
{
    uint8_t *copy = malloc(len ? len : 1);
    char err[512] = "";
    if (len)
        memcpy(copy, buf, len);
    core_st *st = core_st_open_memory(copy, len, err, sizeof err);
    int ok = !st && err[0] && strstr(err, want);
    if (!ok)
        snprintf(why, cap, "want failure containing \"%s\", got %s \"%s\"", want,
                 st ? "success" : "error", err);
    core_st_close(st);
    free(copy);
    return ok;
}

static int expect_json_fail(const char *json, size_t body_len, const char *want, char *why,
                            size_t cap)
{
    size_t len;
    uint8_t *b = mk_file(json, strlen(json), body_len, UINT64_MAX, &len);
    int ok = expect_fail(b, len, want, why, cap);
    free(b);
    return ok;
}

static uint64_t fnv1a64(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Decodes hex into a new NUL-terminated string (caller frees). */
static char *unhex(const char *h)
{
    size_t n = strlen(h) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        sscanf(h + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[n] = '\0';
    return s;
}

/* Splits a line at tabs in place; returns the field count (at most max). */
static int split_tabs(char *line, char **f, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = '\0';
    while (n < max) {
        f[n++] = line;
        char *t = strchr(line, '\t');
        if (!t)
            break;
        *t = '\0';
        line = t + 1;
    }
    return n;
}

/* --- the reference fixtures --------------------------------------------------------------- */

/* A "tensor" line of expected.txt against the open file; 0 with why on mismatch. */
static int check_tensor_line(const core_st *st, char **f, char *why, size_t cap)
{
    char *name = unhex(f[2]);
    const core_st_tensor *t = core_st_find(st, name);
    int ok = 0;
    char shape[256] = "";
    if (!t) {
        snprintf(why, cap, "tensor %s not found", f[12]);
        goto out;
    }
    for (int i = 0; i < t->n_dims; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%" PRIu64, i ? "," : "",
                 t->shape[i]);
    uint32_t want_type = strcmp(f[3], "F32") == 0    ? CORE_TYPE_F32
                         : strcmp(f[3], "F16") == 0  ? CORE_TYPE_F16
                         : strcmp(f[3], "BF16") == 0 ? CORE_TYPE_BF16
                                                     : CORE_ST_OTHER;
    if (strcmp(t->dtype_name, f[3]) != 0 || t->dtype != want_type ||
        strcmp(shape[0] ? shape : "-", f[4]) != 0 || core_st_numel(t) != strtoull(f[5], 0, 10) ||
        t->nbytes != strtoull(f[6], 0, 10) ||
        fnv1a64(t->data, t->nbytes) != strtoull(f[7], 0, 16)) {
        snprintf(why, cap,
                 "%s: got %s/%u [%s] numel %" PRIu64 " nbytes %" PRIu64 " fnv %016" PRIx64
                 ", want %s [%s] numel %s nbytes %s fnv %s",
                 f[12], t->dtype_name, t->dtype, shape, core_st_numel(t), t->nbytes,
                 fnv1a64(t->data, t->nbytes), f[3], f[4], f[5], f[6], f[7]);
        goto out;
    }
    uint64_t n = core_st_numel(t);
    float *v = malloc((n ? n : 1) * sizeof *v);
    int rc = core_st_to_f32(t, v);
    if (want_type == CORE_ST_OTHER || n == 0) {
        ok = want_type == CORE_ST_OTHER ? rc == -EINVAL : rc == 0;
        if (!ok)
            snprintf(why, cap, "%s: core_st_to_f32 returned %d", f[12], rc);
        free(v);
        goto out;
    }
    double s = 0, w = 0;
    for (uint64_t i = 0; i < n; i++) {
        s += v[i];
        w += (double)(i + 1) * v[i];
    }
    double ws = strtod(f[8], 0), ww = strtod(f[9], 0);
    ok = rc == 0 && fabs(s - ws) <= 1e-12 * (1 + fabs(ws)) &&
         fabs(w - ww) <= 1e-12 * (1 + fabs(ww)) && f32_bits(v[0]) == strtoul(f[10], 0, 16) &&
         f32_bits(v[n - 1]) == strtoul(f[11], 0, 16);
    if (!ok)
        snprintf(why, cap, "%s: rc %d sum %.17g wsum %.17g first %08x last %08x, want %s %s %s %s",
                 f[12], rc, s, w, f32_bits(v[0]), f32_bits(v[n - 1]), f[8], f[9], f[10], f[11]);
    free(v);
out:
    free(name);
    return ok;
}

/* Walks expected.txt: every good file opens (mmapped) with exactly the listed tensors and
 * metadata; every bad file fails with a message. */
TEST(st_reference_fixtures)
{
    FILE *fp = fopen(FIXDIR "expected.txt", "r");
    CHECK_MSG(fp, "cannot read " FIXDIR "expected.txt (run tests/reference/make_st_fixtures.py)");
    char line[8192], why[1024] = "", err[512], path[512];
    core_st *st = NULL;
    int ok = 1, n_files = 0, n_tensors = 0, n_bad = 0;
    while (ok && fgets(line, sizeof line, fp)) {
        char *f[16];
        int nf = split_tabs(line, f, 16);
        if (line[0] == '#' || nf < 2)
            continue;
        snprintf(path, sizeof path, FIXDIR "%s", f[1]);
        if (strcmp(f[0], "file") == 0 && nf == 4) {
            core_st_close(st);
            st = core_st_open(path, err, sizeof err);
            ok = st && st->n_tensors == strtoul(f[2], 0, 10) && st->n_meta == strtoul(f[3], 0, 10);
            if (!ok)
                snprintf(why, sizeof why, "%s: %s, %zu tensors %zu meta, want %s %s", path,
                         st ? "opened" : err, st ? st->n_tensors : 0, st ? st->n_meta : 0, f[2],
                         f[3]);
            n_files++;
        } else if (strcmp(f[0], "tensor") == 0 && nf == 13) {
            ok = st && check_tensor_line(st, f, why, sizeof why);
            n_tensors++;
        } else if (strcmp(f[0], "meta") == 0 && nf >= 3) {
            char *k = unhex(f[2]), *v = unhex(nf > 3 ? f[3] : "");
            const char *got = st ? core_st_meta(st, k) : NULL;
            ok = got && strcmp(got, v) == 0;
            if (!ok)
                snprintf(why, sizeof why, "%s: meta %s = %s, want %s", path, f[2],
                         got ? got : "(absent)", f[3]);
            free(k);
            free(v);
        } else if (strcmp(f[0], "bad") == 0) {
            core_st *b = core_st_open(path, err, sizeof err);
            ok = !b && strncmp(err, path, strlen(path)) == 0;
            if (!ok)
                snprintf(why, sizeof why, "%s: want an error (reference: %s), got %s", path,
                         nf > 2 ? f[2] : "?", b ? "success" : err);
            core_st_close(b);
            n_bad++;
        }
    }
    core_st_close(st);
    fclose(fp);
    CHECK_MSG(ok, "%s", why);
    CHECK_MSG(n_files == 6 && n_tensors == 27 && n_bad == 20,
              "expected.txt: %d files, %d tensors, %d bad files; want 6, 27, 20", n_files,
              n_tensors, n_bad);
}

/* The PEFT-style file: names as PEFT writes them, header order kept, metadata, and the same
 * result from a memory copy as from the mapping. */
TEST(st_peft_file)
{
    char err[512] = "";
    size_t len;
    uint8_t *buf = read_file(FIXDIR "peft.safetensors", &len);
    CHECK_MSG(buf, "cannot read " FIXDIR "peft.safetensors");
    core_st *m = core_st_open(FIXDIR "peft.safetensors", err, sizeof err);
    core_st *st = core_st_open_memory(buf, len, err, sizeof err);
    int ok = m && st && m->mapped && !st->mapped && m->n_tensors == 8 && st->n_tensors == 8;
    for (size_t i = 0; ok && i < st->n_tensors; i++)
        ok = strcmp(m->tensors[i].name, st->tensors[i].name) == 0 &&
             m->tensors[i].nbytes == st->tensors[i].nbytes &&
             memcmp(m->tensors[i].data, st->tensors[i].data, st->tensors[i].nbytes) == 0;
    const core_st_tensor *a =
        st ? core_st_find(st, "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
           : NULL;
    const core_st_tensor *b =
        st ? core_st_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
           : NULL;
    char fmt[8] = "";
    if (core_st_meta(st, "format"))
        snprintf(fmt, sizeof fmt, "%s", core_st_meta(st, "format"));
    int found = a && b && a->n_dims == 2 && a->shape[0] == 4 && a->shape[1] == 32 &&
                b->shape[0] == 32 && b->shape[1] == 4 && a->dtype == CORE_TYPE_F32 &&
                (const uint8_t *)a->data == st->base + 8 + (st->size - 8 - 8 * 512) + a->offset;
    int absent = st && !core_st_find(st, "base_model.model.model.layers.0.self_attn.q_proj") &&
                 !core_st_find(st, "") && !core_st_meta(st, "Format") && !core_st_find(NULL, "x");
    core_st_close(m);
    core_st_close(st);
    core_st_close(NULL);
    free(buf);
    CHECK_MSG(ok, "mapped and memory opens differ or failed: %s", err);
    CHECK_MSG(found, "PEFT tensors not found with shapes [4, 32] / [32, 4] at their offsets");
    CHECK_EQ_STR(fmt, "pt");
    CHECK(absent);
}

TEST(st_open_errors)
{
    char err[512] = "";
    core_st *st = core_st_open("/nonexistent/x.safetensors", err, sizeof err);
    CHECK(!st);
    CHECK_MSG(strstr(err, "/nonexistent/x.safetensors: No such file"), "err: %s", err);
    st = core_st_open("tests", err, sizeof err);
    CHECK(!st);
    CHECK_MSG(strstr(err, "not a regular file"), "err: %s", err);
    char path[] = "/tmp/st_test_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    ssize_t w = write(fd, "{}\0", 3);
    close(fd);
    st = core_st_open(path, err, sizeof err);
    unlink(path);
    CHECK(w == 3 && !st);
    CHECK_MSG(strstr(err, "truncated file: 3 bytes"), "err: %s", err);
    CHECK(!core_st_open_memory(NULL, 0, NULL, 0));
    CHECK(!core_st_open_memory(NULL, 0, err, sizeof err));
    CHECK_MSG(strstr(err, "truncated file: 0 bytes"), "err: %s", err);
}

/* --- hand-built headers that must parse ---------------------------------------------------- */

TEST(st_escapes_and_whitespace)
{
    const char *json =
        "{ \"a\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\\b\\f\\r\\u20AC\" :\r\n"
        "\t{ \"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 4 ] , \"dtype\" : \"F\\u0033\\u0032\" } ,"
        "\"\\u00e9\xc3\xa9\" : {\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]},"
        "\"\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[8,9]},"
        "\"__metadata__\" : { \"k\\u0041\" : \"v\\ud834\\udd1e\" , \"e\":\"\" } }  \n\t\r ";
    uint8_t *buf;
    char err[512] = "";
    core_st *st = open_json(json, 9, &buf, err, sizeof err);
    CHECK_MSG(st, "err: %s", err);
    int ok = st->n_tensors == 3 && st->n_meta == 2;
    const core_st_tensor *a =
        core_st_find(st, "a\xc3\xa9\xf0\x9f\x98\x80\n\t\"\\/\b\f\r\xe2\x82\xac");
    const core_st_tensor *e = core_st_find(st, "\xc3\xa9\xc3\xa9");
    const core_st_tensor *empty = core_st_find(st, "");
    ok = ok && a && e && empty && a == &st->tensors[0] && e == &st->tensors[1];
    ok = ok && a->dtype == CORE_TYPE_F32 && strcmp(a->dtype_name, "F32") == 0 && a->n_dims == 1 &&
         e->dtype == CORE_TYPE_F16 && empty->dtype == CORE_ST_OTHER && empty->n_dims == 0 &&
         core_st_numel(empty) == 1 && empty->nbytes == 1 && empty->offset == 8;
    const char *kv = core_st_meta(st, "kA"), *ev = core_st_meta(st, "e");
    int meta_ok = kv && ev && strcmp(kv, "v\xf0\x9d\x84\x9e") == 0 && ev[0] == '\0' &&
                  strcmp(st->meta_keys[0], "kA") == 0;
    core_st_close(st);
    free(buf);
    CHECK_MSG(ok, "escaped names or entries wrong");
    CHECK_MSG(meta_ok, "metadata kA / e wrong");
}

TEST(st_empty_and_null_metadata)
{
    uint8_t *buf;
    char err[512] = "";
    core_st *st = open_json("{}", 0, &buf, err, sizeof err);
    CHECK_MSG(st && st->n_tensors == 0 && st->n_meta == 0, "{}: %s", err);
    CHECK(!core_st_find(st, "a"));
    core_st_close(st);
    free(buf);
    st = open_json("{\"__metadata__\":null}", 0, &buf, err, sizeof err);
    CHECK_MSG(st && st->n_meta == 0, "null metadata: %s", err);
    core_st_close(st);
    free(buf);
    st = open_json("{\"__metadata__\":{}, \"s\":{\"dtype\":\"F64\",\"shape\":[0,3],"
                   "\"data_offsets\":[0,0]}}",
                   0, &buf, err, sizeof err);
    CHECK_MSG(st && st->n_tensors == 1 && st->tensors[0].nbytes == 0 &&
                  st->tensors[0].dtype == CORE_ST_OTHER,
              "zero-size only: %s", err);
    core_st_close(st);
    free(buf);
}

/* Zero-size tensors may sit at any offset, also where another tensor starts or ends. */
TEST(st_zero_size_between)
{
    const char *json = "{\"z1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                       "\"z0\":{\"dtype\":\"BF16\",\"shape\":[3,0,2],\"data_offsets\":[0,0]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"z2\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[8,8]}}";
    uint8_t *buf;
    char err[512] = "";
    core_st *st = open_json(json, 8, &buf, err, sizeof err);
    CHECK_MSG(st, "err: %s", err);
    float dummy = 0;
    const core_st_tensor *z0 = core_st_find(st, "z0");
    int ok = st->n_tensors == 5 && z0 && core_st_numel(z0) == 0 && z0->n_dims == 3 &&
             core_st_to_f32(z0, &dummy) == 0 && core_st_find(st, "z2")->offset == 8;
    core_st_close(st);
    free(buf);
    CHECK(ok);
}

/* Tensor data at odd file offsets converts (memcpy, no aligned loads); F16/BF16 bit patterns
 * convert to the values they stand for. */
TEST(st_to_f32_unaligned)
{
    const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[12,18]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,3],\"data_offsets\":[18,24]},"
                       "\"i\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[24,28]}} ";
    CHECK((strlen(json) + 8) % 4 != 0);
    size_t len;
    uint8_t *buf = mk_file(json, strlen(json), 28, UINT64_MAX, &len);
    uint8_t *body = buf + 8 + strlen(json);
    const float fv[3] = {1.5f, -0.0f, 3.0e38f};
    const uint16_t hv[3] = {0x3c00, 0xc000, 0x0001}, bv[3] = {0x3f80, 0x4049, 0xff80};
    memcpy(body, fv, 12);
    memcpy(body + 12, hv, 6);
    memcpy(body + 18, bv, 6);
    char err[512] = "";
    core_st *st = core_st_open_memory(buf, len, err, sizeof err);
    CHECK_MSG(st, "err: %s", err);
    float a[3], h[3], b[3], i[1];
    int ra = core_st_to_f32(core_st_find(st, "a"), a);
    int rh = core_st_to_f32(core_st_find(st, "h"), h);
    int rb = core_st_to_f32(core_st_find(st, "b"), b);
    int ri = core_st_to_f32(core_st_find(st, "i"), i);
    int rn = core_st_to_f32(NULL, i);
    core_st_close(st);
    free(buf);
    CHECK_EQ_INT(ra, 0);
    CHECK_EQ_INT(rh, 0);
    CHECK_EQ_INT(rb, 0);
    CHECK_EQ_INT(ri, -EINVAL);
    CHECK_EQ_INT(rn, -EINVAL);
    CHECK(f32_bits(a[0]) == f32_bits(1.5f) && f32_bits(a[1]) == 0x80000000u && a[2] == 3.0e38f);
    CHECK(h[0] == 1.0f && h[1] == -2.0f && h[2] == 0x1p-24f);
    CHECK(b[0] == 1.0f && b[1] == 3.140625f && isinf(b[2]) && b[2] < 0);
}

/* Up to 8 dimensions; the largest header the limit allows is not rejected for its length. */
TEST(st_eight_dims)
{
    uint8_t *buf;
    char err[512] = "";
    core_st *st = open_json("{\"t\":{\"dtype\":\"I8\",\"shape\":[1,2,1,2,1,2,1,2],"
                            "\"data_offsets\":[0,16]}}",
                            16, &buf, err, sizeof err);
    CHECK_MSG(st, "err: %s", err);
    int ok = st->tensors[0].n_dims == 8 && st->tensors[0].shape[7] == 2 &&
             core_st_numel(&st->tensors[0]) == 16;
    core_st_close(st);
    free(buf);
    CHECK(ok);
}

/* --- malformed input ------------------------------------------------------------------------ */

#define T1(dt, shape, offs)                                                                        \
    "{\"a\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static const struct {
    const char *json;
    size_t body;
    const char *want;
} bad_json[] = {
    /* not an object / not JSON */
    {"", 0, "header is empty"},
    {"hello", 0, "header must start with '{', found 'h' (header byte 0)"},
    {" {}", 0, "must start with '{', found ' '"},
    {"[]", 0, "must start with '{'"},
    {"{", 0, "expected a tensor name or \"__metadata__\" (a string), found the end"},
    {"{}}", 0, "'}' after the header object (only whitespace may follow it) (header byte 2)"},
    {"{} x", 0, "'x' after the header object"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4,
     "expected a tensor name"},
    {"{\"a\" {}}", 0, "expected ':' after the name, found '{' (header byte 5)"},
    {"{\"a\":x}", 0,
     "tensor 'a': expected '{' opening the tensor entry, found 'x' (header byte 5)"},
    {"{\"a\":1}", 0, "expected '{' opening the tensor entry, found '1'"},
    {"{\"a\":true}", 0, "expected '{' opening the tensor entry"},
    {"{\"a\":[]}", 0, "expected '{' opening the tensor entry"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]} \"b\"", 4,
     "expected ',' or '}' after the entry, found '\"'"},
    {"{\"a\":{\"dtype\":\"F32\" \"shape\":[1]}}", 0, "expected ',' or '}' in the tensor entry"},
    {"{1:2}", 0, "expected a tensor name"},
    {"{\"abc", 0, "unterminated string (header byte 1)"},
    {"{\"abc\\", 0, "unterminated string"},
    /* missing, extra and repeated keys */
    {"{\"a\":{}}", 0, "tensor 'a': entry lacks \"dtype\""},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "entry lacks \"shape\""},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "entry lacks \"data_offsets\""},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
     "tensor 'a': unknown key \"x\" (a tensor entry holds exactly dtype, shape and data_offsets)"},
    {"{\"a\":{\"offsets\":[0,4]}}", 4, "unknown key \"offsets\""},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "key \"dtype\" appears twice (header byte 20)"},
    /* dtype */
    {T1("F128", "[1]", "[0,16]"), 16, "tensor 'a': unknown dtype \"F128\""},
    {T1("f32", "[1]", "[0,4]"), 4, "unknown dtype \"f32\""},
    {T1("F32 ", "[1]", "[0,4]"), 4, "unknown dtype \"F32 \""},
    {T1("F8_E4M3FNUZ_TOO_LONG", "[1]", "[0,1]"), 1, "unknown dtype"},
    {T1("F4", "[2]", "[0,1]"), 1, "dtype F4 has sub-byte elements"},
    {T1("F6_E2M3", "[4]", "[0,3]"), 3, "sub-byte"},
    {"{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "expected the dtype (a string), found '3'"},
    /* shape and offsets syntax */
    {T1("F32", "[1.5]", "[0,4]"), 4, "shape must hold integers, found a fraction or exponent"},
    {T1("F32", "[1e0]", "[0,4]"), 4, "found a fraction or exponent"},
    {T1("F32", "[-1]", "[0,4]"), 4, "shape must be a non-negative integer, found a negative"},
    {T1("F32", "[01]", "[0,4]"), 4, "integer with a leading zero in shape"},
    {T1("F32", "[18446744073709551616]", "[0,4]"), 4, "integer in shape does not fit in 64 bits"},
    {T1("F32", "[18446744073709551615]", "[0,4]"), 4, "needs more than 2^64 bytes"},
    {T1("F32", "1", "[0,4]"), 4, "shape must be an array of integers, found '1'"},
    {T1("F32", "[[1]]", "[0,4]"), 4, "expected a non-negative integer in shape, found '['"},
    {T1("F32", "[1,]", "[0,4]"), 4, "expected a non-negative integer in shape, found ']'"},
    {T1("F32", "[1 2]", "[0,4]"), 4, "expected ',' or ']' in shape, found '2'"},
    {T1("F32", "[\"1\"]", "[0,4]"), 4, "found '\"'"},
    {T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 4, "shape has more than 8 elements"},
    {T1("F32", "[1]", "[0]"), 4, "data_offsets must be [BEGIN, END], found 1 integers"},
    {T1("F32", "[1]", "[]"), 4, "data_offsets must be [BEGIN, END], found 0 integers"},
    {T1("F32", "[1]", "[0,4,8]"), 8, "data_offsets has more than 2 elements"},
    {T1("F32", "[1]", "{}"), 4, "data_offsets must be an array of integers"},
    {T1("F32", "[1]", "[0,-4]"), 4, "data_offsets must be a non-negative integer"},
    /* sizes and ranges */
    {T1("F32", "[1]", "[4,0]"), 4, "tensor 'a': data_offsets [4, 0] end before they begin"},
    {T1("F32", "[2]", "[0,8]"), 4,
     "tensor 'a': data_offsets [0, 8] run past the end of the data (4 bytes after the header)"},
    {T1("F32", "[2,3]", "[0,20]"), 20,
     "tensor 'a': data_offsets [0, 20] hold 20 bytes, shape [2, 3] F32 needs 24"},
    {T1("F32", "[]", "[0,0]"), 0, "data_offsets [0, 0] hold 0 bytes, shape [] F32 needs 4"},
    {T1("BF16", "[0]", "[0,2]"), 2, "shape [0] BF16 needs 0"},
    {T1("F32", "[1099511627776,1099511627776]", "[0,4]"), 4,
     "tensor 'a': shape [1099511627776, 1099511627776] has more than 2^64 elements"},
    {T1("F32", "[1099511627776,1099511627776,0]", "[0,0]"), 0, "more than 2^64 elements"},
    {T1("F32", "[4611686018427387904]", "[0,4]"), 4,
     "shape [4611686018427387904] F32 needs more than 2^64 bytes"},
    {T1("I64", "[1152921504606846976,2]", "[0,16]"), 16, "needs more than 2^64 bytes"},
    {T1("F32", "[1]", "[18446744073709551611,18446744073709551615]"), 4,
     "run past the end of the data"},
    /* layout */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     12, "hole in the data: bytes [4, 8) between tensor 'a' and tensor 'b' belong to no tensor"},
    {"{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     "hole in the data: bytes [0, 4) belong to no tensor (the first, 'b', starts at 4)"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "tensor 'b': data_offsets [4, 8] overlap tensor 'a' [0, 8]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     4, "overlap tensor"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
     8, "tensor 'z': data_offsets [4, 4] overlap tensor 'a' [0, 8]"},
    {T1("F32", "[1]", "[0,4]"), 8, "data has 8 bytes but the tensors cover only 4 (bytes [4, 8)"},
    {"{}", 1, "data has 1 bytes but the tensors cover only 0"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "tensor name 'a' appears twice in the header"},
    /* metadata */
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\" appears twice"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__: value of \"k\" must be a string, found '1'"},
    {"{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "value of \"k\" must be a string"},
    {"{\"__metadata__\":{\"k\":null}}", 0, "value of \"k\" must be a string, found 'n'"},
    {"{\"__metadata__\":[]}", 0, "__metadata__: expected an object of string to string"},
    {"{\"__metadata__\":\"pt\"}", 0, "expected an object of string to string"},
    {"{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "__metadata__: key \"k\" appears twice"},
    {"{\"__metadata__\":{\"k\":\"a\" \"j\":\"b\"}}", 0, "expected ',' or '}' in __metadata__"},
    {"{\"__metadata__\":{1:\"a\"}}", 0, "expected a metadata key (a string)"},
    /* strings: UTF-8 and escapes */
    {"{\"a\xff\":{}}", 0, "header is not valid UTF-8 at header byte 3 (byte 0xff)"},
    {"{\"a\xc0\xaf\":{}}", 0, "not valid UTF-8 at header byte 3"},
    {"{\"a\xe0\x80\xaf\":{}}", 0, "not valid UTF-8 at header byte 3"},
    {"{\"a\xed\xa0\x80\":{}}", 0, "not valid UTF-8 at header byte 3"},
    {"{\"a\xf4\x90\x80\x80\":{}}", 0, "not valid UTF-8"},
    {"{\"a\xe2\x82\":{}}", 0, "not valid UTF-8"},
    {"{\"a\xe2\x82", 0, "not valid UTF-8 at header byte 3"},
    {"{\"\x80\":{}}", 0, "not valid UTF-8 at header byte 2 (byte 0x80)"},
    {"{\"a\\q\":{}}", 0, "invalid escape in a string: '\\' followed by 'q' (header byte 4)"},
    {"{\"a\\x41\":{}}", 0, "invalid escape"},
    {"{\"a\\u12\":{}}", 0, "invalid \\u escape in a string (needs 4 hex digits)"},
    {"{\"a\\u12g4\":{}}", 0, "invalid \\u escape"},
    {"{\"a\\u12", 0, "invalid \\u escape"},
    {"{\"a\\ud800\":{}}", 0, "\\uD800 in a string is a high surrogate without a low one"},
    {"{\"a\\ud800\\u0041\":{}}", 0, "high surrogate without a low one"},
    {"{\"a\\ud800\\ud800\":{}}", 0, "high surrogate without a low one"},
    {"{\"a\\udc00\":{}}", 0, "\\uDC00 in a string is a low surrogate without a high one"},
    {"{\"a\\u0000\":{}}", 0, "\\u0000 (NUL) in a string is not supported"},
    {"{\"a\x01\":{}}", 0, "control character 0x01 in a string (must be escaped) (header byte 3)"},
    {"{\"a\n\":{}}", 0, "control character 0x0a"},
    {"{\"a\\\":{}}", 0, "unterminated string"},
};

TEST(st_malformed_headers)
{
    char why[1024];
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        int ok =
            expect_json_fail(bad_json[i].json, bad_json[i].body, bad_json[i].want, why, sizeof why);
        CHECK_MSG(ok, "case %zu (%s): %s", i, bad_json[i].json, why);
    }
}

/* A NUL after the object is inside the header (the table's strlen would drop it). */
TEST(st_nul_in_header)
{
    char why[1024];
    size_t len;
    uint8_t *b = mk_file("{}\0", 3, 0, UINT64_MAX, &len);
    int ok =
        expect_fail(b, len, "byte 0x00 after the header object (only whitespace", why, sizeof why);
    free(b);
    CHECK_MSG(ok, "%s", why);
}

/* The example from the task: the message names the tensor, both offsets, the shape and the
 * dtype, and nothing else. */
TEST(st_size_message_exact)
{
    const char *name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    char json[256], err[512] = "";
    snprintf(json, sizeof json,
             "{\"%s\":{\"dtype\":\"F32\",\"shape\":[8,576],\"data_offsets\":[0,100]}}", name);
    uint8_t *buf;
    core_st *st = open_json(json, 100, &buf, err, sizeof err);
    free(buf);
    CHECK(!st);
    CHECK_EQ_STR(err, "tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': "
                      "data_offsets [0, 100] hold 100 bytes, shape [8, 576] F32 needs 18432");
}

/* Long or odd names are cut and cleaned in messages; a cut never splits a UTF-8 character. */
TEST(st_message_names_cut)
{
    char json[512], err[512] = "";
    char name[200] = "\\n";
    for (int i = 0; i < 62; i++)
        strcat(name, "x");
    strcat(name, "\xc3\xa9tail");
    snprintf(json, sizeof json, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}",
             name);
    uint8_t *buf;
    core_st *st = open_json(json, 8, &buf, err, sizeof err);
    free(buf);
    CHECK(!st);
    char want[128] = "tensor '?";
    for (int i = 0; i < 62; i++)
        strcat(want, "x");
    strcat(want, "...': data_offsets [0, 8] hold 8 bytes");
    CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "err: %s\nwant: %s", err, want);
}

TEST(st_header_length)
{
    char why[1024];
    const char *json = T1("F32", "[1]", "[0,4]");
    size_t hl = strlen(json), len;
    static const struct {
        uint64_t n;
        const char *want;
    } cases[] = {
        {UINT64_MAX - 1, "header length 18446744073709551614 exceeds the limit of 100000000"},
        {1ull << 63, "exceeds the limit"},
        {100000001, "header length 100000001 exceeds the limit"},
        {100000000, "header length 100000000 runs past the end of the file (58 bytes follow"},
        {59, "runs past the end of the file"},
        {58, "'{' after the header object (only whitespace may follow it) (header byte 54)"},
        {55, "'{' after the header object"},
        {53, "expected ',' or '}' after the entry, found the end of the header (header byte 53)"},
        {52, "expected ',' or '}' in the tensor entry, found the end of the header"},
        {0, "header is empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b = mk_file(json, hl, 4, cases[i].n, &len);
        memcpy(b + 8 + hl, "{}}}", 4);
        int ok = hl == 54 && expect_fail(b, len, cases[i].want, why, sizeof why);
        free(b);
        CHECK_MSG(ok, "n %" PRIu64 " (header %zu bytes): %s", cases[i].n, hl, why);
    }
    /* the same bytes with the true length are a valid file */
    char err[512] = "";
    uint8_t *good = mk_file(json, hl, 4, UINT64_MAX, &len);
    core_st *st = core_st_open_memory(good, len, err, sizeof err);
    int ok = st && st->n_tensors == 1;
    core_st_close(st);
    free(good);
    CHECK_MSG(ok, "err: %s", err);
    for (size_t l = 0; l < 8; l++) {
        uint8_t b[8] = {2, 0, 0, 0, 0, 0, 0, 0};
        CHECK_MSG(expect_fail(b, l, "truncated file", why, sizeof why), "len %zu: %s", l, why);
    }
}

/* --- truncations and byte flips never crash ------------------------------------------------- */

TEST(st_truncated_everywhere)
{
    const char *files[] = {"peft.safetensors", "mixed.safetensors", "scalar_zero.safetensors"};
    char why[1024], path[256];
    for (size_t f = 0; f < 3; f++) {
        size_t len;
        snprintf(path, sizeof path, FIXDIR "%s", files[f]);
        uint8_t *buf = read_file(path, &len);
        CHECK_MSG(buf, "cannot read %s", path);
        for (size_t l = 0; l < len; l++) {
            if (!expect_fail(buf, l, "", why, sizeof why)) {
                free(buf);
                CHECK_MSG(0, "%s cut to %zu bytes: %s", path, l, why);
            }
        }
        free(buf);
    }
}

/* Every header byte of a real file set to each of a few interesting values: the reader either
 * fails with a message or returns tensors that lie inside the file and tile the body. */
TEST(st_byte_flips)
{
    size_t len;
    uint8_t *buf = read_file(FIXDIR "mixed.safetensors", &len);
    CHECK(buf && len > 8);
    static const uint8_t vals[] = {0x00, ' ', '"', '\\', '{', '}',  '[',  ']',  ',',
                                   ':',  '0', '9', 'u',  'e', 0x7f, 0x80, 0xc3, 0xff};
    size_t hl = (size_t)buf[0] | (size_t)buf[1] << 8, n_ok = 0, n_fail = 0;
    char err[512];
    int ok = 1;
    for (size_t pos = 0; ok && pos < 8 + hl; pos++) {
        for (size_t v = 0; ok && v < sizeof vals; v++) {
            uint8_t *c = malloc(len);
            memcpy(c, buf, len);
            c[pos] = vals[v];
            err[0] = '\0';
            core_st *st = core_st_open_memory(c, len, err, sizeof err);
            if (st) {
                uint64_t sum = 0, hn = 0;
                for (int i = 0; i < 8; i++)
                    hn |= (uint64_t)c[i] << (8 * i);
                for (size_t i = 0; i < st->n_tensors; i++) {
                    const core_st_tensor *t = &st->tensors[i];
                    const uint8_t *d = t->data;
                    sum += t->nbytes;
                    ok = ok && d >= c + 8 + hn && d + t->nbytes <= c + len && t->name &&
                         core_st_find(st, t->name) != NULL;
                }
                ok = ok && sum == len - 8 - hn;
                n_ok++;
            } else {
                ok = err[0] != '\0';
                n_fail++;
            }
            core_st_close(st);
            free(c);
        }
    }
    free(buf);
    CHECK_MSG(ok, "a mutated file opened with tensors outside it, or failed without a message");
    CHECK_MSG(n_fail > n_ok && n_ok > 0, "%zu opened, %zu failed", n_ok, n_fail);
}

/* --- header-only opens ---------------------------------------------------------------------- */

/* core_st_open_header over an exact-size copy of the first min(hdr, len) bytes of buf[0..len),
 * as a probe reads them, against core_st_open_memory over an exact-size copy of all of it: both
 * fail with the same message, or both open with the same table and metadata, the header-only one
 * without data. hdr is how many bytes the reader gets (8 + the header length when it is known).
 * 0 with why on mismatch. */
static int header_agrees(const uint8_t *buf, size_t len, size_t hdr, char *why, size_t cap)
{
    char e1[512] = "", e2[512] = "";
    size_t have = hdr < len ? hdr : len;
    uint8_t *whole = malloc(len ? len : 1), *prefix = malloc(have ? have : 1);
    if (len)
        memcpy(whole, buf, len);
    if (have)
        memcpy(prefix, buf, have);
    uint64_t need = 1;
    core_st *w = core_st_open_memory(whole, len, e1, sizeof e1);
    core_st *h = core_st_open_header(prefix, have, len, &need, e2, sizeof e2);
    int ok = !w == !h && need == 0;
    snprintf(why, cap, "len %zu, %zu read: whole \"%s\", header-only \"%s\" (need %llu)", len, have,
             w ? "opens" : e1, h ? "opens" : e2, (unsigned long long)need);
    if (!w || !h) {
        ok = ok && !strcmp(e1, e2);
        goto out;
    }
    ok = ok && w->n_tensors == h->n_tensors && w->n_meta == h->n_meta;
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const core_st_tensor *a = &w->tensors[i], *b = &h->tensors[i];
        float f;
        ok = !strcmp(a->name, b->name) && a->dtype == b->dtype &&
             !strcmp(a->dtype_name, b->dtype_name) && a->n_dims == b->n_dims &&
             !memcmp(a->shape, b->shape, sizeof a->shape) && a->nbytes == b->nbytes &&
             a->offset == b->offset && a->data && !b->data && core_st_find(h, b->name) == b &&
             core_st_to_f32(b, &f) == -EINVAL;
    }
    for (size_t i = 0; ok && i < w->n_meta; i++)
        ok = !strcmp(w->meta_keys[i], h->meta_keys[i]) && !strcmp(w->meta_vals[i], h->meta_vals[i]);
out:
    core_st_close(w);
    core_st_close(h);
    free(whole);
    free(prefix);
    return ok;
}

/* A header-only open accepts exactly what a whole-file open accepts, in the same words, for the
 * reference fixtures, every truncation of them, and the reference's bad files; a prefix too short
 * for the header says how long the header is. */
TEST(st_header_only_matches_whole_file)
{
    static const char *const files[] = {"peft.safetensors", "mixed.safetensors",
                                        "scalar_zero.safetensors", "f32.safetensors"};
    char why[1400], path[512];
    int n = 0;
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        size_t len;
        snprintf(path, sizeof path, FIXDIR "%s", files[f]);
        uint8_t *buf = read_file(path, &len);
        CHECK_MSG(buf && len > 8, "cannot read %s", path);
        size_t hdr = 8 + ((size_t)buf[0] | (size_t)buf[1] << 8 | (size_t)buf[2] << 16);
        uint64_t need = 0;
        char err[512] = "";
        core_st *st = core_st_open_header(buf, 5, len, &need, err, sizeof err);
        int ok = !st && need == 8;
        st = ok ? core_st_open_header(buf, hdr - 1, len, &need, err, sizeof err) : st;
        ok = ok && !st && need == hdr && strstr(err, "were read");
        for (size_t cut = 0; ok && cut <= len; cut++, n++)
            ok = header_agrees(buf, cut, hdr, why, sizeof why) &&
                 header_agrees(buf, cut, cut, why, sizeof why);
        free(buf);
        core_st_close(st);
        CHECK_MSG(ok, "%s: need %llu, err \"%s\"; %s", path, (unsigned long long)need, err, why);
    }
    DIR *d = opendir(FIXDIR "bad");
    CHECK(d);
    int n_bad = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".safetensors"))
            continue;
        size_t len;
        snprintf(path, sizeof path, FIXDIR "bad/%s", e->d_name);
        uint8_t *buf = read_file(path, &len);
        uint64_t hl = 0;
        for (int i = 0; buf && i < 8 && i < (int)len; i++)
            hl |= (uint64_t)buf[i] << (8 * i);
        size_t hdr = hl < len ? 8 + (size_t)hl : len;
        int ok = buf && header_agrees(buf, len, hdr, why, sizeof why);
        free(buf);
        n_bad++;
        if (!ok)
            closedir(d);
        CHECK_MSG(ok, "%s: %s", path, why);
    }
    closedir(d);
    CHECK(n_bad > 10);
    printf("    %d truncations and %d bad files agree\n", n, n_bad);
}
