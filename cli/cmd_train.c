/* cmd_train.c - medsem train: contrastive pre-training on a manifest of
 * (volume or radiograph, report) pairs into a model directory. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "train/train.h"
#include "util/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem train --manifest FILE --out MODEL_DIR [options]\n"
            "\n"
            "Trains a medsem dual encoder on a JSONL manifest of volumes and radiographs with\n"
            "their reports (\"file\" relative to the manifest's folder, \"kind\" volume|image,\n"
            "\"modality\", \"report\"; as 'medsem synth' writes) and writes MODEL_DIR/config.json,\n"
            "model.safetensors and vocab.txt.  See docs/train.md.\n"
            "\n"
            "  --config FILE        model config.json (default: the built-in preset, or the\n"
            "                       --init model's)\n"
            "  --vocab FILE         vocab.txt to use (default: the --init model's, else\n"
            "                       MODEL_DIR/vocab.txt if present, else one built from the\n"
            "                       manifest's reports)\n"
            "  --init MODEL         start from a trained medsem model's weights (a model\n"
            "                       directory or its model.safetensors) instead of random ones;\n"
            "                       a volume patch r times deeper along z and another number\n"
            "                       of z-token planes are adapted (docs/train.md)\n"
            "  --vocab-size N       tokens of a built vocabulary (default 1000)\n"
            "  --steps N            optimizer steps (default 1000)\n"
            "  --batch-volumes N    volumes per step (default 16)\n"
            "  --batch-images N     radiographs per step (default 16)\n"
            "  --slice-k K          slices picked per volume by attention (default 2; 0: off)\n"
            "  --consistency W      weight of the 2D-3D consistency loss (default 0.5)\n"
            "  --soft-alpha A       soft targets from report finding tags (default 0: off)\n"
            "  --soft-start N       step from which soft targets apply (default 0)\n"
            "  --tag-weight W       weight of the report-tag prediction loss (default 0: off)\n"
            "  --tag-loss L         softmax (the tags spread over one distribution, default) or\n"
            "                       bce (multi-label: one sigmoid per finding and location tag)\n"
            "  --vis-tag-weight W   weight of the visual tag head: volumes and radiographs predict\n"
            "                       their report's finding and location tags through a head of\n"
            "                       their own, a sigmoid per tag (default 0: off)\n"
            "  --side-weight W      weight of side-swapped negatives: each report against itself\n"
            "                       with right and left swapped (default 0: off)\n"
            "  --phrase-rate P      share of reports replaced, each step, by a short phrase made\n"
            "                       from the report (its finding sentences, or a finding by\n"
            "                       name with or without its place; default 0: off)\n"
            "  --lobe-rate P        with --side-weight: share of the texts naming a lobe whose\n"
            "                       negative swaps upper and lower lobe instead of the sides\n"
            "                       (default 0: off)\n"
            "  --pair-weight W      draw radiographs with the volume of their study (the\n"
            "                       manifest's \"pair\" naming a volume's \"study\"), let each\n"
            "                       pair's two reports be positives of both, and pull the\n"
            "                       pair's embeddings together with weight W (default 0: off)\n"
            "  --augment A          per-sample shifts, gain, offset and noise of strength A\n"
            "                       (default 0: off; 1: shifts up to 2 pixels, gain 1+-0.1)\n"
            "  --lr X               peak learning rate (default 3e-4)\n"
            "  --weight-decay X     AdamW weight decay (default 0.05)\n"
            "  --warmup N           warmup steps (default: 5%% of --steps)\n"
            "  --clip X             gradient norm clip (default 1; 0: off)\n"
            "  --seed S             weights and batch order (default 1)\n"
            "  --threads N          CPU threads (default: all cores)\n"
            "  --checkpoint FILE    resumable checkpoint (default MODEL_DIR/train.ckpt)\n"
            "  --ckpt-every N       checkpoint every N steps (default 100; 0: only at the end)\n"
            "  --resume             continue from the checkpoint\n"
            "  --stop-after N       stop (with a checkpoint) once N steps are done\n"
            "  --log-every N        log line every N steps (default 10)\n");
}

/* A manifest item's "study" and "pair" (a radiograph's volume study), NULL
 * when absent. */
