/* digitreader.pipeline._normalize: a digit's crop -> the MNIST form (the C half of normalize.py).
 *
 * `normalize_masked(ink, mask, out, height, width)` does what normalize.normalize_ink does when it
 * is given a mask, writing the 28 x 28 result into `out`:
 *
 *   1. the ink (0..255) outside the mask grown by one pixel (3 x 3) is dropped;
 *   2. the mask's bounding box is scaled to fit 20 x 20 keeping its aspect ratio (Python's round()
 *      for the new size), by area averaging when it shrinks and bilinearly when it grows, as
 *      OpenCV's resize does with INTER_AREA and INTER_LINEAR;
 *   3. the result is moved so that its centre of mass lands on (14, 14), clamped so the box stays
 *      in the field, with bilinear interpolation (OpenCV's warpAffine, INTER_LINEAR, zero border);
 *   4. a faint digit (peak under 60 % of 255) is stretched to a peak of 255; the values are clipped
 *      to 0..255 and truncated to bytes.
 *
 * Not bit for bit OpenCV's: OpenCV's kernels round their float sums in their own order (and 5.x
 * changed it again), so a grey value can land one step apart where it sits on a byte boundary.
 * tests/test_normalize_native.py bounds that: within one grey level everywhere, the same in the
 * vast majority of crops. Why C: a page of A4 forms has about ninety crops, and the Python version
 * spends some 90 us each on a dozen numpy and OpenCV calls; this takes a few microseconds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SIZE 28
#define BOX 20

/* One axis of an area resize from n to m pixels (n >= m): for each output pixel, its first input
 * pixel, how many, and their weights (the overlap of the input pixel with the output pixel's span,
 * over the span), as OpenCV's computeResizeAreaTab lays them out. */
typedef struct {
    int first, count;
    double w[64];
} AreaTap;

static int area_taps(int n, int m, AreaTap *taps) {
    double scale = (double)n / (double)m;
    for (int d = 0; d < m; d++) {
        double f1 = d * scale, f2 = f1 + scale, cell = fmin(scale, n - f1);
        int s1 = (int)ceil(f1), s2 = (int)floor(f2);
        if (s2 > n - 1) s2 = n - 1;
        if (s1 > s2) s1 = s2;
        int head = s1 - f1 > 1e-3, tail = f2 - s2 > 1e-3;
        if (head + (s2 - s1) + tail > 64) return -1;
        AreaTap *t = &taps[d];
        t->count = 0;
        t->first = s1 - head;
        if (head) t->w[t->count++] = (s1 - f1) / cell;
        for (int s = s1; s < s2; s++) t->w[t->count++] = 1.0 / cell;
        if (tail) t->w[t->count++] = fmin(fmin(f2 - s2, 1.0), cell) / cell;
    }
    return 0;
}

/* One axis of a bilinear resize from n to m pixels (n <= m): the input pixel and the weight of the
 * next one, OpenCV's INTER_LINEAR (pixel centres aligned, clamped at the edges). */
static void linear_taps(int n, int m, int *sx, float *fx) {
    double scale = (double)n / (double)m;
    for (int d = 0; d < m; d++) {
        float f = (float)((d + 0.5) * scale - 0.5);
        int s = (int)floorf(f);
        f -= (float)s;
        if (s < 0) s = 0, f = 0.f;
        if (s >= n - 1) s = n - 1, f = 0.f;
        sx[d] = s;
        fx[d] = f;
    }
}

/* The crop's `box` (bh x bw floats) scaled to nh x nw into `small`. */
static int resize_box(const float *box, int bh, int bw, float *small, int nh, int nw, int shrink) {
    if (shrink) {
        AreaTap ty[BOX], tx[BOX];
        if (area_taps(bh, nh, ty) || area_taps(bw, nw, tx)) return -1; /* over 62x larger than the box */
        for (int y = 0; y < nh; y++)
            for (int x = 0; x < nw; x++) {
                double acc = 0.0;
                for (int i = 0; i < ty[y].count; i++) {
                    const float *row = box + (Py_ssize_t)(ty[y].first + i) * bw + tx[x].first;
                    double r = 0.0;
                    for (int j = 0; j < tx[x].count; j++) r += row[j] * tx[x].w[j];
                    acc += r * ty[y].w[i];
                }
                small[y * nw + x] = (float)acc;
            }
    } else {
        int sy[BOX], sx[BOX];
        float fy[BOX], fx[BOX];
        linear_taps(bh, nh, sy, fy);
        linear_taps(bw, nw, sx, fx);
        for (int y = 0; y < nh; y++) {
            const float *r0 = box + (Py_ssize_t)sy[y] * bw, *r1 = box + (Py_ssize_t)(sy[y] + (sy[y] + 1 < bh)) * bw;
            for (int x = 0; x < nw; x++) {
                int a = sx[x], b = a + (a + 1 < bw);
                float top = r0[a] * (1.f - fx[x]) + r0[b] * fx[x];
                float bot = r1[a] * (1.f - fx[x]) + r1[b] * fx[x];
                small[y * nw + x] = top * (1.f - fy[y]) + bot * fy[y];
            }
        }
    }
    return 0;
}

