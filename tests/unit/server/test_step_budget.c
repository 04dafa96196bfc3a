/* Tests for server/step_budget.c: the decode line learned from decode-only steps, the prompt
 * row cost learned from mixed steps, the prompt rows a step gets under each policy, and the
 * count of steps over their target. */
#include "server/step_budget.h"
#include "tests/test.h"

/* Feeds decode-only steps of 1..16 rows costing 2 + 0.5 n ms, round after round. */
static void learn_decode_line(srv__step_budget *b)
{
    for (int round = 0; round < 40; round++)
        for (int n = 1; n <= 16; n++) {
            srv__step_budget_prompt_rows(b, n);
            srv__step_budget_observe(b, n, 0, 2 + 0.5 * n);
        }
}

TEST(step_budget_learns_the_decode_line)
{
    srv__step_budget b;
    srv__step_budget_init(&b, -1, 512);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 8), 0, 0); /* nothing seen yet */
    learn_decode_line(&b);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 1), 2.5, 1e-6);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 16), 10, 1e-6);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 32), 18, 1e-6);
}

TEST(step_budget_constant_rows_predict_the_same_time)
{
    srv__step_budget b;
    srv__step_budget_init(&b, -1, 512);
    for (int i = 0; i < 10; i++)
        srv__step_budget_observe(&b, 1, 0, 40);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 1), 40, 1e-9);
    /* no slope yet: not 64 x 40 ms, which would make the default target 5 s */
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 64), 40, 1e-9);
}

TEST(step_budget_default_target_is_a_multiple_with_a_floor)
{
    srv__step_budget b;
    srv__step_budget_init(&b, -1, 512);
    CHECK_NEAR(srv__step_budget_target_ms(&b, 4), SRV_STEP_AUTO_FLOOR_MS, 0); /* nothing learned */
    /* no decode row: a bound for who may arrive during the step */
    CHECK_NEAR(srv__step_budget_target_ms(&b, 0), SRV_STEP_PROMPT_ONLY_MS, 0);
    for (int i = 0; i < 10; i++)
        srv__step_budget_observe(&b, 16, 0, 40);
    CHECK_NEAR(srv__step_budget_target_ms(&b, 16), SRV_STEP_AUTO_MULT * 40, 1e-9);
    srv__step_budget_init(&b, -1, 512);
    for (int i = 0; i < 10; i++)
        srv__step_budget_observe(&b, 1, 0, 5);
    CHECK_NEAR(srv__step_budget_target_ms(&b, 1), SRV_STEP_AUTO_FLOOR_MS, 0); /* 2 x 5 ms */
}

TEST(step_budget_prompt_rows_fill_the_target)
{
    srv__step_budget b;
    srv__step_budget_init(&b, 50, 512);
    learn_decode_line(&b); /* 16 decode rows: 10 ms */
    /* a mixed step: 16 decode rows and 100 prompt rows in 60 ms, so 0.5 ms a prompt row */
    srv__step_budget_prompt_rows(&b, 16);
    CHECK(srv__step_budget_observe(&b, 16, 100, 60)); /* over its 50 ms */
    CHECK_NEAR(b.prompt_row_ms, 0.5, 1e-9);
    /* (50 - 10) / 0.5 = 80 rows (79 when the line's 10 ms comes out a hair above) */
    int rows = srv__step_budget_prompt_rows(&b, 16);
    CHECK_MSG(rows == 80 || rows == 79, "%d prompt rows", rows);
    CHECK_NEAR(b.step_target_ms, 50, 0);
    CHECK(!srv__step_budget_observe(&b, 16, 80, 50)); /* on the target: not over it */
    /* slower rows: the EWMA moves a quarter of the way to (70 - 10) / 40 = 1.5 ms, 0.75; the
       rest of the step, 70 - 0.75 x 40 = 40 ms, teaches the line a dearer decode part: fewer
       rows than (50 - 10) / 0.75 = 53 */
    srv__step_budget_prompt_rows(&b, 16);
    srv__step_budget_observe(&b, 16, 40, 70);
    CHECK_NEAR(b.prompt_row_ms, 0.75, 1e-9);
    double dec = srv__step_budget_decode_ms(&b, 16);
    CHECK_MSG(dec > 10 && dec < 40, "decode part %g ms", dec);
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 16), (int)((50 - dec) / 0.75));
    CHECK(srv__step_budget_prompt_rows(&b, 16) < 53);
    /* never more than max_batch beside the decode rows */
    srv__step_budget_observe(&b, 0, 0, 0);
    b.prompt_row_ms = 0.001;
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 16), 512 - 16);
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 512), 0);
}

