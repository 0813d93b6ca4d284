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
 * The backward twins of the ops, for training, are a second table in the
 * same backend (be->train, enc_backend_train_i, below the first).
 *
 * Module-internal (not part of encoder.h).  Shapes in comments are row-major;
 * "in place" means out may equal in.
 */
#ifndef MEDSEM_ENCODER_BACKEND_H
#define MEDSEM_ENCODER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

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

/* A convolution (PyTorch's Conv2d / Conv3d: zero padding, no dilation, one
 * group), channel-first in and out: in [B, cin, Z, Y, X] -> out [B, cout,
 * Z', Y', X'], weight [cout, cin, kz, ky, kx].  2D convolutions use size[0]
 * = kernel[0] = stride[0] = 1 and pad[0] = 0. */
typedef struct enc_conv_geom {
    int cin, cout;
    int size[3];   /* input (z, y, x) */
    int kernel[3]; /* (kz, ky, kx) */
    int stride[3];
    int pad[3];
} enc_conv_geom;

/* Output extent of g along each axis: (size + 2 pad - kernel) / stride + 1. */
void enc_conv_out(const enc_conv_geom *g, int out[3]);
/* Output positions per image (Z' Y' X') and values per position of the
 * unfolded input (cin kz ky kx). */
size_t enc_conv_count(const enc_conv_geom *g);
size_t enc_conv_dim(const enc_conv_geom *g);

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

    /* Scratch floats conv and conv_backward need for g (per call, any B). */
    size_t (*conv_scratch)(enc_backend *be, const enc_conv_geom *g);
    /* Convolution (the stem ahead of a ViT's patch embedding):
     *   out [B, cout, Z', Y', X'] = conv(in [B, cin, Z, Y, X], w) + bias
     * w [cout, cin, kz, ky, kx], bias [cout] (may be NULL).  out must not
     * overlap in.  scratch: conv_scratch(g) floats. */
    void (*conv)(enc_backend *be, float *out, const float *in, const float *w, const float *bias,
                 const enc_conv_geom *g, int B, float *scratch);

    /* --- EVA / Primus ops (COLIPRI); forward only, no backward twins yet --- */

    /* Rotary position embedding, in place on the q and k columns of qkv
     * [B, T, ld] (q = columns [0, D), k = [D, 2D), head h at h * hd, hd =
     * D / H; v is left alone).  Pairs are interleaved: for p < hd / 2,
     *   (x[2p], x[2p+1]) <- (x[2p] c - x[2p+1] s, x[2p+1] c + x[2p] s)
     * with c = cs[t, p] and s = cs[t, hd/2 + p]; cs [T, hd] is the same for
     * every head and batch (model.c builds it: the angles per axis). */
    void (*rope)(enc_backend *be, float *qkv, int ld, const float *cs, int B, int T, int D,
                 int H);

    /* out [n] = silu(gate) * x = gate / (1 + e^-gate) * x, SwiGLU's gate.
     * In place (out == gate or out == x). */
    void (*swiglu)(enc_backend *be, float *out, const float *gate, const float *x, size_t n);

    /* Layer scale on a residual: x [rows, cols] += gamma [cols] * y [rows,
     * cols], per column.  y may not overlap x. */
    void (*scale_add)(enc_backend *be, float *x, const float *y, const float *gamma,
                      size_t rows, int cols);

    /* Floats of scratch attn_pool needs for these shapes. */
    size_t (*attn_pool_scratch)(enc_backend *be, int T, int E, int H);
    /* Attention pooling with the mean as query (colipri.pooling.AttentionPool1D,
     * one torch.nn.MultiheadAttention of E = embed dim and H heads):
     *   m = mean of the rows of x [b] [T, E] whose mask is 1 (mask [B, T] or
     *       NULL: all rows)
     *   q = Wq m + bq;  k_j = Wk x_j + bk;  v_j = Wv x_j + bv   (w_in [3E, E] =
     *       [Wq; Wk; Wv], b_in [3E])
     *   per head h: a = softmax_j(q_h . k_hj / sqrt(E / H)) over the kept rows,
     *       o_h = sum_j a_j v_hj
     *   out [b] [E] = w_out [E, E] o + b_out
     * computed without the [T, E] keys and values: q_h . k_hj = (Wk_h^T q_h)
     * . x_j + a constant of j, and sum_j a_j v_hj = Wv_h (sum_j a_j x_j) +
     * bv_h as the a_j sum to 1.  Every row of a batch masked out gives o = bv.
     * scratch: attn_pool_scratch(T, E, H) floats. */
    void (*attn_pool)(enc_backend *be, float *out, const float *x, const float *mask,
                      const float *w_in, const float *b_in, const float *w_out,
                      const float *b_out, int B, int T, int E, int H, float *scratch);
} enc_backend_i;

