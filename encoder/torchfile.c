/* torchfile.c - PyTorch checkpoints (torch.save's zip format) read by a
 * restricted unpickler (torchfile.h has the rules).  The pickle opcodes
 * and their encodings are Python's pickletools documentation's; the layout
 * of a checkpoint (<archive>/data.pkl, <archive>/data/<key>, persistent ids
 * ("storage", <Storage type>, key, location, numel), and
 * _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks))
 * is torch.serialization's. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder/encoder.h"
#include "encoder/torchfile.h"
#include "util/util.h"

/* ---- values of the restricted machine ------------------------------------------- */

typedef enum {
    V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE,
    V_TENSOR, V_MARK
} vkind;

/* The callables a state dict uses; nothing else can be named. */
typedef enum { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_STORAGE } gkind;

typedef struct dtype_info {
    const char *storage; /* torch.<X>Storage */
    const char *name;    /* safetensors dtype */
    int size;
} dtype_info;

static const dtype_info DTYPES[] = {
    {"FloatStorage", "F32", 4}, {"HalfStorage", "F16", 2},  {"BFloat16Storage", "BF16", 2},
    {"DoubleStorage", "F64", 8}, {"LongStorage", "I64", 8}, {"IntStorage", "I32", 4},
    {"ShortStorage", "I16", 2}, {"CharStorage", "I8", 1},   {"ByteStorage", "U8", 1},
    {"BoolStorage", "BOOL", 1},
};

typedef struct val val;
struct val {
    vkind k;
    int64_t i;     /* INT, BOOL; GLOBAL: gkind; STORAGE: numel */
    double f;      /* FLOAT */
    const char *s; /* STR (NUL-terminated copy); STORAGE: key */
    size_t slen;
    val **items;   /* TUPLE, LIST, DICT (key, value pairs) */
    size_t n, cap;
    int dtype;     /* GLOBAL G_STORAGE, STORAGE, TENSOR: index in DTYPES */
    /* TENSOR */
    val *storage;
    int64_t offset, rank, shape[ENC_ST_MAX_RANK], stride[ENC_ST_MAX_RANK];
};

typedef struct tensor {
    char *name;
    const val *t;
    const unsigned char *data; /* the storage's bytes */
    size_t bytes;
} tensor;

struct enc_torch {
    unsigned char *file;
    util_zip_entry *zip;
    int nzip;
    val **all; /* every value made, for freeing */
    size_t nall, capall;
    tensor *ts;
    size_t n, cap, skipped;
    char prefix[256]; /* "<archive>/" */
};

#define MAX_STACK ((size_t)1 << 22)

static val *mk(enc_torch *t, vkind k)
{
    if (t->nall == t->capall) {
        size_t nc = t->capall ? 2 * t->capall : 1024;
        val **na = realloc(t->all, nc * sizeof *na);
        if (!na)
            return NULL;
        t->all = na;
        t->capall = nc;
    }
    val *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->k = k;
    t->all[t->nall++] = v;
    return v;
}

static int push_item(val *c, val *x)
{
    if (c->n == c->cap) {
        size_t nc = c->cap ? 2 * c->cap : 8;
        val **ni = realloc(c->items, nc * sizeof *ni);
        if (!ni)
            return -1;
        c->items = ni;
        c->cap = nc;
    }
    c->items[c->n++] = x;
    return 0;
}

void enc_torch_close(enc_torch *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nall; i++) {
        free((void *)t->all[i]->s);
        free(t->all[i]->items);
        free(t->all[i]);
    }
    free(t->all);
    for (size_t i = 0; i < t->n; i++)
        free(t->ts[i].name);
    free(t->ts);
    util_zip_free(t->zip, t->nzip);
    free(t->file);
    free(t);
}

/* ---- the machine ---------------------------------------------------------------- */

typedef struct vm {
    enc_torch *t;
    const unsigned char *b;
    size_t n, p;
    val **st;  /* the stack (V_MARK entries mark) */
    size_t sp, scap;
    val **memo;
    size_t nmemo;
    const char *name;
    char *eb;
    size_t el;
} vm;

