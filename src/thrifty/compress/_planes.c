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
#include <stdlib.h>
#include <string.h>

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

static inline uint64_t read_value(const uint8_t *v, int width)  /* little-endian, any host */
{
    uint64_t x = 0;
    for (int k = width - 1; k >= 0; k--)
        x = x << 8 | v[k];
    return x;
}

#define VARINT_ENCODE(W)                                                            \
    static Py_ssize_t varint_encode_##W(const uint8_t *v, uint8_t *out, Py_ssize_t n)  \
    {                                                                               \
        uint8_t *o = out;                                                           \
        for (Py_ssize_t i = 0; i < n; i++, v += W) {                                \
            uint64_t x = read_value(v, W);                                          \
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
            uint64_t x = read_value(v, W);                                          \
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

/* 0 when `len` bytes are whole values of a width varints are written for; else -1, with
 * ValueError set. */
static int varint_values(int width, Py_ssize_t len)
{
    if (width != 2 && width != 4 && width != 8) {
        PyErr_Format(PyExc_ValueError, "no varint for width %d", width);
        return -1;
    }
    if (len % width != 0) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole values of width %d", len, width);
        return -1;
    }
    return 0;
}

/* varint_encode(data, width) -> bytes */
static PyObject *varint_encode(PyObject *self, PyObject *args)
{
    Py_buffer data;
    int width;
    if (!PyArg_ParseTuple(args, "y*i", &data, &width))
        return NULL;
    PyObject *out = NULL;
    if (varint_values(width, data.len) < 0)
        goto done;
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
    if (varint_values(width, out.len) < 0)  /* the output's */
        goto done;
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

/* ---------------------------------------------------------------- words
 *
 * Text as a vocabulary and a stream (planes.py has the reasons). The vocabulary's tokens are
 * the chunk's maximal runs of ASCII word bytes [A-Za-z0-9_], its maximal runs of two or more
 * ASCII whitespace bytes [\t\n\v\f\r ], and each byte from 0x80 up. Each distinct token is
 * listed once, most frequent first (ties in order of first appearance; counts above WORDS_CAP
 * count as WORDS_CAP), followed by a 0 byte; a token's first byte may itself be 0, no later
 * byte can be. The stream is the chunk with every such token replaced by a code for its place
 * r in the vocabulary: a first byte 0x80 | more << 6 | (r & 63), then, when more is set, r >> 6
 * as an unsigned LEB128 varint. Every other byte of the chunk is below 0x80 and is in the
 * stream as it is, so a byte of the stream from 0x80 up always starts a code. */

enum { OTHER = 0, WORD = 1, SPACE = 2, HIGH = 3, WORDS_CAP = 4096 };

static inline uint8_t class_of(uint8_t c)
{
    /* | rather than ||: no branches, so that loops over a chunk vectorise */
    uint8_t word = ((uint8_t)((c | 0x20) - 'a') < 26) | ((uint8_t)(c - '0') < 10) | (c == '_');
    uint8_t space = (c == ' ') | ((uint8_t)(c - '\t') < 5);
    return (uint8_t)(word | space << 1 | (c >> 7) * HIGH);
}

/* 8 bytes as a little-endian integer, whatever the host's byte order. */
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline int trailing_zeros(uint64_t x)  /* x is not 0 */
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(x);
#else
    int n = 0;
    for (; !(x & 1); x >>= 1)
        n++;
    return n;
#endif
}

/* Which of the 64 bytes at p are word bytes, whitespace and bytes from 0x80 up, as bit masks
 * (bit k for p[k]). SSE2 (every x86-64) compares 16 bytes at once and takes one bit of each
 * with movemask; elsewhere class_of byte by byte. */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline __m128i at_most(__m128i x, uint8_t top)  /* x <= top, unsigned, per byte */
{
    return _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8((char)top)), x);
}
static inline void class_masks(const uint8_t *p, uint64_t *word, uint64_t *space, uint64_t *high)
{
    uint64_t w = 0, sp = 0, h = 0;
    for (int g = 0; g < 4; g++) {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + 16 * g));
        __m128i letter = at_most(_mm_sub_epi8(_mm_or_si128(x, _mm_set1_epi8(0x20)),
                                              _mm_set1_epi8('a')), 25);
        __m128i digit = at_most(_mm_sub_epi8(x, _mm_set1_epi8('0')), 9);
        __m128i is_word = _mm_or_si128(_mm_or_si128(letter, digit),
                                       _mm_cmpeq_epi8(x, _mm_set1_epi8('_')));
        __m128i is_space = _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(' ')),
                                        at_most(_mm_sub_epi8(x, _mm_set1_epi8('\t')), 4));
        w |= (uint64_t)(uint16_t)_mm_movemask_epi8(is_word) << 16 * g;
        sp |= (uint64_t)(uint16_t)_mm_movemask_epi8(is_space) << 16 * g;
        h |= (uint64_t)(uint16_t)_mm_movemask_epi8(x) << 16 * g;
    }
    *word = w, *space = sp, *high = h;
}
#else
static inline void class_masks(const uint8_t *p, uint64_t *word, uint64_t *space, uint64_t *high)
{
    uint64_t w = 0, sp = 0, h = 0;
    for (int k = 0; k < 64; k++) {
        uint8_t c = class_of(p[k]);
        w |= (uint64_t)(c == WORD) << k, sp |= (uint64_t)(c == SPACE) << k;
        h |= (uint64_t)(c == HIGH) << k;
    }
    *word = w, *space = sp, *high = h;
}
#endif

