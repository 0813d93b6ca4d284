/* cmd_encode.c - medsem encode: text, images and volumes to embeddings. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "indexer/indexer.h"
#include "util/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem encode --model DIR (--text STR | --image FILE | --volume FILE) [options]\n"
            "       medsem encode --model DIR --manifest FILE [--out PREFIX] [options]\n"
            "\n"
            "Prints the L2-normalised embedding of one input, or encodes every item of a\n"
            "JSONL manifest (one object per line: \"file\" relative to the manifest's folder,\n"
            "\"kind\" image|volume|report, \"modality\", \"report\"; report items encode their\n"
            "report text; an image or volume item with a report also gets the report's\n"
            "vector, as 'medsem ingest' gives it).  With --out, writes PREFIX.<space>.npy\n"
            "and PREFIX.<space>.jsonl per space (image, volume, report), ready for 'medsem\n"
            "import'; PREFIX's folder is made (with its parents) before anything is\n"
            "encoded.\n"
            "\n"
            "  --model DIR        model directory (config.json, model.safetensors, vocab.txt)\n"
            "  --modality M       CT, MR, CR, ... for --image/--volume (intensity mapping)\n"
            "  --batch N          inputs per forward pass (default 8)\n"
            "  --threads N        CPU threads (default: all cores)\n"
            "  --strict           stop at the first bad manifest item (default: skip it)\n"
            "  --json             JSON output\n"
            "  --quiet            no progress bar\n");
}

static void print_vec(const char *kind, const enc_pipeline *p, const float *v, int json)
{
    int d = enc_pipeline_dim(p);
    if (json) {
        printf("{\"model\":");
        cli_json_string(stdout, enc_pipeline_model_id(p));
        printf(",\"arch\":\"%s\",\"kind\":\"%s\",\"dim\":%d,\"embedding\":[",
               enc_model_arch(enc_pipeline_model(p)), kind, d);
        for (int i = 0; i < d; i++)
            printf("%s%.8g", i ? "," : "", (double)v[i]);
        printf("]}\n");
        return;
    }
    printf("%s embedding, %d dimensions (%s model %.12s)\n", kind, d,
           enc_model_arch(enc_pipeline_model(p)), enc_pipeline_model_id(p));
    for (int i = 0; i < d; i++)
        printf("%s%.6f", i % 8 ? " " : (i ? "\n" : ""), (double)v[i]);
    printf("\n");
}

/* ---- manifests ----------------------------------------------------------------- */

enum { K_IMAGE, K_VOLUME, K_REPORT, NK };
static const char *const kind_names[NK] = {"image", "volume", "report"};

typedef struct item {
    size_t line;
    int kind;
    char *path;     /* resolved file, or NULL for reports */
    char *modality;
    char *text;     /* report text for report items */
    char *json;     /* the manifest line, as the item's metadata */
} item;

typedef struct outset {
    float *v;
    char **meta;
    size_t n, cap;
} outset;

static int outset_push(outset *o, const float *v, int d, const char *meta)
{
    if (o->n == o->cap) {
        size_t nc = o->cap ? 2 * o->cap : 256;
        float *nv = realloc(o->v, nc * d * sizeof *nv);
        if (!nv)
            return -1;
        o->v = nv;
        char **nm = realloc(o->meta, nc * sizeof *nm);
        if (!nm)
            return -1;
        o->meta = nm;
        o->cap = nc;
    }
    memcpy(o->v + o->n * d, v, d * sizeof(float));
    o->meta[o->n] = strdup(meta);
    if (!o->meta[o->n])
        return -1;
    o->n++;
    return 0;
}

static void item_clear(item *it)
{
    free(it->path);
    free(it->modality);
    free(it->text);
    free(it->json);
    memset(it, 0, sizeof *it);
}

