/* The byte-plane transform of planes.py as one compiled pass each way.
 *
 * NumPy needs six or seven whole-array passes to rebuild float32 values from four planes, and
 * they left the merge the largest cost of decoding weights. Here each value is read and written
 * once, with the GIL released so that chunks on a thread pool really run side by side.
 * planes.py keeps the NumPy version, which this must match byte for byte (tests/compress
 * compares the two), for an install without a C compiler.
 *
 * Layout (planes.py has the reasons): values are little-endian and `width` bytes wide. For
 * FLOAT, plane 0 holds bits 14..7 of the top 16 bits (the exponent), plane 1 the sign (bit 7)
 * beside bits 6..0, planes 2.. the remaining bytes, most significant first. For BYTES, plane k
 * holds byte width-1-k. Bytes are handled one at a time, so the host's byte order and the
 * buffers' alignment do not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum { FLOAT = 1, BYTES = 2, MAX_WIDTH = 8 };

/* Written once per width, so that the compiler sees the stride as a constant. The plane
 * pointers are copied into a local array first: a byte store may alias anything the compiler
 * cannot see is private, so it would reload them after every store, and the loops would not
 * vectorise (several times slower). */
#define LOCAL_PLANES(W)                                                             \
    uint8_t *q[W];                                                                  \
    for (int k = 0; k < W; k++)                                                     \
        q[k] = p[k];
#define SPLIT_FLOAT(W)                                                              \
    static void split_float_##W(const uint8_t *v, uint8_t *const *p, Py_ssize_t n)    \
    {                                                                               \
        LOCAL_PLANES(W)                                                             \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint8_t hi = v[W - 1], lo = v[W - 2];                                   \
            q[0][i] = (uint8_t)(hi << 1 | lo >> 7);                                 \
            q[1][i] = (uint8_t)((hi & 0x80) | (lo & 0x7F));                         \
            for (int k = 2; k < W; k++)                                             \
                q[k][i] = v[W - 1 - k];                                             \
        }                                                                           \
    }
#define MERGE_FLOAT(W)                                                              \
    static void merge_float_##W(uint8_t *v, uint8_t *const *p, Py_ssize_t n)          \
    {                                                                               \
        LOCAL_PLANES(W)                                                             \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint8_t e = q[0][i], s = q[1][i];                                       \
            v[W - 1] = (uint8_t)((s & 0x80) | e >> 1);                              \
            v[W - 2] = (uint8_t)(e << 7 | (s & 0x7F));                              \
            for (int k = 2; k < W; k++)                                             \
                v[W - 1 - k] = q[k][i];                                             \
        }                                                                           \
    }
#define SPLIT_BYTES(W)                                                              \
    static void split_bytes_##W(const uint8_t *v, uint8_t *const *p, Py_ssize_t n)    \
    {                                                                               \
        LOCAL_PLANES(W)                                                             \
        for (Py_ssize_t i = 0; i < n; i++, v += W)                                  \
            for (int k = 0; k < W; k++)                                             \
                q[k][i] = v[W - 1 - k];                                             \
    }
#define MERGE_BYTES(W)                                                              \
    static void merge_bytes_##W(uint8_t *v, uint8_t *const *p, Py_ssize_t n)          \
    {                                                                               \
        LOCAL_PLANES(W)                                                             \
        for (Py_ssize_t i = 0; i < n; i++, v += W)                                  \
            for (int k = 0; k < W; k++)                                             \
                v[W - 1 - k] = q[k][i];                                             \
    }
#define ALL(W) SPLIT_FLOAT(W) MERGE_FLOAT(W) SPLIT_BYTES(W) MERGE_BYTES(W)
ALL(2)
ALL(4)
ALL(8)

typedef void (*split_fn)(const uint8_t *values, uint8_t *const *planes, Py_ssize_t n);
typedef void (*merge_fn)(uint8_t *values, uint8_t *const *planes, Py_ssize_t n);

static const struct kind {
    int transform, width;
    split_fn split;
    merge_fn merge;
} KINDS[] = {
    {FLOAT, 2, split_float_2, merge_float_2}, {FLOAT, 4, split_float_4, merge_float_4},
    {FLOAT, 8, split_float_8, merge_float_8}, {BYTES, 2, split_bytes_2, merge_bytes_2},
    {BYTES, 4, split_bytes_4, merge_bytes_4}, {BYTES, 8, split_bytes_8, merge_bytes_8},
};

/* The loops for a transform and width, or NULL with ValueError set. */
static const struct kind *find_kind(int transform, int width)
{
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (KINDS[i].transform == transform && KINDS[i].width == width)
            return &KINDS[i];
    PyErr_Format(PyExc_ValueError, "no plane transform %d for width %d", transform, width);
    return NULL;
}

