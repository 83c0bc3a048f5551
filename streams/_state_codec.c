/*
 * The users table's codec in C: UserState <-> the bytes streams/state_codec.py writes.
 *
 * Why: reading and writing user states (Avro through fastavro, then building
 * a FriendEntry per friend) was the largest share of the worker's time, about
 * 45 us per read-modify-write of a typical state in Python. This module does
 * the same work for the newest version of schemas/user_state.avsc only, and
 * writes byte for byte what the Python codec writes (a unit test compares
 * them on generated states).
 *
 * It never raises for bad data: anything it does not handle exactly (an older
 * schema id, malformed bytes, a value of an unexpected type) makes it return
 * None, and the caller falls back to the Python codec, which either handles it
 * or raises the proper error. Little-endian hosts only (setup.py builds it
 * only there).
 *
 * Wire format (Confluent framing, then Avro, fields in schema order):
 *   0x00, schema id (uint32 big-endian),
 *   own double, own_by_rule map<double>, published double, version long,
 *   friends map<FriendEntry> (written empty), recent_events map<long>,
 *   history array<HistoryPoint> (written empty), source_offsets map<long>,
 *   updated_ts long, friend_ids string, friend_columns bytes, history_columns bytes,
 *   exists boolean, erased_ts long, as_of long, extra bytes (version 3).
 * friend_columns: weight float64s, estimate float64s, has_estimate bytes, then the
 * version, link_version and link_ts integer columns. ``extra`` (held events) is
 * carried as bytes: the Python side decodes it only when it needs it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static PyObject *UserStateType = NULL;   /* streams.scoring.UserState */
static PyObject *FriendEntryType = NULL; /* streams.scoring.FriendEntry */
static uint32_t schema_id = 0;
static int configured = 0;

/* Byte offsets of the classes' slots, in field order, when both are plain
 * slotted dataclasses (checked in configure): then an instance is built by
 * filling its slots, as the dataclass __init__ would, without running it
 * (a twelfth of the cost). Otherwise (-1) the class is called. */
#define FRIEND_FIELDS 6
#define STATE_FIELDS 13
static Py_ssize_t friend_offsets[FRIEND_FIELDS] = {-1};
static Py_ssize_t state_offsets[STATE_FIELDS] = {-1};

/* A new instance of ``type`` from ``n`` values (references borrowed). */
static PyObject *build(PyObject *type, const Py_ssize_t *offsets, PyObject *const *values, Py_ssize_t n) {
    if (offsets[0] < 0) return PyObject_Vectorcall(type, values, (size_t)n, NULL);
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *instance = tp->tp_alloc(tp, 0);
    if (!instance) return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_INCREF(values[k]);
        *(PyObject **)((char *)instance + offsets[k]) = values[k];
    }
    return instance;
}

static PyObject *s_own, *s_own_by_rule, *s_published, *s_version, *s_friends, *s_recent_events, *s_history,
    *s_source_offsets, *s_updated_ts, *s_weight, *s_estimate, *s_has_estimate, *s_link_version, *s_link_ts,
    *s_exists, *s_erased_ts, *s_as_of, *s_extra;

/* ------------------------------------------------------------------ reading */

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
} Reader;

/* 0 on success; -1 if the data is malformed (no Python error set). */
static int read_long(Reader *r, int64_t *out) {
    uint64_t value = 0;
    int shift = 0;
    while (r->at < r->end) {
        unsigned char byte = *r->at++;
        if (shift == 63 && (byte & 0x7e)) return -1; /* more than 64 bits */
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)((value >> 1) ^ (~(value & 1) + 1));
            return 0;
        }
        shift += 7;
        if (shift > 63) return -1;
    }
    return -1;
}

static int read_double(Reader *r, double *out) {
    if (r->end - r->at < 8) return -1;
    memcpy(out, r->at, 8);
    r->at += 8;
    return 0;
}

/* A length-prefixed run of bytes (Avro string or bytes). */
static int read_span(Reader *r, const unsigned char **data, Py_ssize_t *size) {
    int64_t length;
    if (read_long(r, &length) < 0 || length < 0 || length > r->end - r->at) return -1;
    *data = r->at;
    *size = (Py_ssize_t)length;
    r->at += length;
    return 0;
}

/* A new str, or NULL (with any UnicodeDecodeError cleared) if malformed. */
static PyObject *read_string(Reader *r) {
    const unsigned char *data;
    Py_ssize_t size;
    if (read_span(r, &data, &size) < 0) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)data, size, "strict");
    if (!text) PyErr_Clear();
    return text;
}

/* The next block count of a map or array (negative counts carry a byte size). */
static int read_block_count(Reader *r, int64_t *count) {
    if (read_long(r, count) < 0) return -1;
    if (*count < 0) {
        int64_t byte_size;
        if (*count == INT64_MIN || read_long(r, &byte_size) < 0) return -1;
        *count = -*count;
    }
    return 0;
}

enum { VALUE_DOUBLE, VALUE_LONG };

/* Fills ``into`` with a map<double> or map<long>; -1 if malformed, -2 on a Python error. */
static int read_map(Reader *r, PyObject *into, int value_kind) {
    for (;;) {
        int64_t count;
        if (read_block_count(r, &count) < 0) return -1;
        if (count == 0) return 0;
        for (int64_t i = 0; i < count; i++) {
            PyObject *key = read_string(r);
            if (!key) return -1;
            PyObject *value;
            if (value_kind == VALUE_DOUBLE) {
                double number;
                if (read_double(r, &number) < 0) {
                    Py_DECREF(key);
                    return -1;
                }
                value = PyFloat_FromDouble(number);
            } else {
                int64_t number;
                if (read_long(r, &number) < 0) {
                    Py_DECREF(key);
                    return -1;
                }
                value = PyLong_FromLongLong(number);
            }
            if (!value) {
                Py_DECREF(key);
                return -2;
            }
            int failed = PyDict_SetItem(into, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (failed) return -2;
        }
    }
}

/* Bytes per value of an integer column's typecode (as schemas/columns.py: INT_CODES); 0 if unknown. */
static size_t int_code_size(unsigned char code) {
    return code == 'B' ? 1 : code == 'H' ? 2 : code == 'I' ? 4 : code == 'q' ? 8 : 0;
}

/* An integer column: typecode byte then n values; -1 if malformed. */
static int read_int_column(const unsigned char **at, const unsigned char *end, Py_ssize_t n, int64_t *values) {
    if (*at >= end) return -1;
    unsigned char code = **at;
    size_t size = int_code_size(code);
    if (!size) return -1;
    (*at)++;
    if ((size_t)(end - *at) < size * (size_t)n) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *p = *at + size * (size_t)i;
        if (size == 1) {
            values[i] = p[0];
        } else if (size == 2) {
            uint16_t v;
            memcpy(&v, p, 2);
            values[i] = v;
        } else if (size == 4) {
            uint32_t v;
            memcpy(&v, p, 4);
            values[i] = v;
        } else {
            memcpy(&values[i], p, 8);
        }
    }
    *at += size * (size_t)n;
    return 0;
}

/* friends dict from friend_ids and friend_columns; NULL with no error if malformed. */
static PyObject *read_friends(const unsigned char *ids, Py_ssize_t ids_size, const unsigned char *columns,
                              Py_ssize_t columns_size) {
    PyObject *friends = PyDict_New();
    if (!friends || ids_size == 0) return friends; /* Python: no ids, columns not read */
    Py_ssize_t n = 1;
    for (Py_ssize_t i = 0; i < ids_size; i++) n += ids[i] == 0;
    const unsigned char *at = columns, *end = columns + columns_size;
    int64_t *versions = NULL, *link_versions = NULL, *link_ts = NULL;
    if ((size_t)(end - at) < 17 * (size_t)n) goto malformed;
    const unsigned char *weights = at, *estimates = at + 8 * n, *flags = at + 16 * n;
    at += 17 * n;
    versions = PyMem_Malloc(sizeof(int64_t) * (size_t)n * 3);
    if (!versions) {
        Py_DECREF(friends);
        return PyErr_NoMemory();
    }
    link_versions = versions + n;
    link_ts = versions + 2 * n;
    if (read_int_column(&at, end, n, versions) < 0 || read_int_column(&at, end, n, link_versions) < 0 ||
        read_int_column(&at, end, n, link_ts) < 0 || at != end)
        goto malformed;
    const unsigned char *start = ids;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *stop = memchr(start, 0, (size_t)(ids + ids_size - start));
        if (!stop) stop = ids + ids_size;
        PyObject *id = PyUnicode_DecodeUTF8((const char *)start, stop - start, "strict");
        if (!id) {
            PyErr_Clear();
            goto malformed;
        }
        start = stop + 1;
        double weight, estimate;
        memcpy(&weight, weights + 8 * i, 8);
        memcpy(&estimate, estimates + 8 * i, 8);
        PyObject *args[FRIEND_FIELDS];
        args[0] = PyFloat_FromDouble(weight);
        args[1] = PyFloat_FromDouble(estimate);
        args[2] = flags[i] == 1 ? Py_True : Py_False;
        Py_INCREF(args[2]);
        args[3] = PyLong_FromLongLong(versions[i]);
        args[4] = PyLong_FromLongLong(link_versions[i]);
        args[5] = PyLong_FromLongLong(link_ts[i]);
        PyObject *entry = NULL;
        if (args[0] && args[1] && args[3] && args[4] && args[5])
            entry = build(FriendEntryType, friend_offsets, args, FRIEND_FIELDS);
        for (int k = 0; k < FRIEND_FIELDS; k++) Py_XDECREF(args[k]);
        if (!entry || PyDict_SetItem(friends, id, entry) < 0) {
            Py_DECREF(id);
            Py_XDECREF(entry);
            PyMem_Free(versions);
            Py_DECREF(friends);
            return NULL;
        }
        Py_DECREF(id);
        Py_DECREF(entry);
    }
    PyMem_Free(versions);
    return friends;
