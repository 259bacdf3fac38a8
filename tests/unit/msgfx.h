/* The fixture the message-level unit tests share: a decoder, an encoder, a decoded message and an
 * error, fresh for each test (cmocka setup/teardown). */
#ifndef SBX_TESTS_MSGFX_H
#define SBX_TESTS_MSGFX_H

#include <stdlib.h>

#include "sbx/msg.h"

struct fx {
    struct sbx_decoder dec;
    struct sbx_out out;
    struct sbx_msg m;
    struct sbx_err err;
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));

    if (fx == NULL || sbx_decoder_init(&fx->dec) != 0) {
        free(fx);
        return -1;
    }
    sbx_out_init(&fx->out);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    sbx_decoder_destroy(&fx->dec);
    sbx_out_destroy(&fx->out);
    free(fx);
    return 0;
}

#endif /* SBX_TESTS_MSGFX_H */
