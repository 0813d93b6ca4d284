/* cli.h - the medsem command: subcommands and their shared helpers.
 *
 *   int cmd_import(int argc, char **argv);   // returns the exit status
 *
 * Exit status: 0 success, 1 bad input (a one-line reason naming the file,
 * line or field), 2 usage error.  Only this module prints or exits.
 */
#ifndef MEDSEM_CLI_H
#define MEDSEM_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store/store.h"

enum { CLI_OK = 0, CLI_BAD_INPUT = 1, CLI_USAGE = 2 };

int cmd_encode(int argc, char **argv);
int cmd_calibrate(int argc, char **argv); /* cli/cmd_encode.c */
int cmd_eval(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_dedup(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_scan(int argc, char **argv);
int cmd_convert(int argc, char **argv);
/* config.json of a COLIPRI model folder at `to`, from the hydra configs in
 * src (configs/config.yaml and its groups, or config.yaml at the top; none:
 * colipri 0.1.3's values); cli/convert_colipri.c.  0, or -1 after
 * cli_error. */
int cli_colipri_config(const char *src, const char *to);
/* One file of a COLIPRI configs/ tree (text, len bytes) read as the YAML
 * subset convert_colipri.c describes into a new JSON object; file names it
 * in errors; vars: config.yaml's values for ${name}, NULL while reading
 * config.yaml itself.  NULL when refused (said with the file and line). */
struct cJSON *cli_colipri_yaml(const char *file, const char *text, size_t len,
                               const struct cJSON *vars);

/* Prints "medsem: <message>" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Strict integer / float parsing: the whole string, in range. */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
int cli_parse_double(const char *s, double *out);

/* An option's value, parsed as above; on failure prints "--NAME 'ARG':
 * expected an integer from MIN to MAX" (or "a number in (0, 1]") and
 * returns -1, leaving *out alone.  name is the long option without "--". */
int cli_opt_u64(const char *name, const char *arg, uint64_t min, uint64_t max, uint64_t *out);
int cli_opt_fraction(const char *name, const char *arg, double *out);

/* Opens an existing database (never creates one); prints the reason and
 * returns NULL on failure. */
store *cli_open_db(const char *dir);

/* The space to use: the named one, or, when name is NULL, the only space
 * holding vectors.  Prints the reason and returns -1 when it cannot tell;
 * opt is the option the name came from ("space", "target"), for the
 * message. */
int cli_pick_space(store *s, const char *name, const char *opt, store_space *out);

/* Progress on a terminal (stderr): label, count, rate, ETA; silent otherwise. */
typedef struct cli_progress {
    int on;
    const char *label;
    size_t total;
    double t0, last;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *label, size_t total, int quiet);
void cli_progress_update(cli_progress *p, size_t done);
void cli_progress_finish(cli_progress *p, size_t done);
double cli_now(void);

/* Removes a model folder that a command made and gave up on: its
 * config.json, model.safetensors and vocab.txt, then the folder (left
 * in place if it holds anything else).  0, or -1 with errno from rmdir. */
int cli_remove_model_dir(const char *dir);

/* Manifest helpers: a copy of object j's string field k (NULL when absent
 * or not a string; free() it), and a manifest's file resolved against the
 * manifest's folder base (absolute paths kept; NULL when out of memory). */
struct cJSON;
char *cli_json_strdup(const struct cJSON *j, const char *k);
char *cli_manifest_path(const char *base, const char *file);

/* A manifest line that names an image or a volume with its report, as train
 * and eval read it.  Strings owned; cli_vitem_free clears them. */
typedef struct cli_vitem {
    int is_volume;
    char *path;     /* resolved against the manifest's folder */
    char *modality; /* NULL when absent */
    char *report;   /* non-empty */
} cli_vitem;
/* Parses line lineno of manifest (parsed as j, NULL when it was not JSON):
 * 1 with *out filled, 0 for a line without an image or volume (a report-only
 * item; nothing to do), -1 after printing "MANIFEST:LINE: reason" (what names
 * the item in the message, e.g. "a training item"). */
int cli_manifest_vitem(const struct cJSON *j, const char *manifest, size_t lineno,
                       const char *base, const char *what, cli_vitem *out);
void cli_vitem_free(cli_vitem *v);

/* Writes s as a JSON string literal (quotes and escapes) to f. */
void cli_json_string(FILE *f, const char *s);

#endif
