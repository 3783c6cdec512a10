/* The encoder's first level, fused for the CPU (hearproto.model.Encoder; docs/kernels.md):
 *
 *   y = conv3x3(x; w0, b0)   1 -> C channels, zero padding 1       (B, C, T, F)
 *   r = relu(y);  h = batch_norm(r; gamma, beta)                    (B, C, T, F)
 *   pool[b, o, t] = pb[o] + sum over c, f of pw[o, c, f] h[b, c, t, f]   (B, O, T)
 *   d = conv2x2 stride 2 (h; wd, bd)                                      (B, C, T/2, F/2)
 *
 * without writing any (B, C, T, F) map: every pass recomputes y from the 3 x 3 neighbourhood
 * of x, a pair of rows at a time (the rows that one row of d reads). Batch norm normalises
 * with a[c] = gamma / sqrt(var + eps), shift[c] = beta - mean a (the batch's statistics in
 * training, the running ones in evaluation). Each thread's scratch rows are on the heap (a
 * few hundred KiB: more than some thread stacks hold).
 *
 * Layout (float32, contiguous): x (B, T, F), w0 (C, 3, 3), b0 (C), pw (O, C, F), pb (O),
 * wd (C, C, 2, 2), bd (C). C = 8 and O = 2 are fixed here (the model's); T and F even.
 * Built as reconstruction_error.c is (hearproto/kernels/cpu.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define C 8
#define O 2
#define FMAX 1024

typedef int64_t i64;

/* Rows t-1, t, t+1 of x with a zero column on each side (and zero rows beyond the ends). */
static inline void padded_rows(const float *restrict x, i64 T, i64 F, i64 b, i64 t,
                               float pad[3][FMAX + 2]) {
    for (int i = 0; i < 3; ++i) {
        const i64 tt = t + i - 1;
        pad[i][0] = 0.0f;
        pad[i][F + 1] = 0.0f;
        if (tt < 0 || tt >= T)
            memset(&pad[i][1], 0, (size_t)F * sizeof(float));
        else
            memcpy(&pad[i][1], x + (b * T + tt) * F, (size_t)F * sizeof(float));
    }
}

/* y[c][f] of one row, from its padded neighbourhood. */
static inline void conv_row(const float pad[3][FMAX + 2], i64 F, const float *restrict w0,
                            const float *restrict b0, float y[C][FMAX]) {
    for (int c = 0; c < C; ++c) {
        const float *w = w0 + 9 * c;
        float *yc = y[c];
#pragma omp simd
        for (i64 f = 0; f < F; ++f) {
            yc[f] = b0[c] + w[0] * pad[0][f] + w[1] * pad[0][f + 1] + w[2] * pad[0][f + 2]
                  + w[3] * pad[1][f] + w[4] * pad[1][f + 1] + w[5] * pad[1][f + 2]
                  + w[6] * pad[2][f] + w[7] * pad[2][f + 1] + w[8] * pad[2][f + 2];
        }
    }
}

/* Per-channel sum and sum of squares of r = relu(y) over the batch (double). */
void hp_level0_stats(const float *restrict x, const float *restrict w0,
                     const float *restrict b0, i64 B, i64 T, i64 F, int threads,
                     double *restrict sums, double *restrict squares) {
    memset(sums, 0, C * sizeof(double));
    memset(squares, 0, C * sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        double s[C] = {0}, q[C] = {0};
        float(*pad)[FMAX + 2] = malloc(sizeof(float[3][FMAX + 2]));
        float(*y)[FMAX] = malloc(sizeof(float[C][FMAX]));
#pragma omp for schedule(static)
        for (i64 row = 0; row < B * T; ++row) {
            padded_rows(x, T, F, row / T, row % T, pad);
            conv_row(pad, F, w0, b0, y);
            for (int c = 0; c < C; ++c) {
                float rs = 0.0f, rq = 0.0f;
#pragma omp simd reduction(+ : rs, rq)
                for (i64 f = 0; f < F; ++f) {
                    const float r = y[c][f] > 0.0f ? y[c][f] : 0.0f;
                    rs += r;
                    rq += r * r;
                }
                s[c] += rs;
                q[c] += rq;
            }
        }
#pragma omp critical
        for (int c = 0; c < C; ++c) {
            sums[c] += s[c];
            squares[c] += q[c];
        }
        free(pad);
        free(y);
    }
}

