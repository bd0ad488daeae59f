/* A streaming JSON validator (RFC 8259): feed it chunks, then finish().
 *
 * It checks the grammar, UTF-8 inside strings and escapes, and nothing else: it
 * builds no values and emits no events, so it runs at memory speed where ijson's
 * yajl backend (which creates a Python object per token) does ~40 MB/s. Memory
 * is constant: the state is a few integers and a stack of open containers,
 * capped at MAX_DEPTH. Built by the project's own install when a C compiler is
 * there; harvester.body falls back to ijson when it is not.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 100000

enum state {
    S_VALUE,          /* a value must come (after ':' or ',' in an array, or at start) */
    S_ARRAY_FIRST,    /* after '[': a value or ']' */
    S_OBJECT_FIRST,   /* after '{': a key or '}' */
    S_KEY,            /* after ',' in an object: a key */
    S_COLON,          /* after a key */
    S_AFTER,          /* after a value: ',' or a closing bracket, or the end */
    S_DONE,           /* the top-level value is complete: only whitespace may follow */
    S_STRING,
    S_ESCAPE,
    S_UNICODE,        /* inside \uXXXX; `count` hex digits seen */
    S_UTF8,           /* inside a multi-byte UTF-8 sequence; `count` bytes still due */
    S_MINUS, S_ZERO, S_INT, S_DOT, S_FRAC, S_EXP, S_EXP_SIGN, S_EXP_DIGITS,
    S_LITERAL,        /* inside true / false / null */
};

typedef struct {
    PyObject_HEAD
    int state;
    int count;             /* hex digits (S_UNICODE) or continuation bytes due (S_UTF8) */
    unsigned char low, high; /* allowed range of the next continuation byte (S_UTF8) */
    int key;               /* the string being read is an object key */
    const char *literal;   /* the literal being matched (S_LITERAL) */
    int literal_at;
    unsigned char *stack;  /* '[' or '{' per open container */
    Py_ssize_t depth, capacity;
    long long offset;      /* bytes fed before the current chunk */
    int failed;
} Validator;

static PyObject *JsonError;

static int fail(Validator *v, long long at, const char *what, unsigned char byte) {
    v->failed = 1;
    if (byte >= 0x20 && byte < 0x7f)
        PyErr_Format(JsonError, "%s ('%c') at byte %lld", what, byte, at);
    else
        PyErr_Format(JsonError, "%s (0x%02x) at byte %lld", what, byte, at);
    return -1;
}

static int push(Validator *v, unsigned char kind, long long at) {
    if (v->depth >= MAX_DEPTH) {
        v->failed = 1;
        PyErr_Format(JsonError, "nested deeper than %d at byte %lld", MAX_DEPTH, at);
        return -1;
    }
    if (v->depth == v->capacity) {
        Py_ssize_t capacity = v->capacity ? v->capacity * 2 : 64;
        unsigned char *grown = PyMem_Realloc(v->stack, (size_t)capacity);
        if (!grown) { PyErr_NoMemory(); return -1; }
        v->stack = grown;
        v->capacity = capacity;
    }
    v->stack[v->depth++] = kind;
    return 0;
}

/* A value ended: what may follow depends on the container it is in. */
static inline void value_done(Validator *v) {
    v->state = v->depth ? S_AFTER : S_DONE;
}

static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Begin a value at byte c; returns 0, or -1 with the error set. */
static int begin_value(Validator *v, unsigned char c, long long at) {
    switch (c) {
    case '{':
        if (push(v, '{', at) < 0) return -1;
        v->state = S_OBJECT_FIRST;
        return 0;
    case '[':
        if (push(v, '[', at) < 0) return -1;
        v->state = S_ARRAY_FIRST;
        return 0;
    case '"':
        v->key = 0;
        v->state = S_STRING;
        return 0;
    case '-': v->state = S_MINUS; return 0;
    case '0': v->state = S_ZERO; return 0;
    case 't': v->literal = "true"; v->literal_at = 1; v->state = S_LITERAL; return 0;
    case 'f': v->literal = "false"; v->literal_at = 1; v->state = S_LITERAL; return 0;
    case 'n': v->literal = "null"; v->literal_at = 1; v->state = S_LITERAL; return 0;
    default:
        if (c >= '1' && c <= '9') { v->state = S_INT; return 0; }
        return fail(v, at, "a value cannot start with this byte", c);
    }
}

