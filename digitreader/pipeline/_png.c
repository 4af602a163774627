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
 *
 * Where SSE2 is there (every x86-64 CPU), a run of Paeth rows is decoded up to PAETH_LANES rows at
 * once in one vector (`paeth_simd`): lane j holds row j, one column behind lane j - 1, so that
 * each step needs only the step before it (left: the same lane; above: the lane before, a step ago;
 * above-left: the lane before, two steps ago). The rows go in and out through a scratch block where
 * row j is shifted j bytes right, transposed eight columns at a time. The same bytes as the scalar
 * wave, about three times faster on a scanned page. Sub rows (a running sum) go sixteen bytes at a time
 * (`sub_row_simd`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

#ifdef __SSE2__
#define PAETH_LANES 8

/* The 8x8 byte matrix in the low halves of r[0..7] transposed into the low halves of o[0..7]. */
static inline __attribute__((always_inline)) void transpose8(const __m128i r[8], __m128i o[8]) {
    __m128i a0 = _mm_unpacklo_epi8(r[0], r[1]), a1 = _mm_unpacklo_epi8(r[2], r[3]);
    __m128i a2 = _mm_unpacklo_epi8(r[4], r[5]), a3 = _mm_unpacklo_epi8(r[6], r[7]);
    __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
    __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
    __m128i c0 = _mm_unpacklo_epi32(b0, b2), c1 = _mm_unpackhi_epi32(b0, b2);
    __m128i c2 = _mm_unpacklo_epi32(b1, b3), c3 = _mm_unpackhi_epi32(b1, b3);
    o[0] = c0, o[1] = _mm_srli_si128(c0, 8), o[2] = c1, o[3] = _mm_srli_si128(c1, 8);
    o[4] = c2, o[5] = _mm_srli_si128(c2, 8), o[6] = c3, o[7] = _mm_srli_si128(c3, 8);
}

static inline __attribute__((always_inline)) __m128i abs16(__m128i v) {
    return _mm_max_epi16(v, _mm_sub_epi16(_mm_setzero_si128(), v));
}

/* The width of a row of the skewed scratch block: the row, shifted up to PAETH_LANES - 1 bytes, in
 * whole blocks of eight columns. */
static Py_ssize_t skew_width(Py_ssize_t stride) { return (stride + PAETH_LANES - 1 + 7) / 8 * 8; }

/* k (2..PAETH_LANES) consecutive Paeth rows (bpp 1) at `dst` (`stride` apart), their filtered bytes at
 * `src` (`stride + 1` apart: the rows as inflated, each after its filter byte), the decoded row above
 * them at `prev`. `skew`: PAETH_LANES + 1 scratch rows of skew_width(stride) bytes. Lane j works on
 * column t - j at step t; before its row starts a lane reads zeros and so decodes zeros, which are what
 * the PNG rule takes left of a row's first pixel (left and above-left). Lanes past k decode zeros and
 * are dropped: eight lanes cost about what two rows cost the scalar wave. */
static void paeth_simd(uint8_t *dst, const uint8_t *prev, const uint8_t *src, Py_ssize_t stride, uint8_t *skew,
                       const int k) {
    const Py_ssize_t w = skew_width(stride);
    uint8_t *above = skew + PAETH_LANES * w; /* the row above, zeros after its end */
    memset(skew, 0, (size_t)((PAETH_LANES + 1) * w));
    for (int j = 0; j < k; j++) memcpy(skew + j * w + j, src + j * (stride + 1), (size_t)stride);
    memcpy(above, prev, (size_t)stride);
    const __m128i low = _mm_set1_epi16(0xff), zero = _mm_setzero_si128();
    __m128i v = zero, up = zero; /* the last step's pixels, and its "above" (this step's above-left) */
    for (Py_ssize_t t0 = 0; t0 < w; t0 += 8) {
        __m128i r[8], s[8];
        for (int j = 0; j < 8; j++) r[j] = _mm_loadl_epi64((const __m128i *)(skew + j * w + t0));
        transpose8(r, s);
        for (int i = 0; i < 8; i++) {
            __m128i a = v, c = up;
            __m128i b = _mm_insert_epi16(_mm_slli_si128(v, 2), above[t0 + i], 0);
            __m128i e = _mm_sub_epi16(b, c), d = _mm_sub_epi16(a, c);
            __m128i pa = abs16(e), pb = abs16(d), pc = abs16(_mm_add_epi16(d, e));
            __m128i not_a = _mm_or_si128(_mm_cmpgt_epi16(pa, pb), _mm_cmpgt_epi16(pa, pc));
            __m128i not_b = _mm_cmpgt_epi16(pb, pc);
            __m128i bc = _mm_xor_si128(b, _mm_and_si128(_mm_xor_si128(b, c), not_b));
            __m128i pred = _mm_xor_si128(a, _mm_and_si128(_mm_xor_si128(a, bc), not_a));
            v = _mm_and_si128(_mm_add_epi16(_mm_unpacklo_epi8(s[i], zero), pred), low);
            up = b;
            s[i] = _mm_packus_epi16(v, v);
        }
        transpose8(s, r);
        for (int j = 0; j < 8; j++) _mm_storel_epi64((__m128i *)(skew + j * w + t0), r[j]);
    }
    for (int j = 0; j < k; j++) memcpy(dst + j * stride, skew + j * w + j, (size_t)stride);
}

/* A Sub row (bpp 1), sixteen bytes at a time: each block's running sum in four shifted adds, plus the
 * last byte decoded before it. Returns how many bytes it decoded (a multiple of 16; the rest are left
 * to the scalar loop). `dst` lies at or before `src`, as in place: each block is read before written. */
static Py_ssize_t sub_row_simd(uint8_t *dst, const uint8_t *src, Py_ssize_t n) {
    __m128i carry = _mm_setzero_si128(); /* every byte: the last one decoded */
    Py_ssize_t x = 0;
    for (; x + 16 <= n; x += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(src + x));
        v = _mm_add_epi8(v, _mm_slli_si128(v, 1));
        v = _mm_add_epi8(v, _mm_slli_si128(v, 2));
        v = _mm_add_epi8(v, _mm_slli_si128(v, 4));
        v = _mm_add_epi8(v, _mm_slli_si128(v, 8));
        v = _mm_add_epi8(v, carry);
        _mm_storeu_si128((__m128i *)(dst + x), v);
        carry = _mm_shuffle_epi32(_mm_shufflehi_epi16(_mm_unpackhi_epi8(v, v), 0xff), 0xff);
    }
    return x;
}
#endif

