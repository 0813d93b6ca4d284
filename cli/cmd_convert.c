/* cmd_convert.c - medsem convert: a downloaded checkpoint folder into a
 * medsem model directory (config.json, model.safetensors, vocab.txt), or
 * one PyTorch checkpoint into a safetensors file. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "util/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem convert SRC --out DST [--layout biomedclip|m3d-clip|colipri|torch]\n"
            "\n"
            "Turns a checkpoint as it is published into what medsem loads, reading PyTorch\n"
            "files with a restricted unpickler that accepts only what a state dict uses\n"
            "and never runs code (docs/models.md):\n"
            "  biomedclip  SRC a folder with open_clip_config.json, open_clip_pytorch_model.bin\n"
            "              (or open_clip_model.safetensors) and vocab.txt -> DST a model folder\n"
            "  m3d-clip    SRC a folder with config.json (model_type m3d_clip),\n"
            "              model.safetensors or pytorch_model.bin, and vocab.txt -> DST a\n"
            "              model folder\n"
            "  colipri     SRC a folder with model.safetensors (COLIPRI-CRM), vocab.txt\n"
            "              (CXR-BERT's) and the colipri package's configs/ tree (or\n"
            "              config.yaml and its groups; none: colipri 0.1.3's) -> DST a\n"
            "              model folder\n"
            "  torch       SRC one PyTorch checkpoint (.bin, .pt, .pth) -> DST a .safetensors\n"
            "              file with every tensor as float32, names kept\n"
            "Without --layout it is told from SRC's files.  A model folder is written next to\n"
            "DST and renamed into place once it loads, so DST is whole or absent.\n"
            "\n"
            "  --out DST            the model folder (or .safetensors file) to write\n"
            "  --layout L           biomedclip, m3d-clip, colipri or torch\n");
}

/* dir/name into buf; -1 when it does not fit. */
static int pjoin(char *buf, size_t n, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > n)
        return -1;
    memcpy(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b + 1);
    return 0;
}

static int exists(const char *dir, const char *name)
{
    char p[4096];
    struct stat st;
    return !pjoin(p, sizeof p, dir, name) && stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int copy_file(const char *from, const char *to)
{
    size_t len;
    char *b = util_read_file(from, &len);
    if (!b) {
        cli_error("%s: %s", from, strerror(errno));
        return -1;
    }
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(b, 1, len, f) == len;
    if (f && fclose(f))
        ok = 0;
    free(b);
    if (!ok)
        cli_error("%s: %s", to, strerror(errno));
    return ok ? 0 : -1;
}

/* config.json from the source's, with "architecture" set. */
static int write_config(const char *src, const char *arch, const char *to)
{
    size_t len;
    char *text = util_read_file(src, &len);
    if (!text) {
        cli_error("%s: %s", src, strerror(errno));
        return -1;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j || !cJSON_IsObject(j)) {
        cli_error("%s: not a JSON object", src);
        cJSON_Delete(j);
        return -1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "architecture");
    cJSON_AddStringToObject(j, "architecture", arch);
    char *out = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *f = out ? fopen(to, "w") : NULL;
    int ok = f && fputs(out, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f))
        ok = 0;
    free(out);
    if (!ok)
        cli_error("%s: %s", to, strerror(errno));
    return ok ? 0 : -1;
}

/* Weights: a safetensors file as it is, or a PyTorch checkpoint through
 * the restricted unpickler. */