static int run(Validator *v, const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        long long at = v->offset + i;
        switch (v->state) {
        case S_STRING:
            /* The common case: a stretch of plain ASCII. */
            while (i < n && (c = p[i]) >= 0x20 && c < 0x80 && c != '"' && c != '\\') i++;
            if (i == n) return 0;
            at = v->offset + i;
            if (c == '"') {
                if (v->key) v->state = S_COLON; else value_done(v);
            } else if (c == '\\') {
                v->state = S_ESCAPE;
            } else if (c < 0x20) {
                return fail(v, at, "a control character inside a string", c);
            } else if (c >= 0xc2 && c <= 0xdf) {
                v->state = S_UTF8; v->count = 1; v->low = 0x80; v->high = 0xbf;
            } else if (c >= 0xe0 && c <= 0xef) {
                v->state = S_UTF8; v->count = 2;
                v->low = c == 0xe0 ? 0xa0 : 0x80;  /* no overlong forms */
                v->high = c == 0xed ? 0x9f : 0xbf; /* no UTF-16 surrogates */
            } else if (c >= 0xf0 && c <= 0xf4) {
                v->state = S_UTF8; v->count = 3;
                v->low = c == 0xf0 ? 0x90 : 0x80;
                v->high = c == 0xf4 ? 0x8f : 0xbf; /* nothing past U+10FFFF */
            } else {
                return fail(v, at, "invalid UTF-8 inside a string", c);
            }
            i++;
            continue;
        case S_UTF8:
            if (c < v->low || c > v->high)
                return fail(v, at, "invalid UTF-8 inside a string", c);
            v->low = 0x80; v->high = 0xbf;
            if (--v->count == 0) v->state = S_STRING;
            i++;
            continue;
        case S_ESCAPE:
            if (c == 'u') { v->state = S_UNICODE; v->count = 0; }
            else if (strchr("\"\\/bfnrt", c) && c) v->state = S_STRING;
            else return fail(v, at, "an invalid escape", c);
            i++;
            continue;
        case S_UNICODE:
            if (!is_hex(c)) return fail(v, at, "an invalid \\u escape", c);
            if (++v->count == 4) v->state = S_STRING;
            i++;
            continue;
        default:
            break;
        }
        if (v->state >= S_MINUS && v->state <= S_EXP_DIGITS) {
            int digit = c >= '0' && c <= '9';
            switch (v->state) {
            case S_MINUS:
                if (c == '0') v->state = S_ZERO;
                else if (digit) v->state = S_INT;
                else return fail(v, at, "a digit must follow '-'", c);
                i++;
                continue;
            case S_ZERO:
            case S_INT:
                if (digit && v->state == S_INT) { i++; continue; }
                if (digit) return fail(v, at, "a number cannot have a leading zero", c);
                if (c == '.') { v->state = S_DOT; i++; continue; }
                if (c == 'e' || c == 'E') { v->state = S_EXP; i++; continue; }
                break;  /* the number ended: c is read again below */
            case S_DOT:
                if (!digit) return fail(v, at, "a digit must follow '.'", c);
                v->state = S_FRAC;
                i++;
                continue;
            case S_FRAC:
                if (digit) { i++; continue; }
                if (c == 'e' || c == 'E') { v->state = S_EXP; i++; continue; }
                break;
            case S_EXP:
                if (c == '+' || c == '-') { v->state = S_EXP_SIGN; i++; continue; }
                /* fall through */
            case S_EXP_SIGN:
                if (!digit) return fail(v, at, "a digit must follow the exponent", c);
                v->state = S_EXP_DIGITS;
                i++;
                continue;
            case S_EXP_DIGITS:
                if (digit) { i++; continue; }
                break;
            }
            value_done(v);
            continue;  /* read c again in the new state */
        }
        if (v->state == S_LITERAL) {
            if (c != (unsigned char)v->literal[v->literal_at])
                return fail(v, at, "an invalid literal", c);
            if (v->literal[++v->literal_at] == '\0') value_done(v);
            i++;
            continue;
        }
        if (is_space(c)) {
            i++;
            while (i < n && is_space(p[i])) i++;
            continue;
        }
        switch (v->state) {
        case S_VALUE:
            if (begin_value(v, c, at) < 0) return -1;
            break;
        case S_ARRAY_FIRST:
            if (c == ']') { v->depth--; value_done(v); }
            else if (begin_value(v, c, at) < 0) return -1;
            break;
        case S_OBJECT_FIRST:
        case S_KEY:
            if (c == '"') { v->key = 1; v->state = S_STRING; }
            else if (c == '}' && v->state == S_OBJECT_FIRST) { v->depth--; value_done(v); }
            else return fail(v, at, "an object key must be a string", c);
            break;
        case S_COLON:
            if (c != ':') return fail(v, at, "':' must follow an object key", c);
            v->state = S_VALUE;
            break;
        case S_AFTER: {
            unsigned char open = v->stack[v->depth - 1];
            if (c == ',') v->state = open == '{' ? S_KEY : S_VALUE;
            else if ((c == ']' && open == '[') || (c == '}' && open == '{')) {
                v->depth--;
                value_done(v);
            } else return fail(v, at, "',' or a matching closing bracket must follow a value", c);
            break;
        }
        case S_DONE:
            return fail(v, at, "bytes after the end of the JSON value", c);
        }
        i++;
    }
    return 0;
}

