/* The step budget (server/step_budget.h): prompt rows per step from a latency target and a cost
 * model learned from the steps that ran. Pure arithmetic; the scheduler calls it on the engine
 * thread.
 */
#include "server/step_budget.h"

/* How fast the costs follow new steps: EWMA weights. A prompt row's cost moves as the prompt
 * advances (each row attends over more positions) and with the chunk's size, so it follows
 * within a few steps; the decode line over a ten-step memory. */
#define PROMPT_ALPHA 0.25
#define DECODE_ALPHA 0.1
/* The decode line needs rows that varied by about a row to have a slope; until then a step's
 * decode part is taken as the same for any rows. Above the rows seen that is an underestimate,
 * which keeps the default target low; taken as proportional to the rows, 1-row steps would
 * predict a 64-row step at 64 times their time (it costs a few times: the weights are read once)
 * and the target would grow to seconds. */
#define DECODE_MIN_VAR 0.25

void srv__step_budget_init(srv__step_budget *b, double max_step_ms, int max_batch)
{
    *b = (srv__step_budget){.max_step_ms = max_step_ms,
                            .max_batch = max_batch > 0 ? max_batch : 1,
                            .min_prompt_rows = SRV_STEP_MIN_PROMPT_ROWS};
}

double srv__step_budget_decode_ms(const srv__step_budget *b, int n)
{
    if (b->n_decode_seen == 0 || n <= 0)
        return 0;
    double var = b->dec_nn - b->dec_n * b->dec_n;
    if (var >= DECODE_MIN_VAR) {
        double slope = (b->dec_nt - b->dec_n * b->dec_t) / var;
        double icpt = b->dec_t - slope * b->dec_n;
        if (slope >= 0 && icpt >= 0)
            return icpt + slope * n;
        if (slope > 0 && b->dec_n > 0) /* the line crosses zero above 0 rows: through 0 */
            return b->dec_t / b->dec_n * n;
    }
    return b->dec_t;
}

double srv__step_budget_target_ms(const srv__step_budget *b, int n_dec)
{
    if (b->max_step_ms == 0 || (n_dec <= 0 && b->max_step_ms > 0))
        return 0;
    if (n_dec <= 0)
        return SRV_STEP_PROMPT_ONLY_MS;
    if (b->max_step_ms > 0)
        return b->max_step_ms;
    double t = SRV_STEP_AUTO_MULT * srv__step_budget_decode_ms(b, n_dec);
    return t > SRV_STEP_AUTO_FLOOR_MS ? t : SRV_STEP_AUTO_FLOOR_MS;
}

int srv__step_budget_prompt_rows(srv__step_budget *b, int n_dec)
{
    int room = b->max_batch - n_dec;
    b->step_target_ms = srv__step_budget_target_ms(b, n_dec);
    if (room <= 0)
        return 0;
    if (b->step_target_ms == 0)
        return room;
    int rows = b->min_prompt_rows;
    if (b->prompt_row_ms > 0) {
        double spare = b->step_target_ms - srv__step_budget_decode_ms(b, n_dec);
        double fit = spare / b->prompt_row_ms;
        if (fit > rows)
            rows = fit < room ? (int)fit : room;
    }
    return rows < room ? rows : room;
}

/* Adds a decode part: n decode rows took ms (beside prompt rows, what they did not take). */
static void decode_observe(srv__step_budget *b, int n, double ms)
{
    double a = b->n_decode_seen ? DECODE_ALPHA : 1.0;
    b->dec_n += a * (n - b->dec_n);
    b->dec_nn += a * ((double)n * n - b->dec_nn);
    b->dec_t += a * (ms - b->dec_t);
    b->dec_nt += a * (n * ms - b->dec_nt);
    b->n_decode_seen++;
}

bool srv__step_budget_observe(srv__step_budget *b, int n_dec, int n_prompt, double ms)
{
    bool over = b->step_target_ms > 0 && ms > b->step_target_ms;
    b->step_target_ms = 0;
    if (n_dec <= 0 && n_prompt <= 0)
        return over;
    if (n_prompt == 0) {
        decode_observe(b, n_dec, ms);
        return over;
    }
    /* The prompt rows are charged what the step took beyond the decode line's part (with no
       line yet, every row alike). A line that overestimates could leave them almost nothing,
       and the next step too many: they are charged at least a quarter of the step's mean row. */
    double mean = ms / (n_dec + n_prompt);
    double dec = b->n_decode_seen ? srv__step_budget_decode_ms(b, n_dec) : mean * n_dec;
    double per = (ms - dec) / n_prompt;
    if (per < 0.25 * mean)
        per = 0.25 * mean;
    b->prompt_row_ms =
        b->prompt_row_ms > 0 ? b->prompt_row_ms + PROMPT_ALPHA * (per - b->prompt_row_ms) : per;
    /* and the line learns from the rest, so that it follows the decode rows even when every step
       has prompt rows too (a flood of prompts): the split between the two settles as the decode
       rows vary */
    double rest = ms - b->prompt_row_ms * n_prompt;
    decode_observe(b, n_dec, rest > 0 ? rest : 0);
    return over;
}
