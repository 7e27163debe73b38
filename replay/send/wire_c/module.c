/* replay.send._wire: the compiled sender's engine (engine.c) as a Python type.
 *
 *     Engine(host, port, timeout_ns)    a thread sending to host:port (a numeric IPv4/IPv6 address)
 *     .submit(id, due_ns, data, head)   send `data` (bytes) at monotonic `due_ns`
 *     .take()                           [(id, kind, err, msg, sent_ns, end_ns, answer,
 *                                         stamps, head)] done since the last call; `stamps` is
 *                                         a tuple (bytes read so far, ns, ...) per read of the
 *                                         answer; a long answer comes in parts first (kind
 *                                         PART); `head`: see plain_head
 *     plain_head(answer, stamps)        (status, body_at, headers_ns, content_type,
 *                                         content_encoding, retry_after or None, keep) of a
 *                                         plain answer (head.h), or None: llhttp reads it
 *     .preopen(n), .unsend(), .close(), .tid(),
 *     .counts() -> (connects, resends, idle, batched: requests whose head went in a batch)
 *     .uring()                          requests due together go in one system call (uring.h)
 *
 * The request's bytes object is held (not copied) until its result is taken.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "engine.h"
#include "head.h"

typedef struct {
    PyObject_HEAD
    wire *w;
} Engine;

static int Engine_init(Engine *self, PyObject *args, PyObject *kw) {
    const char *host;
    int port;
    long long timeout_ns;
    static char *names[] = {"host", "port", "timeout_ns", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "siL", names, &host, &port, &timeout_ns)) return -1;
    if (self->w != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine already started");
        return -1;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        len = sizeof *a6;
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return -1;
    }
    self->w = wire_open((struct sockaddr *)&ss, len, (int64_t)timeout_ns);
    if (self->w == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Engine_submit(Engine *self, PyObject *args) {
    long long id, due;
    PyObject *data;
    int head;
    if (!PyArg_ParseTuple(args, "LLSp", &id, &due, &data, &head)) return NULL;
    if (self->w == NULL) return PyErr_Format(PyExc_RuntimeError, "engine closed");
    wire_req *r = calloc(1, sizeof *r);
    if (r == NULL) return PyErr_NoMemory();
    Py_INCREF(data);
    r->id = id;
    r->due = due;
    r->data = PyBytes_AS_STRING(data);
    r->len = (size_t)PyBytes_GET_SIZE(data);
    r->head = head;
    r->owner = data;
    if (wire_submit(self->w, r) != 0) {
        Py_DECREF(data);
        free(r);
        return PyErr_Format(PyExc_RuntimeError, "engine closed");
    }
    Py_RETURN_NONE;
}

static PyObject *value_or(const char *b, int has, size_t at, size_t len, PyObject *absent) {
    if (has) return PyBytes_FromStringAndSize(b + at, (Py_ssize_t)len);
    Py_INCREF(absent);
    return absent;
}

/* What the taker reads of a whole answer's head when head.h is sure of it (else None): the
 * status, where the body starts, when the read that ended the head came, the three headers'
 * values (b"" or None where absent, as llhttp's reader has them), and whether the connection
 * may be kept. */
static PyObject *head_of(const char *b, size_t len, const int64_t *stamps, size_t nstamps) {
    head_info h;
    if (!head_read(b, len, &h)) Py_RETURN_NONE;
    size_t k = 0;
    while (k < nstamps && stamps[2 * k] < (int64_t)h.body_at) k++;
    if (k == nstamps || stamps[2 * nstamps - 2] != (int64_t)len) Py_RETURN_NONE;
    PyObject *empty = PyBytes_FromStringAndSize("", 0);
    if (empty == NULL) return NULL;
    PyObject *out = Py_BuildValue(
        "(inLNNNN)", h.status, (Py_ssize_t)h.body_at, (long long)stamps[2 * k + 1],
        value_or(b, h.has_ctype, h.ctype, h.ctype_len, empty),
        value_or(b, h.has_enc, h.enc, h.enc_len, empty),
        value_or(b, h.has_retry, h.retry, h.retry_len, Py_None), PyBool_FromLong(h.keep));
    Py_DECREF(empty);
    return out;
}

static PyObject *result(const wire_done *d) {
    size_t n = d->nstamps;
    PyObject *stamps = PyTuple_New((Py_ssize_t)(2 * n));
    if (stamps == NULL) return NULL;
    for (size_t i = 0; i < 2 * n; i++) {
        PyObject *v = PyLong_FromLongLong(d->stamps[i]);
        if (v == NULL) {
            Py_DECREF(stamps);
            return NULL;
        }
        PyTuple_SET_ITEM(stamps, (Py_ssize_t)i, v);
    }
    PyObject *head;
    if (d->kind == WK_OK && !d->req->head && d->resp != NULL)
        head = head_of(d->resp, d->resp_len, d->stamps, n);
    else
        head = Py_NewRef(Py_None);
    if (head == NULL) {
        Py_DECREF(stamps);
        return NULL;
    }
    return Py_BuildValue(
        "(LiisLLy#NN)", d->req->id, d->kind, d->err, d->msg, (long long)d->req->sent,
        (long long)d->end, d->resp ? d->resp : "", (Py_ssize_t)d->resp_len, stamps, head);
}

