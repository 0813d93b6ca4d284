/* convert_colipri.c - config.json of a COLIPRI model folder from the
 * checkpoint's hydra configs (medsem convert --layout colipri).
 *
 * COLIPRI publishes model.safetensors; its model and processor are described
 * by the `colipri` package's configs/ tree (hydra YAML: config.yaml with the
 * shared values input_size, spacing, image_embed_dim, projection_dim, ...,
 * and one default.yaml per group).  medsem reads the package's keys from
 * JSON (encoder/model.c, cfg_colipri), so the conversion resolves the few
 * files that describe what medsem runs - config.yaml, model/image_encoder/
 * {backbone, projector, pooler}, model/text_encoder/pooler and
 * processor/tokenizer, each default.yaml - substitutes ${name} from
 * config.yaml, and writes them as one JSON object.  The text backbone's
 * config is not in the tree (hydra loads CXR-BERT with from_pretrained):
 * its sizes are read from the checkpoint's tensors when the model loads.
 * Without a configs/ tree the values of colipri 0.1.3's are used.
 *
 * The YAML read here is the subset those files use: `key: scalar` and
 * `key:` followed by a list of `- scalar` items, comments, and nested
 * blocks (skipped).  Anything else is refused with the file and line.
 * Nothing here is YAML-complete (no flow style, anchors or multi-line
 * strings): a file that needs them is refused, not misread. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "util/util.h"

/* colipri 0.1.3's configs, as the files below would give them. */
static const char *const builtin_root =
    "input_size: 192\nspacing: 2\npadding_mode: minimum\nimage_embed_dim: 864\n"
    "projection_dim: 768\norientation: RAS\n";
static const char *const builtin_backbone =
    "input_channels: 1\nnum_classes: 1\neva_depth: 16\neva_numheads: 12\n"
    "embed_dim: ${image_embed_dim}\npatch_embed_size:\n  - 8\n  - 8\n  - 8\n"
    "input_shape:\n  - ${input_size}\n  - ${input_size}\n  - ${input_size}\n"
    "use_rot_pos_emb: True\nuse_abs_pos_embed: False\ndrop_path_rate: 0.2\n"
    "init_values: 0.1\nscale_attn_inner: True\nnum_register_tokens: 0\n";
static const char *const builtin_projector =
    "in_channels: ${image_embed_dim}\nout_channels: ${projection_dim}\nkernel_size: 1\n";
static const char *const builtin_pooler = "embed_dim: ${projection_dim}\nnum_heads: 12\n";
static const char *const builtin_tokenizer = "model_max_length: 512\n";

typedef struct yctx {
    const char *file;
    const cJSON *vars; /* config.yaml's values, for ${name}; NULL while reading it */
} yctx;

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* A YAML scalar as JSON: booleans (True/true/yes, False/false/no), null,
 * numbers, ${name} from the root config, else a string (quotes removed). */
static cJSON *scalar(const yctx *y, char *v, int line)
{
    size_t n = strlen(v);
    if (n >= 2 && ((v[0] == '"' && v[n - 1] == '"') || (v[0] == '\'' && v[n - 1] == '\''))) {
        v[n - 1] = '\0';
        return cJSON_CreateString(v + 1);
    }
    if (!strncmp(v, "${", 2)) {
        if (v[n - 1] != '}' || y->vars == NULL) {
            cli_error("%s:%d: '%s': only ${name} of config.yaml's values", y->file, line, v);
            return NULL;
        }
        v[n - 1] = '\0';
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(y->vars, v + 2);
        if (c == NULL) {
            cli_error("%s:%d: ${%s}: config.yaml has no %s", y->file, line, v + 2, v + 2);
            return NULL;
        }
        return cJSON_Duplicate(c, 1);
    }
    if (!strcmp(v, "True") || !strcmp(v, "true") || !strcmp(v, "yes"))
        return cJSON_CreateTrue();
    if (!strcmp(v, "False") || !strcmp(v, "false") || !strcmp(v, "no"))
        return cJSON_CreateFalse();
    if (!strcmp(v, "null") || !strcmp(v, "~") || !*v)
        return cJSON_CreateNull();
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (*end == '\0' && errno == 0 && isfinite(d) && (isdigit((unsigned char)v[0]) ||
                                                      v[0] == '-' || v[0] == '+' || v[0] == '.'))
        return cJSON_CreateNumber(d);
    return cJSON_CreateString(v);
}

/* The top-level keys of one YAML file into obj (keys starting with '_' and
 * `defaults` are left out; nested blocks are skipped).  0 or -1 (said). */
