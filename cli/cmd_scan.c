/* cmd_scan.c - medsem scan: a folder tree of DICOM files (a PACS export, a
 * DICOMDIR's folder) into an ingest manifest, one line per series. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "imageio/imageio.h"
#include "util/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem scan DIR --out MANIFEST [--reports FILE] [--key accession|study]\n"
            "                  [--series-dir DIR] [--quiet]\n"
            "\n"
            "Walks DIR (a folder tree of DICOM files, or a DICOMDIR's folder), groups the\n"
            "files by SeriesInstanceUID and writes an ingest manifest (JSONL) that\n"
            "`medsem ingest` takes as it is: one line per CT, MR or PET series (a volume)\n"
            "and one per CR or DX radiograph (an image), with the series' header\n"
            "attributes (study_uid, series_uid, modality, body_part, study_date,\n"
            "series_description, manufacturer, slice_thickness; never a patient-\n"
            "identifying one).  A series that fills a folder of its own is named by the\n"
            "folder; the files of a series that shares its folder are linked into\n"
            "SERIES_DIR/<SeriesInstanceUID>/.  Skipped, and counted by reason: files that\n"
            "are not DICOM, structured reports, RT structure sets and other objects\n"
            "without pixel data, localizers, other modalities, one-slice series.\n"
            "\n"
            "  --out FILE           the manifest to write (.jsonl)\n"
            "  --reports FILE       reports to join, CSV (a header row) or JSONL, with a\n"
            "                       'report' column and an AccessionNumber ('accession')\n"
            "                       or StudyInstanceUID ('study_uid') one\n"
            "  --key accession|study  the column to join on (default: accession when the\n"
            "                       file has it, else study)\n"
            "  --series-dir DIR     where series sharing a folder are linked (default:\n"
            "                       MANIFEST without .jsonl, plus .series)\n"
            "  --quiet              no progress bar\n");
}

/* ---- the files ------------------------------------------------------------------- */

typedef struct rec {
    char *path;
    img_dicom_meta m;
} rec;

typedef struct scan {
    rec *r;
    size_t n, cap;
    char **paths; /* every regular file under DIR, then read */
    size_t np, pcap;
    size_t not_dicom, unreadable, no_pixels, sr, rt, localizer, other_modality, one_slice;
    char first_bad[3][600];
    int nbad;
} scan;

static scan *g_scan; /* nftw has no context argument */

static int on_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    const char *b = path + ftw->base;
    if (ftw->level > 0 && b[0] == '.')
        return type == FTW_D ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
    if (type != FTW_F || !strcasecmp(b, "DICOMDIR"))
        return FTW_CONTINUE;
    scan *s = g_scan;
    if (s->np == s->pcap) {
        size_t nc = s->pcap ? 2 * s->pcap : 1024;
        char **np = realloc(s->paths, nc * sizeof *np);
        if (!np)
            return FTW_STOP;
        s->paths = np;
        s->pcap = nc;
    }
    if (!(s->paths[s->np] = strdup(path)))
        return FTW_STOP;
    s->np++;
    return FTW_CONTINUE;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_volume_modality(const char *m)
{
    return !strcmp(m, "CT") || !strcmp(m, "MR") || !strcmp(m, "PT");
}

static int is_radiograph_modality(const char *m) { return !strcmp(m, "CR") || !strcmp(m, "DX"); }

static void note_bad(scan *s, const char *msg)
{
    if (s->nbad < 3)
        snprintf(s->first_bad[s->nbad], sizeof s->first_bad[0], "%s", msg);
    s->nbad++;
}

/* Reads one file's header; keeps the images medsem can use. */
static int read_one(scan *s, const char *path)
{
    unsigned char head[132];
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(head, 1, sizeof head, f) : 0;
    if (f)
        fclose(f);
    if (!img_is_dicom_mem(head, got)) {
        s->not_dicom++;
        return 0;
    }
    img_dicom_meta m;
    char err[512];
    if (img_read_dicom_meta(path, &m, err, sizeof err)) {
        s->unreadable++;
        note_bad(s, err);
        return 0;
    }
    if (!m.has_pixels) {
        if (!strncmp(m.sop_class, "1.2.840.10008.5.1.4.1.1.88.", 27))
            s->sr++;
        else if (!strncmp(m.sop_class, "1.2.840.10008.5.1.4.1.1.481.", 28))
            s->rt++;
        else
            s->no_pixels++;
        return 0;
    }
    if (strstr(m.image_type, "LOCALIZER")) {
        s->localizer++;
        return 0;
    }
    if (!is_volume_modality(m.modality) && !is_radiograph_modality(m.modality)) {
        s->other_modality++;
        return 0;
    }
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 256;
        rec *nr = realloc(s->r, nc * sizeof *nr);
        if (!nr)
            return -1;
        s->r = nr;
        s->cap = nc;
    }
    char *rp = realpath(path, NULL);
    if (!rp)
        return -1;
    s->r[s->n].path = rp;
    s->r[s->n].m = m;
    s->n++;
    return 0;
}