/* y and h = a relu(y) + shift of rows 2 t2 and 2 t2 + 1 (k = 0, 1). */
static inline void h_rows(const float *restrict x, i64 T, i64 F, i64 b, i64 t2,
                          const float *restrict w0, const float *restrict b0,
                          const float *restrict a, const float *restrict shift,
                          float h[2][C][FMAX], float y[2][C][FMAX], float pad[3][FMAX + 2]) {
    for (int k = 0; k < 2; ++k) {
        padded_rows(x, T, F, b, 2 * t2 + k, pad);
        conv_row(pad, F, w0, b0, y[k]);
        for (int c = 0; c < C; ++c) {
#pragma omp simd
            for (i64 f = 0; f < F; ++f) {
                const float r = y[k][c][f] > 0.0f ? y[k][c][f] : 0.0f;
                h[k][c][f] = a[c] * r + shift[c];
            }
        }
    }
}

void hp_level0_forward(const float *restrict x, const float *restrict w0,
                       const float *restrict b0, const float *restrict a,
                       const float *restrict shift, const float *restrict pw,
                       const float *restrict pb, const float *restrict wd,
                       const float *restrict bd, i64 B, i64 T, i64 F, int threads,
                       float *restrict pool, float *restrict d) {
    const i64 T2 = T / 2, F2 = F / 2;
#pragma omp parallel num_threads(threads)
    {
        float(*h)[C][FMAX] = malloc(sizeof(float[2][C][FMAX]));
        float(*y)[C][FMAX] = malloc(sizeof(float[2][C][FMAX]));
        float(*pad)[FMAX + 2] = malloc(sizeof(float[3][FMAX + 2]));
        float(*split)[C][FMAX] = malloc(sizeof(float[2][C][FMAX]));
#pragma omp for schedule(static)
        for (i64 item = 0; item < B * T2; ++item) {
            const i64 b = item / T2, t2 = item % T2;
            h_rows(x, T, F, b, t2, w0, b0, a, shift, h, y, pad);
            for (int k = 0; k < 2; ++k) {
                for (int o = 0; o < O; ++o) {
                    float total = 0.0f;
                    for (int c = 0; c < C; ++c) {
                        const float *p = pw + (o * C + c) * F;
#pragma omp simd reduction(+ : total)
                        for (i64 f = 0; f < F; ++f) total += p[f] * h[k][c][f];
                    }
                    pool[(b * O + o) * T + 2 * t2 + k] = pb[o] + total;
                }
            }
            for (int k = 0; k < 2; ++k)  /* even and odd bins apart, for the convolution down */
                for (int c = 0; c < C; ++c) {
#pragma omp simd
                    for (i64 j = 0; j < F2; ++j) {
                        split[k][c][j] = h[k][c][2 * j];
                        split[k][c][F2 + j] = h[k][c][2 * j + 1];
                    }
                }
            for (int co = 0; co < C; ++co) {
                float *out = d + ((b * C + co) * T2 + t2) * F2;
                for (i64 j = 0; j < F2; ++j) out[j] = bd[co];
                for (int ci = 0; ci < C; ++ci) {
                    const float *w = wd + (co * C + ci) * 4;
                    for (int k = 0; k < 2; ++k) {
                        const float w_even = w[2 * k], w_odd = w[2 * k + 1];
                        const float *he = split[k][ci], *ho = split[k][ci] + F2;
#pragma omp simd
                        for (i64 j = 0; j < F2; ++j) out[j] += w_even * he[j] + w_odd * ho[j];
                    }
                }
            }
        }
        free(h);
        free(y);
        free(pad);
        free(split);
    }
}

/* The gradient of the loss with respect to h for rows 2 t2 and 2 t2 + 1, from the gradients
 * of d (gd, (B, C, T/2, F/2)) and of pool (gp, (B, O, T)); also y and xh = (r - mean) invstd.
 * even and odd: scratch rows of F/2. */