/* The vocabulary tokens of s[0:n]: their starts into first and their ends into last (each with
 * room for n + 1); returns how many. 64 bytes at a time: masks of their classes, from which
 * shifts by a byte (carrying in the bytes before and after the block) give a mask of the bytes
 * where a token starts and one of those just before which a token ends, then a count of
 * trailing zeros per token. A scan to each token's end would mispredict once a token, which
 * cost more than all the rest. */
static size_t find_tokens(const uint8_t *s, size_t n, uint32_t *first, uint32_t *last)
{
    size_t a = 0, b = 0;
    uint64_t w_in = 0, s_in = 0, s_in2 = 0, h_in = 0;  /* bytes i - 1 and i - 2 (OTHER at 0) */
    uint8_t tail[64];
    /* i == n runs once more when n is a multiple of 64 (and for n == 0): an empty block whose
     * only possible flag is a token ending at n */
    for (size_t i = 0; i <= n; i += 64) {
        size_t m = n - i < 64 ? n - i : 64;
        uint64_t w, sp, h;
        if (m == 64) {
            class_masks(s + i, &w, &sp, &h);
        } else {  /* the bytes past the end are 0, which is OTHER */
            memset(tail, 0, sizeof tail);
            memcpy(tail, s + i, m);
            class_masks(tail, &w, &sp, &h);
        }
        uint64_t s_next = i + 64 < n ? class_of(s[i + 64]) == SPACE : 0;
        uint64_t w_before = w << 1 | w_in, s_before = sp << 1 | s_in, h_before = h << 1 | h_in;
        uint64_t s_before2 = sp << 2 | s_in << 1 | s_in2, s_after = sp >> 1 | s_next << 63;
        /* a token starts at a word byte after a non-word byte, at a whitespace byte after a
         * non-whitespace byte and before a whitespace byte, and at every high byte; one ends
         * just before each byte where these runs stop and after every high byte */
        uint64_t starts = (w & ~w_before) | (sp & ~s_before & s_after) | h;
        uint64_t ends = (w_before & ~w) | (s_before & ~sp & s_before2) | h_before;
        if (m < 64) {  /* positions past the end start nothing; n itself may end a token */
            starts &= (1ull << m) - 1;
            ends &= (2ull << m) - 1;
        }
        for (; starts; starts &= starts - 1)
            first[a++] = (uint32_t)(i + (size_t)trailing_zeros(starts));
        for (; ends; ends &= ends - 1)
            last[b++] = (uint32_t)(i + (size_t)trailing_zeros(ends));
        w_in = w >> 63, s_in = sp >> 63, s_in2 = sp >> 62 & 1, h_in = h >> 63;
    }
    return a;  /* == b */
}

/* A token's identity in the hash table: its first 8 bytes (zeros past its end), its length,
 * and for longer tokens its last 8 bytes. Tokens that agree on all three are compared whole. */
