/* digitreader.pipeline._png: PNG row unfiltering, in place (the C half of pipeline/png.py).
 *
 * A non-interlaced PNG's inflated image data is `height` rows of (1 + stride) bytes: a filter type
 * (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) and the filtered row. `unfilter(buf, height, stride, bpp)`
 * undoes the filters in the writable buffer `buf` and packs the rows together: on return the first
 * height * stride bytes are the image, row after row. Each output row lies before its own input row
 * in the buffer and after the previous output row, so nothing still to be read is overwritten.
 *
 * Written for the 8-bit greyscale pages scanners produce (bpp 1), where libpng's generic loops and
 * zlib's inflate take most of a page's decoding time; png.py inflates with libdeflate.
 *
 * Paeth rows (bpp 1) are the slow part: each pixel needs the one just decoded, a chain of about a
 * dozen dependent operations per byte. Scanners' encoders pick Paeth for runs of rows (where there is
 * ink), so up to PAETH_ROWS consecutive Paeth rows are decoded together, each one pixel behind the
 * row above it (`paeth_wave`): that many independent chains in flight at once, and branch-free
 * selection, about 2.5x faster on a 300-dpi page than one row at a time with branches.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline int iabs(int v) { return v < 0 ? -v : v; }

static inline int paeth(int a, int b, int c) {
    int pa = iabs(b - c), pb = iabs(a - c), pc = iabs(a + b - 2 * c);
    return (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
}

#define PAETH_ROWS 4

/* One Paeth pixel of row J at column X (bpp 1), branch-free: the predictor is a, b or c by the PNG
 * rule (a if pa <= pb and pa <= pc, else b if pb <= pc, else c), chosen with masks. */
#define PAETH_STEP(J, X)                                                                            \
    do {                                                                                            \
        int b_ = prv[J][X], c_ = cc[J];                                                             \
        int e_ = b_ - c_, pa_ = e_ < 0 ? -e_ : e_;                                                  \
        int d_ = aa[J] - c_, pb_ = d_ < 0 ? -d_ : d_;                                               \
        int s_ = d_ + e_, pc_ = s_ < 0 ? -s_ : s_;                                                  \
        int ma_ = -((pa_ <= pb_) & (pa_ <= pc_)), mb_ = -(pb_ <= pc_);                              \
        int bc_ = c_ ^ ((b_ ^ c_) & mb_);                                                           \
        aa[J] = (uint8_t)(sr[J][X] + (bc_ ^ ((aa[J] ^ bc_) & ma_)));                                \
        ds[J][X] = (uint8_t)aa[J];                                                                  \
        cc[J] = b_;                                                                                 \
    } while (0)

/* k (1..PAETH_ROWS) consecutive Paeth rows, bpp 1: row j is decoded one pixel behind row j - 1, so
 * the k rows' chains run side by side. `prev`: the decoded row above the first; `src`: the k filtered
 * rows, `stride` apart, not overlapping `dst` (k = 1 may decode in place: each byte is read before
 * its output is written); `dst`: the k output rows, `stride` apart. */
static inline __attribute__((always_inline)) void paeth_wave(uint8_t *dst, const uint8_t *prev,
                                                            const uint8_t *src, Py_ssize_t stride, const int k) {
    const uint8_t *prv[PAETH_ROWS], *sr[PAETH_ROWS];
    uint8_t *ds[PAETH_ROWS];
    int aa[PAETH_ROWS], cc[PAETH_ROWS];
    for (int j = 0; j < k; j++) {
        ds[j] = dst + j * stride;
        sr[j] = src + j * stride;
        prv[j] = j ? ds[j - 1] : prev;
        ds[j][0] = (uint8_t)(sr[j][0] + prv[j][0]);
        aa[j] = ds[j][0];
        cc[j] = prv[j][0];
    }
    Py_ssize_t t;
    for (t = 1; t < k && t < stride; t++) /* rows 0 .. t-1 have started */
        for (int j = 0; j < t; j++) PAETH_STEP(j, t - j);
    for (; t < stride; t++) /* all k rows at work */
        for (int j = 0; j < k; j++) PAETH_STEP(j, t - j);
    for (; t < stride + k - 1; t++) /* the lower rows finish */
        for (int j = 0; j < k; j++) {
            Py_ssize_t x = t - j;
            if (x >= 1 && x < stride) PAETH_STEP(j, x);
        }
}

/* Decodes the run of Paeth rows starting at row y (bpp 1, y > 0): up to PAETH_ROWS of them at once,
 * their filtered bytes first copied to `scratch` (PAETH_ROWS * stride bytes) because in place an
 * output row overlaps the end of the input row above it. Returns how many rows it decoded. */