static PyObject *Validator_feed(Validator *v, PyObject *arg) {
    Py_buffer view;
    if (v->failed) { PyErr_SetString(JsonError, "the body already failed"); return NULL; }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int result = run(v, (const unsigned char *)view.buf, view.len);
    v->offset += view.len;
    PyBuffer_Release(&view);
    if (result < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Validator_finish(Validator *v, PyObject *Py_UNUSED(ignored)) {
    if (v->failed) { PyErr_SetString(JsonError, "the body already failed"); return NULL; }
    int state = v->state;
    if (v->depth == 0 && (state == S_ZERO || state == S_INT || state == S_FRAC ||
                          state == S_EXP_DIGITS))
        state = S_DONE;  /* a top-level number ends with the body */
    if (state != S_DONE) {
        v->failed = 1;
        if (v->offset == 0 || (state == S_VALUE && v->depth == 0))
            PyErr_SetString(JsonError, "the body holds no JSON value");
        else
            PyErr_Format(JsonError, "the body ends inside a JSON value (%zd containers open)"
                         " after %lld bytes", v->depth, v->offset);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Validator_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "", keywords)) return NULL;
    Validator *v = (Validator *)type->tp_alloc(type, 0);
    if (!v) return NULL;
    v->state = S_VALUE;
    return (PyObject *)v;
}

static void Validator_dealloc(Validator *v) {
    PyMem_Free(v->stack);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static PyMethodDef Validator_methods[] = {
    {"feed", (PyCFunction)Validator_feed, METH_O, "Check the next chunk of the body."},
    {"finish", (PyCFunction)Validator_finish, METH_NOARGS,
     "Raise JsonError unless the bytes fed are one complete JSON value."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ValidatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "harvester.core._jsoncheck.Validator",
    .tp_basicsize = sizeof(Validator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A streaming JSON validator: feed(chunk)..., finish().",
    .tp_new = Validator_new,
    .tp_dealloc = (destructor)Validator_dealloc,
    .tp_methods = Validator_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "harvester.core._jsoncheck",
    "A streaming JSON validator in C (see harvester.body).", -1, NULL,
};

PyMODINIT_FUNC PyInit__jsoncheck(void) {
    if (PyType_Ready(&ValidatorType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    JsonError = PyErr_NewException("harvester.core._jsoncheck.JsonError", PyExc_ValueError, NULL);
    Py_INCREF(&ValidatorType);
    if (PyModule_AddObject(m, "Validator", (PyObject *)&ValidatorType) < 0 ||
        PyModule_AddObject(m, "JsonError", JsonError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH);
    return m;
}