static const uint64_t KEEP[9] = {0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFull,
                                 0xFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFull, ~0ull};
#define MIX1 0x9E3779B97F4A7C15ull
#define MIX2 0xC2B2AE3D27D4EB4Full

/* The first 8 bytes of the token at s[i:i+len] (of a chunk of n bytes) as a little-endian
 * integer, zeros past the token's end, and its hash: one load each and no branch where the
 * chunk has 8 bytes from i on. */
static inline uint64_t token_key(const uint8_t *s, size_t i, size_t len, size_t n, uint64_t *hash,
                                 uint64_t *tail_out)
{
    uint64_t key = 0, tail = 0;
    if (i + 8 <= n) {
        key = load_le64(s + i) & KEEP[len < 8 ? len : 8];
        tail = load_le64(s + (len > 8 ? i + len - 8 : i)) & (0 - (uint64_t)(len > 8));
    } else {  /* the chunk's last few bytes: a token shorter than 8 */
        for (size_t k = len; k-- > 0;)
            key = key << 8 | s[i + k];
    }
    *hash = ((key ^ (uint64_t)len << 56) * MIX1 ^ tail * MIX2) >> 32;  /* 32 bits */
    *tail_out = tail;
    return key;
}

/* A table slot: the token's hash and its vocabulary entry (-1: empty). Eight bytes, so that
 * the table stays in the core's own cache; the entry's key, tail and length, which say whether
 * it is really the token, are looked up only when the hashes agree. */
struct slot {
    uint32_t hash;
    int32_t d;
};

static struct slot *new_table(size_t slots)
{
    struct slot *table = malloc(slots * sizeof *table);
    if (table)
        for (size_t e = 0; e < slots; e++)
            table[e].d = -1;
    return table;
}

struct entries {
    uint32_t *count, *start, *size;
    uint64_t *key, *tail;
};

/* Each token's vocabulary entry (numbered in order of first appearance) into tok, and per
 * entry its count, the start of its first appearance, its size, key and tail (room for t
 * each); returns the number of entries, or -1 when out of memory. Open addressing, the table
 * at most half full. */
static Py_ssize_t lookup(const uint8_t *s, size_t n, const uint32_t *first, const uint32_t *last,
                         size_t t, uint32_t *tok, struct entries v)
{
    size_t slots = 1 << 12, nv = 0;
    struct slot *table = new_table(slots);
    if (!table)
        return -1;
    for (size_t k = 0; k < t; k++) {
        size_t i = first[k], len = last[k] - i;
        uint64_t h, tail, key = token_key(s, i, len, n, &h, &tail);
        size_t slot = h & (slots - 1);
        int32_t d;
        for (;; slot = (slot + 1) & (slots - 1)) {
            struct slot e = table[slot];
            d = e.d;
            if (d < 0 || (e.hash == (uint32_t)h && v.key[d] == key && v.tail[d] == tail
                          && v.size[d] == len && (len <= 16 || !memcmp(s + v.start[d], s + i, len))))
                break;
        }
        if (d < 0) {  /* a new token */
            d = (int32_t)nv++;
            v.count[d] = 0, v.start[d] = (uint32_t)i, v.size[d] = (uint32_t)len;
            v.key[d] = key, v.tail[d] = tail;
            table[slot] = (struct slot){(uint32_t)h, d};
            if (2 * nv > slots) {
                size_t bigger = 2 * slots;
                struct slot *t2 = new_table(bigger);
                if (!t2) {
                    free(table);
                    return -1;
                }
                for (size_t e = 0; e < slots; e++) {
                    if (table[e].d < 0)
                        continue;
                    size_t q = table[e].hash & (bigger - 1);
                    while (t2[q].d >= 0)
                        q = (q + 1) & (bigger - 1);
                    t2[q] = table[e];
                }
                free(table);
                table = t2;
                slots = bigger;
            }
        }
        v.count[d]++;
        tok[k] = (uint32_t)d;
    }
    free(table);
    return (Py_ssize_t)nv;
}

/* The code for place r: 0x80 | more << 6 | (r & 63), then r >> 6 as LEB128 when more is set.
 * Up to 3 bytes (r below 2^20) without a branch: the output has room for 3 more. */
