/* The programming hot loops of neuromorph (neuromorph/devices/kernels.py), for the CPU: each is one pass over the
 * pulsed devices of an array instead of some twenty torch passes, with the same results as the torch path.
 *
 * nm_step_*: the step models' pulse loop (DeviceArray._step_at) and the write-noise redraw of
 * DeviceArray._advance_at (see neuromorph/devices/models.py for the equations), with the same random numbers
 * consumed in the same order:
 *   xi: the cycle-to-cycle normals, level-major (pulse 0 of every device in idx order, then pulse 1 of the devices
 *       with more than one pulse, in idx order, and so on), sum |n| of them (unused when there is no such noise);
 *   xw: the write-noise normals, one per device in idx order (NULL: no write noise).
 * Each device's parameters are one row of `width` values (DeviceArray._kernel_rows: b_min, b_max, s_up, s_dn and,
 * for the linear steps, k_up, k_dn), gathered with the devices' conductances in a loop that does nothing else (so
 * that many cache misses are in flight at once); the direction-dependent quantities of DeviceArray._step_table are
 * computed here with the same operations in the same precision. No fused multiply-adds (compiled with
 * -ffp-contract=off): the two paths agree to the rounding of exp.
 * Models: 0 exp_step, 1 exp_step with aihwkit's complex noise, 2 constant_step, 3 linear_step / soft_bounds with
 * the noise on the step only, 4 the same with multiplicative noise.
 * c (exp_step): 2a, gamma_up, -gamma_down, gamma_up b, -gamma_down b, A_up, -A_down.
 *
 * nm_split_*, nm_round_*: a sparse request of a differential pair array split into each device's pulses
 * (DifferentialArray._request, _split); nm_round_* with the stochastic rounding of the request first.
 * nm_add_at: the pending sparse adds of a pulse counter (Tally).
 */
#include <stdint.h>
#include <math.h>

#define NM_ABS(x) ((x) < 0 ? -(x) : (x))

/* Round half to even (torch.round) without a libm call: below 2^52 (2^23) adding and subtracting that power of two
 * rounds to an integer in the default rounding mode; above it every value is an integer already. */
#define NM_RINT(NAME, T, TWO52)                                                                                   \
    static inline T NAME(T x)                                                                                     \
    {                                                                                                             \
        T a = x < 0 ? -x : x;                                                                                     \
        if (!(a < TWO52))                                                                                         \
            return x;                                                                                             \
        T r = (a + TWO52) - TWO52;                                                                                \
        return x < 0 ? -r : r;                                                                                    \
    }

NM_RINT(nm_rint_f64, double, 4503599627370496.0)
NM_RINT(nm_rint_f32, float, 8388608.0f)

