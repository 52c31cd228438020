/* agent.detect._hsblock: a block of log lines through a hyperscan database, with the
 * matches gathered per line in C.
 *
 * Why: the hyperscan binding calls a Python function for every match (the GIL taken,
 * a tuple of five ints built, the call, the GIL released: ~1 us), and mapping each
 * match's offset to its line is Python too. `nodewarden scan` of a log with 13% of
 * its lines matched spent more than half its time there (docs/architecture.md,
 * "Figures"). Here the matches are collected in a C array and mapped to lines in one
 * pass; Python sees only the result: {line index: set of signature indices} and each
 * candidate line's (start, end) offsets, exactly what agent/detect/matcher.py's
 * `Matcher.candidates` returns from the binding's matches (a test compares the two on
 * the same blocks: tests/unit/test_hsblock.py).
 *
 * It links no hyperscan of its own: the functions are looked up (dlsym) in the library
 * the Python binding carries, so the database is deserialized by the very build that
 * serialized it. Only the stable C API of hs.h is used, declared here.
 */

#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct hs_database hs_database_t;
typedef struct hs_scratch hs_scratch_t;
typedef int hs_error_t;
typedef int (*match_event_handler)(unsigned int id, unsigned long long from,
                                   unsigned long long to, unsigned int flags, void *ctx);
typedef hs_error_t (*deserialize_fn)(const char *bytes, size_t length, hs_database_t **db);
typedef hs_error_t (*alloc_scratch_fn)(const hs_database_t *db, hs_scratch_t **scratch);
typedef hs_error_t (*scan_fn)(const hs_database_t *db, const char *data, unsigned int length,
                              unsigned int flags, hs_scratch_t *scratch,
                              match_event_handler on_event, void *context);
typedef hs_error_t (*free_database_fn)(hs_database_t *db);
typedef hs_error_t (*free_scratch_fn)(hs_scratch_t *scratch);

#define HS_SUCCESS 0
#define HS_SCAN_TERMINATED (-3)

typedef struct {
    unsigned long long to;
    unsigned int id;
} Hit;

typedef struct {
    Hit *hits;
    size_t count;
    size_t size;
    unsigned int ids;
    int failed; /* 1: out of memory, 2: an id out of range */
} Hits;

typedef struct {
    PyObject_HEAD
    void *library;
    hs_database_t *db;
    hs_scratch_t *scratch;
    scan_fn scan;
    free_database_fn free_database;
    free_scratch_fn free_scratch;
    PyObject *groups; /* tuple: pattern id -> tuple of signature indices (ints) */
    unsigned char plain[256]; /* first bytes of a line whose message starts at 0 */
} BlockScanner;

static int on_match(unsigned int id, unsigned long long from, unsigned long long to,
                    unsigned int flags, void *context) {
    (void)from;
    (void)flags;
    Hits *h = context;
    if (id >= h->ids) {
        h->failed = 2;
        return 1;
    }
    if (h->count == h->size) {
        size_t size = h->size ? h->size * 2 : 1024;
        Hit *grown = realloc(h->hits, size * sizeof(Hit));
        if (grown == NULL) {
            h->failed = 1;
            return 1;
        }
        h->hits = grown;
        h->size = size;
    }
    h->hits[h->count].to = to;
    h->hits[h->count].id = id;
    h->count++;
    return 0;
}

static int by_end(const void *a, const void *b) {
    const Hit *x = a, *y = b;
    if (x->to != y->to) {
        return x->to < y->to ? -1 : 1;
    }
    return x->id < y->id ? -1 : (x->id > y->id);
}

static void *symbol(void *library, const char *name) {
    void *found = dlsym(library, name);
    if (found == NULL) {
        PyErr_Format(PyExc_ImportError, "hyperscan library has no %s", name);
    }
    return found;
}

/* A new tuple of tuples: `groups`, each item made a tuple (never the caller's object). */
static PyObject *groups_of(PyObject *groups) {
    PyObject *items = PySequence_Fast(groups, "groups must be a sequence");
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    PyObject *out = PyTuple_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *inner = PySequence_Tuple(PySequence_Fast_GET_ITEM(items, i));
        if (inner == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, inner); /* steals inner into a fresh slot */
    }
    Py_DECREF(items);
    return out;
}