TEST(step_budget_minimum_rows_and_no_decode_rows)
{
    srv__step_budget b;
    srv__step_budget_init(&b, 1, 512);
    /* before any prompt cost, and under a target the decode rows already use up: the minimum */
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 4), SRV_STEP_MIN_PROMPT_ROWS);
    learn_decode_line(&b);
    srv__step_budget_prompt_rows(&b, 16);
    srv__step_budget_observe(&b, 16, 16, 30);
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 16), SRV_STEP_MIN_PROMPT_ROWS);
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 508), 4); /* the minimum within max_batch */
    /* no decode row: the whole batch, and no target to miss */
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 0), 512);
    CHECK_NEAR(b.step_target_ms, 0, 0);
    CHECK(!srv__step_budget_observe(&b, 0, 512, 1000));
}

TEST(step_budget_zero_is_the_fixed_row_budget)
{
    srv__step_budget b;
    srv__step_budget_init(&b, 0, 512);
    learn_decode_line(&b);
    srv__step_budget_prompt_rows(&b, 16);
    srv__step_budget_observe(&b, 16, 100, 60);
    CHECK_EQ_INT(srv__step_budget_prompt_rows(&b, 16), 512 - 16);
    CHECK_NEAR(b.step_target_ms, 0, 0);
    CHECK(!srv__step_budget_observe(&b, 16, 496, 5000)); /* no target, nothing over it */
}

TEST(step_budget_prompt_cost_without_a_decode_line)
{
    srv__step_budget b;
    srv__step_budget_init(&b, -1, 512);
    /* a prompt-only step, before anything: every row is a prompt row */
    srv__step_budget_observe(&b, 0, 200, 100);
    CHECK_NEAR(b.prompt_row_ms, 0.5, 1e-9);
    /* which leaves the line one point, 0 rows in 0 ms: taken as the same for any rows, the next
       step's 10 decode rows cost nothing and its 20 prompt rows all of it, 3 ms each; the EWMA
       moves a quarter of the way */
    srv__step_budget_observe(&b, 10, 20, 60);
    CHECK_NEAR(b.prompt_row_ms, 0.5 + 0.25 * (3 - 0.5), 1e-9);
    /* the rest of that step, 60 - 1.125 x 20 = 37.5 ms, gives the line its slope */
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 10), 37.5, 1e-6);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 1), 3.75, 1e-6);
    /* a decode line that claims the whole step: the prompt rows still cost a quarter of the
       mean row (10 ms / 20 rows / 4) */
    srv__step_budget_init(&b, -1, 512);
    for (int i = 0; i < 10; i++)
        srv__step_budget_observe(&b, 10, 0, 10);
    srv__step_budget_observe(&b, 10, 10, 10);
    CHECK_NEAR(b.prompt_row_ms, 0.125, 1e-9);
}

TEST(step_budget_mixed_steps_teach_the_decode_line)
{
    /* only 1-row decode-only steps seen, then every step has 8 prompt rows at 2 ms each beside
       more and more decode rows (2 + 1 n ms): the line follows the decode rows it never saw
       alone */
    srv__step_budget b;
    srv__step_budget_init(&b, -1, 512);
    for (int i = 0; i < 20; i++)
        srv__step_budget_observe(&b, 1, 0, 3);
    for (int round = 0; round < 30; round++)
        for (int n = 2; n <= 64; n += 2)
            srv__step_budget_observe(&b, n, 8, 2 + n + 16);
    CHECK_NEAR(srv__step_budget_decode_ms(&b, 64), 66, 3);
    CHECK_NEAR(b.prompt_row_ms, 2, 0.5); /* the split follows the sweep: within a quarter */
}