static inline uint8_t *put_code(uint8_t *o, uint32_t r)
{
    if (r < 1u << 20) {
        uint32_t m1 = r >= 64, m2 = r >= 8192;
        o[0] = (uint8_t)(0x80 | m1 << 6 | (r & 63));
        o[1] = (uint8_t)((r >> 6 & 0x7F) | m2 << 7);
        o[2] = (uint8_t)(r >> 13);
        return o + 1 + m1 + m2;
    }
    *o++ = (uint8_t)(0xC0 | (r & 63));
    for (r >>= 6; r >= 0x80; r >>= 7)
        *o++ = (uint8_t)(r | 0x80);
    *o++ = (uint8_t)r;
    return o;
}

/* Copy len bytes, as one fixed 16-byte copy where both sides have 16 bytes of room: the bytes
 * past len are overwritten later (the callers fill their output front to back). */
static inline void copy_short(uint8_t *dst, size_t dst_room, const uint8_t *src, size_t src_room,
                              size_t len)
{
    if (len <= 16 && dst_room >= 16 && src_room >= 16)
        memcpy(dst, src, 16);
    else
        memcpy(dst, src, len);
}

/* The scratch words_encode needs for a chunk of n bytes: a token's start and end per byte of
 * it, at most (a token may be one byte), then five 4-byte and two 8-byte arrays per token. */
static size_t words_scratch_bytes(size_t n)
{
    return 44 * (n + 1) + 16;  /* and room to put two arrays on 8-byte boundaries */
}

/* words_scratch(n) -> the bytes of scratch words_encode uses for a chunk of n bytes */
static PyObject *words_scratch(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n))
        return NULL;
    return PyLong_FromSize_t(words_scratch_bytes(n < 0 ? 0 : (size_t)n));
}

/* words_encode(text, scratch=None) -> (vocabulary, stream). `scratch`, a writable buffer of
 * at least words_scratch(len(text)) bytes, holds the working arrays; without it they are
 * allocated and freed in this call. A caller coding chunk after chunk keeps one per thread:
 * some 17 MB allocated and freed per 1 MiB chunk made glibc hand the heap's top back to the
 * kernel and fault it in again, chunk after chunk, where other work shared the heap
 * (benchmarks/compress_limits.py, table 10). */