static int fail(vm *m, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(vm *m, int code, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return util_errf(m->eb, m->el, code, "%s: data.pkl, byte %zu: %s", m->name, m->p, msg);
}

static int push(vm *m, val *v)
{
    if (!v)
        return fail(m, ENC_NOMEM, "out of memory");
    if (m->sp == m->scap) {
        if (m->scap >= MAX_STACK)
            return fail(m, ENC_TOOBIG, "the pickle's stack grows past %zu values", MAX_STACK);
        size_t nc = m->scap ? 2 * m->scap : 256;
        val **ns = realloc(m->st, nc * sizeof *ns);
        if (!ns)
            return fail(m, ENC_NOMEM, "out of memory");
        m->st = ns;
        m->scap = nc;
    }
    m->st[m->sp++] = v;
    return ENC_OK;
}

static val *pop(vm *m)
{
    if (!m->sp || m->st[m->sp - 1]->k == V_MARK)
        return NULL;
    return m->st[--m->sp];
}

/* Index just above the topmost mark, or SIZE_MAX without one. */
static size_t mark_at(vm *m)
{
    for (size_t i = m->sp; i > 0; i--)
        if (m->st[i - 1]->k == V_MARK)
            return i;
    return SIZE_MAX;
}

static int need(vm *m, size_t k)
{
    return m->p + k <= m->n ? ENC_OK : fail(m, ENC_FORMAT, "the pickle ends inside an opcode");
}

static uint64_t le(const unsigned char *p, int k)
{
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static val *mkstr(vm *m, const unsigned char *p, size_t len)
{
    val *v = mk(m->t, V_STR);
    char *s = v ? malloc(len + 1) : NULL;
    if (!s)
        return NULL;
    memcpy(s, p, len);
    s[len] = '\0';
    v->s = s;
    v->slen = len;
    return v;
}

static int memo_put(vm *m, uint64_t idx, val *v)
{
    if (idx > MAX_STACK)
        return fail(m, ENC_TOOBIG, "memo index %llu", (unsigned long long)idx);
    if (idx >= m->nmemo) {
        size_t nn = (size_t)idx + 1 > 2 * m->nmemo ? (size_t)idx + 1 : 2 * m->nmemo;
        val **nm = realloc(m->memo, nn * sizeof *nm);
        if (!nm)
            return fail(m, ENC_NOMEM, "out of memory");
        memset(nm + m->nmemo, 0, (nn - m->nmemo) * sizeof *nm);
        m->memo = nm;
        m->nmemo = nn;
    }
    m->memo[idx] = v;
    return ENC_OK;
}

/* module.name to one of the four callables, or a refusal naming it. */
static int global(vm *m, const char *mod, const char *name)
{
    val *g = mk(m->t, V_GLOBAL);
    if (!g)
        return fail(m, ENC_NOMEM, "out of memory");
    if (!strcmp(mod, "collections") && !strcmp(name, "OrderedDict")) {
        g->i = G_ORDERED_DICT;
    } else if (!strcmp(mod, "torch._utils") && !strcmp(name, "_rebuild_tensor_v2")) {
        g->i = G_REBUILD_TENSOR;
    } else if (!strcmp(mod, "torch._utils") && !strcmp(name, "_rebuild_parameter")) {
        g->i = G_REBUILD_PARAMETER;
    } else if (!strcmp(mod, "torch")) {
        g->i = G_STORAGE;
        g->dtype = -1;
        for (size_t d = 0; d < sizeof DTYPES / sizeof *DTYPES; d++)
            if (!strcmp(name, DTYPES[d].storage))
                g->dtype = (int)d;
        if (g->dtype < 0)
            return fail(m, ENC_UNSUPPORTED, "global torch.%.80s is not a storage type a state "
                        "dict uses: refused", name);
    } else {
        return fail(m, ENC_UNSUPPORTED, "global %.80s.%.80s is not something a state dict "
                    "uses: refused (nothing is imported or run)", mod, name);
    }
    return push(m, g);
}

static int as_int(const val *v, int64_t *out)
{
    if (!v || (v->k != V_INT && v->k != V_BOOL))
        return -1;
    *out = v->i;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks
 * [, metadata]) */
static int rebuild_tensor(vm *m, const val *args, val **out)
{
    if (args->k != V_TUPLE || args->n < 4 || args->items[0]->k != V_STORAGE)
        return fail(m, ENC_FORMAT, "_rebuild_tensor_v2 without (storage, offset, size, stride)");
    const val *size = args->items[2], *stride = args->items[3];
    if (size->k != V_TUPLE || stride->k != V_TUPLE || size->n != stride->n)
        return fail(m, ENC_FORMAT, "a tensor's size and stride are not tuples of one length");
    if (size->n > ENC_ST_MAX_RANK)
        return fail(m, ENC_UNSUPPORTED, "a tensor of rank %zu (at most %d)", size->n,
                    ENC_ST_MAX_RANK);
    val *t = mk(m->t, V_TENSOR);
    if (!t)
        return fail(m, ENC_NOMEM, "out of memory");
    t->storage = args->items[0];
    t->dtype = t->storage->dtype;
    t->rank = (int64_t)size->n;
    if (as_int(args->items[1], &t->offset) || t->offset < 0)
        return fail(m, ENC_FORMAT, "a tensor's storage offset is not a non-negative integer");
    /* the largest element index the view reaches must lie in the storage */
    int64_t last = t->offset, count = 1;
    for (size_t d = 0; d < size->n; d++) {
        if (as_int(size->items[d], &t->shape[d]) || as_int(stride->items[d], &t->stride[d]) ||
            t->shape[d] < 0 || t->shape[d] > ((int64_t)1 << 40) || t->stride[d] < 0 ||
            t->stride[d] > ((int64_t)1 << 40))
            return fail(m, ENC_FORMAT, "a tensor's size or stride is not a small non-negative "
                        "integer");
        if (t->shape[d] == 0)
            count = 0;
        else
            last += (t->shape[d] - 1) * t->stride[d];
        if (count)
            count *= t->shape[d];
        if (count > ((int64_t)1 << 40))
            return fail(m, ENC_TOOBIG, "a tensor of more than 2^40 elements");
    }
    if (count && last >= t->storage->i)
        return fail(m, ENC_FORMAT, "a tensor reaches element %lld of a storage of %lld",
                    (long long)last, (long long)t->storage->i);
    *out = t;
    return ENC_OK;
}

static int reduce(vm *m)
{
    val *args = pop(m), *fn = pop(m);
    if (!args || !fn)
        return fail(m, ENC_FORMAT, "REDUCE on a short stack");
    if (fn->k != V_GLOBAL || args->k != V_TUPLE)
        return fail(m, ENC_UNSUPPORTED, "REDUCE of something other than an allowed global");
    val *r = NULL;
    int rc;
    switch ((gkind)fn->i) {
    case G_ORDERED_DICT:
        if (args->n)
            return fail(m, ENC_UNSUPPORTED, "OrderedDict called with arguments");
        r = mk(m->t, V_DICT);
        break;
    case G_REBUILD_TENSOR:
        if ((rc = rebuild_tensor(m, args, &r)))
            return rc;
        break;
    case G_REBUILD_PARAMETER: /* (tensor, requires_grad, hooks): the tensor */
        if (!args->n || args->items[0]->k != V_TENSOR)
            return fail(m, ENC_FORMAT, "_rebuild_parameter without a tensor");
        r = args->items[0];
        break;
    default:
        return fail(m, ENC_UNSUPPORTED, "a storage type called directly");
    }
    return push(m, r);
}

/* ('storage', <Storage global>, key, location, numel) */
static int persid(vm *m)
{
    val *pid = pop(m);
    if (!pid || pid->k != V_TUPLE || pid->n != 5 || pid->items[0]->k != V_STR ||
        strcmp(pid->items[0]->s, "storage") || pid->items[1]->k != V_GLOBAL ||
        pid->items[1]->i != G_STORAGE || pid->items[2]->k != V_STR ||
        pid->items[4]->k != V_INT || pid->items[4]->i < 0)
        return fail(m, ENC_UNSUPPORTED, "a persistent id that is not ('storage', type, key, "
                    "location, numel)");
    val *s = mk(m->t, V_STORAGE);
    char *key = s ? strdup(pid->items[2]->s) : NULL;
    if (!key)
        return fail(m, ENC_NOMEM, "out of memory");
    s->s = key;
    s->i = pid->items[4]->i;
    s->dtype = pid->items[1]->dtype;
    return push(m, s);
}

static int run(vm *m, val **result)
{
    static val markv = {.k = V_MARK};
    int rc = ENC_OK;
    while (!rc) {
        if (m->p >= m->n)
            return fail(m, ENC_FORMAT, "the pickle ends without STOP");
        unsigned op = m->b[m->p++];
        const unsigned char *a = m->b + m->p;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = need(m, 1)))
                break;
            if (a[0] < 2 || a[0] > 5)
                rc = fail(m, ENC_UNSUPPORTED, "pickle protocol %u", a[0]);
            m->p += 1;
            break;
        case 0x95: /* FRAME */
            if (!(rc = need(m, 8)))
                m->p += 8;
            break;
        case '}': rc = push(m, mk(m->t, V_DICT)); break;
        case ']': rc = push(m, mk(m->t, V_LIST)); break;
        case ')': rc = push(m, mk(m->t, V_TUPLE)); break;
        case '(': rc = push(m, &markv); break;
        case 'N': rc = push(m, mk(m->t, V_NONE)); break;
        case 0x88: case 0x89: { /* NEWTRUE, NEWFALSE */
            val *v = mk(m->t, V_BOOL);
            if (v)
                v->i = op == 0x88;
            rc = push(m, v);
            break;
        }
        case 'J': case 'K': case 'M': { /* BININT, BININT1, BININT2 */
            int k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            if ((rc = need(m, (size_t)k)))
                break;
            val *v = mk(m->t, V_INT);
            if (v)
                v->i = op == 'J' ? (int64_t)(int32_t)le(a, 4) : (int64_t)le(a, k);
            m->p += (size_t)k;
            rc = push(m, v);
            break;
        }
        case 0x8a: { /* LONG1: n bytes, little-endian two's complement */
            if ((rc = need(m, 1)))
                break;
            unsigned k = a[0];
            if (k > 8) {
                rc = fail(m, ENC_UNSUPPORTED, "an integer of %u bytes", k);
                break;
            }
            if ((rc = need(m, 1 + k)))
                break;
            uint64_t u = le(a + 1, (int)k);
            if (k && k < 8 && (a[k] & 0x80))
                u |= ~(uint64_t)0 << (8 * k);
            val *v = mk(m->t, V_INT);
            if (v)
                v->i = (int64_t)u;
            m->p += 1 + k;
            rc = push(m, v);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            if ((rc = need(m, 8)))
                break;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | a[i];
            double d;
            memcpy(&d, &u, sizeof d);
            val *v = mk(m->t, V_FLOAT);
            if (v)
                v->f = d;
            m->p += 8;
            rc = push(m, v);
            break;
        }
        case 'X': case 0x8c: case 0x8d: case 'T': case 'U': { /* strings */
            int k = op == 'X' || op == 'T' ? 4 : op == 0x8d ? 8 : 1;
            if ((rc = need(m, (size_t)k)))
                break;
            uint64_t len = le(a, k);
            if (len > m->n - m->p - (size_t)k) {
                rc = fail(m, ENC_FORMAT, "a string runs past the end");
                break;
            }
            val *v = mkstr(m, a + k, (size_t)len);
            m->p += (size_t)k + (size_t)len;
            rc = push(m, v);
            break;
        }
        case 'q': case 'r': { /* BINPUT, LONG_BINPUT */
            int k = op == 'q' ? 1 : 4;
            if ((rc = need(m, (size_t)k)))
                break;
            if (!m->sp) {
                rc = fail(m, ENC_FORMAT, "PUT on an empty stack");
                break;
            }
            rc = memo_put(m, le(a, k), m->st[m->sp - 1]);
            m->p += (size_t)k;
            break;
        }
        case 0x94: /* MEMOIZE */
            rc = m->sp ? memo_put(m, m->nmemo, m->st[m->sp - 1])
                       : fail(m, ENC_FORMAT, "MEMOIZE on an empty stack");
            break;
        case 'h': case 'j': { /* BINGET, LONG_BINGET */
            int k = op == 'h' ? 1 : 4;
            if ((rc = need(m, (size_t)k)))
                break;
            uint64_t idx = le(a, k);
            m->p += (size_t)k;
            if (idx >= m->nmemo || !m->memo[idx]) {
                rc = fail(m, ENC_FORMAT, "GET of memo %llu, never put", (unsigned long long)idx);
                break;
            }
            rc = push(m, m->memo[idx]);
            break;
        }
        case 'c': { /* GLOBAL "module\nname\n" */
            const unsigned char *e1 = memchr(a, '\n', m->n - m->p);
            const unsigned char *e2 = e1 ? memchr(e1 + 1, '\n', m->n - (size_t)(e1 + 1 - m->b)) : NULL;
            if (!e2 || e1 - a > 200 || e2 - e1 > 200) {
                rc = fail(m, ENC_FORMAT, "a GLOBAL without its two lines");
                break;
            }
            char mod[256], name[256];
            memcpy(mod, a, (size_t)(e1 - a));
            mod[e1 - a] = '\0';
            memcpy(name, e1 + 1, (size_t)(e2 - e1 - 1));
            name[e2 - e1 - 1] = '\0';
            m->p = (size_t)(e2 + 1 - m->b);
            rc = global(m, mod, name);
            break;
        }
        case 0x93: { /* STACK_GLOBAL */
            val *name = pop(m), *mod = pop(m);
            if (!name || !mod || name->k != V_STR || mod->k != V_STR)
                rc = fail(m, ENC_FORMAT, "STACK_GLOBAL without two strings");
            else
                rc = global(m, mod->s, name->s);
            break;
        }
        case 't': case 'l': { /* TUPLE, LIST from the mark */
            size_t at = mark_at(m);
            if (at == SIZE_MAX) {
                rc = fail(m, ENC_FORMAT, "TUPLE without a mark");
                break;
            }
            val *v = mk(m->t, op == 't' ? V_TUPLE : V_LIST);
            for (size_t i = at; v && i < m->sp && !rc; i++)
                if (push_item(v, m->st[i]))
                    rc = fail(m, ENC_NOMEM, "out of memory");
            m->sp = at - 1;
            if (!rc)
                rc = push(m, v);
            break;
        }
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t k = op - 0x84;
            if (m->sp < k || (mark_at(m) != SIZE_MAX && mark_at(m) > m->sp - k)) {
                rc = fail(m, ENC_FORMAT, "TUPLE%zu on a short stack", k);
                break;
            }
            val *v = mk(m->t, V_TUPLE);
            for (size_t i = m->sp - k; v && i < m->sp && !rc; i++)
                if (push_item(v, m->st[i]))
                    rc = fail(m, ENC_NOMEM, "out of memory");
            m->sp -= k;
            if (!rc)
                rc = push(m, v);
            break;
        }
        case 's': { /* SETITEM */
            val *v = pop(m), *k = pop(m);
            val *d = m->sp ? m->st[m->sp - 1] : NULL;
            if (!v || !k || !d || d->k != V_DICT)
                rc = fail(m, ENC_FORMAT, "SETITEM without a dict, a key and a value");
            else if (push_item(d, k) || push_item(d, v))
                rc = fail(m, ENC_NOMEM, "out of memory");
            break;
        }
        case 'u': case 'e': { /* SETITEMS, APPENDS from the mark */
            size_t at = mark_at(m);
            if (at == SIZE_MAX || at < 2 || m->st[at - 2]->k != (op == 'u' ? V_DICT : V_LIST) ||
                (op == 'u' && (m->sp - at) % 2)) {
                rc = fail(m, ENC_FORMAT, "%s without a %s below its mark",
                          op == 'u' ? "SETITEMS" : "APPENDS", op == 'u' ? "dict" : "list");
                break;
            }
            val *c = m->st[at - 2];
            for (size_t i = at; i < m->sp && !rc; i++)
                if (push_item(c, m->st[i]))
                    rc = fail(m, ENC_NOMEM, "out of memory");
            m->sp = at - 1;
            break;
        }
        case 'a': { /* APPEND */
            val *v = pop(m);
            val *l = m->sp ? m->st[m->sp - 1] : NULL;
            if (!v || !l || l->k != V_LIST)
                rc = fail(m, ENC_FORMAT, "APPEND without a list");
            else if (push_item(l, v))
                rc = fail(m, ENC_NOMEM, "out of memory");
            break;
        }
        case 'R': rc = reduce(m); break;
        case 'b': { /* BUILD: a dict's or a tensor's state (_metadata, hooks) is ignored */
            val *state = pop(m);
            val *obj = m->sp ? m->st[m->sp - 1] : NULL;
            if (!state || !obj || (obj->k != V_DICT && obj->k != V_TENSOR))
                rc = fail(m, ENC_UNSUPPORTED, "BUILD on something other than a dict or tensor");
            break;
        }
        case 'Q': rc = persid(m); break;
        case '0': /* POP */
            if (!pop(m))
                rc = fail(m, ENC_FORMAT, "POP on an empty stack");
            break;
        case '.': /* STOP */
            if (m->sp != 1)
                return fail(m, ENC_FORMAT, "STOP with %zu values on the stack", m->sp);
            *result = m->st[0];
            return ENC_OK;
        default:
            m->p--;
            rc = fail(m, ENC_UNSUPPORTED, "opcode 0x%02x is not one a state dict uses: refused",
                      op);
        }
    }
    return rc;
}