/* split(data, transform, width) -> list of `width` bytes objects, one per plane */
static PyObject *split(PyObject *self, PyObject *args)
{
    Py_buffer data;
    int transform, width;
    if (!PyArg_ParseTuple(args, "y*ii", &data, &transform, &width))
        return NULL;
    PyObject *out = NULL;
    uint8_t *p[MAX_WIDTH];
    const struct kind *kind = find_kind(transform, width);
    if (!kind)
        goto done;
    if (data.len % width != 0) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole values of width %d", data.len, width);
        goto done;
    }
    Py_ssize_t n = data.len / width;
    if (!(out = PyList_New(width)))
        goto done;
    for (int k = 0; k < width; k++) {
        PyObject *plane = PyBytes_FromStringAndSize(NULL, n);
        if (!plane) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, k, plane);
        p[k] = (uint8_t *)PyBytes_AS_STRING(plane);
    }
    const uint8_t *v = data.buf;
    Py_BEGIN_ALLOW_THREADS
    kind->split(v, p, n);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    return out;
}

/* merge(planes, transform, width, out): the values rebuilt from their planes, written into
 * the writable buffer `out` of exactly len(planes[0]) * width bytes */
static PyObject *merge(PyObject *self, PyObject *args)
{
    PyObject *seq;
    Py_buffer out, in[MAX_WIDTH];
    int transform, width, held = 0;
    if (!PyArg_ParseTuple(args, "Oiiw*", &seq, &transform, &width, &out))
        return NULL;
    PyObject *result = NULL, *fast = NULL;
    uint8_t *p[MAX_WIDTH];
    const struct kind *kind = find_kind(transform, width);
    if (!kind)
        goto done;
    if (!(fast = PySequence_Fast(seq, "planes must be a sequence")))
        goto done;
    if (PySequence_Fast_GET_SIZE(fast) != width) {
        PyErr_Format(PyExc_ValueError, "%zd planes for values of width %d",
                     PySequence_Fast_GET_SIZE(fast), width);
        goto done;
    }
    for (; held < width; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, held), &in[held], PyBUF_SIMPLE) < 0)
            goto done;
        if (in[held].len != in[0].len) {
            held++;
            PyErr_SetString(PyExc_ValueError, "planes differ in length");
            goto done;
        }
        p[held] = in[held].buf;
    }
    Py_ssize_t n = in[0].len;
    if (out.len != n * width) {
        PyErr_Format(PyExc_ValueError, "output holds %zd bytes, the planes make %zd", out.len,
                     n * width);
        goto done;
    }
    uint8_t *v = out.buf;
    Py_BEGIN_ALLOW_THREADS
    kind->merge(v, p, n);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    while (held > 0)
        PyBuffer_Release(&in[--held]);
    Py_XDECREF(fast);
    PyBuffer_Release(&out);
    return result;
}

/* ---------------------------------------------------------------- varint
 *
 * Integers as LEB128 (unsigned): seven bits per byte, least significant group first, the top
 * bit set on every byte but a value's last. Values of `width` bytes are read and written
 * little-endian, byte by byte, like the planes above. */

static int varint_max_bytes(int width) { return (8 * width + 6) / 7; }

#define VARINT_ENCODE(W)                                                            \
    static Py_ssize_t varint_encode_##W(const uint8_t *v, uint8_t *out, Py_ssize_t n)  \
    {                                                                               \
        uint8_t *o = out;                                                           \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint64_t x = 0;                                                         \
            for (int k = W - 1; k >= 0; k--)                                        \
                x = x << 8 | v[k];                                                  \
            while (x >= 0x80) {                                                     \
                *o++ = (uint8_t)(x | 0x80);                                         \
                x >>= 7;                                                            \
            }                                                                       \
            *o++ = (uint8_t)x;                                                      \
        }                                                                           \
        return o - out;                                                             \
    }
/* Returns 0, or the 1-based number of the first value that is malformed (too many bytes, or
 * too large for W bytes), or -1 when the stream does not hold exactly n values. */
#define VARINT_DECODE(W)                                                            \
    static Py_ssize_t varint_decode_##W(const uint8_t *s, Py_ssize_t len, uint8_t *v,  \
                                        Py_ssize_t n)                               \
    {                                                                               \
        const uint8_t *end = s + len;                                               \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint64_t x = 0;                                                         \
            int shift = 0;                                                          \
            for (;;) {                                                              \
                if (s == end)                                                       \
                    return -1;                                                      \
                uint8_t b = *s++;                                                   \
                if (shift >= 8 * W || (shift && (uint64_t)(b & 0x7F) >> (8 * W - shift)))  \
                    return i + 1;                                                   \
                x |= (uint64_t)(b & 0x7F) << shift;                                 \
                if (!(b & 0x80))                                                    \
                    break;                                                          \
                shift += 7;                                                         \
            }                                                                       \
            for (int k = 0; k < W; k++, x >>= 8)                                    \
                v[k] = (uint8_t)x;                                                  \
        }                                                                           \
        return s == end ? 0 : -1;                                                   \
    }