/* Parses one manifest line; returns 0, or -1 with a reason in err. */
static int parse_item(const char *line, size_t lineno, const char *base, item *it, char *err,
                      size_t errlen)
{
    memset(it, 0, sizeof *it);
    it->line = lineno;
    cJSON *j = cJSON_Parse(line);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        snprintf(err, errlen, "not a JSON object");
        return -1;
    }
    char *kind = cli_json_strdup(j, "kind");
    char *file = cli_json_strdup(j, "file");
    it->modality = cli_json_strdup(j, "modality");
    it->text = cli_json_strdup(j, "report");
    it->json = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    int rc = 0;
    it->kind = -1;
    for (int k = 0; k < NK; k++)
        if (kind && !strcmp(kind, kind_names[k]))
            it->kind = k;
    if (it->kind < 0) {
        snprintf(err, errlen, "field 'kind' must be image, volume or report");
        rc = -1;
    } else if (it->kind == K_REPORT) {
        if (!it->text || util_blank(it->text)) {
            snprintf(err, errlen, "a report item needs a 'report' that is not blank");
            rc = -1;
        }
    } else if (!file || !*file) {
        snprintf(err, errlen, "an %s item needs 'file'", kind_names[it->kind]);
        rc = -1;
    } else if (!(it->path = cli_manifest_path(base, file))) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    free(kind);
    free(file);
    return rc;
}

/* The report vectors of the image and volume items of a batch that carry
 * a report (what ingest stores in the report space beside their visual
 * vector): encoded as one text batch into out (n rows; has[i] says which
 * rows hold one).  Items marked failed (kind < 0) are skipped.  0, or -1
 * with the reason printed. */
static int visual_reports(enc_worker *w, const enc_pipeline *p, const item *b, int n, float *out,
                          unsigned char *has, const char *manifest)
{
    int d = enc_pipeline_dim(p), m = 0;
    const char **t = malloc((size_t)n * sizeof *t);
    int *at = malloc((size_t)n * sizeof *at);
    float *v = malloc((size_t)n * d * sizeof *v);
    int rc = 0;
    if (!t || !at || !v) {
        cli_error("out of memory");
        rc = -1;
    }
    for (int i = 0; !rc && i < n; i++) {
        has[i] = b[i].kind >= 0 && b[i].kind != K_REPORT && b[i].text && !util_blank(b[i].text);
        if (has[i]) {
            t[m] = b[i].text;
            at[m++] = i;
        }
    }
    char err[1024];
    if (!rc && m && enc_worker_text(w, t, m, v, err, sizeof err)) {
        cli_error("%s: %s", manifest, err);
        rc = -1;
    }
    for (int k = 0; !rc && k < m; k++)
        memcpy(out + (size_t)at[k] * d, v + (size_t)k * d, (size_t)d * sizeof *v);
    free(t);
    free(at);
    free(v);
    return rc;
}

/* Encodes one batch of same-kind items; on failure retries them one by one
 * so that only the bad ones are skipped.  Returns the number that failed,
 * or -1 to stop. */
static int run_batch(enc_worker *w, const enc_pipeline *p, item *b, int n, outset *outs,
                     const char *manifest, int strict, FILE *jsonl_out)
{
    int d = enc_pipeline_dim(p);
    float *v = malloc((size_t)n * d * sizeof *v);
    const char **a = malloc((size_t)n * sizeof *a), **m = malloc((size_t)n * sizeof *m);
    if (!v || !a || !m) {
        free(v);
        free(a);
        free(m);
        cli_error("out of memory");
        return -1;
    }
    int bad = 0;
    char err[1024];
    for (int single = n == 1; single <= 1; single++) {
        int step = single ? 1 : n;
        int ok_all = 1;
        for (int s = 0; s < n; s += step) {
            for (int i = 0; i < step; i++) {
                a[i] = b[s + i].kind == K_REPORT ? b[s + i].text : b[s + i].path;
                m[i] = b[s + i].modality;
            }
            int rc = b[s].kind == K_REPORT ? enc_worker_text(w, a, step, v + (size_t)s * d, err, sizeof err)
                     : b[s].kind == K_IMAGE ? enc_worker_images(w, a, m, step, v + (size_t)s * d, err, sizeof err)
                                             : enc_worker_volumes(w, a, m, step, v + (size_t)s * d, err, sizeof err);
            if (rc && !single) {
                ok_all = 0;
                break;
            }
            if (rc) {
                cli_error("%s:%zu: %s", manifest, b[s].line, err);
                b[s].kind = -1 - b[s].kind; /* mark failed */
                bad++;
                if (strict) {
                    free(v);
                    free(a);
                    free(m);
                    return -1;
                }
            }
        }
        if (ok_all || single)
            break;
    }
    float *rv = malloc((size_t)n * d * sizeof *rv);
    unsigned char *has = calloc((size_t)n, 1);
    if (!rv || !has || visual_reports(w, p, b, n, rv, has, manifest))
        bad = -1;
    for (int i = 0; i < n && bad >= 0; i++) {
        int k = b[i].kind;
        if (k < 0) {
            b[i].kind = -1 - k;
            continue;
        }
        for (int r = 0; r < 1 + has[i]; r++) { /* the item's vector, then its report's */
            int kk = r ? K_REPORT : k;
            const float *x = (r ? rv : v) + (size_t)i * d;
            if (jsonl_out) {
                fprintf(jsonl_out, "{\"line\":%zu,\"kind\":\"%s\",\"embedding\":[", b[i].line,
                        kind_names[kk]);
                for (int j = 0; j < d; j++)
                    fprintf(jsonl_out, "%s%.8g", j ? "," : "", (double)x[j]);
                fprintf(jsonl_out, "]}\n");
            } else if (outset_push(&outs[kk], x, d, b[i].json)) {
                cli_error("out of memory");
                bad = -1;
                break;
            }
        }
    }
    free(rv);
    free(has);
    free(v);
    free(a);
    free(m);
    return bad;
}