static PyObject *words_encode(PyObject *self, PyObject *args)
{
    Py_buffer data, work = {0};
    PyObject *scratch = Py_None;
    if (!PyArg_ParseTuple(args, "y*|O", &data, &scratch))
        return NULL;
    PyObject *result = NULL, *vocab_out = NULL, *stream_out = NULL;
    const uint8_t *s = data.buf;
    size_t n = (size_t)data.len, t = 0, vbytes = 0;
    Py_ssize_t nv = -1;
    uint32_t *first = NULL, *last = NULL;
    uint32_t *tok = NULL, *count = NULL, *start = NULL, *size = NULL, *order = NULL;
    uint64_t *key = NULL, *tail = NULL;
    uint32_t *bucket = calloc(WORDS_CAP + 1, sizeof *bucket);
    int own = scratch == Py_None;  /* whether the arrays are this call's to free */
    if (!own) {
        if (PyObject_GetBuffer(scratch, &work, PyBUF_WRITABLE) < 0) {
            work.obj = NULL;
            goto done;
        }
        if ((size_t)work.len < words_scratch_bytes(n)) {
            PyErr_Format(PyExc_ValueError, "scratch holds %zd bytes, a chunk of %zu needs %zu",
                         work.len, n, words_scratch_bytes(n));
            goto done;
        }
        first = (uint32_t *)(((uintptr_t)work.buf + 7) & ~(uintptr_t)7), last = first + n + 1;
    } else {
        /* first and last apart: each stays under glibc's threshold for fresh mappings longer */
        first = malloc((n + 1) * sizeof *first), last = malloc((n + 1) * sizeof *last);
    }
    if (!first || !last || !bucket)
        goto nomem;
    Py_BEGIN_ALLOW_THREADS
    t = find_tokens(s, n, first, last);
    size_t room = (t + 1) * sizeof(uint32_t);
    if (own) {
        tok = malloc(room), count = malloc(room), start = malloc(room), size = malloc(room);
        order = malloc(room), key = malloc(2 * room), tail = malloc(2 * room);
    } else {  /* after first and last, the 8-byte arrays first, on an 8-byte boundary */
        uintptr_t at = (uintptr_t)(last + n + 1);
        key = (uint64_t *)((at + 7) & ~(uintptr_t)7), tail = key + t + 1;
        tok = (uint32_t *)(tail + t + 1), count = tok + t + 1, start = count + t + 1;
        size = start + t + 1, order = size + t + 1;
    }
    if (tok && count && start && size && order && key && tail)
        nv = lookup(s, n, first, last, t, tok, (struct entries){count, start, size, key, tail});
    if (nv >= 0) {
        /* ranks: a counting sort on the count (capped), stable in order of first appearance */
        for (Py_ssize_t d = 0; d < nv; d++)
            bucket[WORDS_CAP - (count[d] < WORDS_CAP ? count[d] : WORDS_CAP)]++;
        uint32_t at = 0;
        for (int b = 0; b <= WORDS_CAP; b++) {
            uint32_t c = bucket[b];
            bucket[b] = at;
            at += c;
        }
        for (Py_ssize_t d = 0; d < nv; d++) {
            uint32_t r = bucket[WORDS_CAP - (count[d] < WORDS_CAP ? count[d] : WORDS_CAP)]++;
            order[r] = (uint32_t)d;
            count[d] = r;  /* from here on, each entry's rank */
            vbytes += size[d] + 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (nv < 0)
        goto nomem;
    /* the stream: at most every byte, and 5 bytes of code per token; 16 to spare for copies */
    if (!(vocab_out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)vbytes))
        || !(stream_out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + 5 * t + 16))))
        goto done;
    uint8_t *vo = (uint8_t *)PyBytes_AS_STRING(vocab_out), *o0 = (uint8_t *)PyBytes_AS_STRING(stream_out);
    uint8_t *o = o0, *oend = o0 + n + 5 * t + 16;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < nv; r++) {
        uint32_t d = order[r];
        memcpy(vo, s + start[d], size[d]);
        vo += size[d];
        *vo++ = 0;
    }
    size_t pos = 0;  /* the end of the last token written */
    for (size_t k = 0; k < t; k++) {
        size_t gap = first[k] - pos;  /* bytes below 0x80 between tokens, as they are */
        copy_short(o, (size_t)(oend - o), s + pos, n - pos, gap);
        o = put_code(o + gap, count[tok[k]]);
        pos = last[k];
    }
    memcpy(o, s + pos, n - pos);
    o += n - pos;
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&stream_out, o - o0) < 0)
        goto done;
    result = PyTuple_Pack(2, vocab_out, stream_out);
    goto done;
nomem:
    PyErr_NoMemory();
done:
    Py_XDECREF(vocab_out);
    Py_XDECREF(stream_out);
    if (own) {
        free(first), free(last), free(tok), free(count), free(start), free(size), free(order);
        free(key), free(tail);
    }
    free(bucket);
    if (work.obj)
        PyBuffer_Release(&work);
    PyBuffer_Release(&data);
    return result;
}

/* The tokens of a vocabulary plane: returns their number, or -1 when it is not well formed. */
static Py_ssize_t parse_vocab(const uint8_t *p, size_t len, uint32_t *start, uint32_t *size)
{
    Py_ssize_t n = 0;
    for (size_t i = 0; i < len; n++) {
        /* the first byte is the token's, whatever it is; a 0 after it ends the token */
        const uint8_t *z = i + 1 < len ? memchr(p + i + 1, 0, len - i - 1) : NULL;
        if (!z)
            return -1;
        size_t j = (size_t)(z - p);
        start[n] = (uint32_t)i, size[n] = (uint32_t)(j - i);
        i = j + 1;
    }
    return n;
}