/* Decodes the run of Paeth rows starting at row y (bpp 1, y > 0): up to PAETH_LANES of them at once in
 * vector lanes where there is `skew` (SSE2), else up to PAETH_ROWS in the scalar wave; either way their
 * filtered bytes are first copied to scratch (`skew`, or `scratch`: PAETH_ROWS * stride bytes) because
 * in place an output row overlaps the end of the input row above it. Returns how many rows it decoded. */
static Py_ssize_t paeth_rows(uint8_t *buf, Py_ssize_t y, Py_ssize_t height, Py_ssize_t stride, uint8_t *scratch,
                             uint8_t *skew) {
    uint8_t *dst = buf + y * stride;
    const uint8_t *prev = dst - stride;
    int k = 1;
#ifdef __SSE2__
    while (skew != NULL && k < PAETH_LANES && y + k < height && buf[(y + k) * (stride + 1)] == 4) k++;
    if (k >= 2) {
        paeth_simd(dst, prev, buf + y * (stride + 1) + 1, stride, skew, k);
        return k;
    }
    k = 1;
#else
    (void)skew;
#endif
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
 * `scratch`: PAETH_ROWS * stride bytes for `paeth_rows`, or NULL (Paeth rows one at a time); `skew`:
 * (PAETH_LANES + 1) * skew_width(stride) bytes for `paeth_simd`, or NULL (no vector lanes). */
static Py_ssize_t unfilter_rows(uint8_t *buf, Py_ssize_t height, Py_ssize_t stride, int bpp, uint8_t *scratch,
                                uint8_t *skew) {
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
            Py_ssize_t k = paeth_rows(buf, y, height, stride, scratch, skew);
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
                x = 0;
#ifdef __SSE2__
                if (skew != NULL) { /* vector lanes wanted */
                    x = sub_row_simd(dst, src, stride);
                    a = x ? dst[x - 1] : 0;
                }
#endif
                for (; x < stride; x++) {
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
    int lanes = 1; /* 0: no vector code (the tests hold the plain C to the same bytes) */
    if (!PyArg_ParseTuple(args, "w*nni|p", &view, &height, &stride, &bpp, &lanes)) return NULL;
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
    uint8_t *skew = NULL;
    (void)lanes;
#ifdef __SSE2__
    if (lanes && bpp == 1 && stride <= PY_SSIZE_T_MAX / (4 * (PAETH_LANES + 1)))
        skew = PyMem_RawMalloc((size_t)((PAETH_LANES + 1) * skew_width(stride)));
#endif
    bad = unfilter_rows((uint8_t *)view.buf, height, stride, bpp, scratch, skew);
    PyMem_RawFree(skew);
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
     "unfilter(buf, height, stride, bpp, lanes=True): undo PNG row filters in place and pack the rows\n"
     "(lanes=False: without the SSE2 code, the same bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_png", "PNG row unfiltering.", -1, methods};

PyMODINIT_FUNC PyInit__png(void) { return PyModule_Create(&module); }
