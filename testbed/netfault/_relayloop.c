/*
 * The relay workers' inner loop in C, for one lent connection: copy bytes both ways until
 * the connection ends or the worker is asked to stop (a byte on `wake`).
 *
 * Why C: on a small machine a relay's cost is its per-message work, and the Python loop's
 * few microseconds per message showed in pgbench's select-only mode. This loop runs with
 * the GIL released, one thread per connection (so the scheduler can keep each connection
 * with its peers), and hands back exactly what the Python relay would: what it had read but
 * not yet written, per direction, so a recall or an end loses nothing. Optional: the
 * package works without it (relay.py falls back to the Python relay).
 *
 * relay(client_fd, upstream_fd, wake_fd, counts) -> (reason, owed_up, owed_down)
 *   counts: a writable buffer of two native uint64 (bytes read from client, from upstream),
 *           updated as it goes, so the worker can report them without stopping the loop.
 *   reason: 0 = the connection ended (EOF, reset or error on either side),
 *           1 = woken (the caller decides: give back, or close),
 *           -errno = the loop itself failed (poll, or no memory for what is owed): the
 *           caller logs it and ends the connection, still with what is owed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BUFFER_SIZE (256 * 1024) /* as the Python relay: less cost a tenth of a stream */
#define ENDED 0
#define WOKEN 1

typedef struct {
    char *data; /* read from the source, not yet taken by the sink */
    size_t start, end;
} owed_t;

static int is_transient(int err) {
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* Write what is owed in one direction; 0 while the connection lives, -1 when it broke. */
static int flush(int sink, owed_t *owed) {
    while (owed->start < owed->end) {
        ssize_t sent = send(sink, owed->data + owed->start, owed->end - owed->start,
                            MSG_NOSIGNAL);
        if (sent < 0)
            return is_transient(errno) ? 0 : -1;
        owed->start += (size_t)sent;
    }
    free(owed->data);
    owed->data = NULL;
    owed->start = owed->end = 0;
    return 0;
}

/* Read once from `source` and pass it on; what the sink will not take yet is kept in
 * `owed`. 0 while the connection lives, -1 when it ended, -2 when out of memory: then the
 * read buffer itself becomes what is owed (nothing read is dropped) and the loop stops. */
static int pass(int source, int sink, char **buffer, uint64_t *count, owed_t *owed) {
    ssize_t size = recv(source, *buffer, BUFFER_SIZE, 0);
    if (size < 0)
        return is_transient(errno) ? 0 : -1;
    if (size == 0)
        return -1; /* no half-close: an EOF on one side closes the other, as in Python */
    /* The worker reads the counts while this thread runs: whole stores, never torn. */
    __atomic_store_n(count, *count + (uint64_t)size, __ATOMIC_RELAXED);
    ssize_t sent = send(sink, *buffer, (size_t)size, MSG_NOSIGNAL);
    if (sent < 0) {
        if (!is_transient(errno))
            return -1;
        sent = 0;
    }
    if (sent < size) {
        owed->data = malloc((size_t)(size - sent));
        if (owed->data == NULL) {
            owed->data = *buffer;
            owed->start = (size_t)sent;
            owed->end = (size_t)size;
            *buffer = NULL;
            return -2;
        }
        memcpy(owed->data, *buffer + sent, (size_t)(size - sent));
        owed->start = 0;
        owed->end = (size_t)(size - sent);
    }
    return 0;
}

static PyObject *relay(PyObject *Py_UNUSED(self), PyObject *args) {
    int fds[2], wake;
    Py_buffer counts_view;
    if (!PyArg_ParseTuple(args, "iiiw*", &fds[0], &fds[1], &wake, &counts_view))
        return NULL;
    if (counts_view.len < (Py_ssize_t)(2 * sizeof(uint64_t))) {
        PyBuffer_Release(&counts_view);
        PyErr_SetString(PyExc_ValueError, "counts must hold two uint64");
        return NULL;
    }
    uint64_t *counts = (uint64_t *)counts_view.buf;
    char *buffer = malloc(BUFFER_SIZE);
    if (buffer == NULL) {
        PyBuffer_Release(&counts_view);
        return PyErr_NoMemory();
    }
    owed_t owed[2] = {{NULL, 0, 0}, {NULL, 0, 0}};
    int reason = ENDED;

    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        /* Per direction, either its source is read or (while something is owed) its sink
         * is waited on; a source is not read while its sink is full. */
        struct pollfd polled[3];
        for (int d = 0; d < 2; d++) {
            polled[d].fd = owed[d].data ? fds[1 - d] : fds[d];
            polled[d].events = owed[d].data ? POLLOUT : POLLIN;
            polled[d].revents = 0;
        }
        polled[2].fd = wake;
        polled[2].events = POLLIN;
        polled[2].revents = 0;
        if (poll(polled, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            reason = -errno;
            break;
        }
        if (polled[2].revents) {
            reason = WOKEN;
            break;
        }
        int result = 0;
        for (int d = 0; d < 2 && result == 0; d++) {
            if (!polled[d].revents)
                continue;
            if (owed[d].data)
                result = flush(fds[1 - d], &owed[d]);
            else
                result = pass(fds[d], fds[1 - d], &buffer, &counts[d], &owed[d]);
        }
        if (result == -2)
            reason = -ENOMEM;
        if (result != 0)
            break;
    }
    Py_END_ALLOW_THREADS

    free(buffer);
    PyBuffer_Release(&counts_view);
    PyObject *out = Py_BuildValue(
            "(iy#y#)", reason,
            owed[0].data ? owed[0].data + owed[0].start : "",
            (Py_ssize_t)(owed[0].end - owed[0].start),
            owed[1].data ? owed[1].data + owed[1].start : "",
            (Py_ssize_t)(owed[1].end - owed[1].start));
    free(owed[0].data);
    free(owed[1].data);
    return out;
}

static PyMethodDef methods[] = {
    {"relay", relay, METH_VARARGS,
     "relay(client_fd, upstream_fd, wake_fd, counts) -> (reason, owed_up, owed_down)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_relayloop", "The relay workers' inner loop in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__relayloop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ENDED", ENDED) < 0 ||
        PyModule_AddIntConstant(m, "WOKEN", WOKEN) < 0 ||
        PyModule_AddIntConstant(m, "BUFFER_SIZE", BUFFER_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