static int write_outputs(const char *prefix, outset *outs, int d)
{
    for (int k = 0; k < NK; k++) {
        if (!outs[k].n)
            continue;
        char *np = NULL, *jp = NULL;
        char err[512];
        if (asprintf(&np, "%s.%s.npy", prefix, kind_names[k]) < 0 ||
            asprintf(&jp, "%s.%s.jsonl", prefix, kind_names[k]) < 0) {
            cli_error("out of memory");
            return -1;
        }
        int rc = idx_npy_write(np, outs[k].v, outs[k].n, (size_t)d, err, sizeof err);
        FILE *f = rc ? NULL : fopen(jp, "w");
        if (rc)
            cli_error("%s", err);
        else if (!f)
            cli_error("%s: %s", jp, strerror(errno));
        for (size_t i = 0; f && i < outs[k].n; i++)
            fprintf(f, "%s\n", outs[k].meta[i]);
        if (f && fclose(f)) {
            cli_error("%s: write error", jp);
            f = NULL;
            rc = -1;
        }
        if (!rc && f == NULL)
            rc = -1;
        if (!rc)
            printf("wrote %zu %s embeddings to %s and %s\n", outs[k].n, kind_names[k], np, jp);
        free(np);
        free(jp);
        if (rc)
            return -1;
    }
    return 0;
}

/* Encodes the items of manifest into outs (a row per vector, by space), or,
 * when jsonl_out is given, as JSON lines to it.  max > 0 takes the first max
 * items of each kind and passes over the rest.  Returns a CLI_ code; the
 * caller frees outs (outs_free).  *stopped: 1 when it stopped before the end
 * (a bad item under strict, or out of memory), 0 when bad items (if any)
 * were skipped. */
