/* progress.c - shared CLI helpers: errors, number parsing, progress bar. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "encoder/encoder.h"

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("medsem: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno == ERANGE || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int cli_opt_u64(const char *name, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!cli_parse_u64(arg, min, max, out))
        return 0;
    cli_error("--%s '%s': expected an integer from %llu to %llu", name, arg,
              (unsigned long long)min, (unsigned long long)max);
    return -1;
}

int cli_opt_fraction(const char *name, const char *arg, double *out)
{
    double d;
    if (!cli_parse_double(arg, &d) && d > 0 && d <= 1) {
        *out = d;
        return 0;
    }
    cli_error("--%s '%s': expected a number in (0, 1]", name, arg);
    return -1;
}

store *cli_open_db(const char *dir)
{
    store *s = NULL;
    char err[512];
    store_opts o = {0};
    if (store_open(dir, &o, &s, err, sizeof err)) {
        cli_error("%s", err);
        return NULL;
    }
    return s;
}

int cli_pick_space(store *s, const char *name, const char *opt, store_space *out)
{
    if (name) {
        if (store_space_parse(name, out)) {
            cli_error("--%s '%s': expected image, volume, report or slice", opt ? opt : "space",
                      name);
            return -1;
        }
        return 0;
    }
    int found = -1, n = 0;
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st;
        if (store_space_stat_get(s, (store_space)sp, &st)) {
            cli_error("%s", store_errmsg(s));
            return -1;
        }
        if (st.count) {
            found = sp;
            n++;
        }
    }
    if (n == 1) {
        *out = (store_space)found;
        return 0;
    }
    if (n == 0) {
        *out = STORE_SPACE_IMAGE;
        return 0;
    }
    cli_error("%s holds vectors in several spaces; choose one with --space", store_dir(s));
    return -1;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_start(cli_progress *p, const char *label, size_t total, int quiet)
{
    memset(p, 0, sizeof *p);
    p->on = !quiet && isatty(STDERR_FILENO);
    p->label = label;
    p->total = total;
    p->t0 = cli_now();
}

static void fmt_eta(double s, char *buf, size_t len)
{
    if (!isfinite(s) || s < 0) {
        snprintf(buf, len, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%02ld:%02ld", t / 60, t % 60);
}

static void draw(cli_progress *p, size_t done, double now)
{
    double el = now - p->t0;
    double rate = el > 0 ? (double)done / el : 0;
    double frac = p->total ? (double)done / (double)p->total : 1;
    char eta[32];
    fmt_eta(rate > 0 ? (double)(p->total - done) / rate : NAN, eta, sizeof eta);
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r%s [%s] %zu/%zu %3.0f%%  %.0f/s  ETA %s ", p->label, bar, done, p->total,
            frac * 100, rate, eta);
    fflush(stderr);
}

void cli_progress_update(cli_progress *p, size_t done)
{
    if (!p->on)
        return;
    double now = cli_now();
    if (now - p->last < 0.1 && done < p->total)
        return;
    p->last = now;
    draw(p, done, now);
}

void cli_progress_finish(cli_progress *p, size_t done)
{
    if (!p->on)
        return;
    draw(p, done, cli_now());
    fputc('\n', stderr);
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; c++) {
        switch (*c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*c < 0x20)
                fprintf(f, "\\u%04x", *c);
            else
                fputc(*c, f);
        }
    }
    fputc('"', f);
}

int cli_remove_model_dir(const char *dir)
{
    static const char *const files[] = {"config.json", "model.safetensors", "vocab.txt",
                                        ENC_MEANS_FILE, NULL};
    for (const char *const *f = files; *f; f++) {
        char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, *f) >= 0) {
            unlink(p);
            free(p);
        }
    }
    return rmdir(dir);
}

char *cli_json_strdup(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return v && cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

char *cli_manifest_path(const char *base, const char *file)
{
    char *p = NULL;
    if (file[0] == '/')
        return strdup(file);
    return asprintf(&p, "%s/%s", base, file) < 0 ? NULL : p;
}

int cli_manifest_vitem(const cJSON *j, const char *manifest, size_t lineno, const char *base,
                       const char *what, cli_vitem *out)
{
    *out = (cli_vitem){0};
    if (!j || !cJSON_IsObject(j)) {
        cli_error("%s:%zu: not a JSON object", manifest, lineno);
        return -1;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind");
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(j, "file");
    const cJSON *report = cJSON_GetObjectItemCaseSensitive(j, "report");
    if (!cJSON_IsString(kind) ||
        (strcmp(kind->valuestring, "volume") && strcmp(kind->valuestring, "image")))
        return 0;
    if (!cJSON_IsString(file) || !cJSON_IsString(report) || !*report->valuestring) {
        cli_error("%s:%zu: %s needs 'file' and a non-empty 'report'", manifest, lineno, what);
        return -1;
    }
    out->is_volume = !strcmp(kind->valuestring, "volume");
    out->path = cli_manifest_path(base, file->valuestring);
    out->report = strdup(report->valuestring);
    out->modality = cli_json_strdup(j, "modality");
    if (!out->path || !out->report) {
        cli_vitem_free(out);
        cli_error("%s:%zu: out of memory", manifest, lineno);
        return -1;
    }
    return 1;
}

void cli_vitem_free(cli_vitem *v)
{
    free(v->path);
    free(v->modality);
    free(v->report);
    *v = (cli_vitem){0};
}
