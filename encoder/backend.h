/* backend.h - the encoder's op table: one set of kernels per device.
 *
 *   enc_backend *be = enc_backend_cpu_new(4);
 *   float *x = be->iface.alloc(be, n * sizeof(float));
 *   be->iface.upload(be, x, host, n * sizeof(float));
 *   be->iface.layernorm(be, x, x, w, b, rows, dim, 1e-6f);
 *   be->iface.free(be, x);  enc_backend_free(be);
 *
 * Every op takes the backend and device pointers (on the CPU backend, device
 * pointers are host pointers).  Ops do not fail: shapes are the caller's
 * responsibility (checked with assert), and a device error is reported by
 * the next sync.  Ops never allocate: where an op needs working memory the
 * caller passes scratch of the size the matching *_scratch function gives,
 * carved from its own arena (model.c plans it once per enc_state).
 *
 * The CPU ops are the reference every other backend is tested against
 * (tests/encoder/test_backend.c checks them against double-precision loops).
 * A CUDA backend fills the same table with cuBLAS and its own kernels.
 *
 * Module-internal (not part of encoder.h).  Shapes in comments are row-major;
 * "in place" means out may equal in.
 */
#ifndef MEDSEM_ENCODER_BACKEND_H
#define MEDSEM_ENCODER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"

typedef struct enc_backend enc_backend;

/* How a patch's values are flattened into one row of the patch matrix,
 * which is multiplied by a weight [D, K], K = C * pz * py * px. */
typedef enum {
    ENC_PATCH_CONV = 0,  /* (c, pz, py, px): a Conv2d/Conv3d weight [D, C, pz, py, px]
                            viewed as [D, K] (timm, medsem) */
    ENC_PATCH_CLAST = 1, /* (pz, py, px, c): MONAI's perceptron embedding,
                            Rearrange "(p1 p2 p3 c)" then Linear */
} enc_patch_order;

/* Input and patch geometry of a 2D or 3D patch embedding.  2D inputs use
 * size[0] = patch[0] = 1.  Patches are numbered row-major over the patch
 * grid (z slowest, x fastest), as both timm's flatten(2) and MONAI's
 * "(h w d)" do. */
typedef struct enc_patch_geom {
    int channels;  /* C */
    int size[3];   /* input (z, y, x); each a multiple of the patch size */
    int patch[3];  /* patch (pz, py, px) */
    int order;     /* enc_patch_order */
} enc_patch_geom;

/* Patches per image (N) and values per patch (K) of g. */
size_t enc_patch_count(const enc_patch_geom *g);
size_t enc_patch_dim(const enc_patch_geom *g);

