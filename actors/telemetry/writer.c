/*
 * actors/telemetry/writer.c -- the writer threads (writer.h).
 *
 * Why a thread per target rather than uv_fs on the worker's loop: a kind
 * actor is not pinned, so it may migrate between workers while a write
 * is in flight, and its state must not be touched from another loop's
 * callback. A thread with a mutex-guarded queue (Redis's bio model) has
 * one owner for the file and no tie to any loop; sharing it between the
 * actors that name one file keeps rotation single-handed.
 *
 * Rotation: before a chunk would take the file past max_bytes, the file
 * is closed, path.<keep-1> .. path.1 are renamed one up (path.<keep> is
 * overwritten: the oldest goes), path becomes path.1, and a fresh path is
 * opened. Chunks are cut at line ends, so a line is never split across
 * two files; a single line longer than max_bytes gets a file of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "actors/telemetry/writer.h"
#include "core/alloc.h"
#include "msg/msg_int.h"

struct tel_writer {
	/* Set at start, then only read. */
	char *path;      /* NULL: stdout */
	uv_thread_t th;

	/* The registry's (its lock). */
	struct tel_writer *next;
	unsigned refs;

	/* Guarded by mu. */
	uv_mutex_t mu;
	uv_cond_t cv;
	tr_buf q;        /* bytes waiting for the thread */
	int stop;
	uint64_t max_bytes;
	unsigned keep;
	size_t max_pending;

	/* The thread's alone. */
	int fd;          /* -1: closed (a failed reopen; retried on the next batch) */
	uint64_t size;   /* bytes in the current file */
	uint64_t cur_max;
	unsigned cur_keep;
	tr_buf local;

	/* Written by the thread, read by anyone. */
	atomic_uint_fast64_t bytes_written;
	atomic_uint_fast64_t write_errors;
	atomic_uint_fast64_t rotations;
};

/* Every open writer. */
static uv_once_t reg_once = UV_ONCE_INIT;
static uv_mutex_t reg_mu;
static tel_writer *reg_head;

static void reg_init(void)
{
	if (uv_mutex_init(&reg_mu) != 0)
		abort(); /* before any writer: nothing to fall back to */
}

#define ADD(x, d) atomic_fetch_add_explicit(&(x), (d), memory_order_relaxed)

static int open_file(const char *path, int trunc)
{
	return open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (trunc ? O_TRUNC : O_APPEND), 0644);
}

/* All of p[0..n) to fd; 0, or -1 (errors counted by the caller). */
static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void rotate(tel_writer *w)
{
	char from[4200], to[4200];

	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
	if (w->cur_keep > 0) {
		for (unsigned i = w->cur_keep - 1; i >= 1; i--) {
			snprintf(from, sizeof(from), "%s.%u", w->path, i);
			snprintf(to, sizeof(to), "%s.%u", w->path, i + 1);
			if (rename(from, to) != 0 && errno != ENOENT)
				ADD(w->write_errors, 1);
		}
		snprintf(to, sizeof(to), "%s.1", w->path);
		if (rename(w->path, to) != 0 && errno != ENOENT)
			ADD(w->write_errors, 1);
	}
	w->fd = open_file(w->path, 1);
	w->size = 0;
	if (w->fd < 0)
		ADD(w->write_errors, 1);
	ADD(w->rotations, 1);
}

/* Index just past the last '\n' in p[0..n), or 0. */
static size_t last_line_end(const unsigned char *p, size_t n)
{
	while (n > 0 && p[n - 1] != '\n')
		n--;
	return n;
}

static void write_file(tel_writer *w, const unsigned char *p, size_t n)
{
	if (w->fd < 0) {
		w->fd = open_file(w->path, 0);
		if (w->fd < 0) {
			ADD(w->write_errors, 1);
			return;
		}
	}
	while (n > 0) {
		size_t room = w->cur_max > w->size ? (size_t)(w->cur_max - w->size) : 0;
		size_t chunk = n <= room ? n : last_line_end(p, room);
		if (chunk == 0) {
			if (w->size > 0) {
				rotate(w);
				if (w->fd < 0)
					return;
				continue;
			}
			/* one line longer than max_bytes: a file of its own */
			const unsigned char *nl = memchr(p, '\n', n);
			chunk = nl ? (size_t)(nl - p) + 1 : n;
		}
		if (write_all(w->fd, p, chunk) != 0) {
			ADD(w->write_errors, 1);
			return;
		}
		w->size += chunk;
		ADD(w->bytes_written, chunk);
		p += chunk;
		n -= chunk;
	}
}

