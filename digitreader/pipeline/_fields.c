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
 *
 * `frame(piece, height, width, x0, y0, mm)` and `ticks(...)` examine one piece of that line image as
 * fields._frame_py and fields._ticks_py do (a frame: top and bottom lines, walls fitted to an even
 * grid; a tick row: a base line with evenly spaced ticks), with the same float64 arithmetic in the
 * same order and Python's rounding (half to even), so they find the same fields: a page has dozens
 * of such pieces, each some forty numpy calls in Python. The same tests compare them with the Python
 * on random pieces and on every piece of generated pages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
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

/* ---------------------------------------------------------------------------------------------
 * One piece of the line image examined as a frame (fields._frame_py) or a tick row
 * (fields._ticks_py): the same steps, the same float64 arithmetic in the same order, so the same
 * fields. Each returns a tuple (kind, bbox, cells) or None.
 */

typedef struct {
    int s, e; /* [s, e) */
} Run;

/* Runs of flag[i] (0 <= i < n) as [s, e), into runs (room for n / 2 + 1); returns how many. */
static int runs_of(const uint8_t *flag, int n, Run *runs) {
    int k = 0, i = 0;
    while (i < n) {
        while (i < n && !flag[i]) i++;
        if (i >= n) break;
        int s = i;
        while (i < n && flag[i]) i++;
        runs[k++] = (Run){s, i};
    }
    return k;
}

/* prepare.median of n doubles (sorted in place). */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    int mid = n / 2;
    return n % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/* Python's int(round(v)) for a float: half to even. */
static int round_half_even(double v) { return (int)nearbyint(v); }

/* fields._fit_grid: walls (n of them) -> out (room for any count the grid can have), returns how
 * many. `work` has room for 2 * (n + grid) doubles and ints. */
static int fit_grid(const Run *walls, int n, double min_cell, Run *out, int out_room, double *centre, int *match,
                    int *best_match) {
    if (n <= 2) {
        for (int i = 0; i < n; i++) out[i] = walls[i];
        return n;
    }
    for (int i = 0; i < n; i++) centre[i] = (walls[i].s + walls[i].e) / 2.0;
    double first = centre[0], last = centre[n - 1], span = last - first;
    int n_interior = n - 2;
    const double *cand = centre + 1;
    int thick = round_half_even(((walls[0].e - walls[0].s) + (walls[n - 1].e - walls[n - 1].s)) / 2.0);
    if (thick < 1) thick = 1;
    int best_n = 1;
    double best_score = -0.3 * n_interior;
    int top = (int)(span / (min_cell > 1.0 ? min_cell : 1.0));
    for (int g = 2; g <= top; g++) {
        double pitch = span / g, tol = 0.2 * pitch;
        int matched = 0;
        for (int k = 1; k < g; k++) {
            double pos = first + k * pitch;
            int j = 0;
            double best = fabs(cand[0] - pos);
            for (int c = 1; c < n_interior; c++) {
                double d = fabs(cand[c] - pos);
                if (d < best) best = d, j = c;
            }
            int ok = best <= tol;
            match[k - 1] = ok ? j : -1;
            matched += ok;
        }
        int missing = (g - 1) - matched;
        double score = ((double)matched - 1.0 * missing) - 0.3 * (n_interior - matched);
        if (score > best_score) {
            best_n = g;
            best_score = score;
            memcpy(best_match, match, sizeof(int) * (size_t)(g - 1));
        }
    }
    if (best_n == 1) {
        out[0] = walls[0];
        out[1] = walls[n - 1];
        return 2;
    }
    if (best_n + 1 > out_room) return -1;
    int k = 0;
    out[k++] = walls[0];
    double pitch = span / best_n;
    for (int i = 1; i < best_n; i++) {
        int m = best_match[i - 1];
        if (m >= 0) {
            out[k++] = walls[m + 1];
        } else {
            double c = first + i * pitch;
            int a = round_half_even(c - thick / 2.0);
            out[k++] = (Run){a, a + thick};
        }
    }
    out[k++] = walls[n - 1];
    return k;
}

