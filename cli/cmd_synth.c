/* cmd_synth.c - medsem synth: the built-in chest benchmark (synth/synth.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "synth/synth.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem synth --out DIR [options]\n"
            "\n"
            "Writes a synthetic chest benchmark: CT-like phantom volumes (NIfTI, int16 HU)\n"
            "and radiograph-like projections (16-bit PNG) with findings, a radiology report\n"
            "for each, DIR/<split>.jsonl (one item per line, labels for evaluation only) and\n"
            "DIR/labels.json (the label vocabulary).  The same seed gives the same bytes.\n"
            "\n"
            "  --out DIR            output directory (created when missing)\n"
            "  --volumes N          CT volumes (default 200)\n"
            "  --images N           radiographs (default 200); the first half at most\n"
            "                       project the phantoms of volumes and name them in \"pair\"\n"
            "  --rescans N          new acquisitions of earlier items, for dedup (default 0)\n"
            "  --seed S             random seed (default 1)\n"
            "  --split NAME         train, val or test (default train); splits never share\n"
            "                       a patient\n"
            "  --size SIZE          default (~96x96x48 CT, 224x224 radiograph) or small\n"
            "                       (~64x64x32, 128x128)\n"
            "  --format F           nifti (default: .nii.gz volumes, 16-bit PNG radiographs) or\n"
            "                       dicom (a CT series folder per volume, a DX file per\n"
            "                       radiograph, explicit VR little endian, and\n"
            "                       DIR/<split>.reports.csv keyed by AccessionNumber)\n"
            "  --threads N          generating threads (default: all cores)\n"
            "  --quiet              no progress bar\n");
}

static void on_progress(void *ctx, size_t done, size_t total)
{
    (void)total;
    cli_progress_update(ctx, done);
}

/* A count option: 0 to 1000000. */
static int parse_count(const char *name, const char *s, size_t *out)
{
    uint64_t u;
    if (cli_parse_u64(s, 0, 1000000, &u)) {
        cli_error("--%s '%s': expected an integer from 0 to 1000000", name, s);
        return -1;
    }
    *out = (size_t)u;
    return 0;
}

int cmd_synth(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, 'o'},     {"volumes", required_argument, 0, 'v'},
        {"images", required_argument, 0, 'i'},  {"rescans", required_argument, 0, 'r'},
        {"seed", required_argument, 0, 's'},    {"split", required_argument, 0, 'p'},
        {"size", required_argument, 0, 'z'},    {"threads", required_argument, 0, 't'},
        {"format", required_argument, 0, 'f'},  {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *out = NULL;
    synth_opts o = {0};
    o.seed = 1;
    o.volumes = 200;
    o.images = 200;
    int quiet = 0, c;
    uint64_t u;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'v':
            if (parse_count("volumes", optarg, &o.volumes))
                return CLI_BAD_INPUT;
            break;
        case 'i':
            if (parse_count("images", optarg, &o.images))
                return CLI_BAD_INPUT;
            break;
        case 'r':
            if (parse_count("rescans", optarg, &o.rescans))
                return CLI_BAD_INPUT;
            break;
        case 's':
            if (cli_parse_u64(optarg, 0, UINT64_MAX, &u)) {
                cli_error("--seed '%s': expected a non-negative integer", optarg);
                return CLI_BAD_INPUT;
            }
            o.seed = u;
            break;
        case 'p':
            if (synth_split_parse(optarg, &o.split)) {
                cli_error("--split '%s': expected train, val or test", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'z':
            if (synth_size_parse(optarg, &o.size)) {
                cli_error("--size '%s': expected default or small", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 't':
            if (cli_parse_u64(optarg, 1, 64, &u)) {
                cli_error("--threads '%s': expected an integer from 1 to 64", optarg);
                return CLI_BAD_INPUT;
            }
            o.threads = (int)u;
            break;
        case 'f':
            if (!strcmp(optarg, "nifti") || !strcmp(optarg, "dicom")) {
                o.format = strcmp(optarg, "dicom") ? SYNTH_FORMAT_NIFTI : SYNTH_FORMAT_DICOM;
            } else {
                cli_error("--format '%s': expected nifti or dicom", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("synth: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!out || !*out) {
        cli_error("synth needs --out");
        usage(stderr);
        return CLI_USAGE;
    }
    if (o.volumes + o.images + o.rescans == 0) {
        cli_error("synth: nothing to write (--volumes, --images and --rescans are all 0)");
        return CLI_BAD_INPUT;
    }

    cli_progress p;
    cli_progress_start(&p, "synth", o.volumes + o.images + o.rescans, quiet);
    o.progress = on_progress;
    o.ctx = &p;
    char err[1024];
    synth_stats st;
    double t0 = cli_now();
    int rc = synth_dataset_write(out, &o, &st, err, sizeof err);
    cli_progress_finish(&p, rc ? p.total : o.volumes + o.images + o.rescans);
    if (rc) {
        cli_error("%s", err);
        return CLI_BAD_INPUT;
    }
    double el = cli_now() - t0;
    const char *split = synth_split_name(o.split);
    printf("wrote %zu volumes, %zu radiographs (%zu paired with a volume) and %zu rescans to "
           "%s/%s/, manifest %s/%s.jsonl: %.1f MB in %.1f s\n",
           st.volumes, st.images, st.pairs, st.rescans, out, split, out, split,
           (double)st.bytes / 1e6, el);
    return CLI_OK;
}
