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

/* Returns the index of the first row with an unknown filter type, or -1 when all rows are good. */
static Py_ssize_t unfilter_rows(uint8_t *buf, Py_ssize_t height, Py_ssize_t stride, int bpp) {
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
            if (bpp == 1) {
                int a = dst[0], c = prev[0];
                for (x = 1; x < stride; x++) {
                    int b = prev[x];
                    a = (uint8_t)(src[x] + paeth(a, b, c));
                    dst[x] = (uint8_t)a;
                    c = b;
                }
            } else {
                for (; x < stride; x++) dst[x] = (uint8_t)(src[x] + paeth(dst[x - bpp], prev[x], prev[x - bpp]));
            }
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
    bad = unfilter_rows((uint8_t *)view.buf, height, stride, bpp);
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