static int encode_manifest(const enc_pipeline *p, enc_worker *w, int batch, const char *manifest,
                           size_t max, int strict, int quiet, FILE *jsonl_out, outset outs[NK],
                           int *stopped)
{
    *stopped = 1;
    FILE *f = fopen(manifest, "r");
    if (!f) {
        cli_error("%s: %s", manifest, strerror(errno));
        return CLI_BAD_INPUT;
    }
    char *mcopy = strdup(manifest);
    const char *base = mcopy ? dirname(mcopy) : ".";
    /* Count lines for the progress bar. */
    size_t total = 0;
    int ch, last = '\n';
    while ((ch = fgetc(f)) != EOF) {
        if (ch == '\n')
            total++;
        last = ch;
    }
    if (last != '\n')
        total++;
    rewind(f);
    cli_progress pr;
    cli_progress_start(&pr, "encode", total, quiet);
    size_t taken[NK] = {0};
    item *b = calloc((size_t)batch, sizeof *b);
    char *line = NULL;
    size_t cap = 0, lineno = 0, done = 0, ok = 0, failed = 0;
    ssize_t len;
    int nb = 0, stop = 0, broken = 0; /* broken: a batch failed under --strict */
    while (!stop && b && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0) {
            done++;
            continue;
        }
        item it;
        char err[256];
        if (parse_item(line, lineno, base, &it, err, sizeof err)) {
            cli_error("%s:%zu: %s", manifest, lineno, err);
            item_clear(&it);
            failed++;
            done++;
            if (strict)
                stop = 1;
            continue;
        }
        if (max && taken[it.kind]++ >= max) {
            item_clear(&it);
            done++;
            continue;
        }
        /* A batch holds items of one kind. */
        if (nb && (b[0].kind != it.kind || nb == batch)) {
            int r = run_batch(w, p, b, nb, outs, manifest, strict, jsonl_out);
            if (r < 0)
                stop = broken = 1;
            else {
                failed += (size_t)r;
                ok += (size_t)(nb - r);
            }
            done += (size_t)nb;
            for (int i = 0; i < nb; i++)
                item_clear(&b[i]);
            nb = 0;
            cli_progress_update(&pr, done);
        }
        if (stop) {
            item_clear(&it);
            break;
        }
        b[nb++] = it;
    }
    /* Items read before a bad line under --strict are still encoded. */
    if (!broken && nb) {
        int r = run_batch(w, p, b, nb, outs, manifest, strict, jsonl_out);
        if (r < 0)
            stop = broken = 1;
        else {
            failed += (size_t)r;
            ok += (size_t)(nb - r);
        }
        done += (size_t)nb;
    }
    for (int i = 0; b && i < nb; i++)
        item_clear(&b[i]);
    cli_progress_finish(&pr, done);
    free(line);
    free(b);
    free(mcopy);
    fclose(f);
    *stopped = stop || !b;
    int rc = *stopped ? CLI_BAD_INPUT : CLI_OK;
    if (!b)
        cli_error("out of memory");
    else if (stop)
        fprintf(stderr, "medsem: stopped at the first bad item; %zu item%s encoded before it\n",
                ok, ok == 1 ? "" : "s");
    else
        fprintf(stderr, "medsem: encoded %zu items, %zu skipped as bad input\n", ok, failed);
    if (failed && rc == CLI_OK)
        rc = CLI_BAD_INPUT;
    return rc;
}

static void outs_free(outset outs[NK])
{
    for (int k = 0; k < NK; k++) {
        for (size_t i = 0; i < outs[k].n; i++)
            free(outs[k].meta[i]);
        free(outs[k].meta);
        free(outs[k].v);
    }
}