/* uint16 token ids take one to three bytes in an order no branch predictor guesses: all three
 * bytes a value can take are written without a branch (`out` has room for them) and the output
 * moves on by the value's length. 1.2x the loop above on the benchmark's token shard; for
 * uint32 the loop was faster (five bytes to write where one or two are used). */
#define VARINT_ENCODE_FLAT(W, MAX)                                                  \
    static Py_ssize_t varint_encode_##W(const uint8_t *v, uint8_t *out, Py_ssize_t n)  \
    {                                                                               \
        uint8_t *o = out;                                                           \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint64_t x = 0;                                                         \
            for (int k = W - 1; k >= 0; k--)                                        \
                x = x << 8 | v[k];                                                  \
            int more[MAX];                                                          \
            for (int k = 0; k < MAX - 1; k++)                                       \
                more[k] = x >> 7 * (k + 1) != 0;                                    \
            more[MAX - 1] = 0;                                                      \
            int len = 1;                                                            \
            for (int k = 0; k < MAX; k++) {                                         \
                o[k] = (uint8_t)((x >> 7 * k & 0x7F) | more[k] << 7);               \
                len += more[k];                                                     \
            }                                                                       \
            o += len;                                                               \
        }                                                                           \
        return o - out;                                                             \
    }
VARINT_ENCODE_FLAT(2, 3)
VARINT_ENCODE(4)
VARINT_ENCODE(8)
VARINT_DECODE(2)
VARINT_DECODE(4)
VARINT_DECODE(8)

/* varint_encode(data, width) -> bytes */
static PyObject *varint_encode(PyObject *self, PyObject *args)
{
    Py_buffer data;
    int width;
    if (!PyArg_ParseTuple(args, "y*i", &data, &width))
        return NULL;
    PyObject *out = NULL;
    if (width != 2 && width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "no varint for width %d", width);
        goto done;
    }
    if (data.len % width != 0) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole values of width %d", data.len, width);
        goto done;
    }
    Py_ssize_t n = data.len / width, used = 0;
    if (!(out = PyBytes_FromStringAndSize(NULL, n * varint_max_bytes(width))))
        goto done;
    const uint8_t *v = data.buf;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    used = width == 2 ? varint_encode_2(v, o, n)
         : width == 4 ? varint_encode_4(v, o, n) : varint_encode_8(v, o, n);
    Py_END_ALLOW_THREADS
    _PyBytes_Resize(&out, used);
done:
    PyBuffer_Release(&data);
    return out;
}

/* varint_decode(stream, width, out): the values of `stream` written into `out`, which must
 * hold exactly as many values as the stream does */
static PyObject *varint_decode(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int width;
    if (!PyArg_ParseTuple(args, "y*iw*", &in, &width, &out))
        return NULL;
    PyObject *result = NULL;
    if (width != 2 && width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "no varint for width %d", width);
        goto done;
    }
    if (out.len % width != 0) {
        PyErr_Format(PyExc_ValueError, "output of %zd bytes is not whole values of width %d",
                     out.len, width);
        goto done;
    }
    Py_ssize_t n = out.len / width, bad;
    const uint8_t *s = in.buf;
    uint8_t *v = out.buf;
    Py_BEGIN_ALLOW_THREADS
    bad = width == 2 ? varint_decode_2(s, in.len, v, n)
        : width == 4 ? varint_decode_4(s, in.len, v, n) : varint_decode_8(s, in.len, v, n);
    Py_END_ALLOW_THREADS
    if (bad > 0)
        PyErr_Format(PyExc_ValueError, "varint %zd does not fit in %d bytes", bad, width);
    else if (bad < 0)
        PyErr_Format(PyExc_ValueError, "varint stream does not hold exactly %zd values", n);
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "split(data, transform, width) -> list of planes (bytes)"},
    {"merge", merge, METH_VARARGS, "merge(planes, transform, width, out): rebuild into out"},
    {"varint_encode", varint_encode, METH_VARARGS, "varint_encode(data, width) -> LEB128 bytes"},
    {"varint_decode", varint_decode, METH_VARARGS,
     "varint_decode(stream, width, out): decode exactly len(out) // width values into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_planes", "Compiled byte-plane split and merge (see planes.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__planes(void) { return PyModule_Create(&module); }
