/* Tests for server/spec_gate.c: which sequences draft in narrow and wide steps, how the draft
 * length and the share accepted follow the verifications, and the probes of a gated sequence. */
#include "server/spec_gate.h"
#include "tests/test.h"

/* Steps of n_dec decoding sequences where sp drafts and its drafts are accepted at acc_of_k
 * (acc = k * num / den, rounded down); returns the drafts it proposed. */
static int run_steps(srv__spec *sp, int steps, int n_dec, int gated_decode, int num, int den)
{
    int drafts = 0;
    for (int i = 0; i < steps; i++) {
        int k = srv__spec_allow(sp, n_dec, gated_decode);
        if (k > 0) {
            drafts += k;
            srv__spec_learn(sp, k, k * num / den);
        }
    }
    return drafts;
}

TEST(spec_gate_off_and_wide_steps_draft_nothing)
{
    srv__spec sp;
    srv__spec_start(&sp, 0);
    CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 0);
    srv__spec_start(&sp, 8);
    CHECK_EQ_INT(srv__spec_allow(&sp, SRV_SPEC_GATED_DECODE + 1, SRV_SPEC_GATED_DECODE), 0);
    CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 8);
    CHECK_EQ_INT(srv__spec_allow(&sp, SRV_SPEC_FREE_DECODE, SRV_SPEC_GATED_DECODE), 8);
    /* int8's wider gated limit */
    CHECK_EQ_INT(srv__spec_gated_limit(false), SRV_SPEC_GATED_DECODE);
    CHECK_EQ_INT(srv__spec_gated_limit(true), SRV_SPEC_GATED_DECODE_INT8);
    CHECK_EQ_INT(srv__spec_allow(&sp, SRV_SPEC_GATED_DECODE_INT8, srv__spec_gated_limit(true)),
                 SRV_SPEC_GATE_K0);
}

TEST(spec_gate_draft_length_follows_acceptance)
{
    srv__spec sp;
    srv__spec_start(&sp, 8);
    srv__spec_learn(&sp, 8, 3); /* partial: one more than accepted */
    CHECK_EQ_INT(sp.k, 4);
    srv__spec_learn(&sp, 4, 4); /* all: doubles, within max */
    CHECK_EQ_INT(sp.k, 8);
    srv__spec_learn(&sp, 8, 8);
    CHECK_EQ_INT(sp.k, 8);
    srv__spec_learn(&sp, 8, 0); /* none: halves and waits 1 step, then 3 */
    CHECK_EQ_INT(sp.k, 4);
    CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 0);
    CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 4);
    srv__spec_learn(&sp, 4, 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 0);
    CHECK_EQ_INT(srv__spec_allow(&sp, 1, SRV_SPEC_GATED_DECODE), 2);
}

/* A sequence new to a gated step guesses SRV_SPEC_GATE_K0 tokens first; accepted drafts keep it
 * drafting at full length, rejected ones stop it but for a probe every SRV_SPEC_GATE_PROBE steps.
 */
TEST(spec_gate_gated_steps_keep_what_is_accepted)
{
    int n = SRV_SPEC_GATED_DECODE, steps = 4 * SRV_SPEC_GATE_PROBE;
    srv__spec copy, freetext;
    srv__spec_start(&copy, 8);
    CHECK_EQ_INT(srv__spec_allow(&copy, n, n), SRV_SPEC_GATE_K0);
    srv__spec_learn(&copy, SRV_SPEC_GATE_K0, SRV_SPEC_GATE_K0);
    CHECK_NEAR(srv__spec_rate(&copy), (0.75 * 4 * 0.875 + 1) / (4 * 0.875 + 1), 1e-12);
    int dc = run_steps(&copy, steps, n, n, 3, 4); /* 3 of 4 accepted */
    srv__spec_start(&freetext, 8);
    int df = run_steps(&freetext, steps, n, n, 0, 1); /* none accepted */
    printf("    %d steps at %d decoding: drafts %d (3/4 accepted, share %.2f), %d (none, share "
           "%.2f)\n",
           steps, n, dc, srv__spec_rate(&copy), df, srv__spec_rate(&freetext));
    CHECK(srv__spec_rate(&copy) >= SRV_SPEC_GATE_RATE);
    CHECK(dc > steps); /* more than a draft a step: back at full length */
    CHECK(srv__spec_rate(&freetext) < SRV_SPEC_GATE_RATE);
    /* the first guess and then one-token probes: 1, then 1 a probe (the wait after each
       rejection takes a probe's turn now and then, so at most one per SRV_SPEC_GATE_PROBE) */
    CHECK_MSG(df <= 2 + steps / SRV_SPEC_GATE_PROBE, "%d drafts", df);
    /* the same text where few decode: every step drafts but for the waits after misses */
    srv__spec_start(&freetext, 8);
    int dn = run_steps(&freetext, steps, SRV_SPEC_FREE_DECODE, n, 0, 1);
    CHECK_MSG(dn > df, "%d drafts at %d decoding, %d at %d", dn, SRV_SPEC_FREE_DECODE, df, n);
    /* probes that are accepted (the text turned to copying) bring it back */
    CHECK(srv__spec_rate(&freetext) < SRV_SPEC_GATE_RATE);
    run_steps(&freetext, 8 * SRV_SPEC_GATE_PROBE, n, n, 1, 1);
    CHECK_MSG(srv__spec_rate(&freetext) >= SRV_SPEC_GATE_RATE, "share %.2f",
              srv__spec_rate(&freetext));
}