malformed:
    PyMem_Free(versions);
    Py_DECREF(friends);
    return NULL;
}

/* history list from history_columns (ts int64 column, then raw float64 column). */
static PyObject *read_history(const unsigned char *data, Py_ssize_t size) {
    if (size % 16) return NULL;
    Py_ssize_t n = size / 16;
    PyObject *history = PyList_New(n);
    if (!history) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t ts;
        double raw;
        memcpy(&ts, data + 8 * i, 8);
        memcpy(&raw, data + 8 * n + 8 * i, 8);
        PyObject *point = PyTuple_New(2);
        PyObject *when = PyLong_FromLongLong(ts), *value = PyFloat_FromDouble(raw);
        if (!point || !when || !value) {
            Py_XDECREF(point);
            Py_XDECREF(when);
            Py_XDECREF(value);
            Py_DECREF(history);
            return NULL;
        }
        PyTuple_SET_ITEM(point, 0, when);
        PyTuple_SET_ITEM(point, 1, value);
        PyList_SET_ITEM(history, i, point);
    }
    return history;
}

static PyObject *decode_user(PyObject *module, PyObject *data) {
    if (!configured || !PyBytes_Check(data)) Py_RETURN_NONE;
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(data),
                (const unsigned char *)PyBytes_AS_STRING(data) + PyBytes_GET_SIZE(data)};
    if (r.end - r.at < 5 || r.at[0] != 0) Py_RETURN_NONE;
    uint32_t id = ((uint32_t)r.at[1] << 24) | ((uint32_t)r.at[2] << 16) | ((uint32_t)r.at[3] << 8) | r.at[4];
    if (id != schema_id) Py_RETURN_NONE; /* an older version: the Python codec reads it */
    r.at += 5;

    double own, published;
    int64_t version, updated_ts, count, erased_ts, as_of;
    const unsigned char *ids, *columns, *history_columns, *extra_data;
    Py_ssize_t ids_size, columns_size, history_size, extra_size;
    int exists;
    PyObject *own_by_rule = PyDict_New(), *recent_events = PyDict_New(), *source_offsets = PyDict_New();
    PyObject *friends = NULL, *history = NULL, *result = NULL;
    int status = -1;
    if (!own_by_rule || !recent_events || !source_offsets) goto error;
    if (read_double(&r, &own) < 0) goto done;
    if ((status = read_map(&r, own_by_rule, VALUE_DOUBLE)) < 0) goto done;
    status = -1;
    if (read_double(&r, &published) < 0 || read_long(&r, &version) < 0) goto done;
    /* version 1's map of friend records: written empty since version 2 */
    if (read_block_count(&r, &count) < 0 || count != 0) goto done;
    if ((status = read_map(&r, recent_events, VALUE_LONG)) < 0) goto done;
    status = -1;
    /* version 1's array of history records: written empty since version 2 */
    if (read_block_count(&r, &count) < 0 || count != 0) goto done;
    if ((status = read_map(&r, source_offsets, VALUE_LONG)) < 0) goto done;
    status = -1;
    if (read_long(&r, &updated_ts) < 0) goto done;
    if (read_span(&r, &ids, &ids_size) < 0 || read_span(&r, &columns, &columns_size) < 0 ||
        read_span(&r, &history_columns, &history_size) < 0)
        goto done;
    if (r.at >= r.end || *r.at > 1) goto done; /* Avro boolean: one byte, 0 or 1 */
    exists = *r.at++;
    if (read_long(&r, &erased_ts) < 0 || read_long(&r, &as_of) < 0 || read_span(&r, &extra_data, &extra_size) < 0 ||
        r.at != r.end)
        goto done;
    /* friend_ids is an Avro string, so all of it must be UTF-8: read_friends decodes
     * every id strictly, and NUL separators keep that equivalent. */
    friends = read_friends(ids, ids_size, columns, columns_size);
    if (!friends) {
        if (PyErr_Occurred()) goto error;
        goto done;
    }
    history = read_history(history_columns, history_size);
    if (!history) {
        if (PyErr_Occurred()) goto error;
        goto done;
    }
    {
        PyObject *args[STATE_FIELDS];
        args[0] = PyFloat_FromDouble(own);
        args[1] = own_by_rule;
        args[2] = PyFloat_FromDouble(published);
        args[3] = PyLong_FromLongLong(version);
        args[4] = friends;
        args[5] = recent_events;
        args[6] = history;
        args[7] = source_offsets;
        args[8] = PyLong_FromLongLong(updated_ts);
        args[9] = exists ? Py_True : Py_False;
        Py_INCREF(args[9]);
        args[10] = PyLong_FromLongLong(erased_ts);
        args[11] = PyLong_FromLongLong(as_of);
        args[12] = PyBytes_FromStringAndSize((const char *)extra_data, extra_size);
        if (args[0] && args[2] && args[3] && args[8] && args[10] && args[11] && args[12])
            result = build(UserStateType, state_offsets, args, STATE_FIELDS);
        Py_XDECREF(args[0]);
        Py_XDECREF(args[2]);
        Py_XDECREF(args[3]);
        Py_XDECREF(args[8]);
        Py_XDECREF(args[9]);
        Py_XDECREF(args[10]);
        Py_XDECREF(args[11]);
        Py_XDECREF(args[12]);
    }
    goto cleanup;
done:
    if (status == -2) goto error;
    Py_INCREF(Py_None);
    result = Py_None;
    goto cleanup;
error:
    result = NULL;
cleanup:
    Py_XDECREF(own_by_rule);
    Py_XDECREF(recent_events);
    Py_XDECREF(source_offsets);
    Py_XDECREF(friends);
    Py_XDECREF(history);
    return result;
}

/* ------------------------------------------------------------------ writing */

typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
} Buffer;

static int reserve(Buffer *b, size_t more) {
    if (b->size + more <= b->capacity) return 0;
    size_t capacity = b->capacity ? b->capacity : 256;
    while (capacity < b->size + more) capacity *= 2;
    unsigned char *data = PyMem_Realloc(b->data, capacity);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int put_bytes(Buffer *b, const void *data, size_t size) {
    if (!size) return 0; /* nothing to copy (and b->data may still be NULL) */
    if (reserve(b, size) < 0) return -1;
    memcpy(b->data + b->size, data, size);
    b->size += size;
    return 0;
}

static int put_long(Buffer *b, int64_t value) {
    if (reserve(b, 10) < 0) return -1;
    uint64_t zigzag = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (zigzag >= 0x80) {
        b->data[b->size++] = (unsigned char)(zigzag | 0x80);
        zigzag >>= 7;
    }
    b->data[b->size++] = (unsigned char)zigzag;
    return 0;
}

static int put_double(Buffer *b, double value) { return put_bytes(b, &value, 8); }

/* Conversions that refuse what the Python codec might treat differently (1: refused). */
static int as_double(PyObject *value, double *out) {
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 0;
    }
    if (PyLong_CheckExact(value)) {
        *out = PyLong_AsDouble(value);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        return 0;
    }
    return 1;
}

static int as_int64(PyObject *value, int64_t *out) {
    if (!PyLong_Check(value) || PyBool_Check(value)) return 1;
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 1;
    }
    *out = number;
    return 0;
}

static int put_string(Buffer *b, PyObject *text) {
    if (!PyUnicode_CheckExact(text)) return 1;
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (!utf8) {
        PyErr_Clear();
        return 1;
    }
    if (put_long(b, size) < 0 || put_bytes(b, utf8, (size_t)size) < 0) return -1;
    return 0;
}

