/* test_crash.c - crash safety of import: SIGKILL at random points, 50 times.
 *
 * The child is this program re-executed with --child (a fresh process, so no
 * OpenMP or LMDB state crosses a fork).  It imports a long .npy + JSONL in
 * small transactions, saving the index snapshot often, and writes the number
 * of rows committed to a pipe after every commit.  The parent kills it after
 * a random delay, then reopens the database and checks that:
 *   - every row the child reported as committed is present and searchable;
 *   - the index holds exactly the ids of the stored vectors (no entry without
 *     its item, no item missing from the index);
 *   - no row was stored twice.
 * Every 10 kills the database starts over, so kills keep landing mid-import.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "indexer/indexer.h"
#include "searcher/searcher.h"
#include "store/store.h"
#include "testutil.h"

#define ROWS 12000
#define DIM 16
#define KILLS 50
#define ROUND 10

static char self_exe[4096];

/* ---- child ------------------------------------------------------------------- */

static void child_commit(void *ctx, size_t done, size_t total, const uint64_t *ids, size_t n)
{
    int fd = *(int *)ctx;
    uint64_t d = done;
    if (write(fd, &d, sizeof d) != (ssize_t)sizeof d)
        _exit(3);
}

static int child_main(const char *db, const char *npy, const char *jsonl, int fd)
{
    idx_import_opts o = {.vectors_path = npy, .meta_path = jsonl, .space = STORE_SPACE_IMAGE,
                         .batch = 150, .save_every = 4, .on_commit = child_commit, .ctx = &fd};
    char err[1024];
    idx_import *im = NULL;
    if (idx_import_prepare(&o, &im, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        return 1;
    }
    store *s = NULL;
    store_opts so = {.create = 1, .dim = DIM, .model_id = "crash-test", .map_size = 1 << 20};
    if (store_open(db, &so, &s, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        return 1;
    }
    idx_import_stats st;
    int rc = idx_import_run(im, s, &st, err, sizeof err);
    if (rc)
        fprintf(stderr, "child: %s\n", err);
    store_close(s);
    idx_import_free(im);
    return rc ? 1 : 0;
}

/* ---- parent ------------------------------------------------------------------- */

typedef struct fixture {
    char *dir, *npy, *jsonl, *db;
    float *x;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = tu_mkdtemp();
    f->npy = tu_path(f->dir, "v.npy");
    f->jsonl = tu_path(f->dir, "v.jsonl");
    f->db = tu_path(f->dir, "db");
    f->x = malloc((size_t)ROWS * DIM * sizeof *f->x);
    tu_rng r;
    tu_rng_seed(&r, 77);
    tu_fill_normal(&r, f->x, (size_t)ROWS * DIM);
    tu_normalize_rows(f->x, ROWS, DIM);
    char err[256];
    if (idx_npy_write(f->npy, f->x, ROWS, DIM, err, sizeof err))
        return -1;
    FILE *j = fopen(f->jsonl, "w");
    for (int i = 0; i < ROWS; i++)
        fprintf(j, "{\"row\":%d,\"name\":\"row-%d\"}\n", i, i);
    fclose(j);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    tu_rmtree(f->dir);
    free(f->dir);
    free(f->npy);
    free(f->jsonl);
    free(f->db);
    free(f->x);
    free(f);
    return 0;
}

/* Runs the child, kills it after delay_ms (never when delay_ms < 0); returns
 * the number of rows it reported as committed. */
static size_t run_child(fixture *f, int delay_ms, int *status)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        char fd[16];
        snprintf(fd, sizeof fd, "%d", p[1]);
        execl(self_exe, self_exe, "--child", f->db, f->npy, f->jsonl, fd, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    if (delay_ms >= 0) {
        struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (long)(delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
    }
    uint64_t last = 0, d;
    ssize_t r;
    while ((r = read(p[0], &d, sizeof d)) == (ssize_t)sizeof d)
        last = d;
    close(p[0]);
    assert_true(waitpid(pid, status, 0) == pid);
    return (size_t)last;
}

static void verify(fixture *f, size_t committed, tu_rng *r)
{
    store *s = NULL;
    char err[1024];
    store_opts so = {0};
    int orc = store_open(f->db, &so, &s, err, sizeof err);
    if (orc == STORE_NODB && committed == 0)
        return; /* killed before its first commit: no database yet, correctly */
    if (orc)
        fail_msg("reopening after a kill (%zu rows committed): %s", committed, err);
    store_space_stat st;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_IMAGE, &st), 0);
    uint64_t items = 0;
    assert_int_equal(store_item_count(s, &items), 0);
    assert_int_equal(items, st.count);
    assert_true(st.count >= committed);
    assert_true(st.count <= ROWS);

    idx_space *x = NULL;
    if (idx_space_open(s, STORE_SPACE_IMAGE, NULL, &x, err, sizeof err))
        fail_msg("reopening the index: %s", err);
    int64_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(idx_space_ids(x, &ids, &n), 0);
    assert_int_equal(n, st.count);
    /* The index's ids are exactly the stored vectors' ids. */
    float v[DIM];
    for (size_t i = 0; i < n; i++) {
        if (i)
            assert_true(ids[i] > ids[i - 1]);
        assert_int_equal(store_vector_get(s, STORE_SPACE_IMAGE, (uint64_t)ids[i], v), 0);
    }
    free(ids);
    /* Reported rows are present once and searchable (sampled, plus the edges). */
    for (int t = 0; t < 40 && committed; t++) {
        size_t row = t == 0 ? 0 : t == 1 ? committed - 1 : (size_t)tu_rng_below(r, committed);
        char val[32];
        snprintf(val, sizeof val, "%zu", row);
        srch_filter flt;
        char expr[48];
        snprintf(expr, sizeof expr, "row=%s", val);
        assert_int_equal(srch_filter_parse(expr, &flt, err, sizeof err), 0);
        uint64_t *m = NULL;
        size_t nm = 0;
        assert_int_equal(store_filter_ids(s, &flt.f, 1, &m, &nm), 0);
        if (nm != 1)
            fail_msg("row %zu (committed %zu) found %zu times", row, committed, nm);
        float sc[1];
        int64_t lab[1];
        assert_int_equal(idx_space_search(x, f->x + row * DIM, 1, 1, NULL, 0, sc, lab), 0);
        assert_int_equal(lab[0], (int64_t)m[0]);
        free(m);
        srch_filter_clear(&flt);
    }
    idx_space_free(x);
    store_close(s);
}

static void test_kill_import(void **state)
{
    fixture *f = *state;
    tu_rng r;
    tu_rng_seed(&r, (uint64_t)time(NULL));
    int status;
    /* How long a whole import takes here, to aim the kills inside it. */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    size_t all = run_child(f, -1, &status);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(all, ROWS);
    verify(f, all, &r);
    int span = (int)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000);
    int per_kill = span / (ROUND / 2) + 5;
    print_message("full import: %d ms; killing after 0-%d ms\n", span, per_kill);

    /* The first import may have run slower than the rest (a cold cache, a
     * loaded machine): a run that finishes before its kill narrows the
     * window, and runs go on (up to 4 x KILLS) until half of KILLS were
     * killed mid-import, so the check does not hang on this machine's speed. */
    size_t killed_mid = 0, runs = 0;
    for (int i = 0; (i < KILLS || killed_mid < KILLS / 2) && i < 4 * KILLS; i++, runs++) {
        if (i % ROUND == 0)
            tu_rmtree(f->db);
        int delay = (int)tu_rng_below(&r, (uint64_t)per_kill);
        size_t committed = run_child(f, delay, &status);
        if (WIFSIGNALED(status))
            killed_mid++;
        else if (per_kill > 8)
            per_kill = per_kill * 3 / 4;
        verify(f, committed, &r);
    }
    print_message("%zu of %zu runs were killed before they finished (window at last 0-%d ms)\n",
                  killed_mid, runs, per_kill);
    assert_true(killed_mid >= KILLS / 2);
    /* Finally an uninterrupted run completes the job with no duplicates. */
    size_t done = run_child(f, -1, &status);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(done, ROWS);
    verify(f, ROWS, &r);
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3], argv[4], atoi(argv[5]));
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0)
        return 1;
    self_exe[n] = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_import, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
