/* The relaxation loop of a dense layered network (neuromorph/fastrelax.py), for the CPU: a whole phase (all steps,
 * all layers, the constants, the nudge, dropout and the residual) in one call, the same computation as
 * neuromorph.dynamics.relax on its torch path (neuromorph.network.LayeredNetwork.constants and
 * neuromorph.phase.node_targets), up to the rounding of the products' summation order and of exp.
 *
 * The rows of a batch relax independently of each other, so the loop runs row by row: one row's state (a few
 * hundred numbers per layer) and the weights of the small couplings stay in the first-level cache for all its
 * steps, where the torch loop makes a pass over the batch per operation and per step. The rows go one at a time to
 * whichever of nthreads threads is free: the threads of the process's OpenMP team (torch's, awake after its own
 * parallel products) when compiled with OpenMP, else pthreads. With AVX-512 the products, the exponential and
 * the output stage run on explicit 512-bit vectors (narrower vectors elsewhere).
 *
 * State layers k = 0..L-1 of n[k] units; synapse k >= 1 couples layer k-1 (pre) to layer k (post) with the weight
 * W[k] (n[k] x n[k-1], row-major) and feeds back with Wb[k] (the same matrix for a bidirectional network, the
 * backward weight of a unidirectional one). The step, with g the gain and o the offset of the activation
 * s = unit(g x + o), m the dropout masks (1 where none) and s~ = m s:
 *
 *     z_k = c_k + g s~_{k-1} W_k^T + g s~_{k+1} W_{k+1}     (c_0 = g drive + o, c_k = g b_k + o)
 *     z_N += (g beta) t  - g beta s~_N                        mse, t the one-hot label or the target row
 *     z_N += (g beta) t  + (softmax(s~_N ro^T) (-g beta)) ro  xent, t = y ro (read-out ro, C x n_N)
 *     z_k = (z_k - o) m_k + o,  s_k = unit(z_k)
 *
 * and the residual of a row is max_k max_i |s_T - s_{T-1}|. Addresses of the per-layer arrays are passed as
 * int64 (0: none). Returns 0, -1 when out of memory, -2 for a label outside [0, C).
 *
 * The file includes itself once per floating type (NM_T float: the _f32 functions, double: _f64).
 */
#ifndef NM_T
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define NM_VBYTES 64
#elif defined(__AVX__)
#define NM_VBYTES 32
#else
#define NM_VBYTES 16
#endif

enum { NM_CLAMP01 = 0, NM_SIGMOID = 1, NM_TANH = 2 };

#define NM_PTR(T, a) ((T *)(intptr_t)(a))

#define NM_T float
#define NM_I int32_t
#define NM_S(name) name##_f32
#define NM_EXP_LO (-87.0f)
#define NM_EXP_HI 88.0f
#define NM_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define NM_BIAS 127
#define NM_MANT 23
#define NM_RCP14(v) ((V)_mm512_rcp14_ps((__m512)(v)))
#define NM_REDUCE_ADD(v) _mm512_reduce_add_ps((__m512)(v))
#define NM_MAX512(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define NM_MIN512(a, b) _mm512_min_ps((__m512)(a), (__m512)(b))
#define NM_MASK __mmask16
#define NM_MLOAD(k, p) _mm512_maskz_loadu_ps((k), (p))
#define NM_MSTORE(p, k, v) _mm512_mask_storeu_ps((p), (k), (__m512)(v))
#define NM_MZERO(k, v) _mm512_maskz_mov_ps((k), (__m512)(v))
#include "_relax_kernel.c"
#undef NM_T
#undef NM_I
#undef NM_S
#undef NM_EXP_LO
#undef NM_EXP_HI
#undef NM_MAGIC
#undef NM_BIAS
#undef NM_MANT
#undef NM_RCP14
#undef NM_REDUCE_ADD
#undef NM_MAX512
#undef NM_MIN512
#undef NM_MASK
#undef NM_MLOAD
#undef NM_MSTORE
#undef NM_MZERO