typedef struct enc_backend_i {
    const char *name;
    /* 1 when device pointers are host pointers (the CPU): weights are used
     * where they lie; 0: the model uploads them into backend memory. */
    int host_memory;

    /* --- memory ----------------------------------------------------------- */
    /* Device memory of bytes, aligned to at least 64 bytes; NULL on failure. */
    void *(*alloc)(enc_backend *be, size_t bytes);
    void (*free)(enc_backend *be, void *p); /* accepts NULL */
    /* host -> device and device -> host copies; ENC_OK or ENC_IO. */
    int (*upload)(enc_backend *be, void *dst, const void *src, size_t bytes);
    int (*download)(enc_backend *be, void *dst, const void *src, size_t bytes);
    /* Waits for queued ops; ENC_OK, or the first device error since the
     * last sync. */
    int (*sync)(enc_backend *be);
    /* Scratch floats that attention and patch_embed need for these shapes. */
    size_t (*attention_scratch)(enc_backend *be, int B, int T, int H);
    size_t (*patch_scratch)(enc_backend *be, const enc_patch_geom *g, int B);

    /* --- ops --------------------------------------------------------------- */
    /* dst [n] = src [n] (device to device; may not overlap). */
    void (*copy)(enc_backend *be, float *dst, const float *src, size_t n);

    /* out [rows, nout] (+)= in [rows, nin] * w[nout, nin]^T + bias[nout]
     * Rows of out lie ldo floats apart (ldo >= nout; 0 means nout), so three
     * products can fill the q, k and v columns of one fused [rows, 3D]
     * buffer.  bias may be NULL.  accumulate = 0 overwrites out, 1 adds to
     * it (a residual connection fused into the product).  out must not
     * overlap in or w. */
    void (*matmul)(enc_backend *be, float *out, int ldo, const float *in, const float *w,
                   const float *bias, int rows, int nin, int nout, int accumulate);

    /* out [rows, dim] = (in - mean) / sqrt(var + eps) * w + b, per row,
     * biased variance (PyTorch LayerNorm).  In place. */
    void (*layernorm)(enc_backend *be, float *out, const float *in, const float *w,
                      const float *b, int rows, int dim, float eps);

    /* out [n] = x * (1 + erf(x / sqrt 2)) / 2, the exact GELU.  In place. */
    void (*gelu)(enc_backend *be, float *out, const float *in, size_t n);

    /* out [rows, cols] = a [rows, cols] + b [rows % brows, cols]: plain
     * elementwise when brows == rows, a broadcast row when brows == 1.  In
     * place (out == a). */
    void (*add)(enc_backend *be, float *out, const float *a, const float *b, size_t rows,
                int cols, size_t brows);

    /* out [rows, cols] = softmax of each row of in.  -INFINITY entries get
     * probability 0; a row that is all -INFINITY becomes all 0 (PyTorch would
     * give NaN).  In place. */
    void (*softmax)(enc_backend *be, float *out, const float *in, int rows, int cols);

    /* Multi-head scaled dot-product attention over a fused projection.
     *   qkv   [B, T, 3D]: q = columns [0, D), k = [D, 2D), v = [2D, 3D); head
     *         h owns columns [h*hd, (h+1)*hd) of each, hd = D / H
     *   mask  [B, T] or NULL: 1 = attend, 0 = padding; (1 - mask) * -FLT_MAX
     *         is added to the scores of key positions, as Hugging Face BERT
     *         does (a row with every key masked becomes uniform, as there)
     *   out   [B, T, D]: heads concatenated (before the output projection)
     *   probs [B, H, T, T] or NULL: the attention probabilities, written
     *         when not NULL (UniMedI slice selection reads [CLS] -> patch)
     *   scratch: attention_scratch(B, T, H) floats (unused when probs given
     *         on the CPU)
     * scores = q k^T / sqrt(hd). */
    void (*attention)(enc_backend *be, float *out, float *probs, const float *qkv,
                      const float *mask, float *scratch, int B, int T, int D, int H);

    /* Patch embedding as one matrix product per image:
     *   in    [B, C, Z, Y, X] (2D: [B, C, Y, X])
     *   w     [D, K] in g->order, bias [D] (may be NULL)
     *   out   patch n of image b at out + b * out_bstride + n * D, D floats;
     *         out_bstride >= N * D lets the caller leave room for [CLS]
     *   scratch: patch_scratch(g, B) floats (im2col of one image, [N, K]) */
    void (*patch_embed)(enc_backend *be, float *out, size_t out_bstride, const float *in,
                        const float *w, const float *bias, const enc_patch_geom *g, int B,
                        int D, float *scratch);

    /* Completes ViT tokens in x [B, 1 + N, D] whose rows 1..N hold patch
     * embeddings: row 0 = cls [D]; then pos is added.  pos_has_cls = 1: pos
     * [1 + N, D] is added to every row (timm, medsem); 0: pos [N, D] is added
     * to rows 1..N only (MONAI: [CLS] carries no position).  pos may be NULL. */
    void (*vit_tokens)(enc_backend *be, float *x, const float *cls, const float *pos,
                       int pos_has_cls, int B, int N, int D);

    /* out [B, L, D] = table[ids[b, l]] + pos[l] + type_row, per token (BERT
     * embeddings before their LayerNorm).  ids [B, L] must lie in [0, V);
     * pos [>= L, D] and type_row [D] may be NULL. */
    void (*embedding)(enc_backend *be, float *out, const int32_t *ids, const float *table,
                      const float *pos, const float *type_row, int B, int L, int D);

    /* out [B, D] = x [B, T, D] at token 0. */
    void (*cls_pool)(enc_backend *be, float *out, const float *x, int B, int T, int D);

    /* out [rows, dim] = in / max(||in||_2, 1e-12), per row (F.normalize).
     * In place. */
    void (*l2norm)(enc_backend *be, float *out, const float *in, int rows, int dim);
} enc_backend_i;

/* A backend: its table, its thread bound and its private context.  Handles
 * are created by a backend's constructor and destroyed by enc_backend_free. */
struct enc_backend {
    enc_backend_i iface;
    int nthreads;
    void *context;
    void (*destroy)(enc_backend *be);
};

/* The CPU backend: OpenBLAS sgemm for the products, our own loops for the
 * rest, all spread over an OpenMP team of nthreads (<= 0: all online cores).
 * OpenBLAS is set to one thread, process-wide (openblas_set_num_threads(1)):
 * the team calls it from every thread, and its own workers would compete
 * with ours for the cores.  NULL when out of memory. */
enc_backend *enc_backend_cpu_new(int nthreads);

/* Destroys a backend of any kind.  Accepts NULL.  Memory it allocated must
 * have been freed. */
void enc_backend_free(enc_backend *be);

#endif
