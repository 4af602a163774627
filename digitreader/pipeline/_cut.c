/* digitreader.pipeline._cut: the C half of cut.py, for box cells and string windows.
 *
 * `remove_lines(ink, out, height, width, x0, y0, x1, y1, max_t, level, ticks, pen)` does what
 * cut._remove_lines_py does, step for step, on a C-contiguous uint8 window `ink` (0/1), writing the
 * result into `out` (a copy of `ink`, same shape): the rows and columns of the box lines bordering
 * the interior (x0, y0)-(x1, y1) are found by their coverage (`level`), narrowed to the lines' own
 * rows where a stroke runs along them (`_line_cores`), taken out, the ticks of a tick row taken out
 * when `ticks` (`_remove_ticks`), and the pixels of a line put back where ink continues on both
 * sides of it. `pen` < 0 stands for None.
 *
 * `cell_mask(...)` does what cut._cell_mask does for a box cell: the faint strokes touching its ink
 * grown back (`_grow_faint`), `remove_lines`, the pieces that are the cell's own kept
 * (`_digit_components`) and the blank test (`_has_tall_piece`, normalize.is_blank), with their
 * constants (BLANK_EXTENT 0.25, ...). cut.py's docstrings explain each rule; the names here are
 * theirs.
 *
 * Why C: a page of A4 forms has about fifty cells, and the Python version makes some sixty small
 * numpy and OpenCV calls per cell, each costing more in overhead than its few thousand pixels of
 * work. tests/test_cut_native.py checks that both versions give the same pixels and decisions on
 * generated pages and on random windows: a rule changed in one and not the other fails there.
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

/* ---------------------------------------------------------------------------------------------
 * A box cell's digit mask: cut._cell_mask (faint strokes grown back, lines removed, the cell's own
 * pieces kept, the blank test) in one call.
 */

typedef struct {
    int x0, y0, x1, y1, area; /* bounding box [x0, x1) x [y0, y1) */
} Comp;

/* 8-connected pieces of the nonzero pixels of an h x w rectangle of `m` (rows `stride` apart):
 * `lab` (h * w, the rectangle's) gets each pixel's piece, 1..n, or 0 for paper; `comps[1..n]` their
 * boxes and areas; `stack` has room for h * w ints. Returns n. The numbering differs from OpenCV's,
 * which nothing here depends on: every rule looks at a piece's box, area and pixels. */
static int label8(const uint8_t *m, int h, int w, Py_ssize_t stride, int32_t *lab, Comp *comps, int *stack) {
    int n = 0;
    memset(lab, 0, sizeof(int32_t) * (size_t)h * (size_t)w);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            if (!m[y * stride + x] || lab[y * w + x]) continue;
            Comp c = {x, y, x + 1, y + 1, 0};
            int top = 0;
            n++;
            lab[y * w + x] = n;
            stack[top++] = y * w + x;
            while (top) {
                int i = stack[--top], py = i / w, px = i % w;
                c.area++;
                if (px < c.x0) c.x0 = px;
                if (px >= c.x1) c.x1 = px + 1;
                if (py < c.y0) c.y0 = py;
                if (py >= c.y1) c.y1 = py + 1;
                for (int dy = -1; dy <= 1; dy++) {
                    int qy = py + dy;
                    if (qy < 0 || qy >= h) continue;
                    for (int dx = -1; dx <= 1; dx++) {
                        int qx = px + dx;
                        if (qx < 0 || qx >= w || !m[qy * stride + qx] || lab[qy * w + qx]) continue;
                        lab[qy * w + qx] = n;
                        stack[top++] = qy * w + qx;
                    }
                }
            }
            comps[n] = c;
        }
    return n;
}