/* ---- the checkpoint --------------------------------------------------------------- */

static int add_tensors(enc_torch *t, const val *d, const char *prefix, int depth, char *eb,
                       size_t el, const char *name)
{
    if (depth > 8)
        return util_errf(eb, el, ENC_FORMAT, "%s: dicts nested deeper than 8", name);
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const val *k = d->items[i], *v = d->items[i + 1];
        if (k->k != V_STR) {
            t->skipped++;
            continue;
        }
        char *full;
        if (asprintf(&full, "%s%s%s", prefix, *prefix ? "." : "", k->s) < 0)
            return util_errf(eb, el, ENC_NOMEM, "%s: out of memory", name);
        int rc = ENC_OK;
        if (v->k == V_DICT) {
            rc = add_tensors(t, v, full, depth + 1, eb, el, name);
            free(full);
        } else if (v->k != V_TENSOR) {
            t->skipped++;
            free(full);
        } else {
            /* its storage's bytes: <archive>/data/<key> */
            char want[600];
            snprintf(want, sizeof want, "%sdata/%s", t->prefix, v->storage->s);
            const util_zip_entry *e = NULL;
            for (int z = 0; z < t->nzip && !e; z++)
                if (!strcmp(t->zip[z].name, want))
                    e = &t->zip[z];
            size_t need = (size_t)v->storage->i * (size_t)DTYPES[v->dtype].size;
            if (!e) {
                rc = util_errf(eb, el, ENC_FORMAT, "%s: %s: its storage %s is not in the archive",
                               name, full, want);
            } else if (e->len < need) {
                rc = util_errf(eb, el, ENC_FORMAT, "%s: %s: storage %s holds %zu bytes, %lld "
                               "elements of %s need %zu", name, full, want, e->len,
                               (long long)v->storage->i, DTYPES[v->dtype].name, need);
            } else {
                if (t->n == t->cap) {
                    size_t nc = t->cap ? 2 * t->cap : 256;
                    tensor *nt = realloc(t->ts, nc * sizeof *nt);
                    if (!nt) {
                        free(full);
                        return util_errf(eb, el, ENC_NOMEM, "%s: out of memory", name);
                    }
                    t->ts = nt;
                    t->cap = nc;
                }
                for (size_t j = 0; j < t->n; j++)
                    if (!strcmp(t->ts[j].name, full))
                        rc = util_errf(eb, el, ENC_FORMAT, "%s: tensor %s twice", name, full);
                if (!rc) {
                    t->ts[t->n++] = (tensor){full, v, e->data, e->len};
                    continue;
                }
            }
            free(full);
        }
        if (rc)
            return rc;
    }
    return ENC_OK;
}