static int BlockScanner_init(BlockScanner *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"library", "database", "groups", "plain", NULL};
    const char *path;
    Py_buffer blob, plain;
    PyObject *groups;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sy*Oy*", keywords, &path, &blob, &groups,
                                     &plain)) {
        return -1;
    }
    memset(self->plain, 0, sizeof self->plain);
    for (Py_ssize_t i = 0; i < plain.len; i++) {
        self->plain[((unsigned char *)plain.buf)[i]] = 1;
    }
    PyBuffer_Release(&plain);
    int ok = -1;
    PyObject *tuple = groups_of(groups);
    if (tuple == NULL) {
        goto done;
    }
    if (self->library != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "BlockScanner is already initialised");
        Py_DECREF(tuple);
        goto done;
    }
    self->library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (self->library == NULL) {
        PyErr_Format(PyExc_ImportError, "cannot open the hyperscan library: %s", dlerror());
        Py_DECREF(tuple);
        goto done;
    }
    deserialize_fn deserialize = (deserialize_fn)symbol(self->library,
                                                        "hs_deserialize_database");
    alloc_scratch_fn alloc_scratch = (alloc_scratch_fn)symbol(self->library,
                                                              "hs_alloc_scratch");
    self->scan = (scan_fn)symbol(self->library, "hs_scan");
    self->free_database = (free_database_fn)symbol(self->library, "hs_free_database");
    self->free_scratch = (free_scratch_fn)symbol(self->library, "hs_free_scratch");
    if (!deserialize || !alloc_scratch || !self->scan || !self->free_database ||
        !self->free_scratch) {
        Py_DECREF(tuple);
        goto done;
    }
    if (deserialize(blob.buf, (size_t)blob.len, &self->db) != HS_SUCCESS) {
        PyErr_SetString(PyExc_ValueError, "hyperscan cannot deserialize the database");
        self->db = NULL;
        Py_DECREF(tuple);
        goto done;
    }
    if (alloc_scratch(self->db, &self->scratch) != HS_SUCCESS) {
        PyErr_SetString(PyExc_MemoryError, "hyperscan cannot allocate scratch space");
        self->scratch = NULL;
        Py_DECREF(tuple);
        goto done;
    }
    self->groups = tuple;
    ok = 0;
done:
    PyBuffer_Release(&blob);
    return ok;
}

static void BlockScanner_dealloc(BlockScanner *self) {
    if (self->scratch != NULL && self->free_scratch != NULL) {
        self->free_scratch(self->scratch);
    }
    if (self->db != NULL && self->free_database != NULL) {
        self->free_database(self->db);
    }
    if (self->library != NULL) {
        dlclose(self->library);
    }
    Py_XDECREF(self->groups);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* How many '\n' bytes d[from:to] holds: eight bytes at a time (a byte is '\n' exactly
 * when it is zero after the XOR; the high bit of each zero byte is set without a borrow
 * crossing bytes), then byte by byte. */
static Py_ssize_t newlines(const char *data, Py_ssize_t from, Py_ssize_t to) {
    const uint64_t nl = 0x0a0a0a0a0a0a0a0aULL, low7 = 0x7f7f7f7f7f7f7f7fULL;
    Py_ssize_t n = 0, i = from;
    for (; i + 8 <= to; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        w ^= nl;
        uint64_t zero = ~(((w & low7) + low7) | w | low7);
        n += __builtin_popcountll(zero);
    }
    for (; i < to; i++) {
        n += data[i] == '\n';
    }
    return n;
}

static int add_group(PyObject *set, PyObject *group) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(group); k++) {
        if (PySet_Add(set, PyTuple_GET_ITEM(group, k)) < 0) {
            return -1;
        }
    }
    return 0;
}

static int stamp_char(char c) {
    return c == ' ' || c == '.' || (c >= '0' && c <= '9');
}

static Py_ssize_t digits(const char *d, Py_ssize_t r, Py_ssize_t q) {
    while (r < q && d[r] >= '0' && d[r] <= '9') {
        r++;
    }
    return r;
}

