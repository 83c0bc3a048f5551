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
    /* friend_columns: weight, estimate, has_estimate, version, link_version, link_ts */
    {
        Buffer columns = {NULL, 0, 0};
        int failed = 0;
        for (Py_ssize_t k = 0; k < n && !failed; k++) failed = put_double(&columns, numbers[k]) < 0;
        for (Py_ssize_t k = 0; k < n && !failed; k++) failed = put_double(&columns, numbers[n + k]) < 0;
        failed = failed || (n && put_bytes(&columns, flags, (size_t)n) < 0);
        failed = failed || put_int_column(&columns, ints, n) < 0 || put_int_column(&columns, ints + n, n) < 0 ||
                 put_int_column(&columns, ints + 2 * n, n) < 0;
        if (!failed) failed = put_long(b, (int64_t)columns.size) < 0 || put_bytes(b, columns.data, columns.size) < 0;
        PyMem_Free(columns.data);
        if (failed) goto out;
    }
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
    return PyModule_Create(&module_def);
}