/* Scratch for one piece, sized by its width w and height h. */
typedef struct {
    double *rows, *cols, *dwork;
    uint8_t *flag;
    Run *r1, *r2, *r3;
    int *iwork, *iwork2, *iwork3;
    int room; /* of each Run array and of dwork / iwork */
} Scratch;

static int scratch_alloc(Scratch *sc, int h, int w) {
    int n = (h > w ? h : w) + 4;
    /* A grid has at most span / min_cell + 1 <= w + 1 walls, and min_cell >= 1: under n. */
    sc->room = n;
    sc->rows = PyMem_Malloc(sizeof(double) * (size_t)n);
    sc->cols = PyMem_Malloc(sizeof(double) * (size_t)n);
    sc->dwork = PyMem_Malloc(sizeof(double) * (size_t)n);
    sc->flag = PyMem_Malloc((size_t)n);
    sc->r1 = PyMem_Malloc(sizeof(Run) * (size_t)n);
    sc->r2 = PyMem_Malloc(sizeof(Run) * (size_t)n);
    sc->r3 = PyMem_Malloc(sizeof(Run) * (size_t)n);
    sc->iwork = PyMem_Malloc(sizeof(int) * (size_t)n);
    sc->iwork2 = PyMem_Malloc(sizeof(int) * (size_t)n);
    sc->iwork3 = PyMem_Malloc(sizeof(int) * (size_t)n);
    return sc->rows && sc->cols && sc->dwork && sc->flag && sc->r1 && sc->r2 && sc->r3 && sc->iwork && sc->iwork2 &&
           sc->iwork3;
}

static void scratch_free(Scratch *sc) {
    PyMem_Free(sc->rows);
    PyMem_Free(sc->cols);
    PyMem_Free(sc->dwork);
    PyMem_Free(sc->flag);
    PyMem_Free(sc->r1);
    PyMem_Free(sc->r2);
    PyMem_Free(sc->r3);
    PyMem_Free(sc->iwork);
    PyMem_Free(sc->iwork2);
    PyMem_Free(sc->iwork3);
}

/* Each row's share of inked columns after a vertical 3-dilation (`_cover(cv2.dilate(sub, _ROW3), 1)`). */
static void row_cover_dilated(const uint8_t *sub, int h, int w, double *rows) {
    for (int y = 0; y < h; y++) {
        const uint8_t *a = y > 0 ? sub + (Py_ssize_t)(y - 1) * w : NULL, *b = sub + (Py_ssize_t)y * w,
                      *c = y + 1 < h ? sub + (Py_ssize_t)(y + 1) * w : NULL;
        int cnt = 0;
        for (int x = 0; x < w; x++) cnt += (b[x] | (a ? a[x] : 0) | (c ? c[x] : 0)) != 0;
        rows[y] = (double)cnt / (double)w;
    }
}

static PyObject *cell_tuple(int x, int y, int w, int h) { return Py_BuildValue("(iiii)", x, y, w, h); }

static PyObject *found(const char *kind, int bx, int by, int bw, int bh, PyObject *cells) {
    if (!cells) return NULL;
    PyObject *r = Py_BuildValue("(s(iiii)N)", kind, bx, by, bw, bh, cells);
    return r;
}