static inline void grad_h_rows(const float *restrict x, i64 T, i64 F, i64 b, i64 t2,
                               const float *restrict w0, const float *restrict b0,
                               const float *restrict mean, const float *restrict invstd,
                               const float *restrict pw, const float *restrict wd,
                               const float *restrict gd, const float *restrict gp,
                               float y[2][C][FMAX], float xh[2][C][FMAX],
                               float gh[2][C][FMAX], float pad[3][FMAX + 2],
                               float *restrict even, float *restrict odd) {
    const i64 T2 = T / 2, F2 = F / 2;
    for (int k = 0; k < 2; ++k) {
        const i64 t = 2 * t2 + k;
        padded_rows(x, T, F, b, t, pad);
        conv_row(pad, F, w0, b0, y[k]);
        for (int c = 0; c < C; ++c) {
            const float g0 = gp[(b * O + 0) * T + t], g1 = gp[(b * O + 1) * T + t];
            const float *p0 = pw + (0 * C + c) * F, *p1 = pw + (1 * C + c) * F;
            for (i64 j = 0; j < F2; ++j) even[j] = odd[j] = 0.0f;
            for (int co = 0; co < C; ++co) {  /* the down convolution's share, deinterleaved */
                const float *w = wd + (co * C + c) * 4;
                const float w_even = w[2 * k], w_odd = w[2 * k + 1];
                const float *g = gd + ((b * C + co) * T2 + t2) * F2;
#pragma omp simd
                for (i64 j = 0; j < F2; ++j) {
                    even[j] += w_even * g[j];
                    odd[j] += w_odd * g[j];
                }
            }
#pragma omp simd
            for (i64 j = 0; j < F2; ++j) {
                gh[k][c][2 * j] = g0 * p0[2 * j] + g1 * p1[2 * j] + even[j];
                gh[k][c][2 * j + 1] = g0 * p0[2 * j + 1] + g1 * p1[2 * j + 1] + odd[j];
            }
#pragma omp simd
            for (i64 f = 0; f < F; ++f) {
                const float r = y[k][c][f] > 0.0f ? y[k][c][f] : 0.0f;
                xh[k][c][f] = (r - mean[c]) * invstd[c];
            }
        }
    }
}

/* One thread's rows for the backward passes (on the heap: see the header). */
typedef struct {
    float (*y)[C][FMAX], (*xh)[C][FMAX], (*gh)[C][FMAX], (*pad)[FMAX + 2];
    float *even, *odd;
} Rows;

static Rows rows_new(void) {
    Rows r = {malloc(sizeof(float[2][C][FMAX])), malloc(sizeof(float[2][C][FMAX])),
              malloc(sizeof(float[2][C][FMAX])), malloc(sizeof(float[3][FMAX + 2])),
              malloc(sizeof(float[FMAX / 2])), malloc(sizeof(float[FMAX / 2]))};
    return r;
}

static void rows_free(Rows r) {
    free(r.y);
    free(r.xh);
    free(r.gh);
    free(r.pad);
    free(r.even);
    free(r.odd);
}

/* First backward pass: sum_gh[c] = sum of dL/dh, sum_ghx[c] = sum of dL/dh * xh (the
 * gradients of beta and gamma), and the gradients of pw (O, C, F) and wd (C, C, 2, 2). */
void hp_level0_backward_sums(const float *restrict x, const float *restrict w0,
                             const float *restrict b0, const float *restrict mean,
                             const float *restrict invstd, const float *restrict a,
                             const float *restrict shift, const float *restrict pw,
                             const float *restrict wd, const float *restrict gd,
                             const float *restrict gp, i64 B, i64 T, i64 F, int threads,
                             double *restrict sum_gh, double *restrict sum_ghx,
                             double *restrict gpw, double *restrict gwd) {
    const i64 T2 = T / 2, F2 = F / 2;
    memset(sum_gh, 0, C * sizeof(double));
    memset(sum_ghx, 0, C * sizeof(double));
    memset(gpw, 0, (size_t)(O * C * F) * sizeof(double));
    memset(gwd, 0, C * C * 4 * sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        double s1[C] = {0}, s2[C] = {0}, wdl[C * C * 4] = {0};
        float *pwl = calloc((size_t)(O * C * F), sizeof(float));
        float *h = malloc(sizeof(float[FMAX]));
        Rows rows = rows_new();
        float(*y)[C][FMAX] = rows.y, (*xh)[C][FMAX] = rows.xh, (*gh)[C][FMAX] = rows.gh;
        float *even = rows.even, *odd = rows.odd;
#pragma omp for schedule(static)
        for (i64 item = 0; item < B * T2; ++item) {
            const i64 b = item / T2, t2 = item % T2;
            grad_h_rows(x, T, F, b, t2, w0, b0, mean, invstd, pw, wd, gd, gp, y, xh, gh,
                        rows.pad, even, odd);
            for (int k = 0; k < 2; ++k) {
                const i64 t = 2 * t2 + k;
                for (int c = 0; c < C; ++c) {
                    float r1 = 0.0f, r2 = 0.0f;
                    const float g0 = gp[(b * O + 0) * T + t], g1 = gp[(b * O + 1) * T + t];
                    float *q0 = pwl + (0 * C + c) * F, *q1 = pwl + (1 * C + c) * F;
                    const float ac = a[c], sc = shift[c];
#pragma omp simd reduction(+ : r1, r2)
                    for (i64 f = 0; f < F; ++f) {
                        const float r = y[k][c][f] > 0.0f ? y[k][c][f] : 0.0f;
                        h[f] = ac * r + sc;
                        r1 += gh[k][c][f];
                        r2 += gh[k][c][f] * xh[k][c][f];
                        q0[f] += g0 * h[f];
                        q1[f] += g1 * h[f];
                    }
                    s1[c] += r1;
                    s2[c] += r2;
#pragma omp simd
                    for (i64 j = 0; j < F2; ++j) {
                        even[j] = h[2 * j];
                        odd[j] = h[2 * j + 1];
                    }
                    for (int co = 0; co < C; ++co) {
                        const float *g = gd + ((b * C + co) * T2 + t2) * F2;
                        float e = 0.0f, o = 0.0f;
#pragma omp simd reduction(+ : e, o)
                        for (i64 j = 0; j < F2; ++j) {
                            e += g[j] * even[j];
                            o += g[j] * odd[j];
                        }
                        wdl[(co * C + c) * 4 + 2 * k] += e;
                        wdl[(co * C + c) * 4 + 2 * k + 1] += o;
                    }
                }
            }
        }
#pragma omp critical
        {
            for (int c = 0; c < C; ++c) {
                sum_gh[c] += s1[c];
                sum_ghx[c] += s2[c];
            }
            for (i64 i = 0; i < O * C * F; ++i) gpw[i] += pwl[i];
            for (int i = 0; i < C * C * 4; ++i) gwd[i] += wdl[i];
        }
        free(h);
        free(pwl);
        rows_free(rows);
    }
}