#define NM_T double
#define NM_I int64_t
#define NM_S(name) name##_f64
#define NM_EXP_LO (-708.0)
#define NM_EXP_HI 709.0
#define NM_MAGIC 6755399441055744.0 /* 1.5 * 2^52 */
#define NM_BIAS 1023
#define NM_MANT 52
#define NM_RCP14(v) ((V)_mm512_rcp14_pd((__m512d)(v)))
#define NM_REDUCE_ADD(v) _mm512_reduce_add_pd((__m512d)(v))
#define NM_MAX512(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
#define NM_MIN512(a, b) _mm512_min_pd((__m512d)(a), (__m512d)(b))
#define NM_MASK __mmask8
#define NM_MLOAD(k, p) _mm512_maskz_loadu_pd((k), (p))
#define NM_MSTORE(p, k, v) _mm512_mask_storeu_pd((p), (k), (__m512d)(v))
#define NM_MZERO(k, v) _mm512_maskz_mov_pd((k), (__m512d)(v))
#include "_relax_kernel.c"

#else /* the body, once per type */

#define T NM_T
#define VL (NM_VBYTES / (int64_t)sizeof(T))
typedef T NM_S(vec) __attribute__((vector_size(NM_VBYTES), aligned(sizeof(T)), may_alias));
#define V NM_S(vec)
#define LD(p) (*(const V *)(p))
#define ST(p, v) (*(V *)(p) = (v))

/* exp(x) for x clamped to [NM_EXP_LO, NM_EXP_HI] (NaN stays NaN): x = n ln2 + r, |r| <= ln2/2, exp(r) by a
 * polynomial (Cephes' expf for float, Taylor to r^13 for double), 2^n built in the exponent bits; within 2 ulp of
 * the correctly rounded value. One scalar and one vector form (NM_EXP_BODY); branch-free. */
#define NM_EXP_BODY(x, t, p)                                                                                      \
    t = x * (T)1.44269504088896340736 + NM_MAGIC;                                                                 \
    {                                                                                                             \
        __typeof__(x) n = t - NM_MAGIC, r = x - n * (T)0.693145751953125;                                         \
        r = r - n * (T)1.42860682030941723212e-6;                                                                 \
        if (sizeof(T) == 4) {                                                                                     \
            p = r * (T)1.9875691500e-4 + (T)1.3981999507e-3;                                                      \
            p = p * r + (T)8.3334519073e-3;                                                                       \
            p = p * r + (T)4.1665795894e-2;                                                                       \
            p = p * r + (T)1.6666665459e-1;                                                                       \
            p = p * r + (T)5.0000001201e-1;                                                                       \
        } else {                                                                                                  \
            static const double c[10] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,       \
                                         1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,    1.0 / 24.0,          \
                                         1.0 / 6.0,        0.5};                                                  \
            p = r * (T)(1.0 / 6227020800.0) + (T)(1.0 / 479001600.0);                                             \
            for (int q = 0; q < 10; q++)                                                                          \
                p = p * r + (T)c[q];                                                                              \
        }                                                                                                         \
        p = p * r * r + r + 1;                                                                                    \
    }

