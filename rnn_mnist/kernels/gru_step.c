/* Fused C loops for a GRU next-pixel model: the rollout step (gru_step, below) and the training
   recurrence (gru_forward and gru_backward, further down: native_recurrence.py calls them).

   The rollout step of a one-layer GRU next-pixel model, fused: everything but the recurrent GEMM.
   native.py (beside this file) computes gh = h @ W_hh.T with torch (fp32, or bf16 under --precision bf16)
   and then calls gru_step once per pixel t. For each digit (row) it
     1. reads the pixel inputs of pixel t (the previous pixel and the context pixels above) from
        the pixels so far, stored pixel-major so that each input is read in order across rows;
     2. forms layer 0's input gates: pixel t's biases and position terms, the label's columns,
        and the columns of W_ih for the inputs that are not 0;
     3. applies the GRU cell and writes the new state, its bf16 copy for the next GEMM (under
        bf16) and, for a linear head, the head's logit (with head_weight NULL it writes no logit:
        an MLP head's layers run in torch on the new state, and a prefix read wants none).
   One pass over each row while it is in cache: torch's dozen separate ops each stream the whole
   (rows, 3H) batch through memory, and at 10,000 rows cost more than the GEMM itself.

   The arithmetic is gru.py's gru_cell (beside this file) in fp32, with tanh(a) = 2 sigmoid(2a) - 1 as
   there; the sums run in another order and exp is the polynomial below, so states agree with
   the torch step to about 1e-6 (tests/test_native.py). NaN and inf go through as on torch ops
   (the build keeps IEEE semantics for them: -fno-finite-math-only).
*/
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