static int read_yaml(const yctx *y, char *text, cJSON *obj)
{
    char *save = NULL, *key = NULL;
    cJSON *list = NULL;
    int line = 0, skipping = 0;
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        line++;
        char *hash = strstr(ln, " #");
        if (hash)
            *hash = '\0';
        if (ln[0] == '#')
            continue;
        int indent = (int)strspn(ln, " ");
        char *s = trim(ln);
        if (!*s)
            continue;
        if (indent > 0) {
            if (skipping)
                continue;
            if (list != NULL && cJSON_GetArraySize(list) == 0 && strncmp(s, "- ", 2)) {
                /* a nested block: not a key medsem reads */
                cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
                list = NULL;
                skipping = 1;
                continue;
            }
            if (list == NULL || strncmp(s, "- ", 2)) {
                cli_error("%s:%d: expected a list item '- value' under '%s'", y->file, line,
                          key ? key : "?");
                return -1;
            }
            cJSON *v = scalar(y, trim(s + 2), line);
            if (v == NULL)
                return -1;
            cJSON_AddItemToArray(list, v);
            continue;
        }
        char *colon = strchr(s, ':');
        if (colon == NULL) {
            cli_error("%s:%d: expected 'key: value'", y->file, line);
            return -1;
        }
        *colon = '\0';
        key = trim(s);
        char *val = trim(colon + 1);
        list = NULL;
        skipping = key[0] == '_' || !strcmp(key, "defaults");
        if (skipping)
            continue;
        cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
        if (*val) {
            cJSON *v = scalar(y, val, line);
            if (v == NULL)
                return -1;
            cJSON_AddItemToObject(obj, key, v);
        } else {
            /* a list follows, or a nested block: an empty list stays an
             * empty array, which no key medsem reads accepts */
            list = cJSON_AddArrayToObject(obj, key);
        }
    }
    return 0;
}

cJSON *cli_colipri_yaml(const char *file, const char *text, size_t len, const cJSON *vars)
{
    char *copy = malloc(len + 1);
    cJSON *o = copy ? cJSON_CreateObject() : NULL;
    if (o == NULL) {
        free(copy);
        cli_error("out of memory");
        return NULL;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    yctx y = {file, vars};
    if (read_yaml(&y, copy, o)) {
        cJSON_Delete(o);
        o = NULL;
    }
    free(copy);
    return o;
}

/* dir/rel read as YAML into a new object, or builtin when dir is NULL. */
static cJSON *load(const char *dir, const char *rel, const char *builtin, const cJSON *vars)
{
    char path[4096];
    char *text;
    size_t len;
    if (dir != NULL) {
        if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path) {
            cli_error("%s/%s: path too long", dir, rel);
            return NULL;
        }
        text = util_read_file(path, &len);
        if (text == NULL) {
            cli_error("%s: %s (a COLIPRI configs/ tree has it)", path, strerror(errno));
            return NULL;
        }
    } else {
        snprintf(path, sizeof path, "colipri 0.1.3's %s", rel);
        return cli_colipri_yaml(path, builtin, strlen(builtin), vars);
    }
    cJSON *o = cli_colipri_yaml(path, text, len, vars);
    free(text);
    return o;
}

static int add(cJSON *parent, const char *key, cJSON *child)
{
    if (child == NULL)
        return -1;
    cJSON_AddItemToObject(parent, key, child);
    return 0;
}

int cli_colipri_config(const char *src, const char *to)
{
    char dir[4096];
    struct stat st;
    const char *cd = NULL;
    snprintf(dir, sizeof dir, "%s/configs/config.yaml", src);
    if (!stat(dir, &st)) {
        snprintf(dir, sizeof dir, "%s/configs", src);
        cd = dir;
    } else {
        snprintf(dir, sizeof dir, "%s/config.yaml", src);
        if (!stat(dir, &st)) {
            snprintf(dir, sizeof dir, "%s", src);
            cd = dir;
        }
    }
    cJSON *root = load(cd, "config.yaml", builtin_root, NULL);
    if (root == NULL)
        return -1;
    cJSON *model = cJSON_CreateObject(), *img = cJSON_CreateObject();
    cJSON *txt = cJSON_CreateObject(), *proc = cJSON_CreateObject();
    int rc = add(root, "model", model) || add(model, "image_encoder", img) ||
             add(model, "text_encoder", txt) || add(root, "processor", proc) ||
             add(img, "backbone", load(cd, "model/image_encoder/backbone/default.yaml",
                                      builtin_backbone, root)) ||
             add(img, "projector", load(cd, "model/image_encoder/projector/default.yaml",
                                       builtin_projector, root)) ||
             add(img, "pooler", load(cd, "model/image_encoder/pooler/default.yaml",
                                    builtin_pooler, root)) ||
             add(txt, "backbone", cJSON_CreateObject()) ||
             add(txt, "pooler", load(cd, "model/text_encoder/pooler/default.yaml",
                                    builtin_pooler, root)) ||
             add(proc, "tokenizer", load(cd, "processor/tokenizer/default.yaml",
                                        builtin_tokenizer, root));
    if (!rc) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "architecture");
        cJSON_AddStringToObject(root, "architecture", "colipri");
        char *out = cJSON_Print(root);
        FILE *f = out ? fopen(to, "w") : NULL;
        int ok = f && fputs(out, f) >= 0 && fputc('\n', f) != EOF;
        if (f && fclose(f))
            ok = 0;
        free(out);
        if (!ok) {
            cli_error("%s: %s", to, strerror(errno));
            rc = -1;
        }
    }
    cJSON_Delete(root);
    return rc ? -1 : 0;
}