/* The backward twins of the ops above, for training, and the forward ops
 * that came with it.  A second table (enc_backend.train) rather than more
 * slots in enc_backend_i: each backend fills both, the same way.
 *
 * Each twin takes the gradient of the op's output (dout) and the forward's
 * inputs, in the forward's argument order, gradients first.  Two kinds of
 * output, stated per op:
 *   - parameter gradients (dw, db, dcls, dpos, dtable, ...) and din of the
 *     ops that feed a residual stream ACCUMULATE (+=), so contributions from
 *     several calls (q, k and v of BERT; a 2D and a 3D batch through one
 *     ViT) sum; zero them first (zero below) for a fresh gradient;
 *   - din of the element-wise ops (gelu, softmax, l2norm) and dqkv of
 *     attention are WRITTEN, and gelu and softmax may work in place (din ==
 *     dout).
 * Any gradient argument documented "may be NULL" is then not computed.
 * Where an op needs working memory its *_scratch function sizes it, as for
 * the forward ops.  Reductions over rows (dw, db, dpos, the embedding table)
 * are split by columns, never by rows, so results do not depend on the
 * thread count. */
typedef struct enc_backend_train_i {
    /* Floats of scratch layernorm_backward and attention_backward need. */
    size_t (*layernorm_backward_scratch)(enc_backend *be, int rows, int dim);
    size_t (*attention_backward_scratch)(enc_backend *be, int B, int T, int H);

    /* x [n] = 0 */
    void (*zero)(enc_backend *be, float *x, size_t n);

    /* Twin of matmul (out [rows, nout] = in [rows, nin] w [nout, nin]^T + bias):
     *   din  [rows, nin]  += dout w          (may be NULL)
     *   dw   [nout, nin]  += dout^T in       (may be NULL)
     *   dbias [nout]      += sum over rows of dout (may be NULL)
     * dout [rows, nout] has rows lddo floats apart (0 means nout), so the
     * q, k and v columns of a fused [rows, 3D] gradient are read in place.
     * din must not overlap dout, in or w. */
    void (*matmul_backward)(enc_backend *be, float *din, float *dw, float *dbias,
                            const float *dout, int lddo, const float *in, const float *w,
                            int rows, int nin, int nout);

    /* Twin of layernorm: with xhat = (in - mean) * rstd (recomputed from in),
     *   din [rows, dim] += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w
     *   dw [dim] += sum over rows of dout * xhat;  db [dim] += sum of dout
     * dw, db may be NULL.  din must not overlap dout or in.
     * scratch: layernorm_backward_scratch(rows, dim) floats. */
    void (*layernorm_backward)(enc_backend *be, float *din, float *dw, float *db,
                               const float *dout, const float *in, const float *w, int rows,
                               int dim, float eps, float *scratch);

    /* Twin of gelu: din [n] = dout * gelu'(in), gelu'(x) = Phi(x) + x phi(x)
     * (exact erf form).  Written; in place (din == dout) allowed. */
    void (*gelu_backward)(enc_backend *be, float *din, const float *in, const float *dout,
                          size_t n);

    /* Twin of softmax, from its output: din [rows, cols] = out * (dout -
     * sum(out * dout)) per row.  Written; in place (din == dout) allowed. */
    void (*softmax_backward)(enc_backend *be, float *din, const float *out, const float *dout,
                             int rows, int cols);

    /* Twin of attention (same qkv, mask, B, T, D, H as the forward):
     *   dqkv [B, T, 3D] = gradient of the loss wrt qkv, WRITTEN (every
     *        element, so it needs no zeroing)
     *   dout [B, T, D]  = gradient wrt the forward's out
     * The probabilities are recomputed from qkv block by block (nothing of
     * size T x T is kept between the passes).  Keys the mask removes get no
     * score gradient: exact for the function computed, where a padded key's
     * probability is 0 and a row with every key masked has scores that
     * round to the same -FLT_MAX (so no gradient reaches its q or k).
     * scratch: attention_backward_scratch(B, T, H) floats. */
    void (*attention_backward)(enc_backend *be, float *dqkv, const float *dout,
                               const float *qkv, const float *mask, float *scratch, int B, int T,
                               int D, int H);

    /* Twin of patch_embed:
     *   din [B, C, Z, Y, X] += the input's gradient (may be NULL: a model's
     *   own input is not trained; ENC_PATCH_CONV order only: a stem's output)
     *   dw [D, K] += sum over images of dout_b^T im2col(in_b);  dbias [D] +=
     *   column sums of dout_b (may be NULL), dout_b at dout + b * dout_bstride,
     *   N rows of D.  w is the forward's weight (read for din only).
     *   scratch: patch_scratch(g, B) floats. */
    void (*patch_embed_backward)(enc_backend *be, float *din, float *dw, float *dbias,
                                 const float *dout, size_t dout_bstride, const float *in,
                                 const float *w, const enc_patch_geom *g, int B, int D,
                                 float *scratch);

    /* Twin of vit_tokens, from dx [B, 1 + N, D], the gradient of its output:
     *   dcls [D] += sum over b of dx[b, 0]           (may be NULL)
     *   dpos += sum over b of the rows pos was added to: [1 + N, D] when
     *   pos_has_cls, else [N, D] from rows 1..N   (may be NULL)
     * (the patch rows' gradient is dx itself, rows 1..N). */
    void (*vit_tokens_backward)(enc_backend *be, float *dcls, float *dpos, const float *dx,
                                int pos_has_cls, int B, int N, int D);

    /* Twin of embedding: for every token r = (b, l),
     *   dtable[ids[r]] += dout[r];  dpos[l] += dout[r];  dtype_row += dout[r]
     * (a scatter-add: repeated ids sum).  dpos, dtype_row may be NULL. */
    void (*embedding_backward)(enc_backend *be, float *dtable, float *dpos, float *dtype_row,
                               const float *dout, const int32_t *ids, int B, int L, int D);

    /* Twin of cls_pool: dx [B, T, D] at token 0 += dout [B, D]; the other
     * tokens are left alone. */
    void (*cls_pool_backward)(enc_backend *be, float *dx, const float *dout, int B, int T,
                              int D);

    /* Twin of l2norm, from its input: with n = max(||in||, 1e-12), y = in / n,
     *   din [rows, dim] = (dout - y (y . dout)) / n   (= dout / 1e-12 where
     *   the clamp holds).  Written; din may not overlap in or dout. */
    void (*l2norm_backward)(enc_backend *be, float *din, const float *in, const float *dout,
                            int rows, int dim);

    /* [CLS] attention for slice selection, without the T x T probabilities:
     *   out [B, T - j0] += alpha * sum over heads of P[b, h, 0, j0..T)
     * where P is what attention computes for the same qkv and mask (row 0
     * only is evaluated).  scratch: T floats. */
    void (*cls_attention)(enc_backend *be, float *out, const float *qkv, const float *mask,
                          float *scratch, int B, int T, int D, int H, int j0, float alpha);

    /* Twin of conv (same in, w, g, B as the forward), from dout [B, cout,
     * Z', Y', X']:
     *   din [B, cin, Z, Y, X] += the input's gradient   (may be NULL)
     *   dw [cout, cin, kz, ky, kx] += ...;  dbias [cout] += ... (may be NULL)
     * Images are taken in order and the sums over positions are never split
     * between threads, so results do not depend on the thread count.
     * scratch: conv_scratch(g) floats. */
    void (*conv_backward)(enc_backend *be, float *din, float *dw, float *dbias,
                          const float *dout, const float *in, const float *w,
                          const enc_conv_geom *g, int B, float *scratch);
} enc_backend_train_i;

/* A backend: its tables, its thread bound and its private context.  Handles
 * are created by a backend's constructor and destroyed by enc_backend_free. */
struct enc_backend {
    enc_backend_i iface;
    int nthreads;
    void *context;
    void (*destroy)(enc_backend *be);
    enc_backend_train_i train; /* backward twins (after the old fields: additive) */
    int tiled_attention; /* CPU: 1 takes long sequences' keys in blocks with an online
                            softmax (off: bench/attention measured it slower here) */
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
