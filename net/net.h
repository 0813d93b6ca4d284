/* net.h - medsem's HTTP/JSON server: libuv, http-parser, cJSON.
 *
 *   net_opts o = { .db_dir = "db", .model_dir = "models/default", .listen = "127.0.0.1:8750" };
 *   net_server *srv;  char err[512];
 *   if (net_server_new(&o, &srv, err, sizeof err)) { puts(err); return 1; }
 *   net_server_run(srv);          // returns after SIGINT/SIGTERM (or net_server_stop)
 *   net_server_free(srv);
 *
 * One libuv loop thread does all socket I/O, HTTP parsing and routing; every
 * request that needs the encoder, the store, an index or the disk runs on the
 * libuv thread pool through a bounded queue (503 + Retry-After when full).
 * Each request's parse state and response are carved from a per-request
 * arena with hard caps.  The endpoints are in docs/http.md.
 *
 * Threads: net_server_run blocks its caller; net_server_stop may be called
 * from any thread.  The thread pool's size is libuv's (UV_THREADPOOL_SIZE,
 * read when the pool first starts): set it before net_server_run.
 */
#ifndef MEDSEM_NET_H
#define MEDSEM_NET_H

#include <stddef.h>
#include <stdio.h>

#define NET_ERRNO_MAP(XX)                                                     \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(INVAL, "invalid argument")                                             \
    XX(NOTFOUND, "not found")                                                 \
    XX(IO, "input/output error")                                              \
    XX(TOOBIG, "input exceeds a size limit")                                  \
    XX(UNSUPPORTED, "unsupported by the model or the database")               \
    XX(ENGINE, "engine error")                                                \
    XX(LISTEN, "cannot listen on the address")                                \
    XX(KEYS, "bad API key file")                                              \
    XX(BUSY, "busy: retry later")                                             \
    XX(FULL, "disk full")

typedef enum {
#define NET__ENUM(name, msg) NET_##name,
    NET_ERRNO_MAP(NET__ENUM)
#undef NET__ENUM
    NET_NERR
} net_errno;

/* Static strings; never NULL (unknown codes give "unknown error"). */
const char *net_strerror(int code);
const char *net_errname(int code);

#define NET_DEFAULT_LISTEN "127.0.0.1:8750"

typedef struct net_opts {
    const char *db_dir;       /* an existing database (required) */
    const char *model_dir;    /* the model that made it; NULL: no encoding (search by item only) */
    const char *listen;       /* "HOST:PORT" (IPv4, or [IPv6]:PORT); NULL = NET_DEFAULT_LISTEN;
                                 port 0 picks a free port (see net_server_port) */
    int create;               /* create the database (for the model) when missing */
    const char *api_key_file; /* "rw KEY" / "ro KEY" lines; required unless the host is loopback */
    int workers;              /* encoder workers = concurrent jobs; 0 = 4 */
    size_t queue_max;         /* jobs queued or running before 503; 0 = 64 */
    size_t max_body;          /* request body cap in bytes (413); 0 = 64 MiB */
    size_t max_header;        /* request line + headers cap (431); 0 = 16 KiB */
    double read_timeout;      /* seconds from a request's first byte to its last (408); 0 = 30 */
    double idle_timeout;      /* seconds a keep-alive connection may sit idle; 0 = 60 */
    size_t max_conns;         /* open connections; at the cap a new one closes the
                                 longest-idle one, or is closed when none is idle; 0 = 1024 */
    size_t max_conns_per_client; /* open connections from one IP address; more are
                                    closed at once; 0 = 64 */
    double header_timeout;    /* seconds a new connection may take to send a request's
                                 headers, and a request's headers from its first byte
                                 (408); 0 = 10 */
    FILE *access_log;         /* one line per request, written by a thread of its own (the
                                 loop never waits on it); NULL = none */
    size_t body_budget;       /* bytes of request bodies all connections may hold at once
                              (503 past it; at least max_body); 0 = 1 GiB */
    size_t decode_budget;     /* bytes all uploads being decoded at once may take (413 for
                                 one that alone needs more, 503 while others hold it);
                                 0 = 1 GiB */
    size_t preview_cache;     /* bytes of decoded images/volumes kept for previews;
                                 0 = 64 MiB */
    FILE *log;                /* start/stop messages; NULL = none */
} net_opts;

typedef struct net_server net_server;

/* Opens the database and the model and binds the address (no request is
 * served until net_server_run).  Errors name the file, field or address. */
int net_server_new(const net_opts *o, net_server **out, char *errbuf, size_t errlen);
/* The bound port (useful with port 0). */
int net_server_port(const net_server *srv);
/* Serves until SIGINT or SIGTERM (or net_server_stop): then stops accepting,
 * finishes the requests in flight, answers later ones 503 with Connection:
 * close, and returns NET_OK once every connection is closed. */
int net_server_run(net_server *srv);
/* Asks a running server to shut down as on SIGTERM; safe from any thread. */
void net_server_stop(net_server *srv);
/* Saves the indexes and closes the store.  Accepts NULL. */
void net_server_free(net_server *srv);

#endif
