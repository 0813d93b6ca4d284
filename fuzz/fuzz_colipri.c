/* fuzz_colipri.c - the hydra YAML subset of a COLIPRI configs/ tree
 * (cli/convert_colipri.c, medsem convert --layout colipri): the bytes read
 * as config.yaml, then, when accepted, read again with that result as the
 * ${name} values, as every other file of the tree is. */
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    cJSON *root = cli_colipri_yaml("fuzz/config.yaml", (const char *)data, size, NULL);
    if (root == NULL)
        return 0;
    cJSON *o = cli_colipri_yaml("fuzz/default.yaml", (const char *)data, size, root);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_free(s);
    cJSON_Delete(o);
    cJSON_Delete(root);
    return 0;
}