/* scanrender.message_start of the line d[s:e], as an offset in d: after a
 * `[  123.456789] ` dmesg stamp (lineformat's FAST_STAMP_PATTERN,
 * `\[(?=[ 0-9.]{0,22}\]) *([0-9]+)\.([0-9]+)\] ?`, matched at s), s for a plain line
 * (its first byte in `plain`), -1 for any other form. tests/unit/test_hsblock.py holds
 * it to the Python. */
static Py_ssize_t message_start(const BlockScanner *self, const char *d, Py_ssize_t s,
                                Py_ssize_t e) {
    if (s >= e) {
        return s;
    }
    if (d[s] != '[') {
        return self->plain[(unsigned char)d[s]] ? s : -1;
    }
    Py_ssize_t p = s + 1, q = p;
    while (q < e && q - p < 23 && stamp_char(d[q])) {
        q++;
    }
    if (q >= e || d[q] != ']' || q - p > 22) {
        return -1;
    }
    Py_ssize_t r = p;
    while (r < q && d[r] == ' ') {
        r++;
    }
    Py_ssize_t a = r;
    r = digits(d, r, q);
    if (r == a || r >= q || d[r] != '.') {
        return -1;
    }
    a = ++r;
    r = digits(d, r, q);
    if (r == a || r != q) {
        return -1;
    }
    r = q + 1;
    return r < e && d[r] == ' ' ? r + 1 : r;
}

typedef struct {
    Py_ssize_t line, start, message, end;
    size_t ids; /* where its pattern ids start in Lines.ids */
    size_t n_ids;
    Py_ssize_t group; /* index into Lines.groups, or -1 */
} LineRow;

typedef struct {
    uint64_t hash;
    size_t row; /* its first row */
    Py_ssize_t size;
} Group;

typedef struct {
    LineRow *rows;
    size_t n_rows, rows_size;
    unsigned int *ids;
    size_t n_ids, ids_size;
    Group *groups;
    size_t n_groups;
    Py_ssize_t *table; /* open addressing: group index + 1, 0 empty */
    size_t table_size;
    Py_ssize_t newlines; /* in the whole block */
} Lines;

static void lines_free(Lines *l) {
    free(l->rows);
    free(l->ids);
    free(l->groups);
    free(l->table);
}

static int grow(void **buf, size_t *size, size_t need, size_t item) {
    if (need <= *size) {
        return 0;
    }
    size_t size2 = *size ? *size * 2 : 256;
    while (size2 < need) {
        size2 *= 2;
    }
    void *grown = realloc(*buf, size2 * item);
    if (grown == NULL) {
        return -1;
    }
    *buf = grown;
    *size = size2;
    return 0;
}

/* Pass 1: the hits, sorted by end offset, as rows of lines with their pattern ids
 * (each row's ids sorted and without repeats), as MappedHits.candidates (agent/detect/
 * matcher.py) maps them. No Python object is touched: it runs without the GIL. */