/* A map<double> or map<long> as fastavro writes it: one block, then 0. */
static int put_map(Buffer *b, PyObject *map, int value_kind) {
    if (!PyDict_CheckExact(map)) return 1;
    Py_ssize_t n = PyDict_GET_SIZE(map), pos = 0;
    PyObject *key, *value;
    if (n > 0) {
        if (put_long(b, n) < 0) return -1;
        while (PyDict_Next(map, &pos, &key, &value)) {
            int status = put_string(b, key);
            if (status) return status;
            if (value_kind == VALUE_DOUBLE) {
                double number;
                if (as_double(value, &number)) return 1;
                if (put_double(b, number) < 0) return -1;
            } else {
                int64_t number;
                if (as_int64(value, &number)) return 1;
                if (put_long(b, number) < 0) return -1;
            }
        }
    }
    return put_long(b, 0);
}

/* An integer column as schemas.columns.int_column writes it. */
static int put_int_column(Buffer *b, const int64_t *values, Py_ssize_t n) {
    int64_t low = 0, high = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i == 0 || values[i] < low) low = values[i];
        if (i == 0 || values[i] > high) high = values[i];
    }
    char code = low >= 0 && high < ((int64_t)1 << 32) ? (high < (1 << 8) ? 'B' : high < (1 << 16) ? 'H' : 'I') : 'q';
    size_t size = int_code_size((unsigned char)code);
    if (put_bytes(b, &code, 1) < 0 || reserve(b, size * (size_t)n) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *p = b->data + b->size + size * (size_t)i;
        if (size == 1) {
            p[0] = (unsigned char)values[i];
        } else if (size == 2) {
            uint16_t v = (uint16_t)values[i];
            memcpy(p, &v, 2);
        } else if (size == 4) {
            uint32_t v = (uint32_t)values[i];
            memcpy(p, &v, 4);
        } else {
            memcpy(p, &values[i], 8);
        }
    }
    b->size += size * (size_t)n;
    return 0;
}

/* friend_columns (Avro bytes): weight, estimate, has_estimate, then the version, link_version and link_ts columns. */
static int put_friend_columns(Buffer *b, Py_ssize_t n, const double *weights, const double *estimates,
                              const unsigned char *flags, const int64_t *versions, const int64_t *link_versions,
                              const int64_t *link_ts) {
    Buffer columns = {NULL, 0, 0};
    int failed = (n && (put_bytes(&columns, weights, 8 * (size_t)n) < 0 || put_bytes(&columns, estimates, 8 * (size_t)n) < 0 ||
                        put_bytes(&columns, flags, (size_t)n) < 0));
    failed = failed || put_int_column(&columns, versions, n) < 0 || put_int_column(&columns, link_versions, n) < 0 ||
             put_int_column(&columns, link_ts, n) < 0;
    if (!failed) failed = put_long(b, (int64_t)columns.size) < 0 || put_bytes(b, columns.data, columns.size) < 0;
    PyMem_Free(columns.data);
    return failed ? -1 : 0;
}

/* friend_ids then friend_columns; 1 if refused. */
static int put_friends(Buffer *b, PyObject *friends) {
    if (!PyDict_CheckExact(friends)) return 1;
    Py_ssize_t n = PyDict_GET_SIZE(friends), pos = 0, i = 0;
    PyObject *key, *entry;
    int status = -1;
    Buffer ids = {NULL, 0, 0};
    double *numbers = PyMem_Malloc(sizeof(double) * 2 * (size_t)(n ? n : 1));
    int64_t *ints = PyMem_Malloc(sizeof(int64_t) * 3 * (size_t)(n ? n : 1));
    unsigned char *flags = PyMem_Malloc((size_t)(n ? n : 1));
    if (!numbers || !ints || !flags) {
        PyErr_NoMemory();
        goto out;
    }
    while (PyDict_Next(friends, &pos, &key, &entry)) {
        if (!PyUnicode_CheckExact(key) || Py_TYPE(entry) != (PyTypeObject *)FriendEntryType) {
            status = 1;
            goto out;
        }
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &size);
        if (!utf8) {
            PyErr_Clear();
            status = 1;
            goto out;
        }
        if ((i > 0 && put_bytes(&ids, "", 1) < 0) || put_bytes(&ids, utf8, (size_t)size) < 0) goto out;
        PyObject *fields[FRIEND_FIELDS] = {NULL, NULL, NULL, NULL, NULL, NULL};
        PyObject *names[FRIEND_FIELDS] = {s_weight, s_estimate, s_has_estimate, s_version, s_link_version, s_link_ts};
        int refused = 0;
        for (int k = 0; k < FRIEND_FIELDS; k++) {
            fields[k] = PyObject_GetAttr(entry, names[k]);
            if (!fields[k]) {
                PyErr_Clear();
                refused = 1;
            }
        }
        if (!refused) refused = as_double(fields[0], &numbers[i]) || as_double(fields[1], &numbers[n + i]);
        if (!refused) {
            /* has_estimate: bytes([...]) takes a bool or an int 0..255 */
            int64_t flag = 0;
            if (PyBool_Check(fields[2])) {
                flag = fields[2] == Py_True;
            } else if (as_int64(fields[2], &flag) || flag < 0 || flag > 255) {
                refused = 1;
            }
            flags[i] = (unsigned char)flag;
        }
        if (!refused)
            refused = as_int64(fields[3], &ints[i]) || as_int64(fields[4], &ints[n + i]) ||
                      as_int64(fields[5], &ints[2 * n + i]);
        for (int k = 0; k < FRIEND_FIELDS; k++) Py_XDECREF(fields[k]);
        if (refused) {
            status = 1;
            goto out;
        }
        i++;
    }
    if (put_long(b, (int64_t)ids.size) < 0 || (ids.size && put_bytes(b, ids.data, ids.size) < 0)) goto out;
    if (put_friend_columns(b, n, numbers, numbers + n, flags, ints, ints + n, ints + 2 * n) < 0) goto out;
    status = 0;
out:
    PyMem_Free(ids.data);
    PyMem_Free(numbers);
    PyMem_Free(ints);
    PyMem_Free(flags);
    return status;
}

/* history_columns: ts column then raw column; 1 if refused. */
static int put_history(Buffer *b, PyObject *history) {
    if (!PyList_CheckExact(history)) return 1;
    Py_ssize_t n = PyList_GET_SIZE(history);
    if (put_long(b, 16 * (int64_t)n) < 0 || reserve(b, 16 * (size_t)n) < 0) return -1;
    unsigned char *ts_column = b->data + b->size, *raw_column = ts_column + 8 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *point = PyList_GET_ITEM(history, i);
        if (!PyTuple_CheckExact(point) || PyTuple_GET_SIZE(point) != 2) return 1;
        int64_t ts;
        double raw;
        if (as_int64(PyTuple_GET_ITEM(point, 0), &ts) || as_double(PyTuple_GET_ITEM(point, 1), &raw)) return 1;
        memcpy(ts_column + 8 * i, &ts, 8);
        memcpy(raw_column + 8 * i, &raw, 8);
    }
    b->size += 16 * (size_t)n;
    return 0;
}