typedef struct study_ref {
    char *study, *pair;
} study_ref;

static int load_manifest(const char *manifest, cli_vitem **out, study_ref **refs, size_t *n)
{
    FILE *f = fopen(manifest, "r");
    if (!f) {
        cli_error("%s: %s", manifest, strerror(errno));
        return -1;
    }
    char *mcopy = strdup(manifest);
    const char *base = mcopy ? dirname(mcopy) : ".";
    char *line = NULL;
    size_t cap = 0, lineno = 0, icap = 0;
    ssize_t len;
    cli_vitem *it = NULL;
    study_ref *rf = NULL;
    int rc = 0;
    *n = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len <= 1)
            continue;
        cJSON *j = cJSON_Parse(line);
        cli_vitem t;
        int got = cli_manifest_vitem(j, manifest, lineno, base, "a training item", &t);
        if (got < 0)
            rc = -1;
        if (got > 0 && *n == icap) {
            icap = icap ? 2 * icap : 256;
            cli_vitem *ni = realloc(it, icap * sizeof *ni);
            if (ni)
                it = ni;
            study_ref *nr = ni ? realloc(rf, icap * sizeof *nr) : NULL;
            if (nr) {
                rf = nr;
            } else {
                cli_error("%s:%zu: out of memory", manifest, lineno);
                rc = -1;
            }
        }
        if (got > 0 && !rc) {
            rf[*n].study = cli_json_strdup(j, "study");
            rf[*n].pair = cli_json_strdup(j, "pair");
            it[(*n)++] = t;
        } else if (got > 0) {
            cli_vitem_free(&t);
        }
        cJSON_Delete(j);
    }
    free(line);
    free(mcopy);
    fclose(f);
    *out = it;
    *refs = rf;
    return rc;
}

/* A volume's study and its index among the volumes. */
typedef struct vol_study {
    const char *study;
    size_t idx;
} vol_study;

static int cmp_vol_study(const void *a, const void *b)
{
    return strcmp(((const vol_study *)a)->study, ((const vol_study *)b)->study);
}

/* Tells the trainer which radiograph shows the study of which volume: a
 * radiograph's "pair" equal to a volume's "study".  Items are numbered per
 * kind in manifest order, as they were added.  The count of pairs, or -1
 * said. */
static long add_pairs(trn_trainer *t, const char *manifest, const cli_vitem *items,
                      const study_ref *refs, size_t n)
{
    vol_study *vs = malloc((n ? n : 1) * sizeof *vs);
    if (!vs) {
        cli_error("out of memory");
        return -1;
    }
    size_t nv = 0, v = 0, ni = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].is_volume) {
            if (refs[i].study)
                vs[nv++] = (vol_study){refs[i].study, v};
            v++;
        }
    qsort(vs, nv, sizeof *vs, cmp_vol_study);
    long np = 0;
    char err[1024];
    for (size_t i = 0; i < n; i++) {
        if (items[i].is_volume)
            continue;
        vol_study key = {refs[i].pair, 0};
        const vol_study *hit = key.study ? bsearch(&key, vs, nv, sizeof *vs, cmp_vol_study) : NULL;
        if (hit) {
            if (trn_trainer_pair(t, ni, hit->idx, err, sizeof err)) {
                cli_error("%s: radiograph %s: %s", manifest, items[i].path, err);
                np = -1;
                break;
            }
            np++;
        }
        ni++;
    }
    free(vs);
    return np;
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Lines of a vocab.txt (its token count). */
static long count_lines(const char *path)
{
    char *t = util_read_file(path, NULL);
    if (!t)
        return -1;
    long n = 0;
    for (char *p = t; *p; p++)
        n += *p == '\n';
    if (*t && t[strlen(t) - 1] != '\n')
        n++;
    free(t);
    return n;
}