static int lines_of_hits(const BlockScanner *self, Lines *l, Hits *h, const char *data,
                         Py_ssize_t size) {
    Py_ssize_t line = 0, pos = 0, end = -1;
    for (size_t k = 0; k < h->count; k++) {
        if (h->hits[k].to == 0) {
            continue;
        }
        Py_ssize_t at = (Py_ssize_t)h->hits[k].to - 1;
        unsigned int id = h->hits[k].id;
        if (at > end) {
            line += newlines(data, pos, at);
            pos = at;
            const char *nl = memchr(data + at, '\n', (size_t)(size - at));
            end = nl == NULL ? size : nl - data;
            const char *before = memrchr(data, '\n', (size_t)at);
            if (grow((void **)&l->rows, &l->rows_size, l->n_rows + 1, sizeof(LineRow)) < 0) {
                return -1;
            }
            LineRow *row = &l->rows[l->n_rows++];
            row->line = line;
            row->start = before == NULL ? 0 : before - data + 1;
            row->end = end;
            row->message = message_start(self, data, row->start, end);
            row->ids = l->n_ids;
            row->n_ids = 0;
            row->group = -1;
        }
        LineRow *row = &l->rows[l->n_rows - 1];
        unsigned int *ids = l->ids + row->ids;
        size_t j = row->n_ids;
        size_t dup = 0;
        for (size_t m = 0; m < row->n_ids; m++) {
            dup |= ids[m] == id;
        }
        if (dup) {
            continue;
        }
        if (grow((void **)&l->ids, &l->ids_size, l->n_ids + 1, sizeof(unsigned int)) < 0) {
            return -1;
        }
        ids = l->ids + row->ids;
        while (j > 0 && ids[j - 1] > id) { /* insertion: a line has few ids */
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = id;
        row->n_ids++;
        l->n_ids++;
    }
    l->newlines = line + newlines(data, pos, size);
    return 0;
}

/* What one scan of a block found, mapped to lines without the GIL (the scan may run in
 * a thread: agent/detect/prefetch.py); rows() and grouped() make the Python objects. */
typedef struct {
    PyObject_HEAD
    BlockScanner *owner; /* its groups */
    PyObject *block;     /* the bytes scanned */
    Lines lines;
} BlockHits;

static PyTypeObject BlockHitsType;

static PyObject *BlockScanner_scan(BlockScanner *self, PyObject *block) {
    if (!PyBytes_CheckExact(block)) {
        PyErr_SetString(PyExc_TypeError, "a block must be bytes");
        return NULL;
    }
    if (self->db == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "BlockScanner is not initialised");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(block);
    if (size > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a block must be under 4 GiB");
        return NULL;
    }
    BlockHits *found = PyObject_New(BlockHits, &BlockHitsType);
    if (found == NULL) {
        return NULL;
    }
    Py_INCREF(self);
    found->owner = self;
    Py_INCREF(block);
    found->block = block;
    found->lines = (Lines){0};
    Hits hits = {NULL, 0, 0, (unsigned int)PyTuple_GET_SIZE(self->groups), 0};
    const char *data = PyBytes_AS_STRING(block);
    hs_error_t err;
    int mapped = 0;
    Py_BEGIN_ALLOW_THREADS
    err = self->scan(self->db, data, (unsigned int)size, 0, self->scratch, on_match, &hits);
    for (size_t k = 1; err == HS_SUCCESS && k < hits.count; k++) {
        if (hits.hits[k].to < hits.hits[k - 1].to) {
            qsort(hits.hits, hits.count, sizeof(Hit), by_end);
            break;
        }
    }
    if (err == HS_SUCCESS && !hits.failed) {
        mapped = lines_of_hits(self, &found->lines, &hits, data, size);
    }
    Py_END_ALLOW_THREADS
    free(hits.hits);
    if (hits.failed == 1 || mapped < 0) {
        PyErr_NoMemory();
    } else if (hits.failed == 2) {
        PyErr_SetString(PyExc_ValueError, "hyperscan reported an id with no group");
    } else if (err != HS_SUCCESS) {
        PyErr_Format(PyExc_RuntimeError, "hyperscan scan failed: error %d", err);
    } else {
        return (PyObject *)found;
    }
    Py_DECREF(found);
    return NULL;
}

static uint64_t mix(uint64_t hash, uint64_t word) {
    hash ^= word;
    hash *= 0x9e3779b97f4a7c15ULL;
    return hash ^ (hash >> 29);
}

/* A hash of a row's message bytes and pattern ids, eight bytes at a time. */
static uint64_t row_hash(const Lines *l, const LineRow *row, const char *data) {
    uint64_t hash = (uint64_t)(row->end - row->message);
    Py_ssize_t i = row->message;
    for (; i + 8 <= row->end; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        hash = mix(hash, w);
    }
    uint64_t tail = 0;
    memcpy(&tail, data + i, (size_t)(row->end - i));
    hash = mix(hash, tail);
    for (size_t m = 0; m < row->n_ids; m++) {
        hash = mix(hash, l->ids[row->ids + m] + 0x100000000ULL);
    }
    return hash;
}

static int same_message(const Lines *l, const LineRow *a, const LineRow *b, const char *data) {
    Py_ssize_t len = a->end - a->message;
    return len == b->end - b->message && a->n_ids == b->n_ids &&
           memcmp(data + a->message, data + b->message, (size_t)len) == 0 &&
           memcmp(l->ids + a->ids, l->ids + b->ids, a->n_ids * sizeof(unsigned int)) == 0;
}

/* Pass 2: rows with a message after a stamp, at most `limit` bytes long, grouped by
 * their message's bytes and their pattern ids. */
static int group_rows(Lines *l, const char *data, Py_ssize_t limit) {
    size_t table_size = 64;
    while (table_size < 2 * l->n_rows) {
        table_size *= 2;
    }
    free(l->table); /* a second call groups afresh */
    free(l->groups);
    l->n_groups = 0;
    l->table = calloc(table_size, sizeof(Py_ssize_t));
    l->groups = malloc((l->n_rows ? l->n_rows : 1) * sizeof(Group));
    if (l->table == NULL || l->groups == NULL) {
        return -1;
    }
    l->table_size = table_size;
    for (size_t r = 0; r < l->n_rows; r++) {
        LineRow *row = &l->rows[r];
        row->group = -1;
        if (row->message < 0 || row->end - row->start > limit) {
            continue;
        }
        uint64_t hash = row_hash(l, row, data);
        size_t slot = (size_t)hash & (table_size - 1);
        for (;;) {
            Py_ssize_t g = l->table[slot] - 1;
            if (g < 0) {
                l->groups[l->n_groups] = (Group){hash, r, 1};
                row->group = (Py_ssize_t)l->n_groups++;
                l->table[slot] = row->group + 1;
                break;
            }
            Group *group = &l->groups[g];
            if (group->hash == hash && same_message(l, &l->rows[group->row], row, data)) {
                group->size++;
                row->group = g;
                break;
            }
            slot = (slot + 1) & (table_size - 1);
        }
    }
    return 0;
}

static PyObject *row_candidates(BlockScanner *self, const Lines *l, const LineRow *row) {
    PyObject *cands = PySet_New(NULL);
    for (size_t m = 0; cands != NULL && m < row->n_ids; m++) {
        if (add_group(cands, PyTuple_GET_ITEM(self->groups, l->ids[row->ids + m])) < 0) {
            Py_CLEAR(cands);
        }
    }
    return cands;
}

/* A message that may be remembered: valid UTF-8 without NUL (scanrender's `_clean`). */
static int clean(const char *key, Py_ssize_t len) {
    if (memchr(key, '\0', (size_t)len) != NULL) {
        return 0;
    }
    PyObject *text = PyUnicode_DecodeUTF8(key, len, "strict");
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(text);
    return 1;
}

/* Pass 3: each group as (message, candidates, rows, first line, start, end) when it may
 * be remembered (its candidates all in `kernel`, its message clean); `cands[g]` gets
 * every group's candidates, `kept[g]` its index in the list or -1. */
static PyObject *group_list(BlockScanner *self, Lines *l, const char *data, PyObject *kernel,
                            PyObject **cands, Py_ssize_t *kept) {
    PyObject *out = PyList_New(0);
    for (size_t g = 0; out != NULL && g < l->n_groups; g++) {
        LineRow *row = &l->rows[l->groups[g].row];
        cands[g] = row_candidates(self, l, row);
        int subset = cands[g] == NULL ? -1 : PyObject_RichCompareBool(cands[g], kernel, Py_LE);
        if (subset < 0) {
            Py_CLEAR(out);
            break;
        }
        Py_ssize_t len = row->end - row->message;
        kept[g] = -1;
        if (!subset || !clean(data + row->message, len)) {
            continue;
        }
        PyObject *item = Py_BuildValue("(y#OnnnN)", data + row->message, len, cands[g],
                                       l->groups[g].size, row->line, row->start,
                                       PyLong_FromSsize_t(row->end));
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(item);
        kept[g] = PyList_GET_SIZE(out) - 1;
    }
    return out;
}

/* Pass 4: every candidate line's index and its group (-1: on its own, in `singles` as a
 * row: (index, start, message start, end, candidates)). */
static PyObject *line_lists(BlockScanner *self, Lines *l, PyObject **cands, Py_ssize_t *kept,
                            PyObject *groups) {
    PyObject *numbers = PyList_New((Py_ssize_t)l->n_rows);
    PyObject *group_of = PyList_New((Py_ssize_t)l->n_rows);
    PyObject *singles = PyDict_New();
    if (numbers == NULL || group_of == NULL || singles == NULL) {
        goto fail;
    }
    for (size_t r = 0; r < l->n_rows; r++) {
        LineRow *row = &l->rows[r];
        Py_ssize_t g = row->group < 0 ? -1 : kept[row->group];
        PyObject *n = PyLong_FromSsize_t(row->line);
        PyObject *gi = PyLong_FromSsize_t(g);
        if (n == NULL || gi == NULL) {
            Py_XDECREF(n);
            Py_XDECREF(gi);
            goto fail;
        }
        PyList_SET_ITEM(numbers, (Py_ssize_t)r, n);
        PyList_SET_ITEM(group_of, (Py_ssize_t)r, gi);
        if (g >= 0) {
            continue;
        }
        PyObject *c = row->group < 0 ? row_candidates(self, l, row) : Py_NewRef(cands[row->group]);
        if (c == NULL) {
            goto fail;
        }
        PyObject *single = Py_BuildValue("(OnnnN)", n, row->start, row->message, row->end, c);
        if (single == NULL || PyDict_SetItem(singles, n, single) < 0) {
            Py_XDECREF(single);
            goto fail;
        }
        Py_DECREF(single);
    }
    return Py_BuildValue("(ONNN)", groups, numbers, group_of, singles);
fail:
    Py_XDECREF(numbers);
    Py_XDECREF(group_of);
    Py_XDECREF(singles);
    return NULL;
}

static PyObject *BlockHits_grouped(BlockHits *self, PyObject *args) {
    Py_ssize_t limit;
    PyObject *kernel;
    if (!PyArg_ParseTuple(args, "nO", &limit, &kernel)) {
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(self->block);
    Lines *l = &self->lines;
    PyObject *out = NULL, *groups = NULL;
    PyObject **cands = NULL;
    Py_ssize_t *kept = NULL;
    if (group_rows(l, data, limit) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    cands = calloc(l->n_groups ? l->n_groups : 1, sizeof(PyObject *));
    kept = calloc(l->n_groups ? l->n_groups : 1, sizeof(Py_ssize_t));
    if (cands == NULL || kept == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    groups = group_list(self->owner, l, data, kernel, cands, kept);
    if (groups != NULL) {
        out = line_lists(self->owner, l, cands, kept, groups);
    }
done:
    for (size_t g = 0; cands != NULL && g < l->n_groups; g++) {
        Py_XDECREF(cands[g]);
    }
    free(cands);
    free(kept);
    Py_XDECREF(groups);
    return out;
}

static PyObject *BlockHits_rows(BlockHits *self, PyObject *Py_UNUSED(ignored)) {
    Lines *l = &self->lines;
    PyObject *out = PyList_New((Py_ssize_t)l->n_rows);
    for (size_t r = 0; out != NULL && r < l->n_rows; r++) {
        LineRow *row = &l->rows[r];
        PyObject *cands = row_candidates(self->owner, l, row);
        PyObject *item = cands == NULL ? NULL : Py_BuildValue(
            "(nnnnN)", row->line, row->start, row->message, row->end, cands);
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)r, item);
    }
    return out;
}

static PyObject *BlockHits_candidates(BlockHits *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"spans", NULL};
    PyObject *spans = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O", keywords, &spans)) {
        return NULL;
    }
    if (spans != Py_None && !PyDict_Check(spans)) {
        PyErr_SetString(PyExc_TypeError, "spans must be a dict or None");
        return NULL;
    }
    PyObject *rows = BlockHits_rows(self, NULL);
    PyObject *out = rows == NULL ? NULL : PyDict_New();
    for (Py_ssize_t k = 0; out != NULL && k < PyList_GET_SIZE(rows); k++) {
        PyObject *row = PyList_GET_ITEM(rows, k);
        PyObject *key = PyTuple_GET_ITEM(row, 0);
        PyObject *span = PyTuple_Pack(2, PyTuple_GET_ITEM(row, 1), PyTuple_GET_ITEM(row, 3));
        if (span == NULL || PyDict_SetItem(out, key, PyTuple_GET_ITEM(row, 4)) < 0 ||
            (spans != Py_None && PyDict_SetItem(spans, key, span) < 0)) {
            Py_CLEAR(out);
        }
        Py_XDECREF(span);
    }
    Py_XDECREF(rows);
    return out;
}