static void run(void *arg)
{
	tel_writer *w = arg;
	sigset_t all;

	/* Signals are the main thread's business; a closed stdout pipe gives
	 * EPIPE here instead of killing the process. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		tr_buf t;
		uv_mutex_lock(&w->mu);
		while (w->q.len == 0 && !w->stop)
			uv_cond_wait(&w->cv, &w->mu);
		if (w->q.len == 0 && w->stop) {
			uv_mutex_unlock(&w->mu);
			break;
		}
		t = w->q;
		w->q = w->local;
		w->local = t;
		w->cur_max = w->max_bytes;
		w->cur_keep = w->keep;
		uv_mutex_unlock(&w->mu);
		if (w->path == NULL) {
			if (write_all(STDOUT_FILENO, w->local.data, w->local.len) != 0)
				ADD(w->write_errors, 1);
			else
				ADD(w->bytes_written, w->local.len);
		} else {
			write_file(w, w->local.data, w->local.len);
		}
		w->local.len = 0;
	}
}

static int same_target(const tel_writer *w, const char *path)
{
	return path == NULL ? w->path == NULL : w->path != NULL && strcmp(w->path, path) == 0;
}

/* A new writer for o (its thread started). */
static int writer_new(const tel_writer_opts *o, tel_writer **out, char *err, size_t errlen)
{
	tel_writer *w = tr__calloc(1, sizeof(*w));
	struct stat sb;

	*out = NULL;
	if (w == NULL)
		goto nomem;
	w->fd = -1;
	w->refs = 1;
	tr_buf_init(&w->q);
	tr_buf_init(&w->local);
	w->max_bytes = w->cur_max = o->max_bytes;
	w->keep = w->cur_keep = o->keep;
	w->max_pending = o->max_pending;
	if (o->path != NULL) {
		w->path = tr__strndup(o->path, strlen(o->path));
		if (w->path == NULL)
			goto nomem_w;
		w->fd = open_file(w->path, 0);
		if (w->fd < 0) {
			snprintf(err, errlen, "file: cannot open '%s': %s", o->path, strerror(errno));
			tr__free(w->path);
			tr__free(w);
			return TR_EIO;
		}
		if (fstat(w->fd, &sb) == 0)
			w->size = (uint64_t)sb.st_size;
	}
	if (uv_mutex_init(&w->mu) != 0)
		goto nomem_fd;
	if (uv_cond_init(&w->cv) != 0) {
		uv_mutex_destroy(&w->mu);
		goto nomem_fd;
	}
	if (uv_thread_create(&w->th, run, w) != 0) {
		uv_cond_destroy(&w->cv);
		uv_mutex_destroy(&w->mu);
		goto nomem_fd;
	}
	*out = w;
	return TR_OK;
nomem_fd:
	if (w->fd >= 0)
		close(w->fd);
	tr__free(w->path);
nomem_w:
	tr__free(w);
nomem:
	snprintf(err, errlen, "out of memory (or no thread) for the writer");
	return TR_ENOMEM;
}

int tel_writer_open(const tel_writer_opts *o, tel_writer **out, char *err, size_t errlen)
{
	int rc = TR_OK;

	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	for (tel_writer *w = reg_head; w != NULL; w = w->next) {
		if (!same_target(w, o->path))
			continue;
		w->refs++;
		uv_mutex_lock(&w->mu);
		w->max_bytes = o->max_bytes;
		w->keep = o->keep;
		w->max_pending = o->max_pending;
		uv_mutex_unlock(&w->mu);
		*out = w;
		uv_mutex_unlock(&reg_mu);
		return TR_OK;
	}
	rc = writer_new(o, out, err, errlen);
	if (rc == TR_OK) {
		(*out)->next = reg_head;
		reg_head = *out;
	}
	uv_mutex_unlock(&reg_mu);
	return rc;
}

uint64_t tel_writer_push(tel_writer *w, const void *p, size_t n, uint64_t nlines)
{
	uint64_t dropped = 0;

	if (n == 0)
		return 0;
	uv_mutex_lock(&w->mu);
	if (w->q.len + n > w->max_pending || tr__buf_append(&w->q, p, n) != TR_OK)
		dropped = nlines;
	else
		uv_cond_signal(&w->cv);
	uv_mutex_unlock(&w->mu);
	return dropped;
}

void tel_writer_stats_get(tel_writer *w, tel_writer_stats *out)
{
	out->bytes_written = atomic_load_explicit(&w->bytes_written, memory_order_relaxed);
	out->write_errors = atomic_load_explicit(&w->write_errors, memory_order_relaxed);
	out->rotations = atomic_load_explicit(&w->rotations, memory_order_relaxed);
}

void tel_writer_close(tel_writer *w)
{
	if (w == NULL)
		return;
	uv_mutex_lock(&reg_mu);
	if (--w->refs > 0) {
		uv_mutex_unlock(&reg_mu);
		return;
	}
	for (tel_writer **p = &reg_head; *p != NULL; p = &(*p)->next) {
		if (*p == w) {
			*p = w->next;
			break;
		}
	}
	uv_mutex_unlock(&reg_mu);
	uv_mutex_lock(&w->mu);
	w->stop = 1;
	uv_cond_signal(&w->cv);
	uv_mutex_unlock(&w->mu);
	uv_thread_join(&w->th);
	uv_cond_destroy(&w->cv);
	uv_mutex_destroy(&w->mu);
	if (w->fd >= 0)
		close(w->fd);
	tr_buf_free(&w->q);
	tr_buf_free(&w->local);
	tr__free(w->path);
	tr__free(w);
}
