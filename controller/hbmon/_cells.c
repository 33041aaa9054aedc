/* hbmon._cells: the P4Runtime register-read hot path, both ends, in one sequential pass.
 *
 * A poll reads 7 (or 14) registers x 4,096 cells by index every 800 ms; the target
 * encodes the answer as ReadResponse.entities fields and the controller decodes them.
 * In numpy each side took ~25 array passes over the cells; here each is one loop.
 *
 * Wire shapes (field numbers from p4runtime.proto), every length one byte:
 *
 *   0a L1                      ReadResponse.entities (1, LEN), L1 = L2 + 2
 *     5a L2                    Entity.register_entry (11, LEN)
 *       08 varint(id)          RegisterEntry.register_id (1, varint)
 *       12 Lx [08 varint(i)]   RegisterEntry.index (2, LEN) -> Index.index (1, varint);
 *                              index 0 is an empty Index (proto3 drops the default)
 *       1a Ld+2 0a Ld value    RegisterEntry.data (3, LEN) -> P4Data.bitstring (1, LEN)
 *
 * encode writes exactly what ReadResponse.SerializeToString() writes for those entities
 * (canonical bytestrings, P4Runtime spec 8.4: no leading zero byte, at least one byte).
 * decode accepts exactly that shape (bitstrings of 1..8 bytes, leading zeros allowed) and
 * answers None for anything else, so the caller decodes with protobuf: it never guesses.
 *
 * Both use only the buffer protocol: numpy arrays the Python side allocates are filled in
 * place (no numpy C API, so the module does not depend on numpy's ABI).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* the asked register ids a decode may see (a poll asks 7 or 14) */
#define MAX_REGISTERS 256
/* 08 + varint of a register id: the numpy decoder compared these bytes as one u64 word */
#define MAX_KEY 7
/* the longest entity encode writes: header 4, 08 + 10-byte varint, 12 Lx 08 + 10-byte
 * varint, 1a Ld+2 0a Ld + 8 value bytes */
#define MAX_ENTITY 40