#define NM_DEFINE(NAME, T, EXP)                                                                                   \
    void NAME(int64_t a, const int64_t *idx, const int64_t *n, T *gp, T *gapp, const T *table, int32_t width,     \
              const T *c, const T *xi, const T *xw, int32_t model, T sigma, T add_std, T slope_std, T s, T g_ref, \
              T sw, T *w, T *rows, int64_t *list)                                                                \
    {                                                                                                             \
        int64_t cnt = a, cursor = 0;                                                                              \
        /* gathers first, compute after: a loop that only loads keeps many cache misses in flight */             \
        for (int64_t j = 0; j < a; j++) {                                                                         \
            int64_t f = idx[j];                                                                                   \
            const T *r = table + width * f;                                                                       \
            w[j] = gp[f];                                                                                         \
            rows[width * j] = r[0];                                                                               \
            rows[width * j + 1] = r[1];                                                                           \
            rows[width * j + 2] = r[2];                                                                           \
            rows[width * j + 3] = r[3];                                                                           \
            if (width == 6) {                                                                                     \
                rows[width * j + 4] = r[4];                                                                       \
                rows[width * j + 5] = r[5];                                                                       \
            }                                                                                                     \
            if (gapp)                                                                                             \
                __builtin_prefetch(gapp + f, 1, 1);                                                               \
        }                                                                                                         \
        for (int64_t j = 0; j < a; j++) {                                                                         \
            w[j] = (w[j] - g_ref) / s;                                                                            \
            list[j] = j;                                                                                          \
        }                                                                                                         \
        for (int64_t k = 0; cnt > 0; k++) {                                                                       \
            int64_t kept = 0;                                                                                     \
            for (int64_t t = 0; t < cnt; t++) {                                                                   \
                int64_t j = list[t];                                                                              \
                const T *r = rows + width * j;                                                                    \
                int down = n[j] < 0;                                                                              \
                T step = down ? -r[3] : r[2];                                                                     \
                T x = w[j], dw;                                                                                   \
                if (model <= 1) {                                                                                 \
                    T bd = r[1] - r[0];                                                                           \
                    bd = bd < (T)1e-30 ? (T)1e-30 : bd;                                                           \
                    T inv = c[0] / bd;                                                                            \
                    T g = (down ? c[2] : c[1]) * inv;                                                             \
                    T as = down ? c[6] * r[3] : c[5] * r[2];                                                      \
                    T prod = g * x;                                                                               \
                    T e = EXP((down ? c[4] : c[3]) + prod);                                                       \
                    T ae = as * e;                                                                                \
                    dw = step - ae;                                                                               \
                    if (down)                                                                                     \
                        dw = dw > 0 ? 0 : dw;                                                                     \
                    else                                                                                          \
                        dw = dw < 0 ? 0 : dw;                                                                     \
                    if (model == 1) {                                                                             \
                        T std = (NM_ABS(dw) + add_std) + slope_std * NM_ABS(x);                                   \
                        T q = sigma * std;                                                                        \
                        dw = dw + q * xi[cursor++];                                                               \
                    } else if (sigma > 0) {                                                                       \
                        T q = sigma * dw;                                                                         \
                        dw = dw + q * xi[cursor++];                                                               \
                    }                                                                                             \
                } else if (model == 2) {                                                                          \
                    dw = step;                                                                                    \
                    if (sigma > 0) {                                                                              \
                        T q = sigma * step;                                                                       \
                        dw = dw + q * xi[cursor++];                                                               \
                    }                                                                                             \
                } else {                                                                                          \
                    T slope = down ? -r[5] : r[4];                                                                \
                    T prod = slope * x;                                                                           \
                    dw = step + prod;                                                                             \
                    if (sigma > 0) {                                                                              \
                        T q = sigma * (model == 4 ? dw : step);                                                   \
                        dw = dw + q * xi[cursor++];                                                               \
                    }                                                                                             \
                }                                                                                                 \
                x = x + dw;                                                                                       \
                x = x < r[0] ? r[0] : x;                                                                          \
                x = x > r[1] ? r[1] : x;                                                                          \
                w[j] = x;                                                                                         \
                if (NM_ABS(n[j]) > k + 1)                                                                         \
                    list[kept++] = j;                                                                             \
            }                                                                                                     \
            cnt = kept;                                                                                           \
        }                                                                                                         \
        for (int64_t j = 0; j < a; j++) {                                                                         \
            T g = w[j] * s;                                                                                       \
            g = g + g_ref;                                                                                        \
            gp[idx[j]] = g;                                                                                       \
            if (gapp) {                                                                                           \
                T v = xw[j] * sw;                                                                                 \
                v = v + g;                                                                                        \
                gapp[idx[j]] = v < 0 ? 0 : v;                                                                     \
            }                                                                                                     \
        }                                                                                                         \
    }

NM_DEFINE(nm_step_f32, float, expf)
NM_DEFINE(nm_step_f64, double, exp)

/* A sparse request of a differential pair array (DifferentialArray._request): the pairs with n != 0 and, through
 * the pair policy (DifferentialArray._split), the signed counts of each device of those pairs, as lists of flat
 * indices and counts for the device arrays (and each entry's position in the pair list). Bidirectional: with
 * r = rint((g_neg - g_pos)/dg) (half to even, as torch's round), k = min(max(r sign(n), 0), |n|), G+ gets
 * max(n, 0) - k and G- that less n; unidirectional: G+ gets max(n, 0), G- max(-n, 0).
 * Written without data-dependent branches (a pulsed pair is a coin flip for the branch predictor): every candidate
 * is written and the list length advanced by whether it is kept; the lists hold max_pairs + 1 entries. The pairs
 * are compacted first (pairs, their counts in neg_n), then split (neg_n is read at i before written at <= i). */
#define NM_SPLIT_PAIRS(NAME, T, RINT)                                                                             \
    static void NAME(int64_t m, const T *gpos, const T *gneg, T dg, int32_t bidirectional, const int64_t *pairs,  \
                     int64_t *pos_idx, int64_t *pos_n, int64_t *pos_j, int64_t *neg_idx, int64_t *neg_n,          \
                     int64_t *neg_j, int64_t *out)                                                                \
    {                                                                                                             \
        int64_t a = 0, b = 0;                                                                                     \
        for (int64_t i = 0; i < m; i++) {                                                                         \
            int64_t f = pairs[i], c = neg_n[i], np, nn;                                                           \
            if (bidirectional) {                                                                                  \
                T r = RINT((gneg[f] - gpos[f]) / dg) * (c > 0 ? (T)1 : (T)-1);                                    \
                r = r < 0 ? 0 : r;                                                                                \
                T ac = (T)(c < 0 ? -c : c);                                                                       \
                T k = r < ac ? r : ac;                                                                            \
                np = (int64_t)((c > 0 ? (T)c : (T)0) - k);                                                        \
                nn = np - c;                                                                                      \
            } else {                                                                                              \
                np = c > 0 ? c : 0;                                                                               \
                nn = c < 0 ? -c : 0;                                                                              \
            }                                                                                                     \
            pos_idx[a] = f;                                                                                       \
            pos_n[a] = np;                                                                                        \
            pos_j[a] = i;                                                                                         \
            a += np != 0;                                                                                         \
            neg_idx[b] = f;                                                                                       \
            neg_n[b] = nn;                                                                                        \
            neg_j[b] = i;                                                                                         \
            b += nn != 0;                                                                                         \
        }                                                                                                         \
        out[0] = a;                                                                                               \
        out[1] = b;                                                                                               \
    }