/* fields._frame_py. mm: g.mm(1.5), g.mm(4.5), g.mm(30), g.mm(3.0), g.mm(0.8), g.mm(2.0). */
static PyObject *frame(const uint8_t *sub, int h, int w, int x0, int y0, const int *mm, Scratch *sc) {
    int mm15 = mm[0], mm45 = mm[1], mm30 = mm[2], mm3 = mm[3], mm08 = mm[4], mm20 = mm[5];
    row_cover_dilated(sub, h, w, sc->rows);
    for (int y = 0; y < h; y++) sc->flag[y] = sc->rows[y] >= 0.8;
    int nhl = runs_of(sc->flag, h, sc->r1);
    if (nhl < 2) Py_RETURN_NONE;
    Run top = sc->r1[0], bottom = sc->r1[nhl - 1];
    int t_line = top.e - top.s < bottom.e - bottom.s ? top.e - top.s : bottom.e - bottom.s;
    if (t_line > mm15 + 2) Py_RETURN_NONE;
    top.e = top.e < top.s + t_line + 1 ? top.e : top.s + t_line + 1;
    bottom.s = bottom.s > bottom.e - t_line - 1 ? bottom.s : bottom.e - t_line - 1;
    int inner_h = bottom.s - top.e;
    if (inner_h < mm45 || inner_h > mm30) Py_RETURN_NONE;
    int solid = 0;
    for (int y = top.e; y < bottom.s; y++) solid += sc->rows[y] >= 0.95;
    if ((double)solid / (double)inner_h > 0.85) Py_RETURN_NONE;
    /* Each column's share of the band's rows after a horizontal 3-dilation. */
    const uint8_t *band = sub + (Py_ssize_t)top.e * w;
    for (int x = 0; x < w; x++) {
        int cnt = 0;
        for (int y = 0; y < inner_h; y++) {
            const uint8_t *r = band + (Py_ssize_t)y * w;
            cnt += (r[x] | (x > 0 ? r[x - 1] : 0) | (x + 1 < w ? r[x + 1] : 0)) != 0;
        }
        sc->cols[x] = (double)cnt / (double)inner_h;
        sc->flag[x] = sc->cols[x] >= 0.92;
    }
    int nw = runs_of(sc->flag, w, sc->r1), nm = 0;
    for (int i = 0; i < nw; i++) {
        Run wl = sc->r1[i];
        if (wl.e - wl.s > mm3 + 2) continue;
        if (nm && wl.s - sc->r2[nm - 1].e < mm08)
            sc->r2[nm - 1].e = wl.e;
        else
            sc->r2[nm++] = wl;
    }
    if (nm < 2) Py_RETURN_NONE;
    double min_cell = 0.45 * inner_h > (double)mm3 ? 0.45 * inner_h : (double)mm3;
    int ng = fit_grid(sc->r2, nm, min_cell, sc->r3, sc->room, sc->dwork, sc->iwork, sc->iwork2);
    if (ng < 0) {
        PyErr_SetString(PyExc_RuntimeError, "frame: grid larger than the piece");
        return NULL;
    }
    Run *walls = sc->r3;
    PyObject *cells = PyList_New(0);
    if (!cells) return NULL;
    int n_cells = 0;
    double *widths = sc->dwork;
    for (int i = 0; i + 1 < ng; i++) {
        int cw = walls[i + 1].s - walls[i].e;
        if (cw < mm20) continue;
        PyObject *c = cell_tuple(x0 + walls[i].e, y0 + top.e, cw, inner_h);
        if (!c || PyList_Append(cells, c) < 0) {
            Py_XDECREF(c);
            Py_DECREF(cells);
            return NULL;
        }
        Py_DECREF(c);
        widths[n_cells++] = cw;
    }
    if (!n_cells) {
        Py_DECREF(cells);
        Py_RETURN_NONE;
    }
    int fx = x0 + walls[0].s, fy = y0 + top.s;
    int bw = x0 + walls[ng - 1].e - fx, bh = y0 + bottom.e - fy;
    if (n_cells == 1) {
        const char *kind = widths[0] > 1.8 * inner_h ? "string" : "square";
        return found(kind, fx, fy, bw, bh, cells);
    }
    double mx = widths[0];
    for (int i = 1; i < n_cells; i++)
        if (widths[i] > mx) mx = widths[i];
    if (mx > 1.6 * median_of(widths, n_cells)) {
        Py_DECREF(cells);
        Py_RETURN_NONE;
    }
    return found("boxes", fx, fy, bw, bh, cells);
}