static inline uint16_t float_to_bf16(float value) { /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    /* a NaN stays a NaN (torch's 0x7FC0): rounding its payload could carry into the sign bit */
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* exp(a) for the sigmoids, written so that the compiler vectorises it: a = n ln2 + r with
   |r| <= ln2 / 2, exp(r) by its Taylor polynomial to r^6 (relative error below 2e-7), times 2^n
   built in the exponent bits. Clamped to where fp32 holds exp(a): the sigmoid saturates there, and
   +-inf gives what torch's sigmoid gives. A NaN passes the clamp (its comparisons are false) and
   stays NaN through the polynomial; n is set to 0 for it so that the exponent bits are left as they
   are (and no NaN is converted to an integer). Compiled with -fno-finite-math-only: without it the
   compiler may assume there is no NaN to keep. */
static inline float exp_approx(float a) {
    a = a < -87.0f ? -87.0f : (a > 88.0f ? 88.0f : a);
    const float scaled = nearbyintf(a * 1.44269504f);
    const float n = scaled == scaled ? scaled : 0.0f;
    const float r = (a - n * 0.693145752f) - n * 1.42860677e-6f; /* ln2 in two parts */
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits; /* unsigned: shifting a negative int is undefined in C */
    memcpy(&bits, &p, sizeof bits);
    bits += (uint32_t)(int32_t)n << 23;
    memcpy(&p, &bits, sizeof p);
    return p;
}

static inline float sigmoid(float a) { return 1.0f / (1.0f + exp_approx(-a)); }

#define MAX_INPUTS 256 /* pixel inputs: 1 + context pixels; Python checks */
#define MAX_HIDDEN 1024
static const float zeros[3 * MAX_HIDDEN];

/* x += the four columns c0..c3 times their values v[0..3]. A function of its own: inlined into
   the loop over inputs, GCC vectorises across inputs with gathers instead of along the columns. */
__attribute__((noinline)) static void add_columns(
    int64_t size, float *restrict x, const float *restrict c0, const float *restrict c1,
    const float *restrict c2, const float *restrict c3, const float *restrict v)
{
    const float v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    for (int64_t j = 0; j < size; j++) x[j] += v0 * c0[j] + v1 * c1[j] + v2 * c2[j] + v3 * c3[j];
}

void gru_step(
    int threads,                                  /* torch.get_num_threads() */
    int64_t rows, int64_t hidden, int64_t num_inputs,
    const float *pixels, int64_t pixels_stride,   /* (>= t, rows) the pixels so far, pixel-major */
    const int64_t *pixel_index,                   /* (num_inputs,) where pixel t's inputs are */
    const float *pixel_exists,                    /* (num_inputs,) 0 where such a pixel is off the image */
    const float *columns,                         /* (num_inputs, 3H) their columns of W_ih, transposed */
    const float *static_gates,                    /* (3H,) biases and position terms of pixel t */
    const float *label_gates, const int64_t *labels, /* (classes, 3H), (rows,); or NULL */
    const void *gh, int gh_is_bf16,               /* (rows, 3H) h @ W_hh.T, no bias */
    const float *b_hn,                            /* (H,) the n part of b_hh */
    const float *h, float *h_new,                 /* (rows, H): may be the same buffer */
    uint16_t *h_new_bf16,                         /* (rows, H) or NULL */
    const float *head_weight, float head_bias,    /* (H,) and the head's bias; or NULL: no logits */
    float *logits)                                /* (rows,); or NULL with head_weight */
{
    const int64_t gates = 3 * hidden;
    /* no head: the dot product runs on zeros (H multiply-adds a row) and is not written; one loop,
       kept branch-free so that it vectorises as it does with a head */
    const float *weight = head_weight ? head_weight : zeros;
    /* torch's thread count, whichever OpenMP runtime this library got; one thread for a few rows */
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 64)
    for (int64_t row = 0; row < rows; row++) {
        /* The pixel inputs that are not 0 (most of a binary digit's are): only their columns add,
           four at a time (padded with zero-valued ones): a quarter of the passes over x. */
        int64_t offset[MAX_INPUTS + 3]; /* where each one's column starts in columns */
        float value[MAX_INPUTS + 3];
        int64_t active = 0;
        for (int64_t k = 0; k < num_inputs; k++) {
            const float v = pixels[pixel_index[k] * pixels_stride + row] * pixel_exists[k];
            if (v != 0.0f) {
                offset[active] = k * gates;
                value[active++] = v;
            }
        }
        for (; active % 4; active++) {
            offset[active] = 0;
            value[active] = 0.0f;
        }
        float x[3 * MAX_HIDDEN], g[3 * MAX_HIDDEN]; /* layer 0's input gates, the recurrent ones */
        const float *start = label_gates ? label_gates + labels[row] * gates : zeros;
#pragma omp simd
        for (int64_t j = 0; j < gates; j++) x[j] = static_gates[j] + start[j];
        for (int64_t i = 0; i < active; i += 4) {
            add_columns(gates, x, columns + offset[i], columns + offset[i + 1], columns + offset[i + 2],
                        columns + offset[i + 3], value + i);
        }
        if (gh_is_bf16) {
            const uint16_t *source = (const uint16_t *)gh + row * gates;
#pragma omp simd
            for (int64_t j = 0; j < gates; j++) g[j] = bf16_to_float(source[j]);
        } else {
            memcpy(g, (const float *)gh + row * gates, gates * sizeof(float));
        }
        const float *h_row = h + row * hidden;
        float *out = h_new + row * hidden;
        float logit = 0.0f;
#pragma omp simd reduction(+ : logit)
        for (int64_t j = 0; j < hidden; j++) {
            const float r = sigmoid(x[j] + g[j]);
            const float z = sigmoid(x[hidden + j] + g[hidden + j]);
            const float n = 2.0f * sigmoid(2.0f * (x[2 * hidden + j] + r * (g[2 * hidden + j] + b_hn[j]))) - 1.0f;
            const float next = n + z * (h_row[j] - n);
            out[j] = next;
            logit += next * weight[j];
        }
        if (h_new_bf16) {
            uint16_t *out_bf16 = h_new_bf16 + row * hidden;
#pragma omp simd
            for (int64_t j = 0; j < hidden; j++) out_bf16[j] = float_to_bf16(out[j]);
        }
        if (head_weight) logits[row] = logit + head_bias;
    }
}

/* ---- The training recurrence: a one-layer GRU over T steps, forward and backward, fused ----

   gru.py's _GRURecurrence (beside this file) runs on these two functions on the CPU in fp32:
   gru_forward is its _run (the states, and with `keep` what the backward reads) and gru_backward
   its backward loop (derived in gru_backward.md), both without a torch op per step. Rows are
   independent in a GRU, so each thread takes whole blocks of 4 rows through all T steps, with
   no synchronisation between steps. The per-step products (h @ W_hh^T forward, d_gh @ W_hh
   backward) run on 4 rows at a time, so each weight loaded from cache serves 4 rows; their
   output columns are padded to a multiple of 8 (`padded`, done in Python) so that the tiles are
   whole AVX vectors. The elementwise math is gru_cell's / the backward's, in fp32, with the
   sigmoid above; sums run in another order than torch's (tests/test_gru_train_kernel.py). */

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* c[r][0, 8 nv) (+)= sum_k a[r][k] b[k][0, 8 nv) for the 4 rows r, b a panel (depth, 8 nv) stored
   contiguously: 4 x nv vector accumulators, one weight load per vector per k serving 4 rows. nv is a
   constant where it is inlined. */