int enc_torch_open_mem(const void *data, size_t len, const char *name, enc_torch **out,
                       char *errbuf, size_t errlen)
{
    if (!name)
        name = "(memory)";
    if (!data || !out)
        return util_errf(errbuf, errlen, ENC_INVAL, "enc_torch_open: NULL argument");
    const unsigned char *b = data;
    if (len >= 2 && b[0] == 0x80 && b[1] >= 2)
        return util_errf(errbuf, errlen, ENC_UNSUPPORTED, "%s: a PyTorch file in the legacy "
                         "(before 1.6) format: load and save it again with torch 1.6 or later",
                         name);
    if (!util_is_zip(data, len))
        return util_errf(errbuf, errlen, ENC_FORMAT, "%s: not a PyTorch checkpoint (not a zip)",
                         name);
    enc_torch *t = calloc(1, sizeof *t);
    if (!t)
        return util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", name);
    int rc = util_zip_read(b, len, name, (size_t)1 << 36, 1 << 20, &t->zip, &t->nzip, errbuf,
                           errlen);
    if (rc) {
        free(t);
        return rc == UTIL_ZIP_UNSUPPORTED ? ENC_UNSUPPORTED
               : rc == UTIL_ZIP_TOOBIG    ? ENC_TOOBIG
               : rc == UTIL_ZIP_NOMEM     ? ENC_NOMEM
                                          : ENC_FORMAT;
    }
    /* <archive>/data.pkl: the one archive folder torch writes */
    const util_zip_entry *pkl = NULL, *order = NULL;
    for (int i = 0; i < t->nzip; i++) {
        const char *n = t->zip[i].name, *sl = strchr(n, '/');
        if (sl && !strchr(sl + 1, '/') && !strcmp(sl + 1, "data.pkl") && !pkl) {
            pkl = &t->zip[i];
            snprintf(t->prefix, sizeof t->prefix, "%.*s", (int)(sl + 1 - n), n);
        }
    }
    for (int i = 0; pkl && i < t->nzip; i++) {
        const char *n = t->zip[i].name;
        if (!strncmp(n, t->prefix, strlen(t->prefix)) && !strcmp(n + strlen(t->prefix), "byteorder"))
            order = &t->zip[i];
    }
    if (!pkl) {
        enc_torch_close(t);
        return util_errf(errbuf, errlen, ENC_FORMAT, "%s: a zip without <archive>/data.pkl: "
                         "not a PyTorch checkpoint", name);
    }
    if (order && !(order->len >= 6 && !memcmp(order->data, "little", 6))) {
        enc_torch_close(t);
        return util_errf(errbuf, errlen, ENC_UNSUPPORTED, "%s: big-endian storages are not read",
                         name);
    }
    vm m = {.t = t, .b = pkl->data, .n = pkl->len, .name = name, .eb = errbuf, .el = errlen};
    val *root = NULL;
    rc = run(&m, &root);
    free(m.st);
    free(m.memo);
    if (!rc && root->k != V_DICT)
        rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: data.pkl holds no dict of tensors", name);
    if (!rc)
        rc = add_tensors(t, root, "", 0, errbuf, errlen, name);
    if (!rc && t->n == 0)
        rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: no tensors in data.pkl", name);
    if (rc) {
        enc_torch_close(t);
        return rc;
    }
    *out = t;
    return ENC_OK;
}

