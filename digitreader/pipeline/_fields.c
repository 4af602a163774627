/* digitreader.pipeline._fields: the line image of a page (the C half of fields.py).
 *
 * `line_image(mask, out, height, width, bridge, len_h, len_v)` writes into `out` (zeros, the mask's
 * shape) the pixels that OpenCV's morphology gives in fields._line_image_cv, for a 0/255 mask:
 *
 *     horizontal = open(close(mask, bridge x 1), len_h x 1)
 *     vertical   = open(close(mask, 1 x bridge), 1 x len_v)
 *     out        = horizontal | vertical        (255 where set)
 *
 * with OpenCV's rectangle kernels (anchor at the centre, size / 2, so an even kernel shifts by one)
 * and default borders (outside the page counts for neither an erosion nor a dilation).
 *
 * On a binary line these operations act on runs of ink: each run is widened by the bridge's
 * dilation, overlapping ones joined, and the joined run then narrowed and widened again by the
 * formulas below. So instead of four passes over the page, each one reading and writing 2 MB, the
 * horizontal half reads each row once, skipping paper eight bytes at a time, and the vertical half
 * compares each row with the one above eight bytes at a time, doing work only where a column's ink
 * starts or stops. tests/test_fields_native.py checks the pixels against OpenCV's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int bridge, ab; /* the closing's kernel length and anchor */
    int len, a;     /* the opening's */
} Morph;

static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

static inline uint64_t load8(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* A run of the dilated line [s, e] (joined, so maximal) of a line of n pixels -> the run it leaves
 * after the closing's erosion and the opening (erosion, dilation): [*lo, *hi], or 0 when none.
 * An erosion keeps x when the window [x - a, x - a + len - 1], clipped to the line, lies in the
 * run: a run touching an end of the line is not narrowed at that end. A dilation widens [lo, hi]
 * to [lo + a - len + 1, hi + a]. */
static int close_open(int s, int e, int n, const Morph *m, int *lo, int *hi) {
    int clo = s == 0 ? 0 : s + m->ab, chi = e == n - 1 ? n - 1 : e + m->ab - m->bridge + 1;
    clo = imax(clo, 0);
    chi = imin(chi, n - 1);
    if (clo > chi) return 0;
    int elo = clo == 0 ? 0 : clo + m->a, ehi = chi == n - 1 ? n - 1 : chi + m->a - m->len + 1;
    elo = imax(elo, 0);
    ehi = imin(ehi, n - 1);
    if (elo > ehi) return 0;
    *lo = imax(elo + m->a - m->len + 1, 0);
    *hi = imin(ehi + m->a, n - 1);
    return 1;
}

/* The closing's dilation of the ink run [s, t] of a line of n pixels. */
static inline void dilate_run(int s, int t, int n, const Morph *m, int *lo, int *hi) {
    *lo = imax(s + m->ab - m->bridge + 1, 0);
    *hi = imin(t + m->ab, n - 1);
}

static void horizontal(const uint8_t *src, uint8_t *out, int h, int w, const Morph *m) {
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (Py_ssize_t)y * w;
        uint8_t *dst = out + (Py_ssize_t)y * w;
        int x = 0, ps = -1, pe = -1, lo, hi; /* the pending joined dilated run [ps, pe] */
        for (;;) {
            while (x + 8 <= w && load8(row + x) == 0) x += 8;
            while (x < w && !row[x]) x++;
            if (x >= w) break;
            int s = x;
            while (x + 8 <= w && load8(row + x) == UINT64_MAX) x += 8;
            while (x < w && row[x]) x++;
            int dlo, dhi;
            dilate_run(s, x - 1, w, m, &dlo, &dhi);
            if (ps >= 0 && dlo <= pe + 1) {
                pe = imax(pe, dhi);
                continue;
            }
            if (ps >= 0 && close_open(ps, pe, w, m, &lo, &hi)) memset(dst + lo, 255, (size_t)(hi - lo + 1));
            ps = dlo;
            pe = dhi;
        }
        if (ps >= 0 && close_open(ps, pe, w, m, &lo, &hi)) memset(dst + lo, 255, (size_t)(hi - lo + 1));
    }
}