/* Second backward pass: dL/dr = a (dL/dh - m1 - xh m2) (m1 = mean of dL/dh and m2 = mean of
 * dL/dh * xh over the batch when it normalised with its own statistics, else 0), masked by
 * the ReLU, reduced into the gradients of w0 (C, 3, 3) and b0 (C). */
void hp_level0_backward_conv(const float *restrict x, const float *restrict w0,
                             const float *restrict b0, const float *restrict mean,
                             const float *restrict invstd, const float *restrict a,
                             const float *restrict m1, const float *restrict m2,
                             const float *restrict pw, const float *restrict wd,
                             const float *restrict gd, const float *restrict gp, i64 B, i64 T,
                             i64 F, int threads, double *restrict gw0, double *restrict gb0) {
    const i64 T2 = T / 2;
    memset(gw0, 0, C * 9 * sizeof(double));
    memset(gb0, 0, C * sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        double w_local[C * 9] = {0}, b_local[C] = {0};
        Rows rows = rows_new();
        float(*y)[C][FMAX] = rows.y, (*xh)[C][FMAX] = rows.xh, (*gh)[C][FMAX] = rows.gh;
        float(*pad)[FMAX + 2] = rows.pad;
#pragma omp for schedule(static)
        for (i64 item = 0; item < B * T2; ++item) {
            const i64 b = item / T2, t2 = item % T2;
            grad_h_rows(x, T, F, b, t2, w0, b0, mean, invstd, pw, wd, gd, gp, y, xh, gh, pad,
                        rows.even, rows.odd);
            for (int k = 0; k < 2; ++k) {
                padded_rows(x, T, F, b, 2 * t2 + k, pad);
                for (int c = 0; c < C; ++c) {
                    float *gy = gh[k][c];  /* overwritten by dL/dy */
                    const float ac = a[c], m1c = m1[c], m2c = m2[c];
                    float bsum = 0.0f;
#pragma omp simd reduction(+ : bsum)
                    for (i64 f = 0; f < F; ++f) {
                        const float g = ac * (gy[f] - m1c - xh[k][c][f] * m2c);
                        gy[f] = y[k][c][f] > 0.0f ? g : 0.0f;
                        bsum += gy[f];
                    }
                    b_local[c] += bsum;
                    for (int i = 0; i < 3; ++i) {
                        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2)
                        for (i64 f = 0; f < F; ++f) {
                            s0 += gy[f] * pad[i][f];
                            s1 += gy[f] * pad[i][f + 1];
                            s2 += gy[f] * pad[i][f + 2];
                        }
                        w_local[c * 9 + 3 * i] += s0;
                        w_local[c * 9 + 3 * i + 1] += s1;
                        w_local[c * 9 + 3 * i + 2] += s2;
                    }
                }
            }
        }
#pragma omp critical
        {
            for (int i = 0; i < C * 9; ++i) gw0[i] += w_local[i];
            for (int c = 0; c < C; ++c) gb0[c] += b_local[c];
        }
        rows_free(rows);
    }
}