static Py_ssize_t paeth_rows(uint8_t *buf, Py_ssize_t y, Py_ssize_t height, Py_ssize_t stride, uint8_t *scratch) {
    uint8_t *dst = buf + y * stride;
    const uint8_t *prev = dst - stride;
    int k = 1;
    while (scratch != NULL && k < PAETH_ROWS && y + k < height && buf[(y + k) * (stride + 1)] == 4) k++;
    if (k == 1) {
        paeth_wave(dst, prev, buf + y * (stride + 1) + 1, stride, 1);
        return 1;
    }
    for (int j = 0; j < k; j++) memcpy(scratch + j * stride, buf + (y + j) * (stride + 1) + 1, (size_t)stride);
    switch (k) {
    case 2:
        paeth_wave(dst, prev, scratch, stride, 2);
        break;
    case 3:
        paeth_wave(dst, prev, scratch, stride, 3);
        break;
    default:
        paeth_wave(dst, prev, scratch, stride, PAETH_ROWS);
    }
    return k;
}

/* Returns the index of the first row with an unknown filter type, or -1 when all rows are good.
 * `scratch`: PAETH_ROWS * stride bytes for `paeth_rows`, or NULL (Paeth rows one at a time). */
static Py_ssize_t unfilter_rows(uint8_t *buf, Py_ssize_t height, Py_ssize_t stride, int bpp, uint8_t *scratch) {
    const uint8_t *prev = NULL;
    Py_ssize_t n0 = bpp < stride ? bpp : stride;
    for (Py_ssize_t y = 0; y < height; y++) {
        const uint8_t *src = buf + y * (stride + 1) + 1;
        uint8_t *dst = buf + y * stride;
        int ft = src[-1];
        Py_ssize_t x;
        if (prev == NULL && ft >= 2 && ft <= 4) {
            ft = ft == 2 ? 0 : (ft == 4 ? 1 : 3); /* no row above: Up = None, Paeth = Sub */
        }
        if (ft == 4 && bpp == 1) {
            Py_ssize_t k = paeth_rows(buf, y, height, stride, scratch);
            y += k - 1;
            prev = buf + y * stride;
            continue;
        }
        switch (ft) {
        case 0:
            memmove(dst, src, (size_t)stride);
            break;
        case 1:
            if (bpp == 1) {
                uint8_t a = 0;
                for (x = 0; x < stride; x++) {
                    a = (uint8_t)(src[x] + a);
                    dst[x] = a;
                }
            } else {
                for (x = 0; x < n0; x++) dst[x] = src[x];
                for (; x < stride; x++) dst[x] = (uint8_t)(src[x] + dst[x - bpp]);
            }
            break;
        case 2:
            for (x = 0; x < stride; x++) dst[x] = (uint8_t)(src[x] + prev[x]);
            break;
        case 3:
            for (x = 0; x < n0; x++) dst[x] = (uint8_t)(src[x] + ((prev ? prev[x] : 0) >> 1));
            for (; x < stride; x++) dst[x] = (uint8_t)(src[x] + ((dst[x - bpp] + (prev ? prev[x] : 0)) >> 1));
            break;
        case 4:
            for (x = 0; x < n0; x++) dst[x] = (uint8_t)(src[x] + prev[x]);
            for (; x < stride; x++) dst[x] = (uint8_t)(src[x] + paeth(dst[x - bpp], prev[x], prev[x - bpp]));
            break;
        default:
            return y;
        }
        prev = dst;
    }
    return -1;
}

static PyObject *py_unfilter(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t height, stride;
    int bpp;
    if (!PyArg_ParseTuple(args, "w*nni", &view, &height, &stride, &bpp)) return NULL;
    if (height < 0 || stride < 1 || bpp < 1 || bpp > 8 || stride > PY_SSIZE_T_MAX / 2 ||
        (height > 0 && view.len / height < stride + 1)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "unfilter: the buffer is smaller than height * (stride + 1)");
        return NULL;
    }
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    /* Without the scratch rows (no memory), Paeth rows are decoded one at a time: the same bytes. */
    uint8_t *scratch = bpp == 1 && stride <= PY_SSIZE_T_MAX / PAETH_ROWS ? PyMem_RawMalloc((size_t)(PAETH_ROWS * stride)) : NULL;
    bad = unfilter_rows((uint8_t *)view.buf, height, stride, bpp, scratch);
    PyMem_RawFree(scratch);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "unfilter: row %zd has an unknown filter type", bad);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"unfilter", py_unfilter, METH_VARARGS,
     "unfilter(buf, height, stride, bpp): undo PNG row filters in place and pack the rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_png", "PNG row unfiltering.", -1, methods};

PyMODINIT_FUNC PyInit__png(void) { return PyModule_Create(&module); }
