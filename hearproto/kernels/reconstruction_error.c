/* The reconstruction error of hearproto.transforms, fused for the CPU: for every clip b and
 * prototype k, the mean over (t, f) of (pitch-shifted prototype + gain + filters - x)^2,
 * without a (B, K, T, F) tensor. The backward pass recomputes each row of F bins and reduces
 * it at once into the gradients of the per-time parameters; the prototypes' gradient is
 * summed per (b, k) row into dP (B, K, F), which the caller reduces over b.
 *
 * Layout (float32, contiguous): x (B, T, F); protos (Bp, K, F) with Bp = 1 or B (pb_stride =
 * K * F when Bp = B, else 0); s, g (B, K, T); filt (B, K, T, 4) = (c_h, G_h, c_l, G_l); a
 * transformation that is off is a NULL pointer. Per-bin constants: w[f] = hz_f / (700 + hz_f),
 * e[f] = exp(20 f / (F - 1)), inv_e[f] = 1 / e[f]; bpl bins per natural-log unit.
 *
 * With f_lin = f / (F - 1), a filter is G softplus_10(+-2 (f_lin - 0.5 + c)), and
 * exp(10 * 2 (f_lin - 0.5 + c)) = e[f] exp(20 (c - 0.5)): one log per bin and filter, no exp.
 * The argument stays within exp(+-15) for |c| <= 0.25, below torch's softplus threshold (20).
 *
 * Built at first use with -O3 -march=native -ffast-math -fopenmp (hearproto/kernels/cpu.py):
 * fast-math lets GCC call glibc's vector log1pf. Indices are clamped as integers, so that a
 * non-finite parameter can never read outside a prototype (the caller marks such rows NaN).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;

/* The source bins of one row: u[f] clamped to [0, F - 1], lo[f] in [0, F - 2], the fraction
 * fr[f]; with s == NULL the identity. inside[f] = 1 where the unclamped index was in range
 * (the clamp passes gradient there), duds[f] = d index / d s. */
static inline void source_bins(i64 F, float s, int has_pitch, const float *restrict w,
                               float bpl, int *restrict lo, float *restrict fr,
                               float *restrict inside, float *restrict duds) {
    const float top = (float)(F - 1);
    if (!has_pitch) {
        for (i64 f = 0; f < F; ++f) {
            i64 l = f < F - 2 ? f : F - 2;
            lo[f] = (int)l;
            fr[f] = (float)(f - l);
            inside[f] = 1.0f;
            duds[f] = 0.0f;
        }
        return;
    }
    const float ratio = 1.0f / s - 1.0f;
    const float dratio = -1.0f / (s * s);
    float u[F];
#pragma omp simd
    for (i64 f = 0; f < F; ++f) {
        float a = ratio * w[f];
        float v = (float)f + bpl * log1pf(a);
        inside[f] = (v >= 0.0f && v <= top) ? 1.0f : 0.0f;
        duds[f] = bpl * w[f] * dratio / (1.0f + a);
        u[f] = fminf(fmaxf(v, 0.0f), top);
    }
    for (i64 f = 0; f < F; ++f) {
        i64 l = (i64)u[f];
        l = l < 0 ? 0 : (l > F - 2 ? F - 2 : l);
        lo[f] = (int)l;
        fr[f] = u[f] - (float)l;
    }
}

void hp_error_forward(const float *restrict x, const float *restrict protos, i64 pb_stride,
                      const float *restrict s, const float *restrict g,
                      const float *restrict filt, const float *restrict w,
                      const float *restrict e, const float *restrict inv_e, float bpl, i64 B,
                      i64 K, i64 T, i64 F, int threads, float *restrict out) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 i = 0; i < B * K; ++i) {
        const i64 b = i / K, k = i % K;
        const float *P = protos + (pb_stride ? b * pb_stride : 0) + k * F;
        int lo[F];
        float fr[F], inside[F], duds[F], add[F];
        double acc = 0.0;
        for (i64 t = 0; t < T; ++t) {
            const i64 bkt = i * T + t;
            const float *xr = x + (b * T + t) * F;
            source_bins(F, s ? s[bkt] : 1.0f, s != NULL, w, bpl, lo, fr, inside, duds);
            const float gg = g ? g[bkt] : 0.0f;
            if (filt) {
                const float *q = filt + 4 * bkt;
                const float ah = expf(20.0f * (q[0] - 0.5f)), gh = 0.1f * q[1];
                const float al = expf(-20.0f * (q[2] - 0.5f)), gl = 0.1f * q[3];
#pragma omp simd
                for (i64 f = 0; f < F; ++f)
                    add[f] = gg + gh * log1pf(e[f] * ah) + gl * log1pf(inv_e[f] * al) - xr[f];
            } else {
                for (i64 f = 0; f < F; ++f) add[f] = gg - xr[f];
            }
            float row = 0.0f;
            for (i64 f = 0; f < F; ++f) {
                const float p0 = P[lo[f]];
                const float r = p0 + fr[f] * (P[lo[f] + 1] - p0) + add[f];
                row += r * r;
            }
            acc += row;
        }
        out[i] = (float)(acc / (double)(T * F));
    }
}