int enc_torch_open(const char *path, enc_torch **out, char *errbuf, size_t errlen)
{
    if (!path || !out)
        return util_errf(errbuf, errlen, ENC_INVAL, "enc_torch_open: NULL argument");
    size_t len;
    char *b = util_read_file(path, &len);
    if (!b)
        return util_errf(errbuf, errlen, errno == ENOMEM ? ENC_NOMEM : ENC_IO, "%s: %s", path,
                         strerror(errno));
    int rc = enc_torch_open_mem(b, len, path, out, errbuf, errlen);
    free(b);
    return rc;
}

size_t enc_torch_count(const enc_torch *t) { return t ? t->n : 0; }
const char *enc_torch_name(const enc_torch *t, size_t i) { return i < t->n ? t->ts[i].name : NULL; }
int enc_torch_rank(const enc_torch *t, size_t i) { return i < t->n ? (int)t->ts[i].t->rank : -1; }
const int64_t *enc_torch_shape(const enc_torch *t, size_t i)
{
    return i < t->n ? t->ts[i].t->shape : NULL;
}
const char *enc_torch_dtype(const enc_torch *t, size_t i)
{
    return i < t->n ? DTYPES[t->ts[i].t->dtype].name : NULL;
}
size_t enc_torch_skipped(const enc_torch *t) { return t ? t->skipped : 0; }