static PyObject *encode_user(PyObject *module, PyObject *state) {
    if (!configured || Py_TYPE(state) != (PyTypeObject *)UserStateType) Py_RETURN_NONE;
    PyObject *names[STATE_FIELDS] = {s_own,     s_own_by_rule,    s_published,  s_version,
                                     s_friends, s_recent_events,  s_history,    s_source_offsets,
                                     s_updated_ts, s_exists,      s_erased_ts,  s_as_of,  s_extra};
    PyObject *fields[STATE_FIELDS] = {NULL};
    Buffer b = {NULL, 0, 0};
    PyObject *result = NULL;
    int status = 1;
    for (int k = 0; k < STATE_FIELDS; k++) {
        fields[k] = PyObject_GetAttr(state, names[k]);
        if (!fields[k]) {
            PyErr_Clear();
            goto out;
        }
    }
    double own, published;
    int64_t version, updated_ts, erased_ts, as_of;
    if (as_double(fields[0], &own) || as_double(fields[2], &published) || as_int64(fields[3], &version) ||
        as_int64(fields[8], &updated_ts) || !PyBool_Check(fields[9]) || as_int64(fields[10], &erased_ts) ||
        as_int64(fields[11], &as_of) || !PyBytes_CheckExact(fields[12]))
        goto out; /* extra still decoded (not bytes): the Python codec encodes it */
    unsigned char header[5] = {0, (unsigned char)(schema_id >> 24), (unsigned char)(schema_id >> 16),
                               (unsigned char)(schema_id >> 8), (unsigned char)schema_id};
    status = -1;
    if (put_bytes(&b, header, 5) < 0 || put_double(&b, own) < 0) goto out;
    if ((status = put_map(&b, fields[1], VALUE_DOUBLE))) goto out;
    status = -1;
    if (put_double(&b, published) < 0 || put_long(&b, version) < 0 || put_long(&b, 0) < 0) goto out;
    if ((status = put_map(&b, fields[5], VALUE_LONG))) goto out;
    status = -1;
    if (put_long(&b, 0) < 0) goto out; /* history: written empty */
    if ((status = put_map(&b, fields[7], VALUE_LONG))) goto out;
    status = -1;
    if (put_long(&b, updated_ts) < 0) goto out;
    if ((status = put_friends(&b, fields[4]))) goto out;
    if ((status = put_history(&b, fields[6]))) goto out;
    status = -1;
    {
        unsigned char exists = fields[9] == Py_True;
        Py_ssize_t extra_size = PyBytes_GET_SIZE(fields[12]);
        if (put_bytes(&b, &exists, 1) < 0 || put_long(&b, erased_ts) < 0 || put_long(&b, as_of) < 0 ||
            put_long(&b, (int64_t)extra_size) < 0 ||
            (extra_size && put_bytes(&b, PyBytes_AS_STRING(fields[12]), (size_t)extra_size) < 0))
            goto out;
    }
    result = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.size);
out:
    for (int k = 0; k < STATE_FIELDS; k++) Py_XDECREF(fields[k]);
    PyMem_Free(b.data);
    if (result) return result;
    if (status < 0) return NULL; /* a Python error (memory) */
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ receiver */
/*
 * The native path of friends' estimates and links (streams.batch.UserBatch.estimates, links).
 *
 * Why: a user reached only by friends' updates in a batch was read (a
 * FriendEntry per friend), updated, decided on and written in Python, and
 * that was most of a replay's time. A Receiver holds the state as the parts
 * of its bytes: the friend columns as C arrays (with a hash of the ids), the
 * rest as spans of the bytes read, so nothing is built per friend. It does
 * what streams.scoring and UserBatch.estimate / link / finish do, in the same
 * order and with the same floating-point operations (the build turns
 * contraction off), and writes byte for byte what decoding, the Python path
 * and ``encode_user`` would: tests/streams/test_native_receiver.py checks
 * both on generated states and batches and on whole flows. What it does not
 * handle exactly (an older schema, bytes the strict decoder would refuse or
 * rewrite, a value of an unexpected type, a voided link) makes ``receive``,
 * ``estimates`` or ``links`` return None
 * before anything changes, and the caller takes the Python path.
 */

/* Strict UTF-8, as Python's decoder ("strict"): no overlongs, surrogates or code points past U+10FFFF. */
static int valid_utf8(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        Py_ssize_t more;
        unsigned char low = 0x80, high = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) low = 0xA0;
            if (c == 0xED) high = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) low = 0x90;
            if (c == 0xF4) high = 0x8F;
        } else {
            return 0;
        }
        if (n - i - 1 < more) return 0;
        if (s[i + 1] < low || s[i + 1] > high) return 0;
        for (Py_ssize_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += more + 1;
    }
    return 1;
}

typedef struct {
    const unsigned char *key; /* into the bytes read, or a str's UTF-8 (kept alive by ``keep``) */
    Py_ssize_t key_size;
    double number;
    int64_t integer;
} MapEntry;

typedef struct {
    MapEntry *entries;
    Py_ssize_t n, capacity;
} Map;

typedef struct {
    PyObject_HEAD
    PyObject *data; /* the bytes read: spans point into them */
    PyObject *keep; /* strs whose UTF-8 the state points to (friends and keys added) */
    double own, published;
    int64_t version, updated_ts, erased_ts, as_of;
    unsigned char exists;
    Map by_rule, offsets;
    const unsigned char *recent; /* recent_events, as written */
    Py_ssize_t recent_size;
    const unsigned char *extra;
    Py_ssize_t extra_size;
    Py_ssize_t n, capacity; /* friends */
    const unsigned char **ids;
    Py_ssize_t *id_sizes;
    double *weights, *estimates;
    unsigned char *flags;
    int64_t *versions, *link_versions, *link_ts;
    Py_ssize_t *table; /* open addressing: friend index + 1; 0 empty */
    size_t table_size;
    Py_ssize_t history_n, history_capacity;
    int64_t *history_ts;
    double *history_raw;
} Receiver;

static PyTypeObject ReceiverType;

/* Python's own hash of bytes (SipHash, seeded per process): friend ids come from users, and an unseeded hash would
 * let chosen ids collide and make a hub's reads quadratic. */
static uint64_t hash_bytes(const unsigned char *s, Py_ssize_t n) { return (uint64_t)_Py_HashBytes(s, n); }

/* The index of friend ``id`` or -1; with ``slot``, where it would go in the table. */
static Py_ssize_t find_friend(Receiver *self, const unsigned char *id, Py_ssize_t size, size_t *slot) {
    size_t mask = self->table_size - 1, at = (size_t)hash_bytes(id, size) & mask;
    for (;;) {
        Py_ssize_t entry = self->table[at];
        if (entry == 0) {
            if (slot) *slot = at;
            return -1;
        }
        Py_ssize_t index = entry - 1;
        if (self->id_sizes[index] == size && memcmp(self->ids[index], id, (size_t)size) == 0) return index;
        at = (at + 1) & mask;
    }
}

/* ``*block`` resized to ``n`` items of ``size`` bytes; on failure it stays as it was (PyMem_Resize would lose it). */
static int resize(void **block, size_t n, size_t size) {
    void *larger = n > PY_SSIZE_T_MAX / size ? NULL : PyMem_Realloc(*block, n * size);
    if (!larger) {
        PyErr_NoMemory();
        return -1;
    }
    *block = larger;
    return 0;
}

/* Room for ``wanted`` friends, the table at most half full; -1 on a Python error (memory). */
static int grow_friends(Receiver *self, Py_ssize_t wanted) {
    if (wanted > self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity : 8;
        while (capacity < wanted) capacity *= 2;
        size_t c = (size_t)capacity;
        /* Each array grows on its own; one that fails leaves the others larger and all still valid. */
        if (resize((void **)&self->ids, c, sizeof(*self->ids)) < 0 || resize((void **)&self->id_sizes, c, sizeof(Py_ssize_t)) < 0 ||
            resize((void **)&self->weights, c, sizeof(double)) < 0 || resize((void **)&self->estimates, c, sizeof(double)) < 0 ||
            resize((void **)&self->flags, c, 1) < 0 || resize((void **)&self->versions, c, sizeof(int64_t)) < 0 ||
            resize((void **)&self->link_versions, c, sizeof(int64_t)) < 0 || resize((void **)&self->link_ts, c, sizeof(int64_t)) < 0)
            return -1;
        self->capacity = capacity;
    }
    if ((size_t)wanted * 2 > self->table_size) {
        size_t size = self->table_size ? self->table_size : 16;
        while (size < (size_t)wanted * 2) size *= 2;
        Py_ssize_t *table = PyMem_Calloc(size, sizeof(Py_ssize_t));
        if (!table) {
            PyErr_NoMemory();
            return -1;
        }
        PyMem_Free(self->table);
        self->table = table;
        self->table_size = size;
        for (Py_ssize_t i = 0; i < self->n; i++) {
            size_t at = (size_t)hash_bytes(self->ids[i], self->id_sizes[i]) & (size - 1);
            while (table[at]) at = (at + 1) & (size - 1);
            table[at] = i + 1;
        }
    }
    return 0;
}

static int map_add(Map *map, const unsigned char *key, Py_ssize_t key_size, double number, int64_t integer) {
    if (map->n == map->capacity) {
        Py_ssize_t capacity = map->capacity ? map->capacity * 2 : 4;
        if (resize((void **)&map->entries, (size_t)capacity, sizeof(MapEntry)) < 0) return -1;
        map->capacity = capacity;
    }
    map->entries[map->n++] = (MapEntry){key, key_size, number, integer};
    return 0;
}

static Py_ssize_t map_find(const Map *map, const unsigned char *key, Py_ssize_t key_size) {
    for (Py_ssize_t i = 0; i < map->n; i++)
        if (map->entries[i].key_size == key_size && memcmp(map->entries[i].key, key, (size_t)key_size) == 0) return i;
    return -1;
}

/* A map<double> or map<long> into ``map``: 0; 1 if not as encode_user writes it (one block, valid, no repeated key);
 * -1 on a Python error. */