/* words_decode(vocabulary, stream, out): the text rebuilt into out, which it must fill */
static PyObject *words_decode(PyObject *self, PyObject *args)
{
    Py_buffer voc, stream, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &voc, &stream, &out))
        return NULL;
    PyObject *result = NULL;
    const char *error = NULL;
    uint32_t *start = malloc((voc.len / 2 + 1) * sizeof *start);
    uint32_t *size = malloc((voc.len / 2 + 1) * sizeof *size);
    if (!start || !size) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *vp = voc.buf, *s = stream.buf, *end = s + stream.len;
    uint8_t *o = out.buf, *oend = o + out.len;
    Py_ssize_t nv = parse_vocab(vp, (size_t)voc.len, start, size);
    if (nv < 0)
        error = "vocabulary does not end with a 0 byte";
    while (!error && s < end) {
        uint8_t b = *s++;
        if (b < 0x80) {  /* a byte of text as it is */
            if (o == oend) {
                error = "the stream makes more text than the chunk holds";
                break;
            }
            *o++ = b;
            continue;
        }
        uint64_t r = b & 63;
        if (b & 64) {
            int shift = 6;
            for (;;) {
                if (s == end || shift > 34) {
                    error = "a code in the stream is not well formed";
                    break;
                }
                uint8_t c = *s++;
                r |= (uint64_t)(c & 0x7F) << shift;
                if (!(c & 0x80))
                    break;
                shift += 7;
            }
            if (error)
                break;
        }
        if (r >= (uint64_t)nv) {
            error = "a code is past the end of the vocabulary";
            break;
        }
        if (size[r] > (size_t)(oend - o)) {
            error = "the stream makes more text than the chunk holds";
            break;
        }
        copy_short(o, (size_t)(oend - o), vp + start[r], (size_t)voc.len - start[r], size[r]);
        o += size[r];
    }
    if (!error && o != oend)
        error = "the stream makes less text than the chunk holds";
    Py_END_ALLOW_THREADS
    if (error)
        PyErr_SetString(PyExc_ValueError, error);
    else if (!PyErr_Occurred())
        result = Py_NewRef(Py_None);
done:
    free(start), free(size);
    PyBuffer_Release(&voc);
    PyBuffer_Release(&stream);
    PyBuffer_Release(&out);
    return result;
}


/* ---------------------------------------------------------------- whole chunks
 *
 * Decoding a float or byte-plane chunk from Python is several calls, each of which gives the
 * GIL up and takes it back: zstd for a plane, the pages of the output, the merge, the digest.
 * With two threads each take back waits while the other holds the GIL, and those waits left
 * two-thread decoding of bf16 weights short of ZipNN's C threads (docs/benchmarks.md,
 * thirteenth session). decode_chunks does a batch of such chunks from its planes to its
 * digest with the GIL released once.
 *
 * zstd and xxh3 come from libraries already on the machine, never from code of ours: the
 * caller finds them (planes.py: the system's libzstd, and the XXH3_64bits that python-xxhash's
 * extension exports) and hands their addresses to bind(). planes.py checks the result against
 * the ordinary path before using it, and uses the ordinary path where any of it is missing. */

typedef size_t (*zstd_decompress_fn)(void *dctx, void *dst, size_t capacity, const void *src,
                                     size_t size);
typedef size_t (*zstd_frame_size_fn)(const void *src, size_t size);
typedef unsigned (*zstd_is_error_fn)(size_t code);
typedef void *(*zstd_create_fn)(void);
typedef size_t (*zstd_free_fn)(void *dctx);
typedef uint64_t (*xxh3_fn)(const void *data, size_t size);

static struct {
    zstd_decompress_fn decompress;
    zstd_frame_size_fn frame_size;
    zstd_is_error_fn is_error;
    zstd_create_fn create;
    zstd_free_fn free;
    xxh3_fn xxh3;
} lib;

enum { STORED = 0, ZSTD = 1 };  /* codecs.py's numbers for the two codings decoded here */

/* bind(decompress, frame_size, is_error, create, free, xxh3): the addresses of
 * ZSTD_decompressDCtx, ZSTD_findFrameCompressedSize, ZSTD_isError, ZSTD_createDCtx,
 * ZSTD_freeDCtx and XXH3_64bits, as integers. Called once, before any decoder is made. */
