/*
 * libFuzzer target for sbx-init's /etc/sbx/init.conf parser (init/config.c,
 * init_config_load_text, what init_config_load_file applies): the input is the file's text,
 * applied over the defaults, then the command line "sbx.hostname=x" over it (the file comes first,
 * docs/INIT.md). The configuration must be valid after each (fuzz_init_check.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_init_check.h"
#include "init.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char text[INIT_FILE_MAX];
static struct init_config cfg;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
    char line[] = "sbx.hostname=x";

    /* init_read_file: at most INIT_FILE_MAX - 1 bytes, as a C string. */
    memcpy(text, data, n);
    text[n] = '\0';
    cfg.quiet = true;
    init_config_defaults(&cfg);
    init_config_load_text(&cfg, text, "/etc/sbx/init.conf");
    fuzz_init_check(&cfg);
    init_config_load_cmdline(&cfg, line);
    fuzz_init_check(&cfg);
    if (strcmp(cfg.hostname, "x") != 0) {
        abort();
    }
    return 0;
}
