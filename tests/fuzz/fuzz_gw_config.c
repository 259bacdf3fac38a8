/*
 * libFuzzer target for the create config (x-deno-sandbox-config): the first byte picks the
 * input's form, the rest is either the header's value (base64 of JSON) taken through
 * gw_config_decode, as the create route does, or the JSON text itself (so that mutations reach
 * the checks without having to keep the base64 valid); the config then goes through
 * gw_sandbox_config_check, the checks gw_sandbox_create makes before booting anything.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *config = NULL;
    char why[1024] = "";
    const char *code = NULL;

    if (size < 1) {
        return 0;
    }
    if (data[0] & 1) {
        char *hdr = malloc(size);
        if (hdr == NULL) {
            return 0;
        }
        memcpy(hdr, data + 1, size - 1);
        hdr[size - 1] = '\0';
        int r = gw_config_decode(hdr, &config, why, sizeof(why));
        free(hdr);
        if ((r < 0) != (config == NULL) || (r < 0 && why[0] == '\0')) {
            abort();
        }
        if (r < 0) {
            return 0;
        }
    } else {
        json_error_t jerr;
        config = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
        if (config == NULL) {
            return 0;
        }
    }
    why[0] = '\0';
    if (gw_sandbox_config_check(config, &code, why, sizeof(why)) < 0) {
        if (code == NULL || why[0] == '\0' || memchr(why, '\0', sizeof(why)) == NULL) {
            abort();
        }
    }
    json_decref(config);
    return 0;
}
