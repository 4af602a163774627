/* digitreader.pipeline._cut: box-line removal of one cell or string window (the C half of cut.py).
 *
 * `remove_lines(ink, out, height, width, x0, y0, x1, y1, max_t, level, ticks, pen)` does what
 * cut._remove_lines_py does, step for step, on a C-contiguous uint8 window `ink` (0/1), writing the
 * result into `out` (a copy of `ink`, same shape): the rows and columns of the box lines bordering
 * the interior (x0, y0)-(x1, y1) are found by their coverage (`level`), narrowed to the lines' own
 * rows where a stroke runs along them (`_line_cores`), taken out, the ticks of a tick row taken out
 * when `ticks` (`_remove_ticks`), and the pixels of a line put back where ink continues on both
 * sides of it. `pen` < 0 stands for None. cut.py's docstrings explain each rule; the names here
 * are theirs.
 *
 * Why C: a page of A4 forms has about fifty cells, and the Python version makes some forty small
 * numpy calls per cell, ~0.25 ms of interpreter and call overhead for a few thousand pixels of work.
 * tests/test_cut_native.py checks that both give the same pixels on generated pages and on random
 * windows.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A 2-D view: M(i, j) = base[i * si + j * sj], j in [0, n). The rows of a window are one view and
 * its columns (the window transposed) another, so one routine serves both. */
typedef struct {
    const uint8_t *base;
    Py_ssize_t si, sj, n;
} View;