/* normalize.is_blank of the r0..r1 x c0..c1 rectangle of `mask` (w wide), at BLANK_EXTENT. */
static int is_blank(const uint8_t *mask, int w, int r0, int r1, int c0, int c1, int32_t *lab, Comp *comps,
                    int *stack) {
    int bh = r1 - r0, bw = c1 - c0;
    if (bh <= 0 || bw <= 0) return 1;
    int n = label8(mask + (Py_ssize_t)r0 * w + c0, bh, bw, w, lab, comps, stack);
    if (n == 0) return 1;
    double extent = 0.0, total = 0.0;
    for (int i = 1; i <= n; i++) {
        double eh = (double)(comps[i].y1 - comps[i].y0) / (double)bh;
        double ew = (double)(comps[i].x1 - comps[i].x0) / (double)bw;
        double e = eh > ew ? eh : ew;
        if (e > extent) extent = e;
        total += comps[i].area;
    }
    if (extent >= 0.25) return 0;
    double area = total / (double)((Py_ssize_t)bh * bw);
    return area < 0.02 || extent < 0.125;
}

/* `_cell_mask`: the digit mask of a cell's window into `out` (h x w, 0/1); returns whether the cell
 * is blank. `weak`: the page's weak ink level; (ix0, iy0)-(ix1, iy1) the cell's interior in the
 * window (not negative); cw x ch the cell's size. */
static int cell_mask(const uint8_t *ink, const uint8_t *gray, int h, int w, double weak, int ix0, int iy0, int ix1,
                     int iy1, int cw, int ch, int max_t, int pen, uint8_t *out, uint8_t *grown, uint8_t *tmp,
                     int32_t *lab, Comp *comps, int *stack, uint8_t *scratch, int *ints, uint8_t *keep) {
    Py_ssize_t size = (Py_ssize_t)h * w;
    /* Faint strokes touching the ink (`_grow_faint`): the weak pieces holding an ink pixel, unless
     * the window has one weak piece or none. */
    for (Py_ssize_t i = 0; i < size; i++) tmp[i] = (double)gray[i] < weak;
    int n = label8(tmp, h, w, w, lab, comps, stack);
    memcpy(grown, ink, (size_t)size);
    if (n >= 2) {
        memset(keep, 0, (size_t)n + 1);
        for (Py_ssize_t i = 0; i < size; i++)
            if (ink[i]) keep[lab[i]] = 1;
        keep[0] = 0;
        for (Py_ssize_t i = 0; i < size; i++)
            if (keep[lab[i]]) grown[i] = 1;
    }
    /* The box lines out (`remove_lines` with ticks). */
    memcpy(tmp, grown, (size_t)size);
    remove_lines(grown, tmp, h, w, ix0, iy0, ix1, iy1, max_t, 0.6, 1, pen, scratch, ints);
    /* The cell's own pieces (`_digit_components`). */
    n = label8(tmp, h, w, w, lab, comps, stack);
    int r0 = imin(iy0, h), r1 = imax(imin(iy1, h), r0), c0 = imin(ix0, w), c1 = imax(imin(ix1, w), c0);
    int *inside = stack; /* free again: pixels of each piece inside the interior */
    memset(inside, 0, sizeof(int) * (size_t)(n + 1));
    for (int y = r0; y < r1; y++)
        for (int x = c0; x < c1; x++) inside[lab[y * w + x]]++;
    int min_area = (int)(0.0015 * (double)cw * (double)ch);
    if (min_area < 2) min_area = 2;
    double band_x = 0.14 * (double)cw, band_y = 0.14 * (double)ch;
    memset(keep, 0, (size_t)n + 1);
    int tall = 0, ih = imax(iy1 - iy0, 1), iw = imax(ix1 - ix0, 1);
    for (int i = 1; i <= n; i++) {
        int px = comps[i].x0, py = comps[i].y0, pw = comps[i].x1 - px, ph = comps[i].y1 - py, area = comps[i].area;
        if (area < min_area) continue;
        int near_lr = (double)px >= (double)ix1 - band_x || (double)(px + pw) <= (double)ix0 + band_x;
        int near_tb = (double)py >= (double)iy1 - band_y || (double)(py + ph) <= (double)iy0 + band_y;
        double coef = (double)ph >= 0.5 * (double)(iy1 - iy0) ? 0.08 : 0.1;
        int thin_lr = (double)area <= coef * (double)cw * (double)ph;
        if ((near_lr && thin_lr) || (near_tb && (double)area <= 0.1 * (double)ch * (double)pw)) continue;
        int columns = imin(px + pw, ix1) - imax(px, ix0);
        if ((double)inside[i] >= 0.5 * (double)area ||
            ((double)inside[i] >= 0.2 * (double)area && (double)columns >= 0.7 * (double)pw)) {
            keep[i] = 1;
            /* `_has_tall_piece`: wholly inside and a quarter of the interior's height or width. */
            double eh = (double)ph / (double)ih, ew = (double)pw / (double)iw;
            if (px >= ix0 && py >= iy0 && px + pw <= ix1 && py + ph <= iy1 && (eh > ew ? eh : ew) >= 0.25) tall = 1;
        }
    }
    keep[0] = 0;
    for (Py_ssize_t i = 0; i < size; i++) out[i] = keep[lab[i]];
    return tall ? 0 : is_blank(out, w, r0, r1, c0, c1, lab, comps, stack);
}