static int cmp_rec(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    int c = strcmp(x->m.series_uid, y->m.series_uid);
    return c ? c : strcmp(x->path, y->path);
}

/* ---- reports --------------------------------------------------------------------- */

typedef struct report {
    char *key, *text;
} report;

typedef struct reports {
    report *r;
    size_t n, cap;
} reports;

static int reports_add(reports *rs, const char *key, const char *text)
{
    if (!key || !*key || !text)
        return 0;
    if (rs->n == rs->cap) {
        size_t nc = rs->cap ? 2 * rs->cap : 256;
        report *nr = realloc(rs->r, nc * sizeof *nr);
        if (!nr)
            return -1;
        rs->r = nr;
        rs->cap = nc;
    }
    rs->r[rs->n].key = strdup(key);
    rs->r[rs->n].text = strdup(text);
    if (!rs->r[rs->n].key || !rs->r[rs->n].text)
        return -1;
    rs->n++;
    return 0;
}

static int cmp_report(const void *a, const void *b)
{
    return strcmp(((const report *)a)->key, ((const report *)b)->key);
}

/* One CSV record (RFC 4180: quoted fields, "" for a quote, line breaks
 * inside quotes) from *p; fields point into buf (rewritten in place). */
static int csv_record(char **p, char **fields, int cap, int *nf)
{
    char *s = *p, *o = s;
    int n = 0;
    if (!*s)
        return 0;
    fields[n++] = o;
    int q = 0;
    for (;;) {
        char c = *s;
        if (q) {
            if (!c)
                return -1; /* an open quote at the end */
            if (c == '"' && s[1] == '"') {
                *o++ = '"';
                s += 2;
            } else if (c == '"') {
                q = 0;
                s++;
            } else {
                *o++ = c;
                s++;
            }
            continue;
        }
        if (c == '"' && (o == fields[n - 1])) {
            q = 1;
            s++;
        } else if (c == ',') {
            *o++ = '\0';
            s++;
            if (n == cap)
                return -1;
            fields[n++] = o;
        } else if (c == '\n' || c == '\r' || !c) {
            *o = '\0';
            if (c == '\r' && s[1] == '\n')
                s++;
            *p = c ? s + 1 : s;
            break;
        } else {
            *o++ = c;
            s++;
        }
    }
    *nf = n;
    return 1;
}

static int col_is(const char *name, const char *const *names)
{
    for (; *names; names++)
        if (!strcasecmp(name, *names))
            return 1;
    return 0;
}

static const char *const ACC_NAMES[] = {"AccessionNumber", "accession", "accession_number", NULL};
static const char *const STUDY_NAMES[] = {"StudyInstanceUID", "study_uid", "study_instance_uid",
                                          NULL};
static const char *const REPORT_NAMES[] = {"report", "report_text", "text", NULL};

/* Reads the reports file; *by_acc says which key it holds (want: -1 any,
 * 1 accession, 0 study). */