static inline __attribute__((always_inline)) void tile(
    const int nv, const int accumulate, const int64_t depth, const float *const a[4],
    const float *restrict b, float *restrict c, const int64_t ldc)
{
    v8 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = accumulate ? load8(c + r * ldc + 8 * v) : (v8){0};
    for (int64_t k = 0; k < depth; k++) {
        v8 w[3];
        for (int v = 0; v < nv; v++) w[v] = load8(b + k * 8 * nv + 8 * v);
        for (int r = 0; r < 4; r++) {
            const float s = a[r][k];
            for (int v = 0; v < nv; v++) acc[r][v] += w[v] * s;
        }
    }
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < nv; v++) store8(c + r * ldc + 8 * v, acc[r][v]);
}

#define PANEL 24 /* columns per panel: 3 vectors; the last panel of a matrix may have 8 or 16 */

/* b (depth, width), width a multiple of 8, as panels of PANEL columns, each (depth, its width)
   contiguous, the panel of column j at packed + j * depth: the products then read the weights in
   order (walking down b's columns at a stride measured ~1.5x slower). NULL if out of memory. */
static float *pack_panels(const float *b, int64_t depth, int64_t width) {
    float *packed = malloc(sizeof(float) * depth * width);
    if (!packed) return NULL;
    const int64_t whole = width % PANEL == 8 && width > PANEL ? width / PANEL - 1 : width / PANEL;
    for (int64_t j = 0; j < width;) {
        const int64_t size = j < whole * PANEL ? PANEL : (width - j >= 16 ? 16 : 8);
        for (int64_t k = 0; k < depth; k++) memcpy(packed + j * depth + k * size, b + k * width + j, sizeof(float) * size);
        j += size;
    }
    return packed;
}

/* c (4, width) (+)= a (4 rows of depth) @ b (depth, width) packed by pack_panels, c's rows ldc apart */
static void block_matmul(
    const int accumulate, const int64_t depth, const float *const a[4], const float *packed,
    const int64_t width, float *c, const int64_t ldc)
{
    /* whole panels, then 16 and 8 columns left, or 32 as two of 16 (an 8-wide tile does a quarter
       of the arithmetic per load of a 24-wide one); pack_panels cuts its panels the same way */
    const int64_t whole = width % PANEL == 8 && width > PANEL ? width / PANEL - 1 : width / PANEL;
    int64_t j = 0;
    for (; j < whole * PANEL; j += PANEL) tile(3, accumulate, depth, a, packed + j * depth, c + j, ldc);
    for (; j + 16 <= width; j += 16) tile(2, accumulate, depth, a, packed + j * depth, c + j, ldc);
    if (j < width) tile(1, accumulate, depth, a, packed + j * depth, c + j, ldc);
}

/* The 4 rows of the block starting at row0 in a (rows, width) matrix; rows past the end read zeros. */
static void block_rows(const float *m, int64_t width, int64_t row0, int64_t count, const float *a[4]) {
    for (int r = 0; r < 4; r++) a[r] = r < count ? m + (row0 + r) * width : zeros;
}

