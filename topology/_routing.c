/*
 * Kafka's default partitioner in C: murmur2 of a key's bytes, as Java's
 * org.apache.kafka.common.utils.Utils.murmur2 and aiokafka's partitioner
 * compute it, then (hash & 0x7fffffff) % partitions.
 *
 * Why: the worker routes every friend update it sends to its receiver's
 * partition; in Python (aiokafka's murmur2 behind a dict of known keys) that
 * was a tenth of a replay's time. topology/routing.py falls back to the
 * Python function where this is not built; a unit test compares the two on
 * any bytes and any string.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static uint32_t murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t length4 = length / 4;
    for (Py_ssize_t i = 0; i < length4; i++) {
        const unsigned char *p = data + 4 * i;
        uint32_t k = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + (length & ~(Py_ssize_t)3);
    switch (length % 4) {
        case 3:
            h ^= (uint32_t)tail[2] << 16; /* fall through */
        case 2:
            h ^= (uint32_t)tail[1] << 8; /* fall through */
        case 1:
            h ^= (uint32_t)tail[0];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* The key's bytes: a str's UTF-8 (kept by the str itself, so no copy), or bytes. -1 with an exception set. */
static int key_bytes(PyObject *key, const unsigned char **data, Py_ssize_t *size) {
    if (PyUnicode_Check(key)) {
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, size);
        if (!utf8) return -1;
        *data = (const unsigned char *)utf8;
        return 0;
    }
    if (PyBytes_Check(key)) {
        *data = (const unsigned char *)PyBytes_AS_STRING(key);
        *size = PyBytes_GET_SIZE(key);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "a key is str or bytes, not %.100s", Py_TYPE(key)->tp_name);
    return -1;
}

static int check_partitions(long partitions) {
    if (partitions < 1) {
        PyErr_SetString(PyExc_ValueError, "partitions must be at least 1");
        return -1;
    }
    return 0;
}

static long partition_of(PyObject *key, long partitions) {
    const unsigned char *data;
    Py_ssize_t size;
    if (key_bytes(key, &data, &size) < 0) return -1;
    return (long)((murmur2(data, size) & 0x7fffffffu) % (uint32_t)partitions);
}

static PyObject *hash_key(PyObject *module, PyObject *key) {
    const unsigned char *data;
    Py_ssize_t size;
    if (key_bytes(key, &data, &size) < 0) return NULL;
    return PyLong_FromUnsignedLong(murmur2(data, size));
}

static PyObject *partition_for(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "partition_for(key, partitions)");
        return NULL;
    }
    long partitions = PyLong_AsLong(args[1]);
    if (partitions == -1 && PyErr_Occurred()) return NULL;
    if (check_partitions(partitions) < 0) return NULL;
    long partition = partition_of(args[0], partitions);
    return partition < 0 ? NULL : PyLong_FromLong(partition);
}

static PyObject *by_partition(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "by_partition(keys: list, partitions)");
        return NULL;
    }
    long partitions = PyLong_AsLong(args[1]);
    if (partitions == -1 && PyErr_Occurred()) return NULL;
    if (check_partitions(partitions) < 0) return NULL;
    PyObject *keys = args[0];
    PyObject *groups = PyDict_New();
    if (!groups) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        Py_INCREF(key); /* the list may change under a callback; hold what we read */
        long partition = partition_of(key, partitions);
        if (partition < 0) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *number = PyLong_FromLong(partition);
        if (!number) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *group = PyDict_GetItemWithError(groups, number); /* borrowed */
        if (!group) {
            if (PyErr_Occurred() || !(group = PyList_New(0)) || PyDict_SetItem(groups, number, group) < 0) {
                Py_XDECREF(group);
                Py_DECREF(number);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(group); /* the dict holds it */
        }
        Py_DECREF(number);
        int failed = PyList_Append(group, key);
        Py_DECREF(key);
        if (failed < 0) goto fail;
    }
    return groups;
fail:
    Py_DECREF(groups);
    return NULL;
}

static PyMethodDef methods[] = {
    {"murmur2", hash_key, METH_O, "murmur2(key: str | bytes) -> int: Kafka's murmur2 of the key's bytes (a str's UTF-8)."},
    {"partition_for", (PyCFunction)(void (*)(void))partition_for, METH_FASTCALL,
     "partition_for(key, partitions) -> the partition Kafka's default partitioner picks."},
    {"by_partition", (PyCFunction)(void (*)(void))by_partition, METH_FASTCALL,
     "by_partition(keys, partitions) -> {partition: [keys, in order]}, partitions in order of first appearance."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_routing",
                                        "Kafka's default partitioner in C (see topology/routing.py).", -1, methods,
                                        NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__routing(void) { return PyModule_Create(&module_def); }