static int reports_read(const char *path, int want, reports *rs, int *by_acc)
{
    size_t len;
    char *buf = util_read_file(path, &len);
    if (!buf) {
        cli_error("%s: %s", path, strerror(errno));
        return -1;
    }
    int json = 0;
    for (char *c = buf; *c; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r') {
            json = *c == '{';
            break;
        }
    int rc = 0, acc_col = -1, study_col = -1, rep_col = -1;
    size_t line = 0;
    if (json) {
        char *p = buf;
        while (*p && !rc) {
            char *e = strchr(p, '\n');
            if (e)
                *e = '\0';
            line++;
            if (!util_blank(p)) {
                cJSON *j = cJSON_Parse(p);
                const cJSON *t = NULL, *a = NULL, *st = NULL;
                for (const char *const *n = REPORT_NAMES; j && *n && !t; n++)
                    t = cJSON_GetObjectItemCaseSensitive(j, *n);
                for (const char *const *n = ACC_NAMES; j && *n && !a; n++)
                    a = cJSON_GetObjectItemCaseSensitive(j, *n);
                for (const char *const *n = STUDY_NAMES; j && *n && !st; n++)
                    st = cJSON_GetObjectItemCaseSensitive(j, *n);
                if (!j || !cJSON_IsString(t) || !(cJSON_IsString(a) || cJSON_IsString(st))) {
                    cli_error("%s:%zu: expected a JSON object with a string 'report' and "
                              "'accession' or 'study_uid'", path, line);
                    rc = -1;
                } else {
                    if (*by_acc < 0)
                        *by_acc = want >= 0 ? want : cJSON_IsString(a);
                    const cJSON *k = *by_acc ? a : st;
                    if (!cJSON_IsString(k)) {
                        cli_error("%s:%zu: no '%s' to join on", path, line,
                                  *by_acc ? "accession" : "study_uid");
                        rc = -1;
                    } else if (reports_add(rs, k->valuestring, t->valuestring)) {
                        rc = -2;
                    }
                }
                cJSON_Delete(j);
            }
            p = e ? e + 1 : p + strlen(p);
        }
    } else {
        char *p = buf, *f[256];
        int nf, r;
        while (!rc && (r = csv_record(&p, f, 256, &nf)) != 0) {
            line++;
            if (r < 0) {
                cli_error("%s:%zu: malformed CSV (an unclosed quote, or over 256 columns)", path,
                          line);
                rc = -1;
                break;
            }
            if (line == 1) {
                for (int i = 0; i < nf; i++) {
                    if (col_is(f[i], ACC_NAMES))
                        acc_col = i;
                    else if (col_is(f[i], STUDY_NAMES))
                        study_col = i;
                    else if (col_is(f[i], REPORT_NAMES))
                        rep_col = i;
                }
                *by_acc = want >= 0 ? want : acc_col >= 0;
                int key = *by_acc ? acc_col : study_col;
                if (rep_col < 0 || key < 0) {
                    cli_error("%s:1: the header needs a 'report' column and %s", path,
                              *by_acc ? "an 'AccessionNumber' (or 'accession') column"
                                      : "a 'StudyInstanceUID' (or 'study_uid') column");
                    rc = -1;
                }
                continue;
            }
            if (nf == 1 && !f[0][0])
                continue; /* a blank line */
            int key = *by_acc ? acc_col : study_col;
            if (key >= nf || rep_col >= nf) {
                cli_error("%s:%zu: %d columns, the header has more", path, line, nf);
                rc = -1;
            } else if (reports_add(rs, f[key], f[rep_col])) {
                rc = -2;
            }
        }
    }
    free(buf);
    if (rc == -2)
        cli_error("out of memory");
    if (!rc && rs->n)
        qsort(rs->r, rs->n, sizeof *rs->r, cmp_report);
    return rc;
}

static const char *report_for(const reports *rs, const char *key)
{
    if (!rs->n || !*key)
        return NULL;
    report k = {(char *)key, NULL};
    const report *r = bsearch(&k, rs->r, rs->n, sizeof *rs->r, cmp_report);
    return r ? r->text : NULL;
}

/* ---- the manifest ---------------------------------------------------------------- */

static char *dir_of(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? strndup(p, (size_t)(s - p)) : strdup(".");
}

static int mkdirs(const char *path)
{
    char *tmp = strdup(path);
    int rc = tmp ? 0 : -1;
    for (char *p = tmp ? tmp + 1 : NULL; p && *p && !rc; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                rc = -1;
            *p = '/';
        }
    if (!rc && mkdir(tmp, 0755) && errno != EEXIST)
        rc = -1;
    free(tmp);
    return rc;
}

/* Whether every DICOM image in dir belongs to [a, b) of the sorted records
 * (the folder holds that series alone). */
static int folder_is_series(const scan *s, size_t a, size_t b, const char *dir)
{
    size_t dl = strlen(dir), inside = 0;
    for (size_t i = 0; i < s->n; i++) {
        const char *p = s->r[i].path;
        if (!strncmp(p, dir, dl) && p[dl] == '/' && !strchr(p + dl + 1, '/')) {
            if (i < a || i >= b)
                return 0;
            inside++;
        }
    }
    return inside == b - a;
}

static cJSON *line_of(const rec *r, const char *kind, const char *file, const reports *rs,
                      int by_acc, size_t *with_report)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "kind", kind);
    cJSON_AddStringToObject(j, "file", file);
    cJSON_AddStringToObject(j, "modality", r->m.modality);
    const char *rep = report_for(rs, by_acc ? r->m.accession : r->m.study_uid);
    if (rep) {
        cJSON_AddStringToObject(j, "report", rep);
        (*with_report)++;
    }
    const struct {
        const char *k, *v;
    } kv[] = {{"study_uid", r->m.study_uid},     {"series_uid", r->m.series_uid},
              {"body_part", r->m.body_part},     {"study_date", r->m.study_date},
              {"series_description", r->m.series_desc}, {"manufacturer", r->m.manufacturer}};
    for (size_t i = 0; i < sizeof kv / sizeof *kv; i++)
        if (kv[i].v[0])
            cJSON_AddStringToObject(j, kv[i].k, kv[i].v);
    if (r->m.slice_thickness > 0)
        cJSON_AddNumberToObject(j, "slice_thickness", r->m.slice_thickness);
    return j;
}