static PyObject *bind(PyObject *self, PyObject *args)
{
    unsigned long long a[6];
    if (!PyArg_ParseTuple(args, "KKKKKK", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5]))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (!a[i]) {
            PyErr_SetString(PyExc_ValueError, "a null function address");
            return NULL;
        }
    lib.decompress = (zstd_decompress_fn)(uintptr_t)a[0];
    lib.frame_size = (zstd_frame_size_fn)(uintptr_t)a[1];
    lib.is_error = (zstd_is_error_fn)(uintptr_t)a[2];
    lib.create = (zstd_create_fn)(uintptr_t)a[3];
    lib.free = (zstd_free_fn)(uintptr_t)a[4];
    lib.xxh3 = (xxh3_fn)(uintptr_t)a[5];
    Py_RETURN_NONE;
}

/* One thread's zstd context and room for the planes of its chunk: a decoder is used by one
 * thread at a time (planes.py keeps one per thread). */
struct decoder {
    void *dctx;
    uint8_t *room;
    size_t capacity;
};

static void decoder_free(PyObject *capsule)
{
    struct decoder *d = PyCapsule_GetPointer(capsule, "thrifty.decoder");
    if (!d)
        return;
    if (d->dctx)
        lib.free(d->dctx);
    free(d->room);
    free(d);
}

/* decoder() -> a capsule for decode_chunks */
static PyObject *decoder(PyObject *self, PyObject *args)
{
    if (!lib.create) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not been called");
        return NULL;
    }
    struct decoder *d = calloc(1, sizeof *d);
    if (!d || !(d->dctx = lib.create())) {
        free(d);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(d, "thrifty.decoder", decoder_free);
    if (!capsule) {
        lib.free(d->dctx);
        free(d);
    }
    return capsule;
}

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
/* Have the kernel supply the pages under buf for writing in one call (Linux 5.14 and later;
 * elsewhere, or on failure, they come a fault at a time as they are written). */
static void fill_pages(uint8_t *buf, size_t len)
{
    static uintptr_t page;
    if (!page)
        page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t at = (uintptr_t)buf, start = at - at % page;
    madvise((void *)start, at + len - start, 23 /* MADV_POPULATE_WRITE */);
}
#else
static void fill_pages(uint8_t *buf, size_t len) { (void)buf, (void)len; }
#endif

struct job {
    const struct kind *kind;
    Py_buffer payload, out;
    int width, method[MAX_WIDTH];
    size_t stored[MAX_WIDTH];
    int ok;
    uint64_t digest;
};

/* Fills in a job's kind and planes from (transform, width, planes); 0 with ValueError set
 * where they do not describe a chunk this can decode. */
static int describe_job(struct job *j, int transform, int width, PyObject *planes)
{
    if (!(j->kind = find_kind(transform, width)))
        return 0;
    PyObject *pf = PySequence_Fast(planes, "planes must be a sequence");
    if (!pf)
        return 0;
    int fine = PySequence_Fast_GET_SIZE(pf) == width && j->out.len % width == 0;
    size_t total = 0;
    for (int k = 0; fine && k < width; k++) {
        unsigned long long stored;
        fine = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(pf, k), "iK", &j->method[k], &stored)
               && (j->method[k] == STORED || j->method[k] == ZSTD);
        j->stored[k] = (size_t)stored, total += (size_t)stored;
    }
    Py_DECREF(pf);
    if (fine && total == (size_t)j->payload.len) {
        j->width = width;
        return 1;
    }
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "planes that do not make up the chunk");
    return 0;
}

/* One chunk, without the GIL: its zstd planes decoded into d->room (its stored ones read where
 * they lie), merged into its output, and the output's digest. 0 where a plane does not decode
 * to exactly its share of the output. */
static int decode_job(struct decoder *d, struct job *j, int populate)
{
    size_t n = (size_t)j->out.len / (size_t)j->width, pos = 0;
    uint8_t *p[MAX_WIDTH];
    for (int k = 0; k < j->width; k++) {
        uint8_t *src = (uint8_t *)j->payload.buf + pos;
        size_t stored = j->stored[k];
        pos += stored;
        if (j->method[k] == STORED) {
            if (stored != n)
                return 0;
            p[k] = src;
            continue;
        }
        /* one frame and nothing after it, as python-zstandard insists on the ordinary path */
        size_t frame = lib.frame_size(src, stored);
        p[k] = d->room + (size_t)k * n;
        if (lib.is_error(frame) || frame != stored)
            return 0;
        size_t got = lib.decompress(d->dctx, p[k], n, src, stored);
        if (lib.is_error(got) || got != n)
            return 0;
    }
    if (populate)
        fill_pages(j->out.buf, (size_t)j->out.len);
    j->kind->merge(j->out.buf, p, (Py_ssize_t)n);
    j->digest = lib.xxh3(j->out.buf, (size_t)j->out.len);
    return 1;
}