static Py_ssize_t
put_varint(uint8_t *out, uint64_t v)
{
    Py_ssize_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

static inline int
varint_len(uint64_t v)
{
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* bytes of a canonical bytestring of v: no leading zero byte, at least one */
static inline int
value_len(uint64_t v)
{
    return v ? (64 - __builtin_clzll(v) + 7) / 8 : 1;
}

static int
exact_items(Py_buffer *buf, Py_ssize_t items, const char *what)
{
    if (buf->len != items * 8) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd 8-byte items",
                     what, buf->len, items);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(decode_doc,
"decode(response, register_ids, which, index, value) -> int | None\n\n"
"Entities of one serialized ReadResponse of the fixed RegisterEntry shape: writes the\n"
"position in register_ids (intp), index (uint64) and value (uint64) of entity k at k of\n"
"the writable 8-byte-item buffers which/index/value and returns how many there are.\n"
"None when the bytes are anything else (the caller decodes with protobuf), or when the\n"
"register ids are not all varints of one length of at most 6 bytes. ValueError when the\n"
"buffers are too small for the entities found.");

static PyObject *
cells_decode(PyObject *self, PyObject *args)
{
    Py_buffer resp = {0}, bw = {0}, bi = {0}, bv = {0};
    PyObject *ids_obj, *ids = NULL, *result = NULL;
    uint8_t keys[MAX_REGISTERS][MAX_KEY];
    Py_ssize_t nkeys, width = 0;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*Ow*w*w*", &resp, &ids_obj, &bw, &bi, &bv))
        return NULL;
    ids = PySequence_Fast(ids_obj, "register_ids must be a sequence");
    if (ids == NULL)
        goto done;
    nkeys = PySequence_Fast_GET_SIZE(ids);
    if (nkeys == 0 || nkeys > MAX_REGISTERS)
        goto not_fixed;
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        PyObject *num = PyNumber_Index(PySequence_Fast_GET_ITEM(ids, k));
        unsigned long long id;
        uint8_t varint[10];
        Py_ssize_t len;

        if (num == NULL)
            goto done;
        id = PyLong_AsUnsignedLongLong(num);
        Py_DECREF(num);
        if (id == (unsigned long long)-1 && PyErr_Occurred()) {
            /* negative or wider than 64 bits: no entity of ours carries it */
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto done;
            PyErr_Clear();
            goto not_fixed;
        }
        len = put_varint(varint, id);
        if (k == 0)
            width = 1 + len;
        if (1 + len != width || width > MAX_KEY)
            goto not_fixed;
        keys[k][0] = 0x08;
        memcpy(&keys[k][1], varint, (size_t)len);
    }

    {
        const uint8_t *b = resp.buf;
        const Py_ssize_t n = resp.len;
        const Py_ssize_t cap = Py_MIN(bw.len, Py_MIN(bi.len, bv.len)) / 8;
        Py_ssize_t *which = bw.buf;
        uint64_t *index = bi.buf, *value = bv.buf;
        /* the shortest entity: header, key, empty Index, one value byte */
        const Py_ssize_t shortest = 4 + width + 2 + 4 + 1;
        Py_ssize_t pos = 0, count = 0, hit = 0;

        while (pos < n) {
            const uint8_t *p, *end;
            Py_ssize_t k, xlen, rem, vlen;
            uint64_t i = 0, v = 0;

            /* 0a L1 5a L2, L1 = L2 + 2 < 0x80, the entity inside the buffer */
            if (n - pos < shortest || b[pos] != 0x0A || b[pos + 2] != 0x5A
                    || b[pos + 1] >= 0x80 || b[pos + 1] != b[pos + 3] + 2)
                goto not_fixed;
            end = b + pos + 2 + b[pos + 1];
            if (end > b + n || end - (b + pos) < shortest)
                goto not_fixed;
            p = b + pos + 4;
            /* 08 varint(register id): one of the asked (consecutive cells share one) */
            if (memcmp(p, keys[hit], (size_t)width) != 0) {
                for (k = 0; k < nkeys; k++)
                    if (memcmp(p, keys[k], (size_t)width) == 0)
                        break;
                if (k == nkeys)
                    goto not_fixed;
                hit = k;
            }
            p += width;
            /* 12 Lx [08 varint(index)]: Lx 0 (index 0) or 2..6 (a varint of 1..5 bytes) */
            xlen = p[1];
            if (p[0] != 0x12 || xlen == 1 || xlen > 6)
                goto not_fixed;
            rem = end - p;  /* >= 7 by `shortest` */
            if (2 + xlen + 4 + 1 > rem)
                goto not_fixed;
            if (xlen) {
                const Py_ssize_t ilen = xlen - 1;

                if (p[2] != 0x08)
                    goto not_fixed;
                for (Py_ssize_t j = 0; j < ilen; j++) {
                    const uint8_t byte = p[3 + j];

                    /* the continuation bit on every byte but the last, exactly */
                    if ((byte & 0x80) != (j + 1 < ilen ? 0x80 : 0))
                        goto not_fixed;
                    i |= (uint64_t)(byte & 0x7F) << (7 * j);
                }
            }
            p += 2 + xlen;
            /* 1a Ld+2 0a Ld value, ending exactly at the entity's end */
            vlen = end - (p + 4);
            if (vlen < 1 || vlen > 8 || p[0] != 0x1A || p[1] != vlen + 2 || p[2] != 0x0A
                    || p[3] != vlen)
                goto not_fixed;
            for (Py_ssize_t j = 0; j < vlen; j++)
                v = (v << 8) | p[4 + j];
            if (count >= cap) {
                PyErr_SetString(PyExc_ValueError, "decode: output buffers too small");
                goto done;
            }
            which[count] = hit;
            index[count] = i;
            value[count] = v;
            count++;
            pos = end - b;
        }
        result = PyLong_FromSsize_t(count);
        goto done;
    }

not_fixed:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(ids);
    PyBuffer_Release(&resp);
    PyBuffer_Release(&bw);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bv);
    return result;
}

