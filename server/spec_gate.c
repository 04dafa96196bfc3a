/* Speculative decoding's policy for one sequence (server/spec_gate.h). */
#include "server/spec_gate.h"

int srv__spec_gated_limit(bool int8)
{
    int n = int8 ? SRV_SPEC_GATED_DECODE_INT8 : SRV_SPEC_GATED_DECODE;
    return n > SRV_SPEC_FREE_DECODE ? n : SRV_SPEC_FREE_DECODE;
}

void srv__spec_start(srv__spec *sp, int max)
{
    *sp = (srv__spec){.max = max > 0 ? max : 0,
                      .k = max > 0 ? max : 0,
                      .acc = SRV_SPEC_RATE_PRIOR * SRV_SPEC_RATE_WEIGHT,
                      .n = SRV_SPEC_RATE_WEIGHT};
}

double srv__spec_rate(const srv__spec *sp)
{
    return sp->n > 0 ? sp->acc / sp->n : 0;
}

int srv__spec_allow(srv__spec *sp, int n_dec, int gated_decode)
{
    if (sp->k <= 0 || n_dec > gated_decode)
        return 0;
    if (sp->wait > 0) {
        sp->wait--;
        return 0;
    }
    if (n_dec <= SRV_SPEC_FREE_DECODE)
        return sp->k;
    bool low = sp->acc < SRV_SPEC_GATE_RATE * sp->n;
    if (low && ++sp->gated % SRV_SPEC_GATE_PROBE != 0)
        return 0;
    bool unproven = low || !sp->tried || sp->misses > 0;
    return unproven && sp->k > SRV_SPEC_GATE_K0 ? SRV_SPEC_GATE_K0 : sp->k;
}

void srv__spec_learn(srv__spec *sp, int k, int acc)
{
    sp->acc = sp->acc * (1 - SRV_SPEC_RATE_FORGET) + acc;
    sp->n = sp->n * (1 - SRV_SPEC_RATE_FORGET) + k;
    sp->tried = true;
    if (acc == k) {
        sp->k *= 2;
        sp->misses = 0;
    } else if (acc == 0) {
        sp->misses++;
        sp->wait = (1 << (sp->misses < 4 ? sp->misses : 4)) - 1;
        sp->k = sp->k / 2 > 1 ? sp->k / 2 : 1;
    } else {
        sp->k = acc + 1;
        sp->misses = 0;
    }
    if (sp->k > sp->max)
        sp->k = sp->max;
}