static PyObject *Engine_take(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->w == NULL) return PyList_New(0);
    size_t n;
    wire_done *done = wire_take(self->w, &n);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        wire_done *d = &done[i];
        PyObject *item = out != NULL ? result(d) : NULL;
        if (item == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        if (d->kind != WK_PART) { /* the request is done: its bytes are let go */
            Py_DECREF((PyObject *)d->req->owner);
            free(d->req);
        }
        free(d->resp);
        free(d->stamps);
    }
    free(done);
    return out;
}

static PyObject *Engine_preopen(Engine *self, PyObject *args) {
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (self->w != NULL && n > 0) wire_preopen(self->w, n);
    Py_RETURN_NONE;
}

static PyObject *Engine_unsend(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->w != NULL) {
        Py_BEGIN_ALLOW_THREADS
        wire_unsend(self->w);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_close(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->w != NULL) {
        Py_BEGIN_ALLOW_THREADS
        wire_close(self->w);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_counts(Engine *self, PyObject *Py_UNUSED(ignored)) {
    long c = 0, r = 0, i = 0, b = 0;
    if (self->w != NULL) wire_counts(self->w, &c, &r, &i, &b);
    return Py_BuildValue("(llll)", c, r, i, b);
}

static PyObject *Engine_uring(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(self->w != NULL && wire_uring(self->w));
}

static PyObject *Engine_tid(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->w != NULL ? wire_tid(self->w) : 0);
}

static void Engine_dealloc(Engine *self) {
    if (self->w != NULL) {
        Py_BEGIN_ALLOW_THREADS
        wire_close(self->w);
        Py_END_ALLOW_THREADS
        PyObject *left = Engine_take(self, NULL); /* releases the requests' bytes */
        Py_XDECREF(left);
        PyErr_Clear();
        wire_free(self->w);
        self->w = NULL;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* plain_head(answer, stamps): what take() gives as `head` for this whole answer (the Python
 * sender reads an answer that came in one read with it; the tests hold it to llhttp). */
static PyObject *plain_head(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer answer;
    PyObject *stamps;
    if (!PyArg_ParseTuple(args, "y*O!", &answer, &PyTuple_Type, &stamps)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(stamps);
    int64_t *st = PyMem_Malloc(((size_t)n + 1) * sizeof *st);
    PyObject *out = NULL;
    if (st == NULL) {
        PyErr_NoMemory();
    } else {
        for (Py_ssize_t i = 0; i < n; i++) st[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(stamps, i));
        if (!PyErr_Occurred())
            out = head_of(answer.buf, (size_t)answer.len, st, (size_t)n / 2);
        PyMem_Free(st);
    }
    PyBuffer_Release(&answer);
    return out;
}

static PyMethodDef Engine_methods[] = {
    {"submit", (PyCFunction)Engine_submit, METH_VARARGS, "submit(id, due_ns, data, head)"},
    {"take", (PyCFunction)Engine_take, METH_NOARGS, "the results since the last call"},
    {"preopen", (PyCFunction)Engine_preopen, METH_VARARGS, "open up to n idle connections"},
    {"unsend", (PyCFunction)Engine_unsend, METH_NOARGS, "requests not yet written come back"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "stop the thread (results stay to take)"},
    {"counts", (PyCFunction)Engine_counts, METH_NOARGS, "(connects, resends, idle, batched)"},
    {"tid", (PyCFunction)Engine_tid, METH_NOARGS, "the engine thread's kernel id"},
    {"uring", (PyCFunction)Engine_uring, METH_NOARGS,
     "whether requests due together are written in one system call (uring.h)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "replay.send._wire.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_doc = "The compiled sender's engine: one thread, one plain-HTTP target.",
};

static PyMethodDef module_methods[] = {
    {"plain_head", plain_head, METH_VARARGS, "plain_head(answer, stamps): take()'s `head`"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire", "The compiled sender (replay/send/wire.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "OK", WK_OK);
    PyModule_AddIntConstant(m, "CONNECT", WK_CONNECT);
    PyModule_AddIntConstant(m, "RESET", WK_RESET);
    PyModule_AddIntConstant(m, "TIMEOUT", WK_TIMEOUT);
    PyModule_AddIntConstant(m, "PROTOCOL", WK_PROTOCOL);
    PyModule_AddIntConstant(m, "INTERRUPTED", WK_INTERRUPTED);
    PyModule_AddIntConstant(m, "UNSENT", WK_UNSENT);
    PyModule_AddIntConstant(m, "PART", WK_PART);
    PyModule_AddIntConstant(m, "PART_BYTES", PART_BYTES);
    PyModule_AddIntConstant(m, "HOLD_BYTES", HOLD_BYTES);
    return m;
}