static int weights(const char *src, const char *const *st_names, const char *const *pt_names,
                   const char *to)
{
    char p[4096], err[1024];
    for (const char *const *n = st_names; *n; n++)
        if (exists(src, *n)) {
            pjoin(p, sizeof p, src, *n);
            return copy_file(p, to);
        }
    for (const char *const *n = pt_names; *n; n++)
        if (exists(src, *n)) {
            pjoin(p, sizeof p, src, *n);
            if (enc_torch_to_safetensors(p, to, err, sizeof err)) {
                cli_error("%s", err);
                return -1;
            }
            return 0;
        }
    if (pt_names[0] == NULL)
        cli_error("%s: no weights (looked for %s)", src, st_names[0]);
    else
        cli_error("%s: no weights (looked for %s or %s)", src, st_names[0], pt_names[0]);
    return -1;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {{"out", required_argument, 0, 'o'},
                                             {"layout", required_argument, 0, 'l'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    const char *out = NULL, *layout = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'l': layout = optarg; break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind + 1 != argc || !out) {
        cli_error("convert needs a source and --out");
        usage(stderr);
        return CLI_USAGE;
    }
    const char *src = argv[optind];
    if (strlen(src) > 3000 || strlen(out) > 3000) {
        cli_error("a path over 3000 bytes");
        return CLI_BAD_INPUT;
    }
    struct stat st;
    if (stat(src, &st)) {
        cli_error("%s: %s", src, strerror(errno));
        return CLI_BAD_INPUT;
    }
    int dir = S_ISDIR(st.st_mode);
    if (!layout)
        layout = !dir                                        ? "torch"
                 : exists(src, "open_clip_config.json")      ? "biomedclip"
                 : exists(src, "configs/config.yaml") ||
                         exists(src, "config.yaml")          ? "colipri"
                 : exists(src, "config.json")                ? "m3d-clip"
                                                             : NULL;
    if (!layout) {
        cli_error("%s: cannot tell the layout (no open_clip_config.json, configs/config.yaml "
                  "or config.json); give --layout", src);
        return CLI_BAD_INPUT;
    }
    char err[1024];
    if (!strcmp(layout, "torch")) {
        if (dir) {
            cli_error("%s: --layout torch converts one file, not a folder", src);
            return CLI_BAD_INPUT;
        }
        if (enc_torch_to_safetensors(src, out, err, sizeof err)) {
            cli_error("%s", err);
            return CLI_BAD_INPUT;
        }
        printf("converted %s -> %s\n", src, out);
        return CLI_OK;
    }
    if (strcmp(layout, "biomedclip") && strcmp(layout, "m3d-clip") && strcmp(layout, "colipri")) {
        cli_error("--layout '%s': expected biomedclip, m3d-clip, colipri or torch", layout);
        return CLI_USAGE;
    }
    if (!dir) {
        cli_error("%s: --layout %s converts a folder", src, layout);
        return CLI_BAD_INPUT;
    }
    if (!stat(out, &st)) {
        cli_error("%s: exists; give a new folder", out);
        return CLI_BAD_INPUT;
    }
    char tmp[4096], p[4096], q[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", out, (int)getpid());
    if (mkdir(tmp, 0755)) {
        cli_error("%s: %s", tmp, strerror(errno));
        return CLI_BAD_INPUT;
    }
    int bio = !strcmp(layout, "biomedclip"), col = !strcmp(layout, "colipri"), rc = 0;
    pjoin(q, sizeof q, tmp, "config.json");
    if (col) {
        rc = cli_colipri_config(src, q);
    } else {
        pjoin(p, sizeof p, src, bio ? "open_clip_config.json" : "config.json");
        rc = write_config(p, layout, q);
    }
    pjoin(q, sizeof q, tmp, "model.safetensors");
    static const char *const bio_st[] = {"open_clip_model.safetensors", "model.safetensors", NULL};
    static const char *const bio_pt[] = {"open_clip_pytorch_model.bin", "pytorch_model.bin", NULL};
    static const char *const m3d_st[] = {"model.safetensors", NULL};
    static const char *const m3d_pt[] = {"pytorch_model.bin", NULL};
    static const char *const col_pt[] = {NULL};
    if (!rc)
        rc = weights(src, bio ? bio_st : m3d_st, bio ? bio_pt : col ? col_pt : m3d_pt, q);
    pjoin(p, sizeof p, src, "vocab.txt");
    pjoin(q, sizeof q, tmp, "vocab.txt");
    if (!rc && !exists(src, "vocab.txt")) {
        cli_error("%s: no vocab.txt (the text tower's WordPiece vocabulary)", src);
        rc = -1;
    }
    if (!rc)
        rc = copy_file(p, q);
    /* it must load before it takes the name */
    enc_pipeline *pl = NULL;
    if (!rc && enc_pipeline_open(tmp, 1, &pl, err, sizeof err)) {
        cli_error("the converted model does not load: %s", err);
        rc = -1;
    }
    int dim = pl ? enc_pipeline_dim(pl) : 0;
    enc_pipeline_close(pl);
    if (!rc && rename(tmp, out)) {
        cli_error("%s: %s", out, strerror(errno));
        rc = -1;
    }
    if (rc) {
        cli_remove_model_dir(tmp);
        return CLI_BAD_INPUT;
    }
    printf("converted %s (%s) -> %s: a %d-dimensional model\n", src, layout, out, dim);
    return CLI_OK;
}