NM_SPLIT_PAIRS(nm_split_pairs_f32, float, nm_rint_f32)
NM_SPLIT_PAIRS(nm_split_pairs_f64, double, nm_rint_f64)

/* nm_split: the pairs of the dense int32 counts n (N of them); returns their number, or -1 past max_pairs (the
 * caller then takes the dense path). out[0], out[1]: the lengths of the G+ and G- lists. */
#define NM_SPLIT(NAME, T, PAIRS)                                                                                  \
    int64_t NAME(int64_t N, const int32_t *n, const T *gpos, const T *gneg, T dg, int32_t bidirectional,          \
                 int64_t max_pairs, int64_t *pairs, int64_t *pos_idx, int64_t *pos_n, int64_t *pos_j,             \
                 int64_t *neg_idx, int64_t *neg_n, int64_t *neg_j, int64_t *out)                                  \
    {                                                                                                             \
        int64_t m = 0;                                                                                            \
        for (int64_t f = 0; f < N; f++) {                                                                         \
            int64_t c = n[f];                                                                                     \
            pairs[m] = f;                                                                                         \
            neg_n[m] = c;                                                                                         \
            m += c != 0;                                                                                          \
            if (m > max_pairs)                                                                                    \
                return -1;                                                                                        \
        }                                                                                                         \
        PAIRS(m, gpos, gneg, dg, bidirectional, pairs, pos_idx, pos_n, pos_j, neg_idx, neg_n, neg_j, out);        \
        return m;                                                                                                 \
    }

NM_SPLIT(nm_split_f32, float, nm_split_pairs_f32)
NM_SPLIT(nm_split_f64, double, nm_split_pairs_f64)

/* Stochastic rounding of a request and the split of its pairs: req (rows x k, row-major, in steps) is the request
 * of the columns cols (NULL: all W of them; the others request nothing) of a rows x W array and u its uniforms
 * (drawn by torch, the layout of req); every element's count floor(req + u) (int32: the caller checked
 * |req| < 2^31 - 2) is written into n (zeroed by the caller, full shape), then its pairs are split as in nm_split
 * (-1 past max_pairs: n is complete all the same, for the dense path). */
#define NM_ROUND(NAME, T, PAIRS)                                                                                  \
    int64_t NAME(int64_t rows, int64_t k, int64_t W, const T *req, const T *u, const int64_t *cols, int32_t *n,   \
                 const T *gpos, const T *gneg, T dg, int32_t bidirectional, int64_t max_pairs, int64_t *pairs,    \
                 int64_t *pos_idx, int64_t *pos_n, int64_t *pos_j, int64_t *neg_idx, int64_t *neg_n,              \
                 int64_t *neg_j, int64_t *out)                                                                    \
    {                                                                                                             \
        int64_t m = 0;                                                                                            \
        for (int64_t r = 0; r < rows; r++) {                                                                      \
            const T *x = req + r * k, *ur = u + r * k;                                                            \
            for (int64_t c = 0; c < k; c++) {                                                                     \
                T v = x[c] + ur[c];                                                                               \
                int64_t cnt = (int64_t)v; /* floor(v), |v| < 2^31 */                                             \
                cnt -= (T)cnt > v;                                                                                \
                int64_t f = r * W + (cols ? cols[c] : c);                                                         \
                int64_t at = m <= max_pairs ? m : max_pairs; /* past max_pairs only counted */                 \
                n[f] = (int32_t)cnt;                                                                              \
                pairs[at] = f;                                                                                    \
                neg_n[at] = cnt;                                                                                  \
                m += cnt != 0;                                                                                    \
            }                                                                                                     \
        }                                                                                                         \
        if (m > max_pairs)                                                                                        \
            return -1;                                                                                            \
        PAIRS(m, gpos, gneg, dg, bidirectional, pairs, pos_idx, pos_n, pos_j, neg_idx, neg_n, neg_j, out);        \
        return m;                                                                                                 \
    }

NM_ROUND(nm_round_f32, float, nm_split_pairs_f32)
NM_ROUND(nm_round_f64, double, nm_split_pairs_f64)

/* total[idx[i]] += n[i] (int64; repeated indices add up): the pending sparse adds of a counter (Tally). */
void nm_add_at(int64_t m, const int64_t *idx, const int64_t *n, int64_t *total)
{
    for (int64_t i = 0; i < m; i++)
        total[idx[i]] += n[i];
}