/* fields._ticks_py. mm: g.mm(1.5), g.mm(1.3), g.mm(1.2), g.mm(4.0), g.mm(TICK_PITCH_MAX_MM). */
static PyObject *ticks(const uint8_t *sub, int h, int w, int x0, int y0, const int *mm, Scratch *sc) {
    int mm15 = mm[0], probe = mm[1], mm12 = mm[2], mm40 = mm[3], pitch_max = mm[4];
    row_cover_dilated(sub, h, w, sc->rows);
    for (int y = 0; y < h; y++) sc->flag[y] = sc->rows[y] >= 0.8;
    int nhl = runs_of(sc->flag, h, sc->r1);
    if (!nhl) Py_RETURN_NONE;
    Run base = sc->r1[nhl - 1];
    if (base.e - base.s > mm15 + 2) Py_RETURN_NONE;
    if (base.s < probe) Py_RETURN_NONE;
    const uint8_t *band = sub + (Py_ssize_t)(base.s - probe) * w;
    int *any_ink = sc->iwork;
    for (int x = 0; x < w; x++) {
        int cnt = 0;
        for (int y = 0; y < probe; y++) cnt += band[(Py_ssize_t)y * w + x] != 0;
        any_ink[x] = cnt > 0;
        sc->flag[x] = (double)cnt / (double)probe >= 0.9;
    }
    int nr = runs_of(sc->flag, w, sc->r1), nraw = 0;
    Run *raw = sc->r2;
    for (int i = 0; i < nr; i++)
        if (sc->r1[i].e - sc->r1[i].s <= mm12) raw[nraw++] = sc->r1[i];
    if (nraw < 3) Py_RETURN_NONE;
    int ng = fit_grid(raw, nraw, (double)mm40, sc->r3, sc->room, sc->dwork, sc->iwork2, sc->iwork3);
    if (ng < 0) {
        PyErr_SetString(PyExc_RuntimeError, "ticks: grid larger than the piece");
        return NULL;
    }
    Run *tk = sc->r3;
    /* `whole`: four ticks or more, each one found (none filled in), few strokes off the grid. raw is
     * sorted and its runs distinct, so "t in raw" is a search by start. */
    int all_raw = 1;
    for (int i = 0; i < ng && all_raw; i++) {
        int hit = 0;
        for (int j = 0; j < nraw && !hit; j++) hit = raw[j].s == tk[i].s && raw[j].e == tk[i].e;
        all_raw = hit;
    }
    int whole = ng >= 4 && all_raw && nraw - ng <= ng - 1;
    if (ng - 1 < 2) Py_RETURN_NONE;
    double *gaps = sc->dwork, gmax = -1e300, gmin = 1e300;
    for (int i = 0; i + 1 < ng; i++) {
        double g = (tk[i + 1].s + tk[i + 1].e) / 2.0 - (tk[i].s + tk[i].e) / 2.0;
        gaps[i] = g;
        if (g > gmax) gmax = g;
        if (g < gmin) gmin = g;
    }
    double pitch = median_of(gaps, ng - 1);
    if (gmax > 1.4 * pitch || gmin < 0.7 * pitch) Py_RETURN_NONE;
    if (pitch < mm40) Py_RETURN_NONE;
    if (pitch > pitch_max) Py_RETURN_NONE;
    uint8_t *between = sc->flag;
    memset(between, 1, (size_t)w);
    for (int i = 0; i < ng; i++) {
        int a = tk[i].s - 2 > 0 ? tk[i].s - 2 : 0, b = tk[i].e + 2 < w ? tk[i].e + 2 : w;
        for (int x = a; x < b; x++) between[x] = 0;
    }
    for (int x = 0; x < tk[0].s && x < w; x++) between[x] = 0;
    for (int x = tk[ng - 1].e > 0 ? tk[ng - 1].e : 0; x < w; x++) between[x] = 0;
    int nb = 0, inked = 0;
    for (int x = 0; x < w; x++)
        if (between[x]) nb++, inked += any_ink[x];
    if (nb && (double)inked / (double)nb > (whole ? 0.6 : 0.35)) Py_RETURN_NONE;
    /* `_hidden_end_ticks`: end ticks a digit hid, where the base line runs on. */
    const uint8_t *brow = sub + (Py_ssize_t)base.s * w;
    for (int x = 0; x < w; x++) {
        int on = 0;
        for (int y = 0; y < base.e - base.s && !on; y++) on = brow[(Py_ssize_t)y * w + x] != 0;
        between[x] = (uint8_t)on;
    }
    int nl = runs_of(between, w, sc->r1);
    int left = tk[0].s, right = tk[ng - 1].e;
    for (int i = 0; i < nl; i++)
        if (sc->r1[i].s <= tk[0].s && tk[0].s < sc->r1[i].e) {
            left = sc->r1[i].s;
            break;
        }
    for (int i = 0; i < nl; i++)
        if (sc->r1[i].s <= tk[ng - 1].e - 1 && tk[ng - 1].e - 1 < sc->r1[i].e) {
            right = sc->r1[i].e;
            break;
        }
    int t = tk[0].e - tk[0].s, t_last = tk[ng - 1].e - tk[ng - 1].s;
    int n_before = (int)((tk[0].s - left) / pitch + 0.2), n_after = (int)((right - tk[ng - 1].e) / pitch + 0.2);
    int total = n_before + ng + n_after;
    Run *all = PyMem_Malloc(sizeof(Run) * (size_t)(total > 0 ? total : 1));
    if (!all) return PyErr_NoMemory();
    int k = 0;
    for (int j = n_before; j > 0; j--) {
        int a = round_half_even(tk[0].s - j * pitch);
        if (a < 0) a = 0;
        all[k++] = (Run){a, a + t};
    }
    for (int i = 0; i < ng; i++) all[k++] = tk[i];
    for (int j = 1; j <= n_after; j++) {
        int b = round_half_even(tk[ng - 1].e + j * pitch);
        if (b > w) b = w;
        all[k++] = (Run){b - t_last, b};
    }
    int cell_h = round_half_even(1.25 * pitch);
    int top = y0 + base.s - cell_h;
    PyObject *cells = PyList_New(0);
    for (int i = 0; cells && i + 1 < k; i++) {
        PyObject *c = cell_tuple(x0 + all[i].e, top, all[i + 1].s - all[i].e, cell_h);
        if (!c || PyList_Append(cells, c) < 0) {
            Py_XDECREF(c);
            Py_CLEAR(cells);
            break;
        }
        Py_DECREF(c);
    }
    PyObject *r = cells ? found("ticks", x0 + all[0].s, top, all[k - 1].e - all[0].s, base.e - base.s + cell_h, cells)
                        : NULL;
    PyMem_Free(all);
    return r;
}

