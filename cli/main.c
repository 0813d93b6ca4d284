/* main.c - the medsem command line: dispatch to subcommands. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cmds[] = {
    {"encode", cmd_encode, "embed a text, image or volume, or a manifest of them"},
    {"calibrate", cmd_calibrate, "measure a model's modality means, which move image and volume queries"},
    {"eval", cmd_eval, "retrieval quality of a model on a labelled manifest"},
    {"scan", cmd_scan, "walk a folder of DICOM files and write an ingest manifest, a line per series"},
    {"ingest", cmd_ingest, "encode a manifest of volumes, images and reports into a database"},
    {"import", cmd_import, "import embeddings (.npy + JSONL metadata) into a database"},
    {"search", cmd_search, "search a database by text, image, volume, vector or item"},
    {"dedup", cmd_dedup, "find exact and near-duplicate items"},
    {"convert", cmd_convert, "turn a published checkpoint (BiomedCLIP, M3D-CLIP, a PyTorch file) into a model"},
    {"synth", cmd_synth, "write the synthetic chest benchmark (volumes, radiographs, reports)"},
    {"train", cmd_train, "train a model on a manifest of images, volumes and reports"},
    {"serve", cmd_serve, "serve the HTTP/JSON API and the search page"},
    {"info", cmd_info, "describe a database: dimension, model, spaces, indexes"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: medsem <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        fprintf(f, "  %-9s %s\n", cmds[i].name, cmds[i].help);
    fprintf(f, "\n'medsem <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("medsem %s\n", PACKAGE_VERSION);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "medsem: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
}