int gru_forward( /* 0, or -1 when out of memory */
    int threads, int64_t steps, int64_t rows, int64_t hidden, int64_t padded,
    const float *gates_x,   /* (T, B, 3H): input gates, b_ih and b_hr, b_hz added */
    const float *w_t,       /* (H, 3 padded): W_hh^T, each gate's columns padded to `padded` */
    const float *b_hn,      /* (H,) */
    float *hs,              /* (T + 1, B, H): hs[0] = h0 on entry */
    float *rz, float *gh_n, float *n_out) /* (T, B, 2H), (T, B, H), (T, B, H); all NULL: not kept */
{
    const int64_t H = hidden, P = padded, blocks = (rows + 3) / 4;
    float *packed = pack_panels(w_t, H, 3 * P);
    if (!packed) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t row0 = 4 * block, count = rows - row0 < 4 ? rows - row0 : 4;
        float g[4 * 3 * MAX_HIDDEN]; /* gh = h @ W_hh^T of the 4 rows, gates `padded` apart */
        float spare[4 * MAX_HIDDEN]; /* where rz, gh_n, n go when they are not kept */
        for (int64_t t = 0; t < steps; t++) {
            const float *h = hs + t * rows * H;
            const float *a[4];
            block_rows(h, H, row0, count, a);
            block_matmul(0, H, a, packed, 3 * P, g, 3 * P);
            for (int64_t r = 0; r < count; r++) {
                const int64_t row = t * rows + row0 + r;
                const float *x = gates_x + row * 3 * H, *gr = g + r * 3 * P, *h_row = a[r];
                float *out = hs + (row + rows) * H;
                float *rz_row = rz ? rz + row * 2 * H : spare, *ghn_row = rz ? gh_n + row * H : spare + 2 * H;
                float *n_row = rz ? n_out + row * H : spare + 3 * H;
#pragma omp simd
                for (int64_t j = 0; j < H; j++) {
                    const float r_ = sigmoid(x[j] + gr[j]);
                    const float z = sigmoid(x[H + j] + gr[P + j]);
                    const float ghn = gr[2 * P + j] + b_hn[j];
                    const float n = 2.0f * sigmoid(2.0f * (x[2 * H + j] + r_ * ghn)) - 1.0f;
                    rz_row[j] = r_;
                    rz_row[H + j] = z;
                    ghn_row[j] = ghn;
                    n_row[j] = n;
                    out[j] = n + z * (h_row[j] - n);
                }
            }
        }
    }
    free(packed);
    return 0;
}

int gru_backward( /* 0, or -1 when out of memory */
    int threads, int64_t steps, int64_t rows, int64_t hidden, int64_t padded,
    const float *grad_hs,   /* (T + 1, B, H): the loss's gradient with respect to each state */
    const float *hs, const float *rz, const float *gh_n, const float *n_in, /* as gru_forward kept them */
    const float *w_pad,     /* (3H, padded): W_hh, its columns padded to `padded` */
    float *d_gates_x,       /* (T, B, 3H) */
    float *d_gh,            /* (T, B, 3H): [d_r, d_z, d_hn], for the weight gradient's GEMM */
    float *dh0)             /* (B, H) */
{
    const int64_t H = hidden, P = padded, blocks = (rows + 3) / 4;
    float *packed = pack_panels(w_pad, 3 * H, P);
    if (!packed) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t row0 = 4 * block, count = rows - row0 < 4 ? rows - row0 : 4;
        float dh[4 * MAX_HIDDEN]; /* dL/dh of the 4 rows, accumulated backwards, `padded` apart */
        memset(dh, 0, sizeof(float) * 4 * P);
        for (int64_t r = 0; r < count; r++)
            memcpy(dh + r * P, grad_hs + (steps * rows + row0 + r) * H, sizeof(float) * H);
        for (int64_t t = steps - 1; t >= 0; t--) {
            for (int64_t r = 0; r < count; r++) {
                const int64_t row = t * rows + row0 + r;
                const float *rz_row = rz + row * 2 * H, *ghn = gh_n + row * H, *n_row = n_in + row * H;
                const float *h = hs + row * H, *grad = grad_hs + row * H;
                float *dgx = d_gates_x + row * 3 * H, *dgh = d_gh + row * 3 * H, *d = dh + r * P;
#pragma omp simd
                for (int64_t j = 0; j < H; j++) {
                    const float r_ = rz_row[j], z = rz_row[H + j], n = n_row[j];
                    const float d_z = d[j] * (h[j] - n) * z * (1.0f - z);
                    const float d_a = d[j] * (1.0f - z) * (1.0f - n * n);
                    const float d_hn = d_a * r_;
                    const float d_r = d_hn * ghn[j] * (1.0f - r_);
                    dgx[j] = dgh[j] = d_r;
                    dgx[H + j] = dgh[H + j] = d_z;
                    dgx[2 * H + j] = d_a;
                    dgh[2 * H + j] = d_hn;
                    d[j] = d[j] * z + grad[j];
                }
            }
            const float *a[4];
            block_rows(d_gh + t * rows * 3 * H, 3 * H, row0, count, a);
            block_matmul(1, 3 * H, a, packed, P, dh, P); /* dh += d_gh[t] @ W_hh */
        }
        for (int64_t r = 0; r < count; r++) memcpy(dh0 + (row0 + r) * H, dh + r * P, sizeof(float) * H);
    }
    free(packed);
    return 0;
}