static int copy_file(const char *from, const char *to)
{
    char *t = util_read_file(from, NULL);
    if (!t)
        return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fputs(t, f) >= 0;
    if (f && fclose(f))
        ok = 0;
    free(t);
    return ok ? 0 : -1;
}

/* Opens the preprocessing pipeline of the trainer's starting weights: saved
 * with the vocabulary vsrc into a private folder inside outdir, opened, and
 * the folder removed at once (the open pipeline holds what it read, the
 * weights mapped, which survives the unlink).  So MODEL_DIR's own model (a
 * run resumed, or an earlier one) is not touched before the end, and a run
 * killed while it preprocesses leaves nothing there.  0, or -1 said. */
static int open_prep(const trn_trainer *t, const char *vsrc, const char *outdir, int threads,
                     enc_pipeline **pl)
{
    char err[1024], *dir = NULL, *vocab = NULL;
    int rc = -1;
    if (asprintf(&dir, "%s/.medsem-train.XXXXXX", outdir) < 0) {
        cli_error("out of memory");
        return -1;
    }
    if (!mkdtemp(dir)) {
        cli_error("%s: %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    if (asprintf(&vocab, "%s/vocab.txt", dir) < 0) {
        vocab = NULL;
        cli_error("out of memory");
    } else if (copy_file(vsrc, vocab)) {
        cli_error("%s: cannot copy to %s: %s", vsrc, vocab, strerror(errno));
    } else if (trn_trainer_save(t, dir, err, sizeof err) ||
               enc_pipeline_open(dir, threads, pl, err, sizeof err)) {
        cli_error("%s", err);
    } else {
        rc = 0;
    }
    cli_remove_model_dir(dir);
    free(vocab);
    free(dir);
    return rc;
}

static void fmt_time(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

int cmd_train(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"manifest", required_argument, 0, 'f'},   {"out", required_argument, 0, 'o'},
        {"config", required_argument, 0, 'c'},     {"vocab", required_argument, 0, 'V'},
        {"vocab-size", required_argument, 0, 'Z'}, {"steps", required_argument, 0, 's'},
        {"batch-volumes", required_argument, 0, 'v'}, {"batch-images", required_argument, 0, 'i'},
        {"slice-k", required_argument, 0, 'k'},    {"consistency", required_argument, 0, 'C'},
        {"soft-alpha", required_argument, 0, 'a'}, {"lr", required_argument, 0, 'l'},
        {"soft-start", required_argument, 0, 'j'}, {"augment", required_argument, 0, 'A'},
        {"tag-weight", required_argument, 0, 'G'}, {"tag-loss", required_argument, 0, 'B'},
        {"side-weight", required_argument, 0, 'D'}, {"phrase-rate", required_argument, 0, 'P'},
        {"lobe-rate", required_argument, 0, 'O'}, {"vis-tag-weight", required_argument, 0, 'H'},
        {"pair-weight", required_argument, 0, 'Y'},
        {"weight-decay", required_argument, 0, 'w'}, {"warmup", required_argument, 0, 'W'},
        {"clip", required_argument, 0, 'g'},       {"seed", required_argument, 0, 'S'},
        {"threads", required_argument, 0, 'T'},    {"checkpoint", required_argument, 0, 'K'},
        {"ckpt-every", required_argument, 0, 'e'}, {"resume", no_argument, 0, 'r'},
        {"stop-after", required_argument, 0, 'x'}, {"log-every", required_argument, 0, 'L'},
        {"init", required_argument, 0, 'I'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    const char *manifest = NULL, *outdir = NULL, *config = NULL, *vocab = NULL, *ckpt = NULL,
               *init = NULL;
    uint64_t steps = 1000, vocab_size = 1000, threads = 0, seed = 1, ckpt_every = 100,
             log_every = 10, stop_after = 0, warmup = UINT64_MAX, u;
    trn_trainer_opts to = TRN_TRAINER_OPTS_INIT;
    int resume = 0, c;
    double d;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': manifest = optarg; break;
        case 'o': outdir = optarg; break;
        case 'c': config = optarg; break;
        case 'V': vocab = optarg; break;
        case 'I': init = optarg; break;
        case 'K': ckpt = optarg; break;
        case 'r': resume = 1; break;
        case 'Z': case 's': case 'v': case 'i': case 'k': case 'W': case 'S': case 'T':
        case 'e': case 'x': case 'L': case 'j':
            if (cli_parse_u64(optarg, c == 'Z' || c == 's' || c == 'L' || c == 'T' ? 1 : 0,
                              c == 'S' ? UINT64_MAX : 100000000, &u)) {
                cli_error("--%s '%s': expected a non-negative integer",
                          c == 'Z' ? "vocab-size" : c == 's' ? "steps" : "option", optarg);
                return CLI_BAD_INPUT;
            }
            if (c == 'Z') vocab_size = u;
            if (c == 's') steps = u;
            if (c == 'v') to.batch_volumes = (int)u;
            if (c == 'i') to.batch_images = (int)u;
            if (c == 'k') to.slice_k = (int)u;
            if (c == 'W') warmup = u;
            if (c == 'S') seed = u;
            if (c == 'T') threads = u;
            if (c == 'e') ckpt_every = u;
            if (c == 'x') stop_after = u;
            if (c == 'L') log_every = u;
            if (c == 'j') to.soft_start = (int64_t)u;
            break;
        case 'C': case 'a': case 'l': case 'w': case 'g': case 'A': case 'G': case 'D': case 'P':
        case 'O': case 'H': case 'Y':
            if (cli_parse_double(optarg, &d) || !(d >= 0) || d > 1e6) {
                const char *name = "option";
                for (const struct option *lo = longopts; lo->name; lo++)
                    if (lo->val == c)
                        name = lo->name;
                cli_error("--%s '%s': expected a non-negative number", name, optarg);
                return CLI_BAD_INPUT;
            }
            if (c == 'C') to.consistency = (float)d;
            if (c == 'a') to.soft_alpha = (float)d;
            if (c == 'l') to.lr = d;
            if (c == 'w') to.weight_decay = d;
            if (c == 'g') to.clip = d;
            if (c == 'G') to.tag_weight = (float)d;
            if (c == 'D') to.side_weight = (float)d;
            if (c == 'H') to.vis_tag_weight = (float)d;
            if (c == 'Y') to.pair_weight = (float)d;
            if (c == 'P') {
                if (d > 1) {
                    cli_error("--phrase-rate '%s': expected a number from 0 to 1", optarg);
                    return CLI_BAD_INPUT;
                }
                to.phrase_rate = (float)d;
            }
            if (c == 'O') {
                if (d > 1) {
                    cli_error("--lobe-rate '%s': expected a number from 0 to 1", optarg);
                    return CLI_BAD_INPUT;
                }
                to.lobe_rate = (float)d;
            }
            if (c == 'A') {
                if (d > 10) {
                    cli_error("--augment '%s': expected a number from 0 to 10", optarg);
                    return CLI_BAD_INPUT;
                }
                to.augment = (float)d;
            }
            break;
        case 'B':
            if (!strcmp(optarg, "bce") || !strcmp(optarg, "softmax")) {
                to.tag_bce = !strcmp(optarg, "bce");
            } else {
                cli_error("--tag-loss '%s': expected softmax or bce", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !manifest || !outdir) {
        cli_error("train needs --manifest and --out");
        usage(stderr);
        return CLI_USAGE;
    }
    if (to.lobe_rate > 0 && !(to.side_weight > 0)) {
        cli_error("--lobe-rate swaps the lobes of the side-swapped negatives: it needs "
                  "--side-weight");
        return CLI_USAGE;
    }
    to.seed = seed;
    to.threads = (int)threads;
    to.total_steps = (int64_t)steps;
    to.warmup = warmup == UINT64_MAX ? (int64_t)(steps / 20) : (int64_t)warmup;

    int rc = CLI_BAD_INPUT;
    cli_vitem *items = NULL;
    study_ref *refs = NULL;
    size_t n = 0;
    char *cfgtext = NULL, *vpath = NULL, *ckpath = NULL, *initdir = NULL, *initcfg = NULL,
         *initvocab = NULL, err[1024];
    cJSON *cfg = NULL;
    enc_tok *tok = NULL;
    trn_trainer *t = NULL;
    enc_pipeline *pl = NULL;
    float *buf = NULL;
    size_t *off = NULL;

    if (init) {
        /* the model's own config and vocabulary unless given: its weights need them */
        size_t il = strlen(init);
        int is_file = il >= 12 && !strcmp(init + il - 12, ".safetensors");
        if (!(initdir = strdup(init)))
            goto oom;
        if (is_file) {
            char *slash = strrchr(initdir, '/');
            if (slash)
                *slash = 0;
            else
                strcpy(initdir, ".");
        }
        if (asprintf(&initcfg, "%s/config.json", initdir) < 0)
            initcfg = NULL;
        if (asprintf(&initvocab, "%s/vocab.txt", initdir) < 0)
            initvocab = NULL;
        if (!initcfg || !initvocab)
            goto oom;
        /* the weights: init itself, or the folder's model.safetensors */
        char *w = NULL;
        if (!is_file && asprintf(&w, "%s/model.safetensors", initdir) < 0)
            goto oom;
        int have = file_exists(is_file ? init : w);
        free(w);
        if (!have) {
            cli_error("--init %s: no model there (a model directory or its model.safetensors)",
                      init);
            goto out;
        }
        if (!config)
            config = initcfg;
        if (!vocab)
            vocab = initvocab;
    }
    if (load_manifest(manifest, &items, &refs, &n))
        goto out;
    if (n == 0) {
        cli_error("%s: no volume or image items to train on", manifest);
        goto out;
    }
    int mkerr = util_mkdir_p(outdir);
    if (mkerr) {
        cli_error("%s: %s", outdir, strerror(mkerr));
        goto out;
    }
    /* the vocabulary */
    if (asprintf(&vpath, "%s/vocab.txt", outdir) < 0) {
        vpath = NULL;
        goto oom;
    }
    /* a given vocabulary is read where it is and copied into MODEL_DIR only once the
     * trainer (and --init's weights) are accepted, so a refused run leaves no copy */
    const char *vsrc = vocab ? vocab : vpath;
    if (vocab) {
        if (!file_exists(vocab)) {
            cli_error("%s: %s", vocab, strerror(errno ? errno : ENOENT));
            goto out;
        }
    } else if (!file_exists(vpath)) {
        const char **texts = malloc(n * sizeof *texts);
        char **tokens = NULL;
        size_t ntok = 0;
        if (!texts)
            goto oom;
        for (size_t i = 0; i < n; i++)
            texts[i] = items[i].report;
        int e = trn_vocab_build(texts, n, (size_t)vocab_size, NULL, &tokens, &ntok);
        free(texts);
        if (e) {
            cli_error("%s: building the vocabulary: %s", manifest, enc_strerror(e));
            goto out;
        }
        e = trn_vocab_write(vpath, (const char *const *)tokens, ntok, err, sizeof err);
        trn_vocab_free(tokens, ntok);
        if (e) {
            cli_error("%s", err);
            goto out;
        }
    }
    long nvocab = count_lines(vsrc);
    /* the config: vocab_size from the vocabulary */
    if (config) {
        if (!(cfgtext = util_read_file(config, NULL))) {
            cli_error("%s: %s", config, strerror(errno));
            goto out;
        }
    } else if (!(cfgtext = strdup(trn_trainer_default_config()))) {
        goto oom;
    }
    cfg = cJSON_Parse(cfgtext);
    cJSON *text = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "text") : NULL;
    if (!cfg || !cJSON_IsObject(text)) {
        cli_error("%s: not a medsem config.json (no 'text' object)", config ? config : "preset");
        goto out;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(text, "vocab_size");
    cJSON_AddNumberToObject(text, "vocab_size", (double)nvocab);
    cJSON *lc = cJSON_GetObjectItemCaseSensitive(text, "lower_case");
    int lower = !lc || !cJSON_IsBool(lc) || cJSON_IsTrue(lc);
    free(cfgtext);
    cfgtext = cJSON_PrintUnformatted(cfg);
    if (!cfgtext)
        goto oom;
    enc_tok_opts tko = ENC_TOK_OPTS_INIT;
    tko.lower_case = lower;
    if (enc_tok_load(vsrc, &tko, &tok, err, sizeof err) ||
        trn_trainer_new(cfgtext, tok, &to, &t, err, sizeof err) ||
        (init && !resume && trn_trainer_init_from(t, init, err, sizeof err))) {
        cli_error("%s", err);
        goto out;
    }
    if (vocab && copy_file(vocab, vpath)) {
        cli_error("%s: cannot copy to %s: %s", vocab, vpath, strerror(errno));
        goto out;
    }
    if (open_prep(t, vsrc, outdir, (int)threads, &pl))
        goto out;
    /* Preprocess everything once, as the pipeline would at encode time, in
     * chunks added to the trainer one after the other: the inputs are held
     * once, in the trainer's arenas reserved to the manifest's counts (not in
     * a buffer of all of them beside a copy grown by doubling). */
    const enc_prep *pp = enc_pipeline_prep(pl);
    size_t vc = enc_prep_volume_count(pp), ic = enc_prep_image_count(pp), nvol = 0;
    for (size_t i = 0; i < n; i++)
        nvol += items[i].is_volume != 0;
    if ((nvol && trn_trainer_reserve(t, ENC_VOLUME, nvol, err, sizeof err)) ||
        (n - nvol && trn_trainer_reserve(t, ENC_IMAGE, n - nvol, err, sizeof err))) {
        cli_error("%s: %s", manifest, err);
        goto out;
    }
    enum { CHUNK = 256 };
    off = malloc(CHUNK * sizeof *off);
    buf = malloc(CHUNK * (vc > ic ? vc : ic) * sizeof *buf);
    if (!off || !buf)
        goto oom;
    double t0 = cli_now();
    int failed = 0;
    int nth = threads ? (int)threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        size_t cn = n - c0 < CHUNK ? n - c0 : CHUNK, total = 0;
        /* each item's input at its own offset: a radiograph takes an image's
         * floats, not a volume's */
        for (size_t j = 0; j < cn; j++) {
            off[j] = total;
            total += items[c0 + j].is_volume ? vc : ic;
        }
#pragma omp parallel for schedule(dynamic, 4) num_threads(nth > 0 ? nth : 1)
        for (size_t j = 0; j < cn; j++) {
            const cli_vitem *it = &items[c0 + j];
            char e[1024];
            enc_modality m = enc_modality_parse(it->modality);
            int r = it->is_volume ? enc_prep_volume(it->path, m, pp, buf + off[j], e, sizeof e)
                                  : enc_prep_image(it->path, m, pp, buf + off[j], e, sizeof e);
            if (r) {
#pragma omp critical
                {
                    cli_error("%s", e);
                    failed = 1;
                }
            }
        }
        if (failed)
            continue; /* read on, so that every bad file is named; add nothing */
        for (size_t j = 0; j < cn; j++)
            if (trn_trainer_add(t, items[c0 + j].is_volume ? ENC_VOLUME : ENC_IMAGE,
                                buf + off[j], items[c0 + j].report, err, sizeof err)) {
                cli_error("%s: item %zu: %s", manifest, c0 + j + 1, err);
                goto out;
            }
    }
    if (failed)
        goto out;
    if (to.pair_weight > 0) {
        long np = add_pairs(t, manifest, items, refs, n);
        if (np < 0)
            goto out;
        if (np == 0) {
            cli_error("%s: --pair-weight: no radiograph's \"pair\" names a volume's \"study\"",
                      manifest);
            goto out;
        }
        fprintf(stderr, "medsem train: %ld radiographs paired with the volume of their study\n",
                np);
    }
    free(buf);
    buf = NULL;
    enc_pipeline_close(pl);
    pl = NULL;
    fprintf(stderr, "medsem train: %zu volumes, %zu radiographs preprocessed in %.1f s; vocabulary %ld tokens\n",
            trn_trainer_items(t, ENC_VOLUME), trn_trainer_items(t, ENC_IMAGE), cli_now() - t0,
            nvocab);

    if (ckpt)
        ckpath = strdup(ckpt);
    else if (asprintf(&ckpath, "%s/train.ckpt", outdir) < 0)
        ckpath = NULL;
    if (!ckpath)
        goto oom;
    if (resume) {
        if (trn_trainer_ckpt_read(t, ckpath, err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
        fprintf(stderr, "medsem train: resumed from %s at step %lld\n", ckpath,
                (long long)trn_trainer_steps(t));
    }
    int64_t end = (int64_t)steps;
    if (stop_after && (int64_t)stop_after < end)
        end = (int64_t)stop_after;
    double start = cli_now(), flops = trn_trainer_step_flops(t), samples = 0, lsum = 0;
    int64_t first = trn_trainer_steps(t), nlog = 0;
    while (trn_trainer_steps(t) < end) {
        trn_trainer_stats st;
        if (trn_trainer_step(t, &st, err, sizeof err)) {
            cli_error("step %lld: %s", (long long)trn_trainer_steps(t) + 1, err);
            goto out;
        }
        samples += st.samples;
        lsum += st.loss;
        nlog++;
        if (st.skipped)
            fprintf(stderr, "medsem train: step %lld: non-finite gradient, update skipped\n",
                    (long long)st.step);
        if (st.step % (int64_t)log_every == 0 || st.step == end) {
            double el = cli_now() - start, rate = samples / (el > 0 ? el : 1e-9);
            double sps = (double)(st.step - first) / (el > 0 ? el : 1e-9);
            char eta[32];
            fmt_time((double)((int64_t)steps - st.step) / (sps > 0 ? sps : 1e-9), eta, sizeof eta);
            char side[96] = "";
            if (to.vis_tag_weight > 0)
                snprintf(side, sizeof side, " vtag %.4f", st.vis_tag_loss);
            if (to.side_weight > 0)
                snprintf(side + strlen(side), sizeof side - strlen(side), " side %.4f",
                         st.side_loss);
            if (to.pair_weight > 0)
                snprintf(side + strlen(side), sizeof side - strlen(side), " pair %.4f",
                         st.pair_loss);
            printf("step %6lld/%llu  loss %.4f (clip %.4f cons %.4f tag %.4f%s, mean %.4f)  lr %.2e  "
                   "T %.4f  |g| %.3f  %.1f samples/s  %.1f GFLOP/s  ETA %s\n",
                   (long long)st.step, (unsigned long long)steps, st.loss, st.clip_loss,
                   st.cons_loss, st.tag_loss, side, lsum / (double)nlog, st.lr, st.temperature,
                   st.grad_norm, rate,
                   flops * (double)(st.step - first) / (el > 0 ? el : 1e-9) / 1e9, eta);
            fflush(stdout);
            lsum = 0;
            nlog = 0;
        }
        if (ckpt_every && st.step % (int64_t)ckpt_every == 0 &&
            trn_trainer_ckpt_write(t, ckpath, err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
    }
    if (trn_trainer_ckpt_write(t, ckpath, err, sizeof err) ||
        trn_trainer_save(t, outdir, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    fprintf(stderr, "medsem train: %lld steps; model written to %s\n",
            (long long)trn_trainer_steps(t), outdir);
    rc = CLI_OK;
    goto out;
oom:
    cli_error("out of memory");
out:
    free(buf);
    free(off);
    enc_pipeline_close(pl);
    trn_trainer_free(t);
    enc_tok_free(tok);
    cJSON_Delete(cfg);
    free(cfgtext);
    free(vpath);
    free(ckpath);
    free(initdir);
    free(initcfg);
    free(initvocab);
    for (size_t i = 0; i < n; i++) {
        cli_vitem_free(&items[i]);
        free(refs[i].study);
        free(refs[i].pair);
    }
    free(items);
    free(refs);
    return rc;
}