static int read_map_entries(Reader *r, Map *map, int value_kind) {
    int64_t count;
    if (read_long(r, &count) < 0 || count < 0) return 1;
    if (count == 0) return 0;
    for (int64_t i = 0; i < count; i++) {
        const unsigned char *key;
        Py_ssize_t size;
        double number = 0;
        int64_t integer = 0;
        if (read_span(r, &key, &size) < 0 || !valid_utf8(key, size) || map_find(map, key, size) >= 0) return 1;
        if (value_kind == VALUE_DOUBLE ? read_double(r, &number) < 0 : read_long(r, &integer) < 0) return 1;
        if (map_add(map, key, size, number, integer) < 0) return -1;
    }
    if (read_long(r, &count) < 0 || count != 0) return 1;
    return 0;
}

/* Bytes of a long as put_long writes it. */
static Py_ssize_t long_size(int64_t value) {
    uint64_t zigzag = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    Py_ssize_t size = 1;
    while (zigzag >= 0x80) {
        zigzag >>= 7;
        size++;
    }
    return size;
}

/* A long as put_long would write it (the shortest form); -1 if not. */
static int read_shortest_long(Reader *r, int64_t *out) {
    const unsigned char *at = r->at;
    if (read_long(r, out) < 0 || r->at - at != long_size(*out)) return -1;
    return 0;
}

/* Whether any two of ``n`` keys (spans) are equal; -1 on a Python error (memory). A dict keeps one of them. */
static int repeats(const unsigned char *const *keys, const Py_ssize_t *sizes, Py_ssize_t n) {
    if (n < 2) return 0;
    if (n <= 8) {
        for (Py_ssize_t i = 1; i < n; i++)
            for (Py_ssize_t j = 0; j < i; j++)
                if (sizes[i] == sizes[j] && memcmp(keys[i], keys[j], (size_t)sizes[i]) == 0) return 1;
        return 0;
    }
    size_t table_size = 16;
    while (table_size < (size_t)n * 2) table_size *= 2;
    Py_ssize_t *table = PyMem_Calloc(table_size, sizeof(Py_ssize_t));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    int found = 0;
    for (Py_ssize_t i = 0; i < n && !found; i++) {
        size_t at = (size_t)hash_bytes(keys[i], sizes[i]) & (table_size - 1);
        for (; table[at]; at = (at + 1) & (table_size - 1)) {
            Py_ssize_t j = table[at] - 1;
            if (sizes[i] == sizes[j] && memcmp(keys[i], keys[j], (size_t)sizes[i]) == 0) {
                found = 1;
                break;
            }
        }
        table[at] = i + 1;
    }
    PyMem_Free(table);
    return found;
}

/* recent_events as a span, copied as it is: so it must be as put_map writes it (one block of valid keys, none
 * repeated, and longs in their shortest form, then 0). 1 if not so; -1 on a Python error (memory). */
static int read_recent(Reader *r, const unsigned char **start, Py_ssize_t *size) {
    const unsigned char *at = r->at;
    int64_t count, ts, key_size;
    if (read_shortest_long(r, &count) < 0 || count < 0 || count > (r->end - r->at) / 2) return 1; /* 2+ bytes each */
    const unsigned char **keys = NULL;
    Py_ssize_t *sizes = NULL;
    if (count > 1 && (!(keys = PyMem_New(const unsigned char *, (size_t)count)) || !(sizes = PyMem_New(Py_ssize_t, (size_t)count)))) {
        PyMem_Free(keys);
        PyErr_NoMemory();
        return -1;
    }
    int status = 1;
    for (int64_t i = 0; i < count; i++) {
        if (read_shortest_long(r, &key_size) < 0 || key_size < 0 || key_size > r->end - r->at ||
            !valid_utf8(r->at, (Py_ssize_t)key_size))
            goto done;
        if (keys) {
            keys[i] = r->at;
            sizes[i] = (Py_ssize_t)key_size;
        }
        r->at += key_size;
        if (read_shortest_long(r, &ts) < 0) goto done;
    }
    int64_t terminator;
    if (count > 0 && (read_shortest_long(r, &terminator) < 0 || terminator != 0)) goto done;
    if (keys && (status = repeats(keys, sizes, (Py_ssize_t)count)) != 0) goto done;
    *start = at;
    *size = r->at - at;
    status = 0;
done:
    PyMem_Free(keys);
    PyMem_Free(sizes);
    return status;
}

static void Receiver_dealloc(Receiver *self) {
    Py_XDECREF(self->data);
    Py_XDECREF(self->keep);
    PyMem_Free(self->by_rule.entries);
    PyMem_Free(self->offsets.entries);
    PyMem_Free(self->ids);
    PyMem_Free(self->id_sizes);
    PyMem_Free(self->weights);
    PyMem_Free(self->estimates);
    PyMem_Free(self->flags);
    PyMem_Free(self->versions);
    PyMem_Free(self->link_versions);
    PyMem_Free(self->link_ts);
    PyMem_Free(self->table);
    PyMem_Free(self->history_ts);
    PyMem_Free(self->history_raw);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* receive(data) -> Receiver, or None when the Python path must read these bytes. */
static PyObject *receive(PyObject *module, PyObject *data) {
    if (!configured || !PyBytes_CheckExact(data)) Py_RETURN_NONE;
    const unsigned char *start = (const unsigned char *)PyBytes_AS_STRING(data);
    Reader r = {start, start + PyBytes_GET_SIZE(data)};
    if (r.end - r.at < 5 || r.at[0] != 0) Py_RETURN_NONE;
    uint32_t id = ((uint32_t)r.at[1] << 24) | ((uint32_t)r.at[2] << 16) | ((uint32_t)r.at[3] << 8) | r.at[4];
    if (id != schema_id) Py_RETURN_NONE;
    r.at += 5;
    Receiver *self = PyObject_New(Receiver, &ReceiverType);
    if (!self) return NULL;
    memset((char *)self + sizeof(PyObject), 0, sizeof(Receiver) - sizeof(PyObject));
    Py_INCREF(data);
    self->data = data;
    int status = 1;
    int64_t count;
    const unsigned char *ids, *columns, *history;
    Py_ssize_t ids_size, columns_size, history_size;
    if (!(self->keep = PyList_New(0))) goto error;
    if (read_double(&r, &self->own) < 0) goto refused;
    if ((status = read_map_entries(&r, &self->by_rule, VALUE_DOUBLE))) goto refused;
    status = 1;
    if (read_double(&r, &self->published) < 0 || read_long(&r, &self->version) < 0) goto refused;
    if (read_long(&r, &count) < 0 || count != 0) goto refused; /* version 1's friends: written empty */
    if ((status = read_recent(&r, &self->recent, &self->recent_size))) goto refused;
    status = 1;
    if (read_long(&r, &count) < 0 || count != 0) goto refused; /* version 1's history: written empty */
    if ((status = read_map_entries(&r, &self->offsets, VALUE_LONG))) goto refused;
    status = 1;
    if (read_long(&r, &self->updated_ts) < 0 || read_span(&r, &ids, &ids_size) < 0 ||
        read_span(&r, &columns, &columns_size) < 0 || read_span(&r, &history, &history_size) < 0)
        goto refused;
    if (r.at >= r.end || *r.at > 1) goto refused;
    self->exists = *r.at++;
    if (read_long(&r, &self->erased_ts) < 0 || read_long(&r, &self->as_of) < 0 ||
        read_span(&r, &self->extra, &self->extra_size) < 0 || r.at != r.end)
        goto refused;
    if (!valid_utf8(ids, ids_size)) goto refused;
    /* friends, as read_friends reads them: no ids, no friends (the columns are not read) */
    Py_ssize_t n = 0;
    if (ids_size) {
        n = 1;
        for (Py_ssize_t i = 0; i < ids_size; i++) n += ids[i] == 0;
    }
    if (grow_friends(self, n) < 0) goto error;
    if (n) {
        const unsigned char *at = columns, *end = columns + columns_size;
        if ((size_t)(end - at) < 17 * (size_t)n) goto refused;
        memcpy(self->weights, at, 8 * (size_t)n);
        memcpy(self->estimates, at + 8 * n, 8 * (size_t)n);
        for (Py_ssize_t i = 0; i < n; i++) self->flags[i] = at[16 * n + i] == 1;
        at += 17 * n;
        if (read_int_column(&at, end, n, self->versions) < 0 || read_int_column(&at, end, n, self->link_versions) < 0 ||
            read_int_column(&at, end, n, self->link_ts) < 0 || at != end)
            goto refused;
        const unsigned char *from = ids;
        for (Py_ssize_t i = 0; i < n; i++) {
            const unsigned char *stop = memchr(from, 0, (size_t)(ids + ids_size - from));
            if (!stop) stop = ids + ids_size;
            size_t slot;
            if (find_friend(self, from, stop - from, &slot) >= 0) goto refused; /* a repeated id: a dict keeps one */
            self->ids[i] = from;
            self->id_sizes[i] = stop - from;
            self->table[slot] = i + 1;
            self->n = i + 1;
            from = stop + 1;
        }
    }
    if (history_size % 16) goto refused;
    self->history_n = history_size / 16;
    self->history_capacity = self->history_n + 1;
    self->history_ts = PyMem_New(int64_t, (size_t)self->history_capacity);
    self->history_raw = PyMem_New(double, (size_t)self->history_capacity);
    if (!self->history_ts || !self->history_raw) {
        PyErr_NoMemory();
        goto error;
    }
    memcpy(self->history_ts, history, 8 * (size_t)self->history_n);
    memcpy(self->history_raw, history + 8 * self->history_n, 8 * (size_t)self->history_n);
    return (PyObject *)self;
refused:
    if (status < 0) goto error;
    Py_DECREF(self);
    Py_RETURN_NONE;
error:
    Py_DECREF(self);
    return NULL;
}

/* Rules.decay(later, earlier), with ``half_life_ms`` = half_life_days * DAY_MS (0: no decay). */
static double decay(double half_life_ms, int64_t later, int64_t earlier) {
    if (half_life_ms == 0.0 || later == earlier) return 1.0;
    /* Python subtracts exactly (its ints do not overflow) and rounds once to a double: so does __int128. */
    return pow(2.0, (double)(-((__int128)later - (__int128)earlier)) / half_life_ms);
}

/* scoring.rebase */
static void rebase(Receiver *self, int64_t stream_ms, double half_life_ms) {
    if (stream_ms <= self->as_of) return;
    double factor = decay(half_life_ms, stream_ms, self->as_of);
    self->as_of = stream_ms;
    if (factor == 1.0) return;
    self->own *= factor;
    self->published *= factor;
    for (Py_ssize_t i = 0; i < self->by_rule.n; i++) self->by_rule.entries[i].number *= factor;
    for (Py_ssize_t i = 0; i < self->n; i++) self->estimates[i] *= factor;
}

/* Whether a sender can be a friend id in the bytes: not a surrogate (the encoder refuses it), not empty (a lone empty
 * id is written as no friends) and without NUL (ids are joined by NUL). The Python path keeps any of these in memory
 * for the rest of the batch, and handing the user over goes through the bytes: such a sender is left to it. */
static int storable_id(PyObject *sender) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(sender, &size);
    if (!utf8) {
        PyErr_Clear();
        return 0;
    }
    return size > 0 && !memchr(utf8, 0, (size_t)size);
}

