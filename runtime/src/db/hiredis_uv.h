/*
 * db/hiredis_uv.h -- hiredis 0.14's libuv adapter, corrected.
 *
 * A copy of <hiredis/adapters/libuv.h> (BSD-3, hiredis 0.14.1) with the
 * three faults of that version fixed (../shared/deps.md §3, §7):
 *
 *  1. A refused connect hung forever. libuv reports POLLERR as
 *     status = UV_EBADF and stops the handle; the stock callback returned
 *     on any status != 0, so hiredis never looked at the socket and never
 *     called the connect callback. Here an error status dispatches the
 *     events that were requested, so hiredis reads SO_ERROR (connect) or
 *     gets the error from read()/write() and tears the context down.
 *  2. Every addRead/addWrite called uv_poll_start, which in libuv 1.44 is
 *     an epoll_ctl DEL + ADD: one syscall per command. Here the handle is
 *     (re)started only when the event mask changes, or when libuv stopped
 *     it after an error.
 *  3. redisUvAttach leaked its struct when uv_poll_init failed.
 *
 * The functions are static: include this header from exactly one .c file
 * (db/redis.c). Memory comes from the runtime's allocator.
 *
 * Lifetime: the adapter's struct outlives the hiredis context. hiredis
 * calls cleanup() while it frees the context (from redisAsyncFree, or on
 * its own after a failed connect or a lost connection); cleanup closes
 * the uv_poll (which stops it at once, before hiredis closes the fd) and
 * the struct is freed in its close callback, on a later loop iteration:
 * the owner keeps the loop running until then (a troupe worker runs its
 * loop until every handle has closed before it exits).
 */
#ifndef TR_DB_HIREDIS_UV_H
#define TR_DB_HIREDIS_UV_H

#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "core/alloc.h"

typedef struct hiredis_uv {
	redisAsyncContext *context; /* NULL once hiredis dropped it (cleanup) */
	uv_poll_t handle;
	int events; /* requested by hiredis: UV_READABLE | UV_WRITABLE */
	int armed;  /* what the handle is started with now (0: stopped) */
} hiredis_uv;

/* Makes the handle watch p->events, touching libuv only on a change. */
static void hiredis_uv_arm(hiredis_uv *p);

static void hiredis_uv_poll_cb(uv_poll_t *handle, int status, int events)
{
	hiredis_uv *p = handle->data;
	int ev = events;

	if (status != 0) {
		/* POLLERR (UV_EBADF) and the like: libuv has stopped the
		 * handle. Let hiredis run its handlers, which see the socket
		 * error and free the context (the fix of deps.md §7). */
		p->armed = 0;
		ev = p->events;
	}
	if (p->context != NULL && (ev & UV_READABLE))
		redisAsyncHandleRead(p->context);
	if (p->context != NULL && (ev & UV_WRITABLE))
		redisAsyncHandleWrite(p->context);
	/* Still alive after an error (unexpected): watch again, or hiredis
	 * would wait forever on a stopped handle. */
	if (status != 0 && p->context != NULL)
		hiredis_uv_arm(p);
}

static void hiredis_uv_arm(hiredis_uv *p)
{
	if (p->events == p->armed)
		return;
	if (p->events == 0) {
		uv_poll_stop(&p->handle);
		p->armed = 0;
	} else if (uv_poll_start(&p->handle, p->events, hiredis_uv_poll_cb) == 0) {
		p->armed = p->events;
	}
}

static void hiredis_uv_add_read(void *privdata)
{
	hiredis_uv *p = privdata;
	p->events |= UV_READABLE;
	hiredis_uv_arm(p);
}

static void hiredis_uv_del_read(void *privdata)
{
	hiredis_uv *p = privdata;
	p->events &= ~UV_READABLE;
	hiredis_uv_arm(p);
}

static void hiredis_uv_add_write(void *privdata)
{
	hiredis_uv *p = privdata;
	p->events |= UV_WRITABLE;
	hiredis_uv_arm(p);
}

static void hiredis_uv_del_write(void *privdata)
{
	hiredis_uv *p = privdata;
	p->events &= ~UV_WRITABLE;
	hiredis_uv_arm(p);
}

static void hiredis_uv_close_cb(uv_handle_t *handle)
{
	tr__free(handle->data);
}

static void hiredis_uv_cleanup(void *privdata)
{
	hiredis_uv *p = privdata;
	p->context = NULL; /* the context is being freed */
	uv_close((uv_handle_t *)&p->handle, hiredis_uv_close_cb);
}

/*
 * Attaches `ac` to `loop`. REDIS_OK, or REDIS_ERR (already attached, out
 * of memory, or uv_poll_init refused the fd); on REDIS_ERR nothing is
 * left allocated and the caller still owns (and frees) `ac`.
 */
static int hiredis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
	hiredis_uv *p;

	if (ac->ev.data != NULL)
		return REDIS_ERR;
	p = tr__malloc(sizeof(*p));
	if (p == NULL)
		return REDIS_ERR;
	memset(p, 0, sizeof(*p));
	if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
		tr__free(p); /* never registered with the loop: no close needed */
		return REDIS_ERR;
	}
	p->handle.data = p;
	p->context = ac;
	ac->ev.addRead = hiredis_uv_add_read;
	ac->ev.delRead = hiredis_uv_del_read;
	ac->ev.addWrite = hiredis_uv_add_write;
	ac->ev.delWrite = hiredis_uv_del_write;
	ac->ev.cleanup = hiredis_uv_cleanup;
	ac->ev.data = p;
	return REDIS_OK;
}

#endif