static void BlockHits_dealloc(BlockHits *self) {
    lines_free(&self->lines);
    Py_XDECREF(self->block);
    Py_XDECREF(self->owner);
    PyObject_Free(self);
}

static PyObject *BlockHits_newlines(BlockHits *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->lines.newlines);
}

static PyGetSetDef BlockHits_getset[] = {
    {"newlines", (getter)BlockHits_newlines, NULL,
     "How many newlines the block holds (counted in the scan, without the GIL).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef BlockHits_methods[] = {
    {"grouped", (PyCFunction)BlockHits_grouped, METH_VARARGS,
     "grouped(limit, kernel) -> (groups, lines, group_of, singles)\n\n"
     "groups: (message, candidates, rows, first line, start, end) for each message after\n"
     "a dmesg stamp of lines of at most `limit` bytes whose candidates are all in\n"
     "`kernel` and whose message is valid UTF-8 without NUL, the lines of the same\n"
     "message and pattern ids together; lines: every candidate line's index, in order;\n"
     "group_of: each one's group, or -1; singles: line index -> row (as rows() gives)\n"
     "for those of -1."},
    {"rows", (PyCFunction)BlockHits_rows, METH_NOARGS,
     "rows() -> [(line index, start, message start, end, set of signature indices)]\n\n"
     "Each candidate line in order; message start: after its dmesg stamp, -1 for a `[`\n"
     "line without one, -2 for a line of another form."},
    {"candidates", (PyCFunction)(void (*)(void))BlockHits_candidates,
     METH_VARARGS | METH_KEYWORDS,
     "candidates(spans=None) -> {line index: set of signature indices}\n\n"
     "`spans`, a dict, gets each candidate line's (start, end) offsets in the block."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BlockHitsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.detect._hsblock.BlockHits",
    .tp_doc = "What BlockScanner.scan(block) found, mapped to lines by candidates().",
    .tp_basicsize = sizeof(BlockHits),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)BlockHits_dealloc,
    .tp_methods = BlockHits_methods,
    .tp_getset = BlockHits_getset,
};

static PyObject *BlockScanner_message_start(BlockScanner *self, PyObject *line) {
    if (!PyBytes_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "a line must be bytes");
        return NULL;
    }
    return PyLong_FromSsize_t(
        message_start(self, PyBytes_AS_STRING(line), 0, PyBytes_GET_SIZE(line)));
}