static PyObject *py_cell_mask(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer ink, gray, dst;
    int h, w, ix0, iy0, ix1, iy1, cw, ch, max_t, pen;
    double weak;
    if (!PyArg_ParseTuple(args, "y*y*w*iidiiiiiiii", &ink, &gray, &dst, &h, &w, &weak, &ix0, &iy0, &ix1, &iy1, &cw,
                          &ch, &max_t, &pen))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t size = (Py_ssize_t)h * w;
    if (h < 0 || w < 0 || ink.len != size || gray.len != size || dst.len != size || max_t < 0) {
        PyErr_SetString(PyExc_ValueError, "cell_mask: ink, gray and out must each hold height * width bytes");
        goto done;
    }
    if (ix0 < 0 || iy0 < 0) {
        PyErr_SetString(PyExc_ValueError, "cell_mask: the interior must not start left of or above the window");
        goto done;
    }
    int len = imax(imax(h, w), 1);
    size_t cells = (size_t)(size > 0 ? size : 1);
    uint8_t *bytes = PyMem_Malloc(3 * cells + 1 + 6 * (size_t)len); /* grown, tmp, keep (cells + 1), scratch */
    int32_t *lab = PyMem_Malloc(sizeof(int32_t) * cells);
    Comp *comps = PyMem_Malloc(sizeof(Comp) * (cells + 1));
    int *stack = PyMem_Malloc(sizeof(int) * (cells + 1));
    int *ints = PyMem_Malloc(sizeof(int) * (size_t)(len + 2));
    int blank = 1;
    if (!bytes || !lab || !comps || !stack || !ints) {
        PyErr_NoMemory();
    } else if (size > 0) {
        uint8_t *grown = bytes, *tmp = bytes + cells, *keep = bytes + 2 * cells, *scratch = bytes + 3 * cells + 1;
        blank = cell_mask((const uint8_t *)ink.buf, (const uint8_t *)gray.buf, h, w, weak, ix0, iy0, ix1, iy1, cw, ch,
                          max_t, pen, (uint8_t *)dst.buf, grown, tmp, lab, comps, stack, scratch, ints, keep);
    }
    PyMem_Free(bytes);
    PyMem_Free(lab);
    PyMem_Free(comps);
    PyMem_Free(stack);
    PyMem_Free(ints);
    if (!PyErr_Occurred()) result = PyBool_FromLong(blank);
done:
    PyBuffer_Release(&ink);
    PyBuffer_Release(&gray);
    PyBuffer_Release(&dst);
    return result;
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
    {"cell_mask", py_cell_mask, METH_VARARGS,
     "cell_mask(ink, gray, out, height, width, weak, x0, y0, x1, y1, cell_w, cell_h, max_t, pen) -> blank: "
     "cut._cell_mask in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cut", "Box-line removal and box cells' masks.", -1, methods};

PyMODINIT_FUNC PyInit__cut(void) { return PyModule_Create(&module); }