/* normalize_ink(ink, mask) into out (28 x 28 bytes); returns -1 for a box too large to shrink. */
static int normalize_masked(const uint8_t *ink, const uint8_t *mask, int h, int w, uint8_t *out, float *work) {
    memset(out, 0, SIZE * SIZE);
    int x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (mask[(Py_ssize_t)y * w + x]) {
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
            }
    if (x1 < 0) return 0;
    int bh = y1 - y0 + 1, bw = x1 - x0 + 1;
    /* The box's ink, kept where the mask grown by one pixel is (the grown mask may reach a pixel
     * outside the box, but only the box is read). */
    float *box = work;
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++) {
            int py = y0 + y, px = x0 + x, on = 0;
            for (int dy = -1; dy <= 1 && !on; dy++)
                for (int dx = -1; dx <= 1 && !on; dx++) {
                    int qy = py + dy, qx = px + dx;
                    on = qy >= 0 && qy < h && qx >= 0 && qx < w && mask[(Py_ssize_t)qy * w + qx];
                }
            box[y * bw + x] = on ? (float)ink[(Py_ssize_t)py * w + px] : 0.f;
        }
    double scale = (double)BOX / (double)(bh > bw ? bh : bw);
    int nh = (int)nearbyint(bh * scale), nw = (int)nearbyint(bw * scale);
    if (nh < 1) nh = 1;
    if (nw < 1) nw = 1;
    float small[BOX * BOX];
    if (resize_box(box, bh, bw, small, nh, nw, scale < 1.0)) return -1;
    double total = 0.0, my = 0.0, mx = 0.0;
    for (int y = 0; y < nh; y++)
        for (int x = 0; x < nw; x++) {
            double v = small[y * nw + x];
            total += v;
            my += v * y;
            mx += v * x;
        }
    if (total <= 0.0) return 0;
    double tx = fmin(fmax(SIZE / 2.0 - mx / total, 0.0), (double)(SIZE - nw));
    double ty = fmin(fmax(SIZE / 2.0 - my / total, 0.0), (double)(SIZE - nh));
    /* warpAffine takes the translation as float32. */
    float ftx = (float)tx, fty = (float)ty, res[SIZE * SIZE], peak = 0.f;
    for (int y = 0; y < SIZE; y++) {
        float sy = (float)y - fty;
        int iy = (int)floorf(sy);
        float b = sy - (float)iy;
        for (int x = 0; x < SIZE; x++) {
            float sx = (float)x - ftx;
            int ix = (int)floorf(sx);
            float a = sx - (float)ix;
#define PX(r, c) (((r) >= 0 && (r) < nh && (c) >= 0 && (c) < nw) ? small[(r) * nw + (c)] : 0.f)
            float top = PX(iy, ix) + a * (PX(iy, ix + 1) - PX(iy, ix));
            float bot = PX(iy + 1, ix) + a * (PX(iy + 1, ix + 1) - PX(iy + 1, ix));
#undef PX
            float v = top + b * (bot - top);
            res[y * SIZE + x] = v;
            if (v > peak) peak = v;
        }
    }
    float gain = 1.f;
    if (peak > 0.f && (double)peak < 255.0 * 0.6) gain = (float)(255.0 / fmax((double)peak, 1e-6));
    for (int i = 0; i < SIZE * SIZE; i++) {
        float v = res[i] * gain;
        out[i] = (uint8_t)(v <= 0.f ? 0 : (v >= 255.f ? 255 : (int)v));
    }
    return 0;
}

static PyObject *py_normalize_masked(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer ink, mask, dst;
    int h, w;
    if (!PyArg_ParseTuple(args, "y*y*w*ii", &ink, &mask, &dst, &h, &w)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t size = (Py_ssize_t)h * w;
    if (h < 0 || w < 0 || ink.len != size || mask.len != size || dst.len != SIZE * SIZE) {
        PyErr_SetString(PyExc_ValueError, "normalize_masked: ink and mask must hold height * width bytes, out 784");
        goto done;
    }
    float *work = PyMem_Malloc(sizeof(float) * (size_t)(size > 0 ? size : 1));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
    int bad = normalize_masked((const uint8_t *)ink.buf, (const uint8_t *)mask.buf, h, w, (uint8_t *)dst.buf, work);
    PyMem_Free(work);
    result = PyBool_FromLong(bad == 0);
done:
    PyBuffer_Release(&ink);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"normalize_masked", py_normalize_masked, METH_VARARGS,
     "normalize_masked(ink, mask, out, height, width) -> done: normalize.normalize_ink(ink, mask) in C, into out "
     "(28 x 28 bytes); False for a crop too large for it (the caller does it in Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_normalize", "Crops to the MNIST form.", -1, methods};

PyMODINIT_FUNC PyInit__normalize(void) { return PyModule_Create(&module); }