PyDoc_STRVAR(encode_doc,
"encode(register_ids, indexes, values, ends) -> bytes\n\n"
"The ReadResponse.entities fields of the RegisterEntry entities (register_ids[k],\n"
"indexes[k], values[k]), uint64 buffers of one length, exactly as\n"
"ReadResponse.SerializeToString() writes them; the end offset of entity k is written at\n"
"k of the writable int64 buffer ends (a response is cut only there).");

static PyObject *
cells_encode(PyObject *self, PyObject *args)
{
    Py_buffer brid = {0}, bidx = {0}, bval = {0}, bends = {0};
    PyObject *blob = NULL;
    Py_ssize_t n, total = 0;

    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &brid, &bidx, &bval, &bends))
        return NULL;
    n = bval.len / 8;
    if (exact_items(&bval, n, "values") || exact_items(&brid, n, "register_ids")
            || exact_items(&bidx, n, "indexes") || exact_items(&bends, n, "ends"))
        goto done;

    {
        const uint64_t *rid = brid.buf, *idx = bidx.buf, *val = bval.buf;
        int64_t *ends = bends.buf;
        uint64_t last_rid = 0;
        int rlen = 1;

        /* first pass: the end of every entity, and so the exact size */
        for (Py_ssize_t k = 0; k < n; k++) {
            if (k == 0 || rid[k] != last_rid) {
                last_rid = rid[k];
                rlen = varint_len(last_rid);
            }
            const int xlen = idx[k] ? 1 + varint_len(idx[k]) : 0;
            const int inner = 1 + rlen + 2 + xlen + 4 + value_len(val[k]);
            total += 4 + inner;
            ends[k] = total;
        }
        blob = PyBytes_FromStringAndSize(NULL, total);
        if (blob == NULL)
            goto done;

        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(blob);
        uint8_t reg[10];
        Py_ssize_t start = 0;

        for (Py_ssize_t k = 0; k < n; k++) {
            uint8_t *o = out + start;
            const uint64_t v = val[k];
            const int vlen = value_len(v);
            const int inner = (int)(ends[k] - start) - 4;

            if (k == 0 || rid[k] != last_rid) {
                last_rid = rid[k];
                rlen = (int)put_varint(reg, last_rid);
            }
            o[0] = 0x0A;
            o[1] = (uint8_t)(inner + 2);
            o[2] = 0x5A;
            o[3] = (uint8_t)inner;
            o[4] = 0x08;
            memcpy(o + 5, reg, (size_t)rlen);
            o += 5 + rlen;
            o[0] = 0x12;
            if (idx[k]) {
                const Py_ssize_t ilen = put_varint(o + 3, idx[k]);

                o[1] = (uint8_t)(1 + ilen);
                o[2] = 0x08;
                o += 3 + ilen;
            } else {
                o[1] = 0;
                o += 2;
            }
            o[0] = 0x1A;
            o[1] = (uint8_t)(vlen + 2);
            o[2] = 0x0A;
            o[3] = (uint8_t)vlen;
            for (int j = 0; j < vlen; j++)  /* big-endian */
                o[4 + j] = (uint8_t)(v >> (8 * (vlen - 1 - j)));
            start = ends[k];
        }
    }

done:
    PyBuffer_Release(&brid);
    PyBuffer_Release(&bidx);
    PyBuffer_Release(&bval);
    PyBuffer_Release(&bends);
    return blob;
}

static PyMethodDef cells_methods[] = {
    {"decode", cells_decode, METH_VARARGS, decode_doc},
    {"encode", cells_encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cells_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hbmon._cells",
    .m_doc = "P4Runtime RegisterEntry read responses: encode (target) and decode "
             "(controller) of the fixed wire shape, one sequential pass each.",
    .m_size = 0,
    .m_methods = cells_methods,
};

PyMODINIT_FUNC
PyInit__cells(void)
{
    return PyModuleDef_Init(&cells_module);
}