/* Gradients for the upstream gradient grad (B, K): ds, dg (B, K, T), dfilt (B, K, T, 4) and
 * dP (B, K, F), each skipped when NULL (a NULL parameter gives no gradient). */
void hp_error_backward(const float *restrict x, const float *restrict protos, i64 pb_stride,
                       const float *restrict s, const float *restrict g,
                       const float *restrict filt, const float *restrict w,
                       const float *restrict e, const float *restrict inv_e, float bpl, i64 B,
                       i64 K, i64 T, i64 F, int threads, const float *restrict grad,
                       float *restrict ds, float *restrict dg, float *restrict dfilt,
                       float *restrict dP) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 i = 0; i < B * K; ++i) {
        const i64 b = i / K, k = i % K;
        const float *P = protos + (pb_stride ? b * pb_stride : 0) + k * F;
        const float c = grad[i] * 2.0f / (float)(T * F);
        float *dPi = dP ? dP + i * F : NULL;
        if (dPi) memset(dPi, 0, (size_t)F * sizeof(float));
        int lo[F];
        float fr[F], inside[F], duds[F], sph[F], spl[F], sgh[F], sgl[F], r[F];
        for (i64 t = 0; t < T; ++t) {
            const i64 bkt = i * T + t;
            const float *xr = x + (b * T + t) * F;
            source_bins(F, s ? s[bkt] : 1.0f, s != NULL, w, bpl, lo, fr, inside, duds);
            const float gg = g ? g[bkt] : 0.0f;
            float gh = 0.0f, gl = 0.0f;
            if (filt) {
                const float *q = filt + 4 * bkt;
                const float ah = expf(20.0f * (q[0] - 0.5f)), al = expf(-20.0f * (q[2] - 0.5f));
                gh = q[1];
                gl = q[3];
#pragma omp simd
                for (i64 f = 0; f < F; ++f) {
                    const float eh = e[f] * ah, el = inv_e[f] * al;
                    sph[f] = 0.1f * log1pf(eh);
                    spl[f] = 0.1f * log1pf(el);
                    sgh[f] = eh / (1.0f + eh);
                    sgl[f] = el / (1.0f + el);
                }
            }
            for (i64 f = 0; f < F; ++f) {
                const float p0 = P[lo[f]];
                float v = p0 + fr[f] * (P[lo[f] + 1] - p0) + gg - xr[f];
                if (filt) v += gh * sph[f] + gl * spl[f];
                r[f] = v;
            }
            float sum_r = 0.0f, sum_s = 0.0f, sum_h = 0.0f, sum_l = 0.0f, sum_ch = 0.0f,
                  sum_cl = 0.0f;
            if (s) {
                for (i64 f = 0; f < F; ++f) {
                    const float slope = P[lo[f] + 1] - P[lo[f]];
                    sum_s += r[f] * slope * duds[f] * inside[f];
                }
            }
            if (filt) {
#pragma omp simd reduction(+ : sum_h, sum_l, sum_ch, sum_cl)
                for (i64 f = 0; f < F; ++f) {
                    sum_h += r[f] * sph[f];
                    sum_l += r[f] * spl[f];
                    sum_ch += r[f] * sgh[f];
                    sum_cl += r[f] * sgl[f];
                }
            }
#pragma omp simd reduction(+ : sum_r)
            for (i64 f = 0; f < F; ++f) sum_r += r[f];
            if (ds) ds[bkt] = c * sum_s;
            if (dg) dg[bkt] = c * sum_r;
            if (dfilt) {
                float *d = dfilt + 4 * bkt;
                d[0] = c * 2.0f * gh * sum_ch;
                d[1] = c * sum_h;
                d[2] = -c * 2.0f * gl * sum_cl;
                d[3] = c * sum_l;
            }
            if (dPi) {
                for (i64 f = 0; f < F; ++f) {
                    const float cr = c * r[f];
                    dPi[lo[f]] += cr - cr * fr[f];
                    dPi[lo[f] + 1] += cr * fr[f];
                }
            }
        }
    }
}