static PyObject *py_piece(PyObject *args, int which) {
    Py_buffer src;
    int h, w, x0, y0, mm[6];
    if (!PyArg_ParseTuple(args, "y*iiii(iiiiii)", &src, &h, &w, &x0, &y0, &mm[0], &mm[1], &mm[2], &mm[3], &mm[4],
                          &mm[5]))
        return NULL;
    PyObject *result = NULL;
    if (h < 1 || w < 1 || src.len != (Py_ssize_t)h * w) {
        PyErr_SetString(PyExc_ValueError, "frame/ticks: the piece must hold height * width bytes, both at least 1");
        goto done;
    }
    Scratch sc;
    memset(&sc, 0, sizeof sc);
    if (!scratch_alloc(&sc, h, w)) {
        PyErr_NoMemory();
    } else {
        result = which ? ticks((const uint8_t *)src.buf, h, w, x0, y0, mm, &sc)
                       : frame((const uint8_t *)src.buf, h, w, x0, y0, mm, &sc);
    }
    scratch_free(&sc);
done:
    PyBuffer_Release(&src);
    return result;
}

static PyObject *py_frame(PyObject *self, PyObject *args) {
    (void)self;
    return py_piece(args, 0);
}

static PyObject *py_ticks(PyObject *self, PyObject *args) {
    (void)self;
    return py_piece(args, 1);
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
    {"frame", py_frame, METH_VARARGS,
     "frame(piece, height, width, x0, y0, (mm 1.5, 4.5, 30, 3.0, 0.8, 2.0)) -> (kind, bbox, cells) or None: "
     "fields._frame_py in C."},
    {"ticks", py_ticks, METH_VARARGS,
     "ticks(piece, height, width, x0, y0, (mm 1.5, 1.3, 1.2, 4.0, TICK_PITCH_MAX_MM, 0)) -> (kind, bbox, cells) or None: "
     "fields._ticks_py in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fields", "The line image of a page and its pieces.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fields(void) { return PyModule_Create(&module); }