int cmd_encode(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},   {"text", required_argument, 0, 't'},
        {"image", required_argument, 0, 'i'},   {"volume", required_argument, 0, 'v'},
        {"modality", required_argument, 0, 'M'}, {"manifest", required_argument, 0, 'f'},
        {"out", required_argument, 0, 'o'},     {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 'T'}, {"strict", no_argument, 0, 's'},
        {"json", no_argument, 0, 'j'},          {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *model = NULL, *text = NULL, *image = NULL, *volume = NULL, *modality = NULL;
    const char *manifest = NULL, *prefix = NULL;
    uint64_t batch = 8, threads = 0;
    int json = 0, strict = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': text = optarg; break;
        case 'i': image = optarg; break;
        case 'v': volume = optarg; break;
        case 'M': modality = optarg; break;
        case 'f': manifest = optarg; break;
        case 'o': prefix = optarg; break;
        case 's': strict = 1; break;
        case 'j': json = 1; break;
        case 'q': quiet = 1; break;
        case 'b':
            if (cli_parse_u64(optarg, 1, 4096, &batch)) {
                cli_error("--batch '%s': expected an integer from 1 to 4096", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'T':
            if (cli_parse_u64(optarg, 1, 1024, &threads)) {
                cli_error("--threads '%s': expected an integer from 1 to 1024", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    int inputs = !!text + !!image + !!volume + !!manifest;
    if (optind < argc || !model || inputs != 1) {
        cli_error("encode needs --model and exactly one of --text, --image, --volume, --manifest");
        usage(stderr);
        return CLI_USAGE;
    }
    if (prefix && !manifest) {
        cli_error("--out goes with --manifest");
        return CLI_USAGE;
    }
    if (text && util_blank(text)) {
        cli_error("--text: the text is blank (empty or only white space)");
        return CLI_BAD_INPUT;
    }
    if (prefix) {
        /* the output folder first: a bad --out must not cost a whole run */
        char *pc = strdup(prefix);
        int mk = pc ? util_mkdir_p(dirname(pc)) : ENOMEM;
        if (mk) {
            cli_error("--out %s: %s%s", prefix,
                      mk == ENOTDIR ? "its folder, or one above it, exists and is not a directory"
                                    : strerror(mk),
                      "; nothing was encoded");
            free(pc);
            return CLI_BAD_INPUT;
        }
        free(pc);
    }
    char err[1024];
    enc_pipeline *p = NULL;
    enc_worker *w = NULL;
    if (enc_pipeline_open(model, (int)threads, &p, err, sizeof err)) {
        cli_error("%s", err);
        return CLI_BAD_INPUT;
    }
    int rc = CLI_BAD_INPUT;
    if (enc_worker_new(p, manifest ? (int)batch : 1, &w, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    if (manifest) {
        outset outs[NK];
        memset(outs, 0, sizeof outs);
        int stopped;
        rc = encode_manifest(p, w, (int)batch, manifest, 0, strict, quiet, prefix ? NULL : stdout,
                             outs, &stopped);
        /* written even when bad items were skipped (the exit status says so),
         * not after a stop */
        if (prefix && !stopped &&
            write_outputs(prefix, outs, enc_pipeline_dim(p)))
            rc = CLI_BAD_INPUT;
        outs_free(outs);
        goto out;
    }
    float *v = malloc((size_t)enc_pipeline_dim(p) * sizeof *v);
    if (!v) {
        cli_error("out of memory");
        goto out;
    }
    const char *mods[1] = {modality};
    int e = text ? enc_worker_text(w, &text, 1, v, err, sizeof err)
            : image ? enc_worker_images(w, &image, mods, 1, v, err, sizeof err)
                    : enc_worker_volumes(w, &volume, mods, 1, v, err, sizeof err);
    if (e)
        cli_error("%s", err);
    else
        print_vec(text ? "text" : image ? "image" : "volume", p, v, json);
    free(v);
    rc = e ? CLI_BAD_INPUT : CLI_OK;
out:
    enc_worker_free(w);
    enc_pipeline_close(p);
    return rc;
}

/* ---- medsem calibrate --------------------------------------------------------- */

static void calibrate_usage(FILE *f)
{
    fprintf(f,
            "usage: medsem calibrate --model DIR --manifest FILE [--max N] [options]\n"
            "\n"
            "Measures where the model puts each kind of input: encodes the first N image\n"
            "items, the first N volume items and the first N report items of a manifest\n"
            "(the model's training studies, as 'medsem encode' reads them; an image or\n"
            "volume item's report counts as a report) and writes the mean embedding of\n"
            "each kind to DIR/modality_means.json.  With the file there, a radiograph or\n"
            "volume query that searches another kind (search, serve, eval) moves by the\n"
            "difference of the two means and is normalised again, which closes the gap\n"
            "between the kinds' cones; text queries stay as they are.  Any bad item\n"
            "stops it, and nothing is written.\n"
            "\n"
            "  --model DIR        model directory (config.json, model.safetensors, vocab.txt)\n"
            "  --manifest FILE    JSONL manifest (\"file\", \"kind\", \"modality\", \"report\")\n"
            "  --max N            items of each kind to average (default 2000)\n"
            "  --batch N          inputs per forward pass (default 8)\n"
            "  --threads N        CPU threads (default: all cores)\n"
            "  --quiet            no progress bar\n");
}

int cmd_calibrate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},   {"manifest", required_argument, 0, 'f'},
        {"max", required_argument, 0, 'n'},     {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 'T'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *model = NULL, *manifest = NULL;
    uint64_t batch = 8, threads = 0, max = 2000;
    int quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'f': manifest = optarg; break;
        case 'q': quiet = 1; break;
        case 'n':
            if (cli_opt_u64("max", optarg, 1, 10000000, &max))
                return CLI_BAD_INPUT;
            break;
        case 'b':
            if (cli_opt_u64("batch", optarg, 1, 4096, &batch))
                return CLI_BAD_INPUT;
            break;
        case 'T':
            if (cli_opt_u64("threads", optarg, 1, 1024, &threads))
                return CLI_BAD_INPUT;
            break;
        case 'h': calibrate_usage(stdout); return CLI_OK;
        default: calibrate_usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !model || !manifest) {
        cli_error("calibrate needs --model and --manifest");
        calibrate_usage(stderr);
        return CLI_USAGE;
    }
    char err[1024];
    enc_pipeline *p = NULL;
    enc_worker *w = NULL;
    outset outs[NK];
    memset(outs, 0, sizeof outs);
    float *mean = NULL;
    char *old = NULL;
    int rc = CLI_BAD_INPUT, stopped = 1;
    /* Opening the model reads an old modality_means.json too: one made for
     * other weights is refused there (the means' errors begin with the
     * file's path), and would stop the run that replaces it. */
    if (asprintf(&old, "%s/%s", model, ENC_MEANS_FILE) < 0) {
        old = NULL;
        cli_error("out of memory");
        goto out;
    }
    if (enc_pipeline_open(model, (int)threads, &p, err, sizeof err)) {
        if (strncmp(err, old, strlen(old)) || unlink(old)) {
            cli_error("%s", err);
            goto out;
        }
        fprintf(stderr, "medsem: removed %s, which this model cannot use: %s\n", old,
                err + strlen(old) + 2);
        if (enc_pipeline_open(model, (int)threads, &p, err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
    }
    if (enc_worker_new(p, (int)batch, &w, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    if (encode_manifest(p, w, (int)batch, manifest, (size_t)max, 1, quiet, NULL, outs,
                        &stopped) != CLI_OK) {
        cli_error("%s: nothing was written", manifest);
        goto out;
    }
    int d = enc_pipeline_dim(p), kinds = 0;
    for (int k = 0; k < NK; k++)
        kinds += outs[k].n > 0;
    if (kinds < 2) {
        cli_error("%s: calibration needs items of two kinds at least (images, volumes, reports); "
                  "the manifest gave %zu images, %zu volumes and %zu reports",
                  manifest, outs[K_IMAGE].n, outs[K_VOLUME].n, outs[K_REPORT].n);
        goto out;
    }
    if (!(mean = calloc((size_t)NK * d, sizeof *mean))) {
        cli_error("out of memory");
        goto out;
    }
    /* The manifest's kinds are the encoder's, in its order: the means go
     * to enc_means_save as they are. */
    _Static_assert((int)K_IMAGE == (int)ENC_IMAGE && (int)K_VOLUME == (int)ENC_VOLUME &&
                   (int)K_REPORT == (int)ENC_TEXT,
                   "manifest kinds follow enc_kind");
    const float *means[NK];
    size_t count[NK];
    double norm[NK];
    for (int k = 0; k < NK; k++) {
        float *m = mean + (size_t)k * d;
        double n2 = 0;
        for (int e = 0; e < d && outs[k].n; e++) {
            double acc = 0;
            for (size_t i = 0; i < outs[k].n; i++)
                acc += outs[k].v[i * d + e];
            m[e] = (float)(acc / (double)outs[k].n);
            n2 += (double)m[e] * m[e];
        }
        means[k] = m;
        count[k] = outs[k].n;
        norm[k] = sqrt(n2);
    }
    if (enc_means_save(model, enc_pipeline_model_id(p), d, means, count, manifest, err,
                       sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    static const char *const label[NK] = {"radiographs", "volumes", "reports"};
    printf("calibrated %s (model %.12s) on %s:\n", model, enc_pipeline_model_id(p), manifest);
    for (int k = 0; k < NK; k++)
        if (count[k])
            printf("  %-12s %7zu items, norm of the mean %.3f\n", label[k], count[k], norm[k]);
    printf("wrote %s/%s\n", model, ENC_MEANS_FILE);
    rc = CLI_OK;
out:
    outs_free(outs);
    free(old);
    free(mean);
    enc_worker_free(w);
    enc_pipeline_close(p);
    return rc;
}