int cmd_scan(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, 'o'},        {"reports", required_argument, 0, 'r'},
        {"key", required_argument, 0, 'k'},        {"series-dir", required_argument, 0, 's'},
        {"quiet", no_argument, 0, 'q'},            {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *out = NULL, *reports_path = NULL, *series_dir = NULL;
    int quiet = 0, want = -1, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'r': reports_path = optarg; break;
        case 's': series_dir = optarg; break;
        case 'q': quiet = 1; break;
        case 'k':
            if (!strcmp(optarg, "accession") || !strcmp(optarg, "study")) {
                want = !strcmp(optarg, "accession");
            } else {
                cli_error("--key '%s': expected accession or study", optarg);
                return CLI_USAGE;
            }
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind + 1 != argc || !out) {
        cli_error("scan needs a folder and --out");
        usage(stderr);
        return CLI_USAGE;
    }
    const char *root = argv[optind];
    struct stat st;
    if (stat(root, &st)) {
        cli_error("%s: %s", root, strerror(errno));
        return CLI_BAD_INPUT;
    }
    char *rootdir = NULL;
    if (!S_ISDIR(st.st_mode)) {
        const char *b = strrchr(root, '/');
        if (strcasecmp(b ? b + 1 : root, "DICOMDIR")) {
            cli_error("%s: not a folder (or a DICOMDIR)", root);
            return CLI_BAD_INPUT;
        }
        rootdir = dir_of(root); /* a DICOMDIR: the files are found by walking its folder */
    }
    reports rs = {0};
    int by_acc = -1;
    if (reports_path && reports_read(reports_path, want, &rs, &by_acc))
        return CLI_BAD_INPUT;

    scan s;
    memset(&s, 0, sizeof s);
    g_scan = &s;
    int rc = CLI_OK;
    if (nftw(rootdir ? rootdir : root, on_entry, 32, FTW_PHYS | FTW_ACTIONRETVAL) != 0) {
        cli_error("%s: cannot walk the folder: %s", root, strerror(errno));
        rc = CLI_BAD_INPUT;
    }
    if (s.np)
        qsort(s.paths, s.np, sizeof *s.paths, cmp_str);
    cli_progress pg;
    cli_progress_start(&pg, "scan", s.np, quiet);
    for (size_t i = 0; i < s.np && !rc; i++) {
        if (read_one(&s, s.paths[i])) {
            cli_error("out of memory");
            rc = CLI_BAD_INPUT;
        }
        cli_progress_update(&pg, i + 1);
    }
    cli_progress_finish(&pg, s.np);
    if (s.n)
        qsort(s.r, s.n, sizeof *s.r, cmp_rec);

    /* the manifest, written to a temporary file and renamed */
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    FILE *f = rc ? NULL : fopen(tmp, "w");
    if (!rc && !f) {
        cli_error("%s: %s", tmp, strerror(errno));
        rc = CLI_BAD_INPUT;
    }
    char sdir[PATH_MAX];
    if (series_dir) {
        snprintf(sdir, sizeof sdir, "%s", series_dir);
    } else {
        size_t ol = strlen(out);
        int j = ol > 6 && !strcmp(out + ol - 6, ".jsonl");
        snprintf(sdir, sizeof sdir, "%.*s.series", (int)(j ? ol - 6 : ol), out);
    }
    size_t volumes = 0, images = 0, linked = 0, with_report = 0;
    for (size_t a = 0; a < s.n && !rc;) {
        size_t b = a + 1;
        while (b < s.n && !strcmp(s.r[b].m.series_uid, s.r[a].m.series_uid))
            b++;
        const rec *r0 = &s.r[a];
        if (is_radiograph_modality(r0->m.modality)) {
            for (size_t i = a; i < b; i++) {
                cJSON *j = line_of(&s.r[i], "image", s.r[i].path, &rs, by_acc, &with_report);
                char *t = cJSON_PrintUnformatted(j);
                fprintf(f, "%s\n", t);
                free(t);
                cJSON_Delete(j);
                images++;
            }
            a = b;
            continue;
        }
        const char *file = NULL;
        char link_dir[PATH_MAX + 80], *dir = NULL;
        if (b - a == 1 && r0->m.frames > 1) {
            file = r0->path; /* one multi-frame file */
        } else if (b - a == 1) {
            s.one_slice++;
            a = b;
            continue;
        } else {
            dir = dir_of(r0->path);
            int same = 1;
            for (size_t i = a + 1; i < b && same; i++) {
                char *d = dir_of(s.r[i].path);
                same = !strcmp(d, dir);
                free(d);
            }
            if (same && folder_is_series(&s, a, b, dir)) {
                file = dir;
            } else {
                /* the series shares its folders: link its files into one */
                snprintf(link_dir, sizeof link_dir, "%s/%s", sdir, r0->m.series_uid);
                if (mkdirs(link_dir)) {
                    cli_error("%s: %s", link_dir, strerror(errno));
                    rc = CLI_BAD_INPUT;
                }
                for (size_t i = a; i < b && !rc; i++) {
                    char *lp;
                    const char *base = strrchr(s.r[i].path, '/') + 1;
                    if (asprintf(&lp, "%s/%06zu_%s", link_dir, i - a, base) < 0) {
                        cli_error("out of memory");
                        rc = CLI_BAD_INPUT;
                        break;
                    }
                    unlink(lp);
                    if (symlink(s.r[i].path, lp)) {
                        cli_error("%s: %s", lp, strerror(errno));
                        rc = CLI_BAD_INPUT;
                    }
                    free(lp);
                }
                file = link_dir;
                linked++;
            }
        }
        if (!rc) {
            char *abs = realpath(file, NULL);
            cJSON *j = line_of(r0, "volume", abs ? abs : file, &rs, by_acc, &with_report);
            char *t = cJSON_PrintUnformatted(j);
            fprintf(f, "%s\n", t);
            free(t);
            free(abs);
            cJSON_Delete(j);
            volumes++;
        }
        free(dir);
        a = b;
    }
    if (f && (fflush(f) || ferror(f) | fclose(f))) {
        cli_error("%s: write failed", tmp);
        rc = CLI_BAD_INPUT;
    } else if (!rc && rename(tmp, out)) {
        cli_error("%s: %s", out, strerror(errno));
        rc = CLI_BAD_INPUT;
    }
    if (rc && f)
        unlink(tmp);
    if (!rc) {
        printf("scan: %zu files; %zu series -> %s: %zu volumes, %zu radiographs", s.np,
               volumes + images, out, volumes, images);
        if (linked)
            printf(" (%zu series linked under %s)", linked, sdir);
        printf("\n");
        if (reports_path)
            printf("scan: reports joined by %s for %zu of %zu lines\n",
                   by_acc ? "AccessionNumber" : "StudyInstanceUID", with_report, volumes + images);
        size_t skipped = s.not_dicom + s.unreadable + s.sr + s.rt + s.no_pixels + s.localizer +
                         s.other_modality + s.one_slice;
        if (skipped) {
            printf("scan: skipped");
            const struct {
                size_t n;
                const char *why;
            } sk[] = {{s.not_dicom, "not DICOM"},
                      {s.unreadable, "unreadable"},
                      {s.sr, "structured reports (SR)"},
                      {s.rt, "RT objects (RTSTRUCT, RTPLAN, ...)"},
                      {s.no_pixels, "other objects without pixel data"},
                      {s.localizer, "localizers"},
                      {s.other_modality, "images of other modalities (not CT, MR, PT, CR, DX)"},
                      {s.one_slice, "one-slice series (not a volume)"}};
            const char *sep = " ";
            for (size_t i = 0; i < sizeof sk / sizeof *sk; i++)
                if (sk[i].n) {
                    printf("%s%zu %s", sep, sk[i].n, sk[i].why);
                    sep = ", ";
                }
            printf("\n");
            for (int i = 0; i < s.nbad && i < 3; i++)
                printf("scan:   %s\n", s.first_bad[i]);
        }
        if (volumes + images == 0) {
            cli_error("%s: no CT, MR, PET series or CR, DX radiograph found", root);
            rc = CLI_BAD_INPUT;
        }
    }
    for (size_t i = 0; i < s.np; i++)
        free(s.paths[i]);
    free(s.paths);
    for (size_t i = 0; i < s.n; i++)
        free(s.r[i].path);
    free(s.r);
    for (size_t i = 0; i < rs.n; i++) {
        free(rs.r[i].key);
        free(rs.r[i].text);
    }
    free(rs.r);
    free(rootdir);
    return rc;
}
