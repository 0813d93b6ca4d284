/* cmd_serve.c - medsem serve: the HTTP/JSON API and the web page. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "net/net.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem serve --db DIR [--model MODEL_DIR] [options]\n"
            "\n"
            "Serves the database over HTTP: the JSON API (docs/http.md) and a web page at /.\n"
            "SIGINT or SIGTERM stops it after the requests in flight.\n"
            "\n"
            "  --db DIR             database directory\n"
            "  --model DIR          the model that made the database, to search by text,\n"
            "                       image or volume and to ingest (default: the one\n"
            "                       recorded in the database, if any)\n"
            "  --create             create the database for the model when missing\n"
            "  --listen HOST:PORT   address (default %s; port 0 picks a free one); any\n"
            "                       address but loopback needs --api-key-file\n"
            "  --api-key-file FILE  'rw KEY' / 'ro KEY' lines: requests must carry a key\n"
            "  --workers N          concurrent encode/search jobs (default 4)\n"
            "  --queue N            jobs queued or running before 503 (default 64)\n"
            "  --max-body-mb N      request body limit in MiB (default 64)\n"
            "  --read-timeout S     seconds to receive a request (default 30)\n"
            "  --idle-timeout S     seconds a keep-alive connection may idle (default 60)\n"
            "  --header-timeout S   seconds a new connection, or a request from its first\n"
            "                       byte, may take to send its headers (default 10)\n"
            "  --max-conns N        open connections (default 1024); at the cap the\n"
            "                       longest-idle one is closed for a new one\n"
            "  --max-conns-per-client N  connections from one IP address (default 64)\n"
            "  --port-file FILE     write the bound port to FILE once listening\n"
            "  --access-log FILE    one line per request (default: stderr), written by a\n"
            "                       thread of its own\n"
            "  --preview-cache-mb N decoded images/volumes kept for previews (default 64)\n"
            "  --body-budget-mb N   request bodies all connections may hold at once\n"
            "                       (default 1024, at least --max-body-mb): 503 past it\n"
            "  --decode-budget-mb N memory all uploads being decoded at once may take\n"
            "                       (default 1024): 413 for one that alone needs more,\n"
            "                       503 while others hold it\n"
            "  --quiet              no access log\n",
            NET_DEFAULT_LISTEN);
}

static int write_port(const char *path, int port)
{
    size_t n = strlen(path) + 8;
    char *tmp = malloc(n);
    if (!tmp)
        return -1;
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int bad = !f || fprintf(f, "%d\n", port) < 0;
    if (f && fclose(f))
        bad = 1;
    if (!bad && rename(tmp, path))
        bad = 1;
    if (bad)
        remove(tmp);
    free(tmp);
    return bad ? -1 : 0;
}

int cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},           {"model", required_argument, 0, 'm'},
        {"create", no_argument, 0, 'c'},             {"listen", required_argument, 0, 'l'},
        {"api-key-file", required_argument, 0, 'k'}, {"workers", required_argument, 0, 'w'},
        {"queue", required_argument, 0, 'Q'},        {"max-body-mb", required_argument, 0, 'B'},
        {"read-timeout", required_argument, 0, 'r'}, {"idle-timeout", required_argument, 0, 'i'},
        {"port-file", required_argument, 0, 'p'},    {"access-log", required_argument, 0, 'a'},
        {"quiet", no_argument, 0, 'q'},              {"help", no_argument, 0, 'h'},
        {"preview-cache-mb", required_argument, 0, 'P'},
        {"header-timeout", required_argument, 0, 'H'}, {"max-conns", required_argument, 0, 'C'},
        {"max-conns-per-client", required_argument, 0, 'K'},
        {"decode-budget-mb", required_argument, 0, 'D'},
        {"body-budget-mb", required_argument, 0, 'Y'},
        {0, 0, 0, 0}};
    net_opts o = {0};
    const char *port_file = NULL, *access = NULL;
    int quiet = 0, c;
    uint64_t u;
    double d;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': o.db_dir = optarg; break;
        case 'm': o.model_dir = optarg; break;
        case 'c': o.create = 1; break;
        case 'l': o.listen = optarg; break;
        case 'k': o.api_key_file = optarg; break;
        case 'p': port_file = optarg; break;
        case 'a': access = optarg; break;
        case 'q': quiet = 1; break;
        case 'w':
            if (cli_opt_u64("workers", optarg, 1, 256, &u))
                return CLI_BAD_INPUT;
            o.workers = (int)u;
            break;
        case 'Q':
            if (cli_opt_u64("queue", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.queue_max = (size_t)u;
            break;
        case 'P':
            if (cli_opt_u64("preview-cache-mb", optarg, 1, 1 << 16, &u))
                return CLI_BAD_INPUT;
            o.preview_cache = (size_t)u << 20;
            break;
        case 'B':
            if (cli_opt_u64("max-body-mb", optarg, 1, 1024, &u))
                return CLI_BAD_INPUT;
            o.max_body = (size_t)u << 20;
            break;
        case 'Y':
            if (cli_opt_u64("body-budget-mb", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.body_budget = (size_t)u << 20;
            break;
        case 'D':
            if (cli_opt_u64("decode-budget-mb", optarg, 16, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.decode_budget = (size_t)u << 20;
            break;
        case 'C':
            if (cli_opt_u64("max-conns", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.max_conns = (size_t)u;
            break;
        case 'K':
            if (cli_opt_u64("max-conns-per-client", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.max_conns_per_client = (size_t)u;
            break;
        case 'r':
        case 'i':
        case 'H':
            if (cli_parse_double(optarg, &d) || !(d > 0) || d > 86400) {
                cli_error("--%s '%s': expected seconds in (0, 86400]",
                          c == 'r' ? "read-timeout" : c == 'i' ? "idle-timeout" : "header-timeout",
                          optarg);
                return CLI_BAD_INPUT;
            }
            if (c == 'r')
                o.read_timeout = d;
            else if (c == 'i')
                o.idle_timeout = d;
            else
                o.header_timeout = d;
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("serve: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!o.db_dir) {
        cli_error("serve needs --db");
        usage(stderr);
        return CLI_USAGE;
    }
    if (o.create && !o.model_dir) {
        cli_error("--create needs --model (the database takes the model's dimension)");
        return CLI_USAGE;
    }
    FILE *logf = NULL;
    if (!quiet) {
        if (access && strcmp(access, "-")) {
            if (!(logf = fopen(access, "a"))) {
                cli_error("--access-log %s: %s", access, strerror(errno));
                return CLI_BAD_INPUT;
            }
            setvbuf(logf, NULL, _IOLBF, 0);
            o.access_log = logf;
        } else
            o.access_log = stderr;
    }
    o.log = stderr;
    /* Process-wide choices belong here, not in the library: a peer that
     * closes early must not kill the server, and libuv's pool (which runs
     * the jobs) gets one thread per worker unless the user chose. */
    signal(SIGPIPE, SIG_IGN);
    char n[16];
    snprintf(n, sizeof n, "%d", o.workers ? o.workers : 4);
    setenv("UV_THREADPOOL_SIZE", n, 0);

    char err[1024];
    net_server *srv;
    if (net_server_new(&o, &srv, err, sizeof err)) {
        cli_error("%s", err);
        if (logf)
            fclose(logf);
        return CLI_BAD_INPUT;
    }
    if (port_file && write_port(port_file, net_server_port(srv))) {
        cli_error("--port-file %s: cannot write it", port_file);
        net_server_free(srv);
        if (logf)
            fclose(logf);
        return CLI_BAD_INPUT;
    }
    int rc = net_server_run(srv);
    net_server_free(srv);
    if (logf)
        fclose(logf);
    return rc ? CLI_BAD_INPUT : CLI_OK;
}