static int as_int64_exact(PyObject *value, int64_t *out) { return PyLong_CheckExact(value) ? as_int64(value, out) : 1; }

/* The arguments of estimates() and links(), checked whole before anything changes. */
typedef struct {
    PyObject *updates, *topic;
    int64_t clock;
    double half_life_ms;
    const char *topic_utf8;
    Py_ssize_t topic_size;
} Updates;

/* ``updates``' arguments, every update's types checked and room made for every sender not a friend yet: 0; 1 when
 * the Python path must apply them (a value of an unexpected type, an id the bytes cannot hold, or with ``weights``
 * a weight that is not >= 0); -1 on a Python error. */
static int take_updates(Receiver *self, PyObject *const *args, Py_ssize_t nargs, const char *usage, int weights, Updates *u) {
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyUnicode_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    u->updates = args[0];
    u->topic = args[3];
    u->half_life_ms = PyFloat_AsDouble(args[2]);
    if (u->half_life_ms == -1.0 && PyErr_Occurred()) return -1;
    if (as_int64_exact(args[1], &u->clock)) return 1;
    if (!(u->topic_utf8 = PyUnicode_AsUTF8AndSize(u->topic, &u->topic_size))) return -1;
    Py_ssize_t pos = 0;
    PyObject *sender, *update;
    while (PyDict_Next(u->updates, &pos, &sender, &update)) {
        int64_t number;
        if (!PyUnicode_CheckExact(sender) || !PyTuple_CheckExact(update) || PyTuple_GET_SIZE(update) != 4 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(update, 0)) ||
            (weights && !(PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(update, 0)) >= 0)) ||
            as_int64_exact(PyTuple_GET_ITEM(update, 1), &number) || as_int64_exact(PyTuple_GET_ITEM(update, 2), &number) ||
            as_int64_exact(PyTuple_GET_ITEM(update, 3), &number) || !storable_id(sender))
            return 1;
    }
    return grow_friends(self, self->n + PyDict_GET_SIZE(u->updates));
}

/* ``sender`` becomes friend number n at ``slot`` of the table (its bytes kept alive by ``keep``); -1 on a Python error. */
static Py_ssize_t add_friend(Receiver *self, PyObject *sender, const unsigned char *id, Py_ssize_t size, size_t slot) {
    if (PyList_Append(self->keep, sender) < 0) return -1;
    Py_ssize_t index = self->n++;
    self->ids[index] = id;
    self->id_sizes[index] = size;
    self->table[slot] = index + 1;
    return index;
}

/* friend_updates.earliest_origin of what a batch applied so far (``origin``, if ``changed``) and ``origin_ts``. */
static int64_t earliest_origin(int changed, int64_t origin, int64_t origin_ts) {
    if (!changed) return origin_ts;
    if (origin == 0 || origin_ts == 0) return origin ? origin : origin_ts;
    return origin_ts < origin ? origin_ts : origin;
}

/* The state's source offset of ``topic`` moves to ``offset`` if later (as UserBatch._mark); -1 on a Python error. */
static int move_offset(Receiver *self, const Updates *u, int64_t offset) {
    Py_ssize_t at = map_find(&self->offsets, (const unsigned char *)u->topic_utf8, u->topic_size);
    if (at < 0 && offset > -1) {
        if (PyList_Append(self->keep, u->topic) < 0) return -1;
        return map_add(&self->offsets, (const unsigned char *)u->topic_utf8, u->topic_size, 0, offset);
    }
    if (at >= 0 && offset > self->offsets.entries[at].integer) self->offsets.entries[at].integer = offset;
    return 0;
}

/* estimates(updates, clock, half_life_ms, topic) -> (clock, applied, stale, origin | None, read offset), or None.
 *
 * ``updates``: sender -> (estimate, version, origin_ts, offset), in order, as
 * WaitingUpdates hands them over. For each, as UserBatch.estimate: the batch
 * reads the offset, its stream time reaches origin_ts, the state is rebased
 * to it, the estimate decays from origin_ts to the state's time and is kept
 * if newer (scoring.apply_estimate); a kept one marks the state changed
 * (origin: the oldest known origin_ts, friend_updates.earliest_origin) and
 * moves its offset of ``topic``. None: a value of an unexpected type, found
 * before anything changed. */
static PyObject *Receiver_estimates(Receiver *self, PyObject *const *args, Py_ssize_t nargs) {
    Updates u;
    int taken = take_updates(self, args, nargs, "estimates(updates: dict, clock: int, half_life_ms: float, topic: str)", 0, &u);
    if (taken < 0) return NULL;
    if (taken) Py_RETURN_NONE;
    int64_t clock = u.clock;
    double half_life_ms = u.half_life_ms;
    Py_ssize_t pos = 0;
    PyObject *sender, *update;
    int64_t applied = 0, stale = 0, origin = 0, read = -1;
    int changed = 0;
    while (PyDict_Next(u.updates, &pos, &sender, &update)) {
        double value = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(update, 0));
        int64_t version, origin_ts, offset;
        as_int64(PyTuple_GET_ITEM(update, 1), &version);
        as_int64(PyTuple_GET_ITEM(update, 2), &origin_ts);
        as_int64(PyTuple_GET_ITEM(update, 3), &offset);
        if (offset > read) read = offset;
        if (origin_ts > clock) clock = origin_ts;
        if (self->as_of < clock) rebase(self, clock, half_life_ms);
        double factor = decay(half_life_ms, self->as_of, origin_ts);
        if (factor != 1.0) value *= factor;
        Py_ssize_t size;
        const unsigned char *id = (const unsigned char *)PyUnicode_AsUTF8AndSize(sender, &size);
        size_t slot;
        Py_ssize_t index = find_friend(self, id, size, &slot);
        if (index < 0) { /* not a friend (yet): kept with weight 0 */
            if ((index = add_friend(self, sender, id, size, slot)) < 0) return NULL;
            self->weights[index] = 0.0;
            self->link_versions[index] = 0;
            self->link_ts[index] = 0;
        } else if (self->flags[index] && version <= self->versions[index]) {
            stale++;
            continue;
        }
        self->estimates[index] = value;
        self->flags[index] = 1;
        self->versions[index] = version;
        applied++;
        origin = earliest_origin(changed, origin, origin_ts);
        changed = 1;
        if (move_offset(self, &u, offset) < 0) return NULL;
    }
    if (changed) return Py_BuildValue("(LLLLL)", (long long)clock, (long long)applied, (long long)stale, (long long)origin, (long long)read);
    return Py_BuildValue("(LLLOL)", (long long)clock, (long long)applied, (long long)stale, Py_None, (long long)read);
}