static float half_to_float(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, f = h & 0x3ff, u;
    if (e == 0) {
        if (!f) {
            u = s;
        } else { /* subnormal */
            e = 113;
            while (!(f & 0x400)) {
                f <<= 1;
                e--;
            }
            u = s | e << 23 | (f & 0x3ff) << 13;
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | f << 13;
    } else {
        u = s | (e + 112) << 23 | f << 13;
    }
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

int enc_torch_get_f32(const enc_torch *t, size_t i, float *out, char *errbuf, size_t errlen)
{
    if (!t || i >= t->n || !out)
        return util_errf(errbuf, errlen, ENC_INVAL, "enc_torch_get_f32: bad argument");
    const tensor *ts = &t->ts[i];
    const val *v = ts->t;
    int R = (int)v->rank, dt = v->dtype, sz = DTYPES[dt].size;
    int64_t count = 1, idx[ENC_ST_MAX_RANK] = {0};
    for (int d = 0; d < R; d++)
        count *= v->shape[d];
    for (int64_t o = 0; o < count; o++) {
        int64_t e = v->offset;
        for (int d = 0; d < R; d++)
            e += idx[d] * v->stride[d];
        const unsigned char *p = ts->data + (size_t)e * (size_t)sz;
        double x;
        const char *n = DTYPES[dt].name;
        if (!strcmp(n, "F32")) {
            float f;
            memcpy(&f, p, 4);
            x = f;
        } else if (!strcmp(n, "F16")) {
            x = half_to_float((uint16_t)le(p, 2));
        } else if (!strcmp(n, "BF16")) {
            uint32_t u = (uint32_t)le(p, 2) << 16;
            float f;
            memcpy(&f, &u, 4);
            x = f;
        } else if (!strcmp(n, "F64")) {
            memcpy(&x, p, 8);
        } else if (!strcmp(n, "U8") || !strcmp(n, "BOOL")) {
            x = p[0];
        } else { /* signed integers */
            uint64_t u = le(p, sz);
            if (sz < 8 && (u >> (8 * sz - 1)) & 1)
                u |= ~(uint64_t)0 << (8 * sz);
            int64_t s = (int64_t)u;
            if (s > (1 << 24) || s < -(1 << 24))
                return util_errf(errbuf, errlen, ENC_INVAL, "%s: element %lld is %lld, not exact "
                                 "in float32", ts->name, (long long)o, (long long)s);
            x = (double)s;
        }
        out[o] = (float)x;
        for (int d = R - 1; d >= 0; d--) {
            if (++idx[d] < v->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return ENC_OK;
}

int enc_torch_to_safetensors(const char *in, const char *outp, char *errbuf, size_t errlen)
{
    enc_torch *t;
    int rc = enc_torch_open(in, &t, errbuf, errlen);
    if (rc)
        return rc;
    size_t n = t->n;
    const char **names = calloc(n, sizeof *names);
    int *ranks = calloc(n, sizeof *ranks);
    int64_t(*shapes)[ENC_ST_MAX_RANK] = calloc(n, sizeof *shapes);
    float **data = calloc(n, sizeof *data);
    if (!names || !ranks || !shapes || !data)
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", in);
    for (size_t i = 0; i < n && !rc; i++) {
        const val *v = t->ts[i].t;
        size_t count = 1;
        for (int d = 0; d < v->rank; d++)
            count *= (size_t)v->shape[d];
        names[i] = t->ts[i].name;
        ranks[i] = (int)v->rank;
        memcpy(shapes[i], v->shape, sizeof shapes[i]);
        if (!(data[i] = malloc((count ? count : 1) * sizeof(float))))
            rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", in);
        else
            rc = enc_torch_get_f32(t, i, data[i], errbuf, errlen);
    }
    if (!rc)
        rc = enc_st_write(outp, n, names, ranks, (const int64_t(*)[ENC_ST_MAX_RANK])shapes,
                          (const float *const *)data, errbuf, errlen);
    for (size_t i = 0; data && i < n; i++)
        free(data[i]);
    free(data);
    free(shapes);
    free(ranks);
    free(names);
    enc_torch_close(t);
    return rc;
}
