/* The rollout step of a one-layer GRU next-pixel model, fused: everything but the recurrent GEMM.

   native.py (beside this file) computes gh = h @ W_hh.T with torch (fp32, or bf16 under --precision bf16)
   and then calls gru_step once per pixel t. For each digit (row) it
     1. reads the pixel inputs of pixel t (the previous pixel and the context pixels above) from
        the pixels so far, stored pixel-major so that each input is read in order across rows;
     2. forms layer 0's input gates: pixel t's biases and position terms, the label's columns,
        and the columns of W_ih for the inputs that are not 0;
     3. applies the GRU cell and writes the new state, its bf16 copy for the next GEMM (under
        bf16) and the head's logit.
   One pass over each row while it is in cache: torch's dozen separate ops each stream the whole
   (rows, 3H) batch through memory, and at 10,000 rows cost more than the GEMM itself.

   The arithmetic is gru.py's gru_cell (beside this file) in fp32, with tanh(a) = 2 sigmoid(2a) - 1 as
   there; the sums run in another order and exp is the polynomial below, so states agree with
   the torch step to about 1e-6 (tests/test_native.py). NaN and inf go through as on torch ops
   (the build keeps IEEE semantics for them: -fno-finite-math-only).
*/
#include <math.h>
#include <stdint.h>
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
    const float *head_weight, float head_bias,    /* (H,) and the head's bias */
    float *logits)                                /* (rows,) */
{
    const int64_t gates = 3 * hidden;
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
            logit += next * head_weight[j];
        }
        if (h_new_bf16) {
            uint16_t *out_bf16 = h_new_bf16 + row * hidden;
#pragma omp simd
            for (int64_t j = 0; j < hidden; j++) out_bf16[j] = float_to_bf16(out[j]);
        }
        logits[row] = logit + head_bias;
    }
}