static PyMethodDef BlockScanner_methods[] = {
    {"message_start", (PyCFunction)BlockScanner_message_start, METH_O,
     "message_start(line: bytes) -> int: where a line's message starts, as rows() says."},
    {"scan", (PyCFunction)BlockScanner_scan, METH_O,
     "scan(block: bytes) -> BlockHits: the block through the database, the GIL released;\n"
     "one scan at a time per scanner (its scratch space)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BlockScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.detect._hsblock.BlockScanner",
    .tp_doc = "BlockScanner(library, database, groups): a serialized hyperscan block\n"
              "database, deserialized by `library` (the binding's shared object);\n"
              "`groups[id]` are the signature indices a match of pattern `id` names.",
    .tp_basicsize = sizeof(BlockScanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BlockScanner_init,
    .tp_dealloc = (destructor)BlockScanner_dealloc,
    .tp_methods = BlockScanner_methods,
};

static struct PyModuleDef hsblock_module = {
    PyModuleDef_HEAD_INIT, "agent.detect._hsblock",
    "A block of lines through a hyperscan database, matches gathered per line in C.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hsblock(void) {
    if (PyType_Ready(&BlockScannerType) < 0 || PyType_Ready(&BlockHitsType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hsblock_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&BlockScannerType);
    if (PyModule_AddObject(module, "BlockScanner", (PyObject *)&BlockScannerType) < 0) {
        Py_DECREF(&BlockScannerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