static inline int at(const View *v, int i, int j) { return v->base[i * v->si + j * v->sj] != 0; }

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* Python's floor division, for a possibly negative numerator. */
static int floordiv(int a, int b) {
    int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* mark[i] = 1 for i in [max(lo, 0), min(hi, len)) where cover(i) >= level (`_line_runs` of the hits). */
static void mark_hits(uint8_t *mark, const View *v, int len, int lo, int hi, double level) {
    for (int i = imax(lo, 0); i < imin(hi, len); i++) {
        int c = 0;
        for (int j = 0; j < v->n; j++) c += at(v, i, j);
        if ((double)c / (double)v->n >= level) mark[i] = 1;
    }
}

/* The next band (maximal run of marks) at or after *i: [*b0, *b1], or 0 when none. */
static int next_band(const uint8_t *mark, int len, int *i, int *b0, int *b1) {
    while (*i < len && !mark[*i]) (*i)++;
    if (*i >= len) return 0;
    *b0 = *i;
    while (*i < len && mark[*i]) (*i)++;
    *b1 = *i - 1;
    return 1;
}

/* `_line_thickness`: the lower quartile of the positive counts of rows b0..b1 in each column j,
 * interpolated as numpy's percentile does. `hist` has room for b1 - b0 + 2 counts. */
static int line_thickness(const View *v, int b0, int b1, int *hist) {
    int len = b1 - b0 + 1, n = 0;
    memset(hist, 0, sizeof(int) * (size_t)(len + 1));
    for (int j = 0; j < v->n; j++) {
        int c = 0;
        for (int i = b0; i <= b1; i++) c += at(v, i, j);
        if (c > 0) {
            hist[c]++;
            n++;
        }
    }
    if (n == 0) return len;
    double q = 0.25 * (double)(n - 1);
    int k = (int)q, k2 = imin(k + 1, n - 1), lo = -1, hi = -1, seen = 0;
    for (int c = 1; c <= len && hi < 0; c++) {
        seen += hist[c];
        if (lo < 0 && seen > k) lo = c;
        if (seen > k2) hi = c;
    }
    return (int)((double)lo + (q - (double)k) * (double)(hi - lo));
}

/* `_core_rows`. */
static int core_rows(int band, int t, int ref) {
    int core = imin(t + 1, ref + 2);
    return (ref >= 2 && band >= ref + 3) ? imin(core, ref + 1) : core;
}

/* `_line_cores`: for the bands of `mark` (rows of `v`), set core[i] for the rows that are the lines
 * themselves. `other_ref` < 0: none. `hist` has room for len + 1 ints. */
static void line_cores(const View *v, const uint8_t *mark, int len, int other_ref, uint8_t *core, int *hist) {
    int i = 0, b0, b1, thick = 0, ref = -1;
    while (next_band(mark, len, &i, &b0, &b1))
        if (b1 - b0 + 1 > 3) thick = 1;
    if (!thick) {
        for (int r = 0; r < len; r++) core[r] = mark[r];
        return;
    }
    i = 0;
    while (next_band(mark, len, &i, &b0, &b1)) {
        int t = line_thickness(v, b0, b1, hist);
        ref = ref < 0 ? t : imin(ref, t);
    }
    if (other_ref >= 0) ref = imin(ref, other_ref);
    i = 0;
    while (next_band(mark, len, &i, &b0, &b1)) {
        int blen = b1 - b0 + 1, t = core_rows(blen, line_thickness(v, b0, b1, hist), ref);
        if (blen <= imax(3, t + 1)) { /* `_line_core`: the whole band */
            for (int r = b0; r <= b1; r++) core[r] = 1;
            continue;
        }
        /* The best-covered run of t rows (the first of the best). */
        int best = 0, best_k = 0, run = 0;
        for (int r = b0; r <= b1; r++) {
            int c = 0;
            for (int j = 0; j < v->n; j++) c += at(v, r, j);
            hist[r - b0] = c;
        }
        for (int r = 0; r < t; r++) run += hist[r];
        best = run;
        for (int k = 1; k + t <= blen; k++) {
            run += hist[k + t - 1] - hist[k - 1];
            if (run > best) {
                best = run;
                best_k = k;
            }
        }
        for (int r = b0 + best_k; r < b0 + best_k + t; r++) core[r] = 1;
    }
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* `_remove_ticks`: clears the ticks in `out` and marks their columns in `tick` (returns how many
 * bands). `walls`: the wall columns. `tmp` has room for w ints. */
static int remove_ticks(const uint8_t *ink, uint8_t *out, int h, int w, int x0, int y0, int x1, int y1, int max_t,
                        const uint8_t *walls, uint8_t *tick, int *tmp) {
    int k = imax(3, floordiv(y1 - y0, 6));
    if (y1 - k < 0 || y1 > h) return 0;
    View low = {ink + (Py_ssize_t)(y1 - k) * w, 1, w, k}; /* M(c, r): column c, row y1 - k + r */
    uint8_t *hit = tick;                                  /* marks, then the kept bands */
    memset(hit, 0, (size_t)w);
    mark_hits(hit, &low, w, x0 - max_t, x0 + 1, 0.9);
    mark_hits(hit, &low, w, x1 - 1, x1 + max_t, 0.9);
    for (int c = 0; c < w; c++)
        if (walls[c]) hit[c] = 0;
    int i = 0, b0, b1, nb = 0, tick_h = -1;
    while (next_band(hit, w, &i, &b0, &b1)) {
        if (b1 - b0 + 1 > max_t) {
            for (int c = b0; c <= b1; c++) hit[c] = 0;
            continue;
        }
        nb++;
        /* The median of the columns' reach: ink rows upwards from the bottom line without a gap. */
        int n = 0;
        for (int c = b0; c <= b1; c++) {
            int r = 0;
            while (r < y1 && ink[(Py_ssize_t)(y1 - 1 - r) * w + c]) r++;
            tmp[n++] = r;
        }
        qsort(tmp, (size_t)n, sizeof(int), cmp_int);
        int med = (n % 2) ? tmp[n / 2] : (int)(((double)tmp[n / 2 - 1] + (double)tmp[n / 2]) / 2.0);
        tick_h = tick_h < 0 ? med : imin(tick_h, med);
    }
    if (nb == 0) return 0;
    if ((double)tick_h >= 0.6 * (double)(y1 - y0)) {
        memset(hit, 0, (size_t)w);
        return 0;
    }
    for (int r = y1 - tick_h; r < y1; r++)
        for (int c = 0; c < w; c++)
            if (hit[c]) out[(Py_ssize_t)r * w + c] = 0;
    return nb;
}

/* Put back the rows of each band of `core` (rows of the window) where ink continues on both sides. */
static void put_back_rows(const uint8_t *ink, uint8_t *out, int h, int w, const uint8_t *core, uint8_t *cross) {
    int i = 0, b0, b1;
    while (next_band(core, h, &i, &b0, &b1)) {
        int a = b0 - 1, b = b1 + 1;
        if (a < 0 || b >= h) continue;
        const uint8_t *ra = out + (Py_ssize_t)a * w, *rb = out + (Py_ssize_t)b * w;
        for (int c = 0; c < w; c++) {
            int ga = ra[c] | (c > 0 && ra[c - 1]) | (c + 1 < w && ra[c + 1]);
            int gb = rb[c] | (c > 0 && rb[c - 1]) | (c + 1 < w && rb[c + 1]);
            cross[c] = (uint8_t)(ga && gb);
        }
        for (int r = b0; r <= b1; r++)
            for (int c = 0; c < w; c++)
                if (cross[c] && ink[(Py_ssize_t)r * w + c]) out[(Py_ssize_t)r * w + c] = 1;
    }
}

/* The same for the columns b0..b1: one band. */
static void put_back_cols(const uint8_t *ink, uint8_t *out, int h, int w, int b0, int b1, uint8_t *cross) {
    int a = b0 - 1, b = b1 + 1;
    if (a < 0 || b >= w) return;
#define OUT(r, c) out[(Py_ssize_t)(r) * w + (c)]
    for (int r = 0; r < h; r++) {
        int ga = OUT(r, a) | (r > 0 && OUT(r - 1, a)) | (r + 1 < h && OUT(r + 1, a));
        int gb = OUT(r, b) | (r > 0 && OUT(r - 1, b)) | (r + 1 < h && OUT(r + 1, b));
        cross[r] = (uint8_t)(ga && gb);
    }
    for (int r = 0; r < h; r++)
        if (cross[r])
            for (int c = b0; c <= b1; c++)
                if (ink[(Py_ssize_t)r * w + c]) OUT(r, c) = 1;
#undef OUT
}

static void remove_lines(const uint8_t *ink, uint8_t *out, int h, int w, int x0, int y0, int x1, int y1, int max_t,
                         double level, int ticks, int pen, uint8_t *scratch, int *ints) {
    int cx0 = imax(x0, 0), cx1 = imin(x1, w), cy0 = imax(y0, 0), cy1 = imin(y1, h);
    if (cx1 <= cx0 || cy1 <= cy0) return; /* out is already ink's copy */
    int len = imax(h, w);
    uint8_t *rmark = scratch, *cmark = scratch + len, *rcore = scratch + 2 * len, *ccore = scratch + 3 * len,
            *tick = scratch + 4 * len, *cross = scratch + 5 * len;
    memset(scratch, 0, (size_t)(6 * len));
    View rows = {ink + cx0, w, 1, cx1 - cx0};                           /* M(r, j) = ink[r, cx0 + j] */
    View cols = {ink + (Py_ssize_t)cy0 * w, 1, w, cy1 - cy0};            /* M(c, j) = ink[cy0 + j, c] */
    mark_hits(rmark, &rows, h, y0 - max_t, y0 + 2, level);
    mark_hits(rmark, &rows, h, y1 - 2, y1 + max_t, level);
    mark_hits(cmark, &cols, w, x0 - max_t, x0 + 2, level);
    mark_hits(cmark, &cols, w, x1 - 2, x1 + max_t, level);
    int nbands = 0, i = 0, b0, b1;
    while (next_band(rmark, h, &i, &b0, &b1)) nbands++;
    line_cores(&rows, rmark, h, nbands == 1 ? pen : -1, rcore, ints);
    line_cores(&cols, cmark, w, -1, ccore, ints);
    for (int r = 0; r < h; r++)
        if (rcore[r]) memset(out + (Py_ssize_t)r * w, 0, (size_t)w);
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++)
            if (ccore[c]) out[(Py_ssize_t)r * w + c] = 0;
    int nticks = ticks ? remove_ticks(ink, out, h, w, x0, y0, x1, y1, max_t, ccore, tick, ints) : 0;
    put_back_rows(ink, out, h, w, rcore, cross);
    i = 0;
    while (next_band(ccore, w, &i, &b0, &b1)) put_back_cols(ink, out, h, w, b0, b1, cross);
    i = 0;
    if (nticks)
        while (next_band(tick, w, &i, &b0, &b1)) put_back_cols(ink, out, h, w, b0, b1, cross);
}

static PyObject *py_remove_lines(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    int h, w, x0, y0, x1, y1, max_t, ticks, pen;
    double level;
    if (!PyArg_ParseTuple(args, "y*w*iiiiiiidpi", &src, &dst, &h, &w, &x0, &y0, &x1, &y1, &max_t, &level, &ticks,
                          &pen))
        return NULL;
    PyObject *result = NULL;
    if (h < 0 || w < 0 || src.len != (Py_ssize_t)h * w || dst.len != src.len || max_t < 0) {
        PyErr_SetString(PyExc_ValueError, "remove_lines: ink and out must both hold height * width bytes");
        goto done;
    }
    if (h == 0 || w == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    int len = h > w ? h : w;
    uint8_t *scratch = PyMem_Malloc((size_t)(6 * len));
    int *ints = PyMem_Malloc(sizeof(int) * (size_t)(len + 2));
    if (!scratch || !ints) {
        PyMem_Free(scratch);
        PyMem_Free(ints);
        PyErr_NoMemory();
        goto done;
    }
    remove_lines((const uint8_t *)src.buf, (uint8_t *)dst.buf, h, w, x0, y0, x1, y1, max_t, level, ticks, pen,
                 scratch, ints);
    PyMem_Free(scratch);
    PyMem_Free(ints);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"remove_lines", py_remove_lines, METH_VARARGS,
     "remove_lines(ink, out, height, width, x0, y0, x1, y1, max_t, level, ticks, pen): cut._remove_lines_py in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cut", "Box-line removal of a cut window.", -1, methods};

PyMODINIT_FUNC PyInit__cut(void) { return PyModule_Create(&module); }