/* decode_chunks(decoder, items, populate) -> list of digests (an int per item, or None for one
 * that did not decode). Each item is (payload, planes, transform, width, out): `planes` the
 * chunk's (coding, stored length) pairs, each coding STORED or ZSTD, their lengths adding up
 * to the payload's; `out` a writable buffer of the chunk's raw length, whose pages are first
 * taken from the kernel in one call when `populate` is true (see container.populate). */
static PyObject *decode_chunks(PyObject *self, PyObject *args)
{
    PyObject *capsule, *items, *fast, *result = NULL;
    int populate;
    if (!PyArg_ParseTuple(args, "OOp", &capsule, &items, &populate))
        return NULL;
    struct decoder *d = PyCapsule_GetPointer(capsule, "thrifty.decoder");
    if (!d || !(fast = PySequence_Fast(items, "items must be a sequence")))
        return NULL;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(fast), ready = 0;
    struct job *jobs = PyMem_Calloc(m ? (size_t)m : 1, sizeof *jobs);
    size_t room = 0;
    if (!jobs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        struct job *j = &jobs[i];
        PyObject *planes;
        int transform, width;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "y*Oiiw*", &j->payload,
                              &planes, &transform, &width, &j->out))
            goto done;
        ready = i + 1;  /* its buffers are held from here on */
        if (!describe_job(j, transform, width, planes))
            goto done;
        if ((size_t)j->out.len > room)
            room = (size_t)j->out.len;
    }
    if (room > d->capacity) {
        uint8_t *bigger = realloc(d->room, room);
        if (!bigger) {
            PyErr_NoMemory();
            goto done;
        }
        d->room = bigger, d->capacity = room;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++)
        jobs[i].ok = decode_job(d, &jobs[i], populate);
    Py_END_ALLOW_THREADS
    if (!(result = PyList_New(m)))
        goto done;
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *v = jobs[i].ok ? PyLong_FromUnsignedLongLong(jobs[i].digest)
                                 : Py_NewRef(Py_None);
        if (!v) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, v);
    }
done:
    for (Py_ssize_t i = 0; i < ready; i++) {
        PyBuffer_Release(&jobs[i].payload);
        PyBuffer_Release(&jobs[i].out);
    }
    PyMem_Free(jobs);
    Py_DECREF(fast);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "split(data, transform, width) -> list of planes (bytes)"},
    {"merge", merge, METH_VARARGS, "merge(planes, transform, width, out): rebuild into out"},
    {"bind", bind, METH_VARARGS,
     "bind(decompress, frame_size, is_error, create, free, xxh3): libzstd's and xxh3's addresses"},
    {"decoder", decoder, METH_NOARGS, "decoder() -> a thread's context for decode_chunks"},
    {"decode_chunks", decode_chunks, METH_VARARGS,
     "decode_chunks(decoder, items, populate) -> a digest or None per item"},
    {"varint_encode", varint_encode, METH_VARARGS, "varint_encode(data, width) -> LEB128 bytes"},
    {"words_encode", words_encode, METH_VARARGS,
     "words_encode(text, scratch=None) -> (vocabulary, ids)"},
    {"words_scratch", words_scratch, METH_VARARGS,
     "words_scratch(n) -> bytes of scratch words_encode needs for n bytes of text"},
    {"words_decode", words_decode, METH_VARARGS,
     "words_decode(vocabulary, ids, out): the text rebuilt into out, which it must fill"},
    {"varint_decode", varint_decode, METH_VARARGS,
     "varint_decode(stream, width, out): decode exactly len(out) // width values into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_planes", "Compiled byte-plane split and merge (see planes.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__planes(void) { return PyModule_Create(&module); }