/* finish(clock, now_ms, half_life_ms, alpha, epsilon, lift_only, epoch, history_length, force)
 *   -> (published?, raw, own, has_friends, version, as_of, published, friends | None), or None if the user
 *      does not exist.
 *
 * As UserBatch.finish for a user only estimates and links changed: rebased to
 * the batch's stream time, stamped, and (if it exists) published when
 * scoring.should_publish says so or ``force`` (named again after an erasure
 * left nothing); ``friends``: those it tells when it publishes (weight > 0). */
static PyObject *Receiver_finish(Receiver *self, PyObject *args) {
    long long clock, now_ms, epoch, history_length;
    double half_life_ms, alpha, epsilon;
    int lift_only, force;
    if (!PyArg_ParseTuple(args, "LLdddpLLp:finish", &clock, &now_ms, &half_life_ms, &alpha, &epsilon, &lift_only, &epoch,
                          &history_length, &force))
        return NULL;
    rebase(self, clock, half_life_ms);
    self->updated_ts = now_ms;
    if (!self->exists) Py_RETURN_NONE;
    /* scoring.target */
    double total_weight = 0.0, weighted = 0.0, value = self->own;
    int has_friends = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        double weight = self->weights[i];
        if (weight > 0) {
            has_friends = 1;
            if (self->flags[i] && (self->versions[i] >> 32) == epoch) {
                total_weight += weight;
                weighted += weight * self->estimates[i];
            }
        }
    }
    if (total_weight > 0) {
        double blended = (1.0 - alpha) * self->own + alpha * (weighted / total_weight);
        value = lift_only && blended < self->own ? self->own : blended;
    }
    /* scoring.should_publish */
    if (!(force || self->version == 0 || (self->version >> 32) < epoch || fabs(value - self->published) >= epsilon))
        return Py_BuildValue("(OddOLLdO)", Py_False, value, self->own, has_friends ? Py_True : Py_False,
                             (long long)self->version, (long long)self->as_of, self->published, Py_None);
    if (self->version == INT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a user state's version cannot grow past 2**63 - 1");
        return NULL;
    }
    /* scoring.publish */
    self->published = value;
    if (epoch > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a rules epoch past 2**31 - 1 cannot number a state's versions");
        return NULL;
    }
    /* epoch << EPOCH_SHIFT, as Python's ints shift (below INT32_MIN it is below any version + 1) */
    int64_t next = self->version + 1, first = epoch < INT32_MIN ? INT64_MIN : (int64_t)epoch * ((int64_t)1 << 32);
    self->version = next > first ? next : first;
    if (self->history_n == self->history_capacity) {
        Py_ssize_t capacity = self->history_capacity * 2 + 1;
        if (resize((void **)&self->history_ts, (size_t)capacity, sizeof(int64_t)) < 0 ||
            resize((void **)&self->history_raw, (size_t)capacity, sizeof(double)) < 0)
            return NULL;
        self->history_capacity = capacity;
    }
    self->history_ts[self->history_n] = self->as_of;
    self->history_raw[self->history_n++] = value;
    if (self->history_n > history_length && history_length >= 0) {
        Py_ssize_t drop = self->history_n - (Py_ssize_t)history_length;
        memmove(self->history_ts, self->history_ts + drop, 8 * (size_t)history_length);
        memmove(self->history_raw, self->history_raw + drop, 8 * (size_t)history_length);
        self->history_n = (Py_ssize_t)history_length;
    }
    PyObject *friends = PyList_New(0);
    if (!friends) return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        if (!(self->weights[i] > 0)) continue;
        PyObject *friend = PyUnicode_DecodeUTF8((const char *)self->ids[i], self->id_sizes[i], "strict");
        if (!friend || PyList_Append(friends, friend) < 0) {
            Py_XDECREF(friend);
            Py_DECREF(friends);
            return NULL;
        }
        Py_DECREF(friend);
    }
    return Py_BuildValue("(OddOLLdN)", Py_True, value, self->own, has_friends ? Py_True : Py_False,
                         (long long)self->version, (long long)self->as_of, self->published, friends);
}

/* links(updates, clock, half_life_ms, topic)
 *   -> (clock, applied, stale, origin | None, read offset, direct | None, revived, new links), or None.
 *
 * ``updates``: sender -> (weight, link version, origin_ts, offset), in order.
 * For each, as UserBatch.link: the batch reads the offset, its stream time
 * reaches origin_ts, the state is rebased to it; a link no later than the
 * user's erasure, or not newer than the pair's last (scoring.apply_link), is
 * stale; else the friend's weight and link time change, the user is named
 * (``revived``: it existed no more), and the friend is listed among the new
 * links when it must learn our estimate (a new friend, or a friendship
 * re-timed). ``direct``: the oldest known origin_ts applied (a friendship is
 * the user's own event). None: a value of an unexpected type, or a weight that
 * is not >= 0 (a voided link: the Python path asks whether anything still
 * names the user), found before anything changed. */
static PyObject *Receiver_links(Receiver *self, PyObject *const *args, Py_ssize_t nargs) {
    Updates u;
    int taken = take_updates(self, args, nargs, "links(updates: dict, clock: int, half_life_ms: float, topic: str)", 1, &u);
    if (taken < 0) return NULL;
    if (taken) Py_RETURN_NONE;
    int64_t clock = u.clock;
    double half_life_ms = u.half_life_ms;
    Py_ssize_t pos = 0;
    PyObject *sender, *update;
    PyObject *new_links = PyList_New(0);
    if (!new_links) return NULL;
    int64_t applied = 0, stale = 0, origin = 0, direct = 0, read = -1;
    int changed = 0, revived = 0;
    while (PyDict_Next(u.updates, &pos, &sender, &update)) {
        double weight = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(update, 0));
        int64_t link_version, origin_ts, offset;
        as_int64(PyTuple_GET_ITEM(update, 1), &link_version);
        as_int64(PyTuple_GET_ITEM(update, 2), &origin_ts);
        as_int64(PyTuple_GET_ITEM(update, 3), &offset);
        if (offset > read) read = offset;
        if (origin_ts > clock) clock = origin_ts;
        if (self->as_of < clock) rebase(self, clock, half_life_ms);
        if (origin_ts <= self->erased_ts) { /* the erasure is later: the pair partition sends the link that counts */
            stale++;
            continue;
        }
        Py_ssize_t size;
        const unsigned char *id = (const unsigned char *)PyUnicode_AsUTF8AndSize(sender, &size);
        size_t slot;
        Py_ssize_t index = find_friend(self, id, size, &slot);
        double stored = weight > 0 ? weight : 0.0;
        int is_new, retimed;
        if (index < 0) {
            if ((index = add_friend(self, sender, id, size, slot)) < 0) goto error;
            self->weights[index] = stored;
            self->estimates[index] = 0.0;
            self->flags[index] = 0;
            self->versions[index] = 0;
            self->link_versions[index] = link_version;
            is_new = weight > 0;
            retimed = 1; /* no link time before */
        } else {
            if (link_version <= self->link_versions[index]) {
                stale++;
                continue;
            }
            int was_friend = self->weights[index] > 0;
            self->weights[index] = stored;
            self->link_versions[index] = link_version;
            is_new = weight > 0 && !was_friend;
            retimed = origin_ts != self->link_ts[index];
        }
        self->link_ts[index] = origin_ts;
        if ((is_new || (weight > 0 && retimed)) && PyList_Append(new_links, sender) < 0) goto error;
        if (!self->exists) {
            self->exists = 1;
            revived = 1;
        }
        applied++;
        origin = earliest_origin(changed, origin, origin_ts);
        changed = 1;
        if (origin_ts != 0 && (direct == 0 || origin_ts < direct)) direct = origin_ts;
        if (move_offset(self, &u, offset) < 0) goto error;
    }
    {
        PyObject *origin_value = changed ? PyLong_FromLongLong(origin) : Py_NewRef(Py_None);
        PyObject *direct_value = direct ? PyLong_FromLongLong(direct) : Py_NewRef(Py_None);
        if (!origin_value || !direct_value) {
            Py_XDECREF(origin_value);
            Py_XDECREF(direct_value);
            goto error;
        }
        return Py_BuildValue("(LLLNLNON)", (long long)clock, (long long)applied, (long long)stale, origin_value,
                             (long long)read, direct_value, revived ? Py_True : Py_False, new_links);
    }
