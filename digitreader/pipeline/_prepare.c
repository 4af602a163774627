/* digitreader.pipeline._prepare: the skew measure's projection profiles (the C half of prepare.py).
 *
 * `profile_scores(xc, yc, cos, sin, n_bins, out)` does what prepare._profile_scores_np does: for
 * each angle, the ink's sample points (xc, yc: float32, about the page's centre) are projected onto
 * the rotated vertical axis, r = yc * cos + xc * sin + n_bins / 2 in float32, truncated to a bin
 * and clipped to [0, n_bins); the angle's score, written to `out` (float64), is the sum of its
 * squared bin counts. The same float32 operations in the same order as numpy's, one at a time (the
 * extension is built with -ffp-contract=off, so none is fused), so the same bins; the sums of
 * squared counts are exact integers. tests/test_prepare_native.py compares both.
 *
 * Why C: numpy makes (angles x points) temporaries for each step, some 80 angles by 8,000 points,
 * several passes over 2.5 MB each; this makes one pass per angle over the points, in cache.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *py_profile_scores(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer xc, yc, cs, sn, out;
    int n_bins;
    if (!PyArg_ParseTuple(args, "y*y*y*y*iw*", &xc, &yc, &cs, &sn, &n_bins, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = xc.len / (Py_ssize_t)sizeof(float), a = cs.len / (Py_ssize_t)sizeof(float);
    if (xc.len != yc.len || xc.len % sizeof(float) || cs.len != sn.len || cs.len % sizeof(float) ||
        out.len != a * (Py_ssize_t)sizeof(double) || n_bins < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "profile_scores: xc, yc (float32) alike, cos, sin (float32) alike, out float64 per angle");
        goto done;
    }
    int32_t *hist = PyMem_Malloc(sizeof(int32_t) * (size_t)n_bins);
    if (!hist) {
        PyErr_NoMemory();
        goto done;
    }
    const float *x = xc.buf, *y = yc.buf, *c = cs.buf, *s = sn.buf;
    double *score = out.buf;
    float half = (float)(n_bins / 2.0);
    for (Py_ssize_t k = 0; k < a; k++) {
        memset(hist, 0, sizeof(int32_t) * (size_t)n_bins);
        float ck = c[k], sk = s[k];
        for (Py_ssize_t i = 0; i < n; i++) {
            float p = y[i] * ck;
            float q = x[i] * sk;
            float v = p + q;
            v = v + half;
            /* numpy's astype(int32) truncates toward zero; values far outside the bins are clipped
             * before the cast here (the same bin: a value below 0 or above n_bins - 1 lands at the
             * edge either way). */
            int b = v <= 0.f ? 0 : (v >= (float)(n_bins - 1) ? n_bins - 1 : (int)v);
            hist[b]++;
        }
        double sum = 0.0;
        for (int b = 0; b < n_bins; b++) sum += (double)hist[b] * (double)hist[b];
        score[k] = sum;
    }
    PyMem_Free(hist);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&xc);
    PyBuffer_Release(&yc);
    PyBuffer_Release(&cs);
    PyBuffer_Release(&sn);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"profile_scores", py_profile_scores, METH_VARARGS,
     "profile_scores(xc, yc, cos, sin, n_bins, out): prepare._profile_scores_np in C, scores into out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prepare", "Skew projection profiles.", -1, methods};

PyMODINIT_FUNC PyInit__prepare(void) { return PyModule_Create(&module); }