typedef struct {
    int start, ps, pe; /* the open ink run's first row (-1: none); the pending joined dilated run */
} Column;

static void finish_column(Column *col, int c, uint8_t *out, int h, int w, const Morph *m) {
    int lo, hi;
    if (col->ps >= 0 && close_open(col->ps, col->pe, h, m, &lo, &hi))
        for (int y = lo; y <= hi; y++) out[(Py_ssize_t)y * w + c] = 255;
    col->ps = -1;
}

static void column_run(Column *col, int c, int s, int t, uint8_t *out, int h, int w, const Morph *m) {
    int dlo, dhi;
    dilate_run(s, t, h, m, &dlo, &dhi);
    if (col->ps >= 0 && dlo <= col->pe + 1) {
        col->pe = imax(col->pe, dhi);
        return;
    }
    finish_column(col, c, out, h, w, m);
    col->ps = dlo;
    col->pe = dhi;
}

static void vertical(const uint8_t *src, uint8_t *out, int h, int w, const Morph *m, Column *cols,
                     const uint8_t *zeros) {
    for (int c = 0; c < w; c++) cols[c] = (Column){-1, -1, -1};
    for (int y = 0; y < h; y++) {
        const uint8_t *prev = y ? src + (Py_ssize_t)(y - 1) * w : zeros, *row = src + (Py_ssize_t)y * w;
        int x = 0;
        while (x < w) {
            if (x + 8 <= w && load8(prev + x) == load8(row + x)) {
                x += 8;
                continue;
            }
            int end = imin(x + 8, w);
            for (; x < end; x++) {
                int was = prev[x] != 0, is = row[x] != 0;
                if (was == is) continue;
                if (is)
                    cols[x].start = y;
                else
                    column_run(&cols[x], x, cols[x].start, y - 1, out, h, w, m);
            }
        }
    }
    const uint8_t *last = src + (Py_ssize_t)(h - 1) * w;
    for (int c = 0; c < w; c++) {
        if (last[c]) column_run(&cols[c], c, cols[c].start, h - 1, out, h, w, m);
        finish_column(&cols[c], c, out, h, w, m);
    }
}

static PyObject *py_line_image(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer src, dst;
    int h, w, bridge, len_h, len_v;
    if (!PyArg_ParseTuple(args, "y*w*iiiii", &src, &dst, &h, &w, &bridge, &len_h, &len_v)) return NULL;
    PyObject *result = NULL;
    if (h < 0 || w < 0 || src.len != (Py_ssize_t)h * w || dst.len != src.len) {
        PyErr_SetString(PyExc_ValueError, "line_image: mask and out must both hold height * width bytes");
        goto done;
    }
    if (bridge < 1 || len_h < 1 || len_v < 1) {
        PyErr_SetString(PyExc_ValueError, "line_image: kernel lengths must be at least 1");
        goto done;
    }
    if (h > 0 && w > 0) {
        Column *cols = PyMem_Malloc(sizeof(Column) * (size_t)w);
        uint8_t *zeros = PyMem_Calloc((size_t)w, 1);
        if (!cols || !zeros) {
            PyMem_Free(cols);
            PyMem_Free(zeros);
            PyErr_NoMemory();
            goto done;
        }
        Morph mh = {bridge, bridge / 2, len_h, len_h / 2}, mv = {bridge, bridge / 2, len_v, len_v / 2};
        Py_BEGIN_ALLOW_THREADS
        memset(dst.buf, 0, (size_t)dst.len);
        horizontal((const uint8_t *)src.buf, (uint8_t *)dst.buf, h, w, &mh);
        vertical((const uint8_t *)src.buf, (uint8_t *)dst.buf, h, w, &mv, cols, zeros);
        Py_END_ALLOW_THREADS
        PyMem_Free(cols);
        PyMem_Free(zeros);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"line_image", py_line_image, METH_VARARGS,
     "line_image(mask, out, height, width, bridge, len_h, len_v): fields._line_image_cv in C (0/255 mask)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fields", "The line image of a page.", -1, methods};

PyMODINIT_FUNC PyInit__fields(void) { return PyModule_Create(&module); }