error:
    Py_DECREF(new_links);
    return NULL;
}

static int put_entries(Buffer *b, const Map *map, int value_kind) {
    if (map->n > 0) {
        if (put_long(b, map->n) < 0) return -1;
        for (Py_ssize_t i = 0; i < map->n; i++) {
            const MapEntry *e = &map->entries[i];
            if (put_long(b, e->key_size) < 0 || put_bytes(b, e->key, (size_t)e->key_size) < 0) return -1;
            if ((value_kind == VALUE_DOUBLE ? put_double(b, e->number) : put_long(b, e->integer)) < 0) return -1;
        }
    }
    return put_long(b, 0);
}

/* encode() -> the state's bytes, as encode_user writes the state it stands for. */
static PyObject *Receiver_encode(Receiver *self, PyObject *unused) {
    Buffer b = {NULL, 0, 0};
    PyObject *result = NULL;
    unsigned char header[5] = {0, (unsigned char)(schema_id >> 24), (unsigned char)(schema_id >> 16),
                               (unsigned char)(schema_id >> 8), (unsigned char)schema_id};
    Py_ssize_t n = self->n, ids_size = n ? n - 1 : 0;
    for (Py_ssize_t i = 0; i < n; i++) ids_size += self->id_sizes[i];
    if (put_bytes(&b, header, 5) < 0 || put_double(&b, self->own) < 0 || put_entries(&b, &self->by_rule, VALUE_DOUBLE) < 0 ||
        put_double(&b, self->published) < 0 || put_long(&b, self->version) < 0 || put_long(&b, 0) < 0 ||
        put_bytes(&b, self->recent, (size_t)self->recent_size) < 0 || put_long(&b, 0) < 0 ||
        put_entries(&b, &self->offsets, VALUE_LONG) < 0 || put_long(&b, self->updated_ts) < 0 ||
        put_long(&b, ids_size) < 0 || reserve(&b, (size_t)ids_size) < 0)
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i) b.data[b.size++] = 0;
        memcpy(b.data + b.size, self->ids[i], (size_t)self->id_sizes[i]);
        b.size += (size_t)self->id_sizes[i];
    }
    if (put_friend_columns(&b, n, self->weights, self->estimates, self->flags, self->versions, self->link_versions,
                           self->link_ts) < 0 ||
        put_long(&b, 16 * (int64_t)self->history_n) < 0 ||
        put_bytes(&b, self->history_ts, 8 * (size_t)self->history_n) < 0 ||
        put_bytes(&b, self->history_raw, 8 * (size_t)self->history_n) < 0 || put_bytes(&b, &self->exists, 1) < 0 ||
        put_long(&b, self->erased_ts) < 0 || put_long(&b, self->as_of) < 0 || put_long(&b, self->extra_size) < 0 ||
        put_bytes(&b, self->extra, (size_t)self->extra_size) < 0)
        goto out;
    result = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.size);
out:
    PyMem_Free(b.data);
    return result;
}

static PyMethodDef receiver_methods[] = {
    {"estimates", (PyCFunction)(void (*)(void))Receiver_estimates, METH_FASTCALL,
     "estimates(updates, clock, half_life_ms, topic) -> (clock, applied, stale, origin, read offset), or None."},
    {"links", (PyCFunction)(void (*)(void))Receiver_links, METH_FASTCALL,
     "links(updates, clock, half_life_ms, topic) -> (clock, applied, stale, origin, read offset, direct, revived, "
     "new links), or None."},
    {"finish", (PyCFunction)Receiver_finish, METH_VARARGS,
     "finish(clock, now_ms, half_life_ms, alpha, epsilon, lift_only, epoch, history_length, force) -> what it decided, "
     "or None."},
    {"encode", (PyCFunction)Receiver_encode, METH_NOARGS, "encode() -> the state's bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streams._state_codec.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A user state held as its bytes' parts while friends' estimates reach it (receive(data)).",
    .tp_methods = receiver_methods,
};

/* ------------------------------------------------------------------ module */

/* Fills ``offsets`` with the slot offsets of ``names`` if ``type`` is a plain
 * slotted class holding exactly those fields; else offsets[0] = -1. */
static int find_slots(PyObject *type, PyObject *const *names, Py_ssize_t n, Py_ssize_t *offsets) {
    PyTypeObject *tp = (PyTypeObject *)type;
    offsets[0] = -1;
    if (tp->tp_base != &PyBaseObject_Type || tp->tp_new != PyBaseObject_Type.tp_new ||
        tp->tp_alloc != PyType_GenericAlloc || PyObject_HasAttrString(type, "__post_init__"))
        return 0;
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    if (!slots) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t slot_count = PyObject_Length(slots);
    Py_DECREF(slots);
    if (slot_count != n) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t found[STATE_FIELDS];
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *descr = PyDict_GetItemWithError(tp->tp_dict, names[k]);
        if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Clear();
            return 0;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)) return 0;
        found[k] = member->offset;
    }
    memcpy(offsets, found, sizeof(Py_ssize_t) * (size_t)n);
    return 1;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *user_state, *friend_entry;
    unsigned int id;
    if (!PyArg_ParseTuple(args, "OOI", &user_state, &friend_entry, &id)) return NULL;
    if (!PyType_Check(user_state) || !PyType_Check(friend_entry)) {
        PyErr_SetString(PyExc_TypeError, "configure(UserState, FriendEntry, schema_id): the first two must be classes");
        return NULL;
    }
    Py_XDECREF(UserStateType);
    Py_XDECREF(FriendEntryType);
    Py_INCREF(user_state);
    Py_INCREF(friend_entry);
    UserStateType = user_state;
    FriendEntryType = friend_entry;
    schema_id = id;
    PyObject *friend_names[FRIEND_FIELDS] = {s_weight, s_estimate, s_has_estimate, s_version, s_link_version, s_link_ts};
    PyObject *state_names[STATE_FIELDS] = {s_own,          s_own_by_rule, s_published,  s_version,
                                           s_friends,      s_recent_events, s_history,  s_source_offsets,
                                           s_updated_ts,   s_exists,      s_erased_ts,  s_as_of,  s_extra};
    find_slots(friend_entry, friend_names, FRIEND_FIELDS, friend_offsets);
    find_slots(user_state, state_names, STATE_FIELDS, state_offsets);
    configured = 1;
    Py_RETURN_NONE;
}

static PyObject *builds_by_slots(PyObject *module, PyObject *unused) {
    return Py_BuildValue("(OO)", state_offsets[0] >= 0 ? Py_True : Py_False, friend_offsets[0] >= 0 ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(UserState, FriendEntry, schema_id): what to build and which id to write."},
    {"builds_by_slots", builds_by_slots, METH_NOARGS, "(UserState, FriendEntry): whether each is built by filling its slots."},
    {"decode_user", decode_user, METH_O, "decode_user(data) -> UserState, or None when the Python codec must read it."},
    {"encode_user", encode_user, METH_O, "encode_user(state) -> bytes, or None when the Python codec must write it."},
    {"receive", receive, METH_O, "receive(data) -> Receiver, or None when the Python path must read these bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_state_codec",
                                        "The users table's codec in C (see streams/state_codec.py).", -1, methods,
                                        NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__state_codec(void) {
#define INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return NULL;
    INTERN(s_own, "own")
    INTERN(s_own_by_rule, "own_by_rule")
    INTERN(s_published, "published")
    INTERN(s_version, "version")
    INTERN(s_friends, "friends")
    INTERN(s_recent_events, "recent_events")
    INTERN(s_history, "history")
    INTERN(s_source_offsets, "source_offsets")
    INTERN(s_updated_ts, "updated_ts")
    INTERN(s_weight, "weight")
    INTERN(s_estimate, "estimate")
    INTERN(s_has_estimate, "has_estimate")
    INTERN(s_link_version, "link_version")
    INTERN(s_link_ts, "link_ts")
    INTERN(s_exists, "exists")
    INTERN(s_erased_ts, "erased_ts")
    INTERN(s_as_of, "as_of")
    INTERN(s_extra, "extra")
#undef INTERN
    if (PyType_Ready(&ReceiverType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    Py_INCREF(&ReceiverType);
    if (PyModule_AddObject(module, "Receiver", (PyObject *)&ReceiverType) < 0) {
        Py_DECREF(&ReceiverType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