static inline T NM_S(nm_exp)(T x)
{
    x = x < NM_EXP_LO ? NM_EXP_LO : x;
    x = x > NM_EXP_HI ? NM_EXP_HI : x;
    T t, p, magic = NM_MAGIC, scale;
    NM_EXP_BODY(x, t, p)
    NM_I bits, magic_bits;
    memcpy(&bits, &t, sizeof bits);
    memcpy(&magic_bits, &magic, sizeof magic_bits);
    bits = (bits - magic_bits + NM_BIAS) << NM_MANT;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

typedef NM_I NM_S(ivec) __attribute__((vector_size(NM_VBYTES)));
#define VI NM_S(ivec)
#define SEL(m, a, b) ((V)(((m) & (VI)(a)) | (~(m) & (VI)(b)))) /* m ? a : b, lane-wise */
#if NM_VBYTES == 64 /* a > b ? a : b and a < b ? a : b lane-wise (b where either is NaN), one instruction each */
#define VMAX(a, b) ((V)NM_MAX512((a), (b)))
#define VMIN(a, b) ((V)NM_MIN512((a), (b)))
#else
#define VMAX(a, b) SEL((a) > (b), (a), (b))
#define VMIN(a, b) SEL((a) < (b), (a), (b))
#endif

static inline V NM_S(nm_vexp)(V x)
{
    V lo = (V){0} + NM_EXP_LO, hi = (V){0} + NM_EXP_HI, t, p;
    x = VMIN(hi, VMAX(lo, x)); /* NaN stays NaN */
    NM_EXP_BODY(x, t, p)
    VI bits = ((VI)t - (VI)((V){0} + NM_MAGIC) + NM_BIAS) << NM_MANT;
    return p * (V)bits;
}

/* 1 / d: with AVX-512 the 14-bit reciprocal refined by Newton steps (one for float, two for double: within 1 ulp),
 * a few times faster than the division */
static inline V NM_S(nm_vrcp)(V d)
{
#if NM_VBYTES == 64
    V y = NM_RCP14(d);
    y = y + y * (1 - d * y);
    if (sizeof(T) == 8)
        y = y + y * (1 - d * y);
    return y;
#else
    return 1 / d;
#endif
}

/* tanh(x) for |x| < 0.625, where 1 - 2 / (exp(2x) + 1) loses the low bits: x + x z P(z) / Q(z), z = x^2
 * (Cephes' tanhf polynomial, Q = 1, for float; its rational tanh for double). NM_TANH_PQ(x, num, den): x z P(z)
 * and Q(z). */
#define NM_TANH_PQ(x, num, den)                                                                                   \
    {                                                                                                             \
        __typeof__(x) x2_ = (x) * (x), q_;                                                                        \
        if (sizeof(T) == 4) {                                                                                     \
            q_ = (T)-5.70498872745e-3 * x2_ + (T)2.06390887954e-2;                                                \
            q_ = q_ * x2_ - (T)5.37397155531e-2;                                                                  \
            q_ = q_ * x2_ + (T)1.33314422036e-1;                                                                  \
            num = (q_ * x2_ - (T)3.33332819422e-1) * x2_ * (x);                                                   \
            den = x2_ * 0 + 1;                                                                                    \
        } else {                                                                                                  \
            q_ = (T)-9.64399179425052238628e-1 * x2_ - (T)9.92877231001918586564e1;                               \
            num = (q_ * x2_ - (T)1.61468768441708447952e3) * x2_ * (x);                                           \
            q_ = x2_ + (T)1.12811678491632931402e2;                                                               \
            q_ = q_ * x2_ + (T)2.23548839060100448583e3;                                                          \
            den = q_ * x2_ + (T)4.84406305325125486048e3;                                                         \
        }                                                                                                         \
    }

static inline V NM_S(nm_vunit)(V z, int unit)
{
    if (unit == NM_SIGMOID)
        return NM_S(nm_vrcp)(1 + NM_S(nm_vexp)(-z));
    if (unit == NM_TANH) {
        V num, den, big = 1 - 2 * NM_S(nm_vrcp)(NM_S(nm_vexp)(2 * z) + 1);
        NM_TANH_PQ(z, num, den)
        if (sizeof(T) == 8)
            num = num * NM_S(nm_vrcp)(den);
        V small = z + num;
        return SEL(VMAX(z, -z) < (T)0.625, small, big);
    }
    V zero = {0}, one = zero + 1;
    return VMIN(one, VMAX(zero, z)); /* NaN stays NaN */
}

static inline T NM_S(nm_sunit)(T z, int unit)
{
    if (unit == NM_SIGMOID)
        return 1 / (1 + NM_S(nm_exp)(-z));
    if (unit == NM_TANH) {
        if (!(z < (T)0.625 && z > (T)-0.625))
            return 1 - 2 / (NM_S(nm_exp)(2 * z) + 1);
        T num, den;
        NM_TANH_PQ(z, num, den)
        return z + num / den;
    }
    z = z < 0 ? 0 : z;
    return z > 1 ? 1 : z;
}

/* One layer's new state: out = unit(((c + g dot + g fb + add) - o) m + o), each term where its array is given
 * (the mask m too); with prev, the largest |out - prev| of the layer (NaN wins) is folded into *res. */
static void NM_S(nm_layer)(int64_t n, const T *restrict c, const T *restrict dot, const T *restrict fb,
                           const T *restrict add, const T *restrict m, T g, T o, int unit, T *restrict out,
                           const T *restrict prev, T *res)
{
    V vmax = {0};
    VI vnan = {0};
    T r = *res;
    int64_t i = 0;
#if NM_VBYTES == 64 /* the last, partial vector too, its lanes past n masked off (never read nor written) */
#define LDM(p) ((V)NM_MLOAD(k, (p)))
    for (; i < n; i += VL) {
        NM_MASK k = i + VL <= n ? (NM_MASK)-1 : (NM_MASK)((1u << (n - i)) - 1);
#else
#define LDM(p) LD(p)
    for (; i + VL <= n; i += VL) {
#endif
        V z = LDM(c + i);
        if (dot)
            z = z + g * LDM(dot + i);
        if (fb)
            z = z + g * LDM(fb + i);
        if (add)
            z = z + LDM(add + i);
        if (m)
            z = (z - o) * LDM(m + i) + o;
        z = NM_S(nm_vunit)(z, unit);
        if (prev) {
            V d = z - LDM(prev + i);
#if NM_VBYTES == 64
            d = (V)NM_MZERO(k, d);
#endif
            vmax = VMAX(vmax, VMAX(d, -d));
            vnan |= d != d;
        }
#if NM_VBYTES == 64
        NM_MSTORE(out + i, k, z);
#else
        ST(out + i, z);
#endif
    }
#undef LDM
    for (; i < n; i++) {
        T z = c[i];
        if (dot)
            z = z + g * dot[i];
        if (fb)
            z = z + g * fb[i];
        if (add)
            z = z + add[i];
        if (m)
            z = (z - o) * m[i] + o;
        out[i] = z = NM_S(nm_sunit)(z, unit);
        if (prev) {
            T d = z - prev[i];
            d = d < 0 ? -d : d;
            r = (d > r || d != d) ? d : r;
        }
    }
    if (prev) {
        int nan = 0;
        for (int64_t l = 0; l < VL; l++) {
            r = vmax[l] > r ? vmax[l] : r; /* a NaN r stays */
            nan |= vnan[l] != 0;
        }
        *res = nan ? (T)__builtin_nan("") : r;
    }
}

static inline T NM_S(nm_hsum)(V v)
{
#if NM_VBYTES == 64
    return NM_REDUCE_ADD(v);
#else
    T a[VL];
    memcpy(a, &v, sizeof a);
    for (int64_t w = VL / 2; w > 0; w /= 2)
        for (int64_t l = 0; l < w; l++)
            a[l] += a[l + w];
    return a[0];
#endif
}

/* IB consecutive post units i of one synapse, for one row: dot[i] = sum_j pre[j] W[i,j] and
 * fb[j] += sum_i post[i] Wb[i,j], in one pass over the rows of W (and Wb) */
#define NM_BLOCK(IB)                                                                                              \
    static void NM_S(nm_block##IB)(int64_t P, const T *restrict W, const T *restrict Wb, const T *restrict pre,   \
                                   const T *restrict post, T *restrict fb, T *restrict dot)                       \
    {                                                                                                             \
        V acc[IB];                                                                                                \
        T tail[IB];                                                                                               \
        for (int ii = 0; ii < IB; ii++) {                                                                         \
            acc[ii] = (V){0};                                                                                     \
            tail[ii] = 0;                                                                                         \
        }                                                                                                         \
        int64_t j = 0;                                                                                            \
        if (W == Wb) {                                                                                            \
            for (; j + VL <= P; j += VL) {                                                                        \
                V s = LD(pre + j), f = LD(fb + j);                                                                \
                _Pragma("GCC unroll 16") for (int ii = 0; ii < IB; ii++) {                                        \
                    V w = LD(W + ii * P + j);                                                                     \
                    acc[ii] += s * w;                                                                             \
                    f += post[ii] * w;                                                                            \
                }                                                                                                 \
                ST(fb + j, f);                                                                                    \
            }                                                                                                     \
        } else {                                                                                                  \
            for (; j + VL <= P; j += VL) {                                                                        \
                V s = LD(pre + j), f = LD(fb + j);                                                                \
                _Pragma("GCC unroll 16") for (int ii = 0; ii < IB; ii++) {                                        \
                    acc[ii] += s * LD(W + ii * P + j);                                                            \
                    f += post[ii] * LD(Wb + ii * P + j);                                                          \
                }                                                                                                 \
                ST(fb + j, f);                                                                                    \
            }                                                                                                     \
        }                                                                                                         \
        for (; j < P; j++)                                                                                        \
            for (int ii = 0; ii < IB; ii++) {                                                                     \
                tail[ii] += pre[j] * W[ii * P + j];                                                               \
                fb[j] += post[ii] * Wb[ii * P + j];                                                               \
            }                                                                                                     \
        for (int ii = 0; ii < IB; ii++)                                                                           \
            dot[ii] = NM_S(nm_hsum)(acc[ii]) + tail[ii];                                                          \
    }
NM_BLOCK(1)
NM_BLOCK(2)
NM_BLOCK(3)
NM_BLOCK(4)
NM_BLOCK(5)
NM_BLOCK(6)
NM_BLOCK(7)
NM_BLOCK(8)
NM_BLOCK(9)
NM_BLOCK(10)
NM_BLOCK(11)
NM_BLOCK(12)
#undef NM_BLOCK

/* synapse of P pre and Q post units, one row: dot = pre W^T (Q), fb += post Wb (P); blocks of 8 post units, the
 * last 1 to 12 in one pass */
static void NM_S(nm_couple)(int64_t P, int64_t Q, const T *W, const T *Wb, const T *pre, const T *post, T *fb,
                            T *dot)
{
    int64_t i = 0;
    for (; Q - i > 12; i += 8)
        NM_S(nm_block8)(P, W + i * P, Wb + i * P, pre, post + i, fb, dot + i);
    W += i * P, Wb += i * P, post += i, dot += i;
    switch (Q - i) {
#define NM_CASE(IB)                                                                                               \
    case IB:                                                                                                      \
        NM_S(nm_block##IB)(P, W, Wb, pre, post, fb, dot);                                                         \
        break;
        NM_CASE(1) NM_CASE(2) NM_CASE(3) NM_CASE(4) NM_CASE(5) NM_CASE(6)
        NM_CASE(7) NM_CASE(8) NM_CASE(9) NM_CASE(10) NM_CASE(11) NM_CASE(12)
#undef NM_CASE
    }
}

typedef struct {
    int64_t B, L, C, steps, *next;
    const int64_t *n, *W, *Wb, *bias, *mask, *s_in, *s_out, *labels;
    const T *drive, *beta_col, *targets, *ro;
    T beta, g, o;
    int unit, nudged, err;
    T *res;
} NM_S(nm_job);

static void *NM_S(nm_rows)(void *arg)
{
    NM_S(nm_job) *a = arg;
    const int64_t L = a->L, *n = a->n, C = a->C, N = L - 1;
    const T g = a->g, o = a->o;
    int64_t tot = 0;
    for (int64_t k = 0; k < L; k++)
        tot += n[k] + VL; /* + VL: room between the arrays */
    /* per layer: constants, state, next state, masked state, feedback sums, forward sums; then the nudge and
     * the logits */
    T *buf = malloc(sizeof(T) * (6 * tot + n[N] + C + 1));
    if (!buf) {
        a->err = -1;
        return NULL;
    }
    T *cst[L], *cur[L], *nxt[L], *sm[L], *fb[L], *dot[L];
    const T *src[L], *msk[L];
    T *p = buf;
    T **arrs[6] = {cst, cur, nxt, sm, fb, dot};
    for (int q = 0; q < 6; q++)
        for (int64_t k = 0; k < L; k++) {
            arrs[q][k] = p;
            p += n[k] + VL;
        }
    T *nud = p, *logit = p + n[N];
    for (int64_t k = 1; k < L; k++) { /* row-independent constants */
        const T *b = NM_PTR(const T, a->bias[k]);
        for (int64_t i = 0; i < n[k]; i++)
            cst[k][i] = b ? b[i] * g + o : o;
    }
    for (;;) { /* the rows one at a time, whichever thread is free first */
        int64_t row = __atomic_fetch_add(a->next, 1, __ATOMIC_RELAXED);
        if (row >= a->B)
            break;
        /* the row's constants: the drive into layer 0, the nudge's target part on the last layer */
        const T *d = a->drive + row * n[0];
        for (int64_t i = 0; i < n[0]; i++)
            cst[0][i] = d[i] * g + o;
        T beta = a->beta_col ? a->beta_col[row] : a->beta, ngb = -g * beta;
        if (a->nudged) {
            T gb = g * beta, *c = cst[N];
            if (N > 0) { /* cst[N] holds the previous row's nudge: rebuild it */
                const T *b = NM_PTR(const T, a->bias[N]);
                for (int64_t i = 0; i < n[N]; i++)
                    c[i] = b ? b[i] * g + o : o;
            }
            if (a->labels) {
                int64_t lab = a->labels[row];
                if (lab < 0 || lab >= C) {
                    a->err = -2;
                    break;
                }
                if (a->ro) {
                    const T *w = a->ro + lab * n[N];
                    for (int64_t i = 0; i < n[N]; i++)
                        c[i] = c[i] + gb * w[i];
                } else {
                    c[lab] = c[lab] + gb;
                }
            } else {
                const T *t = a->targets + row * C;
                if (a->ro) {
                    T *acc = dot[N];
                    for (int64_t i = 0; i < n[N]; i++)
                        acc[i] = 0;
                    for (int64_t c2 = 0; c2 < C; c2++)
                        for (int64_t i = 0; i < n[N]; i++)
                            acc[i] += t[c2] * a->ro[c2 * n[N] + i];
                    for (int64_t i = 0; i < n[N]; i++)
                        c[i] = c[i] + gb * acc[i];
                } else {
                    for (int64_t i = 0; i < n[N]; i++)
                        c[i] = c[i] + gb * t[i];
                }
            }
        }
        for (int64_t k = 0; k < L; k++) {
            memcpy(cur[k], NM_PTR(const T, a->s_in[k]) + row * n[k], sizeof(T) * n[k]);
            msk[k] = a->mask[k] ? NM_PTR(const T, a->mask[k]) + row * n[k] : NULL;
        }
        T res = 0;
        for (int64_t t = 0; t < a->steps; t++) {
            for (int64_t k = 0; k < L; k++) {
                if (msk[k]) {
                    for (int64_t i = 0; i < n[k]; i++)
                        sm[k][i] = cur[k][i] * msk[k][i];
                    src[k] = sm[k];
                } else {
                    src[k] = cur[k];
                }
                memset(fb[k], 0, sizeof(T) * n[k]);
            }
            for (int64_t k = 1; k < L; k++)
                NM_S(nm_couple)(n[k - 1], n[k], NM_PTR(const T, a->W[k]), NM_PTR(const T, a->Wb[k]), src[k - 1],
                                src[k], fb[k - 1], dot[k]);
            const T *add = NULL;
            if (a->nudged) { /* the state-dependent part of the nudge, into nud */
                const T *s = src[N];
                if (a->ro) {
                    T mx = -(T)__builtin_inf(), sum = 0;
                    for (int64_t c2 = 0; c2 < C; c2++) {
                        T l = 0;
                        for (int64_t i = 0; i < n[N]; i++)
                            l += s[i] * a->ro[c2 * n[N] + i];
                        logit[c2] = l;
                        mx = l > mx ? l : mx;
                    }
                    for (int64_t c2 = 0; c2 < C; c2++) {
                        logit[c2] = NM_S(nm_exp)(logit[c2] - mx);
                        sum += logit[c2];
                    }
                    for (int64_t i = 0; i < n[N]; i++)
                        nud[i] = 0;
                    for (int64_t c2 = 0; c2 < C; c2++) {
                        T w = logit[c2] / sum * ngb;
                        for (int64_t i = 0; i < n[N]; i++)
                            nud[i] += w * a->ro[c2 * n[N] + i];
                    }
                } else {
                    for (int64_t i = 0; i < n[N]; i++)
                        nud[i] = s[i] * ngb;
                }
                add = nud;
            }
            int last = t == a->steps - 1;
            for (int64_t k = 0; k < L; k++) {
                NM_S(nm_layer)(n[k], cst[k], k > 0 ? dot[k] : NULL, k < N ? fb[k] : NULL, k == N ? add : NULL,
                               msk[k], g, o, a->unit, nxt[k], last ? cur[k] : NULL, &res);
                T *tmp = nxt[k];
                nxt[k] = cur[k];
                cur[k] = tmp;
            }
        }
        for (int64_t k = 0; k < L; k++)
            memcpy(NM_PTR(T, a->s_out[k]) + row * n[k], cur[k], sizeof(T) * n[k]);
        a->res[row] = res;
    }
    free(buf);
    return NULL;
}

int NM_S(nm_relax)(int64_t B, int64_t L, const int64_t *n, const int64_t *ptrs, const T *drive, int nudged, T beta,
                   const T *beta_col, const int64_t *labels, const T *targets, int64_t C, const T *ro, T g, T o,
                   int unit, int64_t steps, T *res, int nthreads)
{
    /* ptrs: L addresses each of W, Wb, bias, mask, s_in, s_out */
    int64_t next = 0;
    NM_S(nm_job) base = {B, L, C, steps, &next, n, ptrs, ptrs + L, ptrs + 2 * L, ptrs + 3 * L, ptrs + 4 * L,
                          ptrs + 5 * L, labels, drive, beta_col, targets, ro, beta, g, o, unit, nudged, 0, res};
    if (nthreads > B)
        nthreads = (int)B;
    if (nthreads < 1)
        nthreads = 1;
    NM_S(nm_job) jobs[nthreads];
    for (int i = 0; i < nthreads; i++)
        jobs[i] = base;
    if (nthreads == 1) {
        NM_S(nm_rows)(&jobs[0]);
    } else {
#ifdef _OPENMP
        /* the OpenMP team of the process (torch's, whose threads are awake after its own parallel products) */
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
        for (int i = 0; i < nthreads; i++)
            NM_S(nm_rows)(&jobs[i]);
#else
        pthread_t tid[nthreads];
        int started[nthreads];
        for (int i = 1; i < nthreads; i++)
            started[i] = pthread_create(&tid[i], NULL, NM_S(nm_rows), &jobs[i]) == 0;
        NM_S(nm_rows)(&jobs[0]); /* the rows of a thread that did not start too */
        for (int i = 1; i < nthreads; i++)
            if (started[i])
                pthread_join(tid[i], NULL);
#endif
    }
    int err = 0;
    for (int i = 0; i < nthreads; i++)
        if (jobs[i].err)
            err = jobs[i].err;
    return err;
}

#undef T
#undef VL
#undef V
#undef VI
#undef SEL
#undef VMAX
#undef VMIN
#undef LD
#undef ST
#endif
